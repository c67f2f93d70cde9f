//! The simulator scenarios: whole clusters on a virtual clock.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::events::DownReason;

fn config(consensus: usize) -> Config {
    Config {
        consensus,
        ..Config::default()
    }
}

/// Generous bound on virtual time: a scenario that needs more is a bug.
const LIMIT: Duration = Duration::from_secs(60);

/// Honest peers never look like forgers: no node reported a heartbeat that
/// failed the token handshake, whatever the network did to them.
fn assert_no_false_alarms(sim: &Sim, n: usize) {
    for i in 0..n {
        let alarms: Vec<_> = sim
            .dropped(i)
            .iter()
            .filter(|(_, why)| *why == crate::membership::DropReason::NotEchoed)
            .collect();
        assert!(alarms.is_empty(), "node {i} reported {alarms:?}");
    }
}

#[test]
fn three_nodes_from_a_static_list_reach_ready_with_identical_rings() {
    let mut sim = Sim::new(3, &config(3), Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged), "did not converge");
    let digests: Vec<_> = (0..3).map(|i| sim.node(i).ring().digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    for i in 0..3 {
        assert_eq!(sim.node(i).ring().len(), 3);
        assert_eq!(sim.node(i).state(), NodeState::Ready);
    }
    // Every node agrees on the owner of every key.
    for key in 0..1000u32 {
        let owners: Vec<_> = (0..3)
            .map(|i| sim.node(i).ring().node_for(key.to_le_bytes()).cloned())
            .collect();
        assert!(
            owners.windows(2).all(|w| w[0] == w[1]),
            "key {key}: {owners:?}"
        );
    }
}

#[test]
fn a_majority_side_stays_ready_and_a_minority_side_rehashes_until_healed() {
    let mut sim = Sim::new(5, &config(3), Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));

    // Cut {3, 4} off from {0, 1, 2}. Nothing closes; heartbeats stop crossing.
    sim.partition(&[3, 4]);
    let split = |sim: &Sim| {
        (0..3).all(|i| sim.node(i).ring().len() == 3 && sim.node(i).state() == NodeState::Ready)
            && (3..5).all(|i| {
                sim.node(i).ring().len() == 2 && sim.node(i).state() == NodeState::Rehashing
            })
    };
    assert!(sim.run_until(LIMIT, split), "sides did not settle");
    // The dropped peers went as unresponsive, not crashed: no session closed.
    assert!(sim.events(0).iter().any(|e| matches!(
        e,
        TopologyEvent::NodeDown {
            reason: DownReason::Unresponsive,
            ..
        }
    )));
    // The majority side never left Ready.
    assert!(!sim.events(0).iter().any(|e| matches!(
        e,
        TopologyEvent::StateChanged {
            to: NodeState::Rehashing,
            ..
        }
    )));

    sim.heal();
    assert!(
        sim.run_until(LIMIT, Sim::converged),
        "did not converge after healing"
    );
    let digest = sim.node(0).ring().digest();
    assert!((0..5).all(|i| sim.node(i).ring().digest() == digest));
    assert_no_false_alarms(&sim, 5);
}

#[test]
fn a_restarted_node_replaces_its_old_incarnation_everywhere() {
    let cfg = config(3);
    let mut sim = Sim::new(3, &cfg, Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));

    sim.restart(1, &cfg);
    let new = sim.node(1).incarnation();
    let name = sim.name(1).clone();
    // The ring alone cannot show it (same name, same ring): wait until every
    // survivor knows the member by its new incarnation.
    let replaced = |sim: &Sim| {
        sim.converged()
            && [0, 2]
                .iter()
                .all(|&i| sim.node(i).incarnation_of(&name) == Some(new))
    };
    assert!(sim.run_until(LIMIT, replaced));
    for i in [0, 2] {
        let events = sim.events(i);
        // The old process went down: as crashed when its session's close
        // arrived first, as restarted when the new incarnation's heartbeat did.
        assert!(events.iter().any(|e| matches!(
            e,
            TopologyEvent::NodeDown { node, reason: DownReason::Crashed | DownReason::Restarted, .. }
                if *node == name
        )));
        // ... and the last NodeUp for that name carries the new incarnation.
        let last_up = events.iter().rev().find_map(|e| match e {
            TopologyEvent::NodeUp { node, incarnation } if *node == name => Some(*incarnation),
            _ => None,
        });
        assert_eq!(last_up, Some(new));
    }
    assert_no_false_alarms(&sim, 3);
}

#[test]
fn two_hundred_nodes_form_and_converge() {
    // Few virtual nodes: this scenario is about membership, and every node
    // rebuilds its ring 199 times on the way (51,200 points each at 256).
    let cfg = Config {
        ring_vnodes: 8,
        ..config(200)
    };
    let mut sim = Sim::new(200, &cfg, Network::default());
    sim.start_all();
    assert!(
        sim.run_until(LIMIT, Sim::converged),
        "200 nodes did not converge"
    );
    let digest = sim.node(0).ring().digest();
    assert!((0..200).all(|i| sim.node(i).ring().digest() == digest));
    assert_no_false_alarms(&sim, 200);
    // Reported, not asserted: virtual time from start to a converged cluster.
    println!(
        "200 nodes converged after {:?} of virtual time, {} messages",
        sim.now(),
        sim.delivered
    );
}

#[test]
fn a_cluster_converges_despite_thirty_percent_message_loss() {
    let network = Network {
        loss: 0.3,
        ..Network::default()
    };
    let mut sim = Sim::new(7, &config(4), network);
    sim.start_all();
    assert!(
        sim.run_until(LIMIT, Sim::converged),
        "did not converge under loss"
    );
    assert_no_false_alarms(&sim, 7);
}

#[test]
fn a_crashed_node_leaves_every_ring_and_rejoins_after_restart() {
    let cfg = config(2);
    let mut sim = Sim::new(4, &cfg, Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    sim.kill(2);
    assert!(
        sim.run_until(LIMIT, Sim::converged),
        "survivors did not agree"
    );
    assert!((0..4)
        .filter(|&i| i != 2)
        .all(|i| sim.node(i).ring().len() == 3));
    sim.restart(2, &cfg);
    assert!(sim.run_until(LIMIT, Sim::converged));
    assert!((0..4).all(|i| sim.node(i).ring().len() == 4));
}

#[test]
fn a_node_that_leaves_is_reported_left_everywhere_and_stops_at_its_drain() {
    let cfg = config(2);
    let mut sim = Sim::new(5, &cfg, Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    let leaver = sim.name(4).clone();
    let left_everywhere = |sim: &Sim| {
        (0..4).all(|i| {
            sim.events(i).iter().any(|e| {
                matches!(e, TopologyEvent::NodeDown { node, reason: DownReason::Left, .. }
                    if *node == leaver)
            })
        })
    };

    // The goodbyes take it out of every ring at once, while it drains.
    sim.leave(4);
    assert!(
        sim.run_until(LIMIT, left_everywhere),
        "not `left` everywhere"
    );
    assert_eq!(sim.node(4).state(), NodeState::Stopping);
    let rest: Vec<_> = (0..4).map(|i| sim.name(i).clone()).collect();
    assert!((0..5).all(|i| sim.node(i).ring().members() == rest.as_slice()));

    // It has not drained: it stops at `drain_timeout`, and its sessions'
    // close is not reported as a crash by anyone.
    let stopped = |sim: &Sim| sim.node(4).state() == NodeState::Stopped;
    assert!(sim.run_until(cfg.drain_timeout * 2, stopped));
    sim.run_for(cfg.heartbeat_timeout * 2);
    for i in 0..4 {
        let downs: Vec<_> = (sim.events(i).iter())
            .filter(|e| matches!(e, TopologyEvent::NodeDown { node, .. } if *node == leaver))
            .collect();
        assert_eq!(downs.len(), 1, "node {i}: {downs:?}");
    }
    assert!(sim.converged());
}

#[test]
fn a_drained_node_stops_at_once() {
    let cfg = config(1);
    let mut sim = Sim::new(3, &cfg, Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    let left_at = sim.now();
    sim.leave(2);
    sim.drained(2);
    let stopped = |sim: &Sim| sim.node(2).state() == NodeState::Stopped;
    assert!(sim.run_until(LIMIT, stopped));
    // The goodbye linger, not the drain timeout.
    assert!(
        sim.now() - left_at < cfg.drain_timeout,
        "{:?}",
        sim.now() - left_at
    );
}

#[test]
fn the_same_seed_replays_the_same_history() {
    let run = || {
        let network = Network {
            loss: 0.1,
            ..Network::default()
        };
        let mut sim = Sim::new(6, &config(3), network);
        sim.start_all();
        sim.run_until(LIMIT, Sim::converged);
        (sim.now(), sim.events(3).to_vec())
    };
    assert_eq!(run(), run());
}

#[test]
fn every_node_agrees_on_the_sentry_and_it_moves_when_the_sentry_dies() {
    let cfg = config(3);
    let mut sim = Sim::new(5, &cfg, Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    let sentry = sim.node(0).sentry().unwrap().clone();
    assert!((0..5).all(|i| sim.node(i).sentry() == Some(&sentry)));

    // Kill the sentry: the survivors agree on a new one, each told by an event.
    let dead = (0..5).find(|&i| *sim.name(i) == sentry).unwrap();
    sim.kill(dead);
    assert!(sim.run_until(LIMIT, Sim::converged));
    let survivors: Vec<usize> = (0..5).filter(|&i| i != dead).collect();
    let next = sim.node(survivors[0]).sentry().unwrap().clone();
    assert_ne!(next, sentry);
    for &i in &survivors {
        assert_eq!(sim.node(i).sentry(), Some(&next));
        let told = sim.events(i).iter().rev().find_map(|e| match e {
            TopologyEvent::SentryChanged { sentry } => Some(sentry.clone()),
            _ => None,
        });
        // The new sentry itself may have been its own sentry all along.
        assert!(
            told == Some(Some(next.clone())) || *sim.name(i) == next,
            "node {i}: {told:?}"
        );
    }
}

/// What the management endpoint exports is what happened: time to ready,
/// heartbeat gaps near the interval, a freeze detected after the timeout,
/// and the frozen node listed as no longer a member.
#[test]
fn telemetry_counts_readiness_heartbeat_gaps_and_a_freeze() {
    let config = config(3);
    let mut sim = Sim::new(3, &config, Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    sim.run_for(2 * config.heartbeat_timeout);
    let t = sim.node(0).telemetry().clone();
    assert!(t.ready_after.is_some_and(|d| d > Duration::ZERO), "{t:?}");
    assert!(t.dials >= 1 && t.dial_failures == 0, "{t:?}");
    assert_eq!(t.events.get("node_up"), Some(&2), "{t:?}");
    assert!(t.heartbeat_gaps.count > 0, "{t:?}");
    let mean = t.heartbeat_gaps.sum / t.heartbeat_gaps.count as f64;
    let interval = config.heartbeat_interval.as_secs_f64();
    assert!(
        mean > interval / 2.0 && mean < 2.0 * interval,
        "mean gap {mean}: {t:?}"
    );
    assert_eq!(t.unresponsive_detection.count, 0);

    sim.pause(2);
    let frozen = sim.name(2).clone();
    let gone = |s: &Sim| !s.node(0).ring().contains(&frozen);
    assert!(sim.run_until(LIMIT, gone), "the frozen node stayed");
    let t = sim.node(0).telemetry();
    assert_eq!(t.node_downs.get("unresponsive"), Some(&1), "{t:?}");
    let detected = t.unresponsive_detection.sum;
    assert!(
        t.unresponsive_detection.count == 1 && detected >= config.heartbeat_timeout.as_secs_f64(),
        "{t:?}"
    );
    let statuses = sim.node(0).peer_statuses(sim.now());
    let status = statuses.iter().find(|p| p.name == frozen).unwrap();
    assert_ne!(status.status, "member", "{status:?}");
    let other = statuses.iter().find(|p| p.name == *sim.name(1)).unwrap();
    assert_eq!(
        (other.status, other.connected, other.watched),
        ("member", true, true)
    );
    assert!(other.heard_ms_ago.is_some(), "{other:?}");
}
