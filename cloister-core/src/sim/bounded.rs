//! `sessions = "bounded"` in the simulator: each node holds sessions with
//! a few neighbours and learns the other members from them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::watching::{converge, downs, freeze_and_resume, LIMIT};
use super::*;
use crate::config::{RingMode, Sessions};
use crate::events::DownReason;

fn config() -> Config {
    Config {
        sessions: Sessions::Bounded,
        // Members only: a hash ring of hundreds of members takes
        // milliseconds to build, per change, and this is about membership.
        ring: RingMode::External,
        ..Config::default()
    }
}

/// Sessions a node may hold under bounded sessions with `k` monitors:
/// `k` on each side, two per halving down to `k`, and a few more while
/// nodes know different members.
fn session_bound(n: usize, k: usize) -> usize {
    2 * k + 2 * (usize::BITS - (n / k).leading_zeros()) as usize + 4
}

fn formed(n: usize, network: Network) -> Sim {
    let mut sim = Sim::new(n, &config(), network);
    sim.start_all();
    assert!(
        converge(&mut sim, Duration::from_millis(20), LIMIT),
        "{n} nodes with bounded sessions did not converge"
    );
    sim
}

#[test]
fn a_hundred_nodes_form_one_ring_over_a_bounded_number_of_sessions_each() {
    let n = 100;
    let sim = formed(n, Network::default());
    let formed_in = sim.now();
    let most = (0..n).map(|i| sim.sessions_of(i)).max().unwrap();
    assert!(
        most <= session_bound(n, 5),
        "a node holds {most} sessions, bound {}",
        session_bound(n, 5)
    );
    for i in 0..n {
        assert_eq!(sim.node(i).ring().len(), n, "node {i}");
        assert!(downs(&sim, i, 0).is_empty(), "node {i}");
    }
    println!("100 bounded: formed in {formed_in:?}, at most {most} sessions per node");
}

#[test]
fn a_killed_node_leaves_every_ring_as_crashed_and_nobody_else_does() {
    let n = 100;
    let mut sim = formed(n, Network::default());
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    let (victim, killed_at) = (42, sim.now());
    let name = sim.name(victim).clone();
    sim.kill(victim);
    let gone = |sim: &Sim| (0..n).all(|i| i == victim || !sim.node(i).ring().contains(&name));
    assert!(sim.run_until(LIMIT, gone), "still in some ring");
    let took = sim.now() - killed_at;
    sim.run_for(Duration::from_secs(3)); // nothing else follows
    for i in (0..n).filter(|&i| i != victim) {
        assert_eq!(
            downs(&sim, i, marks[i]),
            [(name.clone(), DownReason::Crashed)],
            "node {i}"
        );
    }
    println!("100 bounded: a killed node left every ring in {took:?}");

    sim.restart(victim, &config());
    assert!(converge(&mut sim, Duration::from_millis(20), LIMIT));
    assert!((0..n).all(|i| sim.node(i).ring().len() == n));
}

#[test]
fn a_frozen_node_leaves_every_ring_and_comes_back_at_its_next_life() {
    let cfg = config();
    let sim = freeze_and_resume(100, &cfg, 17);
    assert!((0..100).all(|i| sim.node(i).ring().len() == 100));
}

#[test]
fn a_node_that_leaves_is_reported_left_everywhere() {
    let n = 60;
    let mut sim = formed(n, Network::default());
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    let name = sim.name(9).clone();
    sim.leave(9);
    sim.drained(9);
    let gone = |sim: &Sim| (0..n).all(|i| i == 9 || !sim.node(i).ring().contains(&name));
    assert!(sim.run_until(LIMIT, gone));
    sim.run_for(Duration::from_secs(2));
    for i in (0..n).filter(|&i| i != 9) {
        assert_eq!(
            downs(&sim, i, marks[i]),
            [(name.clone(), DownReason::Left)],
            "node {i}"
        );
    }
}

#[test]
fn a_restarted_node_replaces_its_old_incarnation_everywhere() {
    let n = 60;
    let mut sim = formed(n, Network::default());
    let old = sim.node(5).incarnation();
    sim.restart(5, &config());
    assert!(converge(&mut sim, Duration::from_millis(20), LIMIT));
    let new = sim.node(5).incarnation();
    assert_ne!(old, new);
    let name = sim.name(5).clone();
    assert!((0..n).all(|i| sim.node(i).incarnation_of(&name) == Some(new)));
}

#[test]
fn lost_messages_do_not_leave_rings_different_for_good() {
    let network = Network {
        loss: 0.2,
        ..Network::default()
    };
    let n = 60;
    let mut sim = formed(n, network);
    // Idle under loss: the tables stay agreed, nobody is dropped for good.
    sim.run_for(Duration::from_secs(5));
    assert!(converge(&mut sim, Duration::from_millis(20), LIMIT));
}

#[test]
fn a_thousand_nodes_form_over_bounded_sessions_and_drop_a_frozen_one() {
    let n = 1_000;
    let cfg = config();
    let mut sim = freeze_and_resume(n, &cfg, 321);
    let most = (0..n).map(|i| sim.sessions_of(i)).max().unwrap();
    assert!(most <= session_bound(n, 5), "{most} sessions");
    // Idle: no drop anywhere, and the cost of a node stays flat.
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    let before = sim.heartbeats_sent;
    let rounds = 10;
    sim.run_for(cfg.heartbeat_interval * rounds);
    let per_node = (sim.heartbeats_sent - before) as f64 / (n as f64 * f64::from(rounds));
    assert!((0..n).all(|i| downs(&sim, i, marks[i]).is_empty()));
    assert!(
        per_node <= 6.0,
        "{per_node:.2} heartbeats per node per interval"
    );
    println!(
        "1000 bounded: at most {most} sessions per node, {per_node:.2} heartbeats per node \
         per interval idle, {} messages in all, {:?} of virtual time",
        sim.delivered,
        sim.now()
    );
}

#[test]
fn a_node_asked_for_a_session_with_a_member_it_has_none_with_dials_it() {
    let n = 100;
    let mut sim = formed(n, Network::default());
    let far = (1..n).find(|&j| !sim.has_session(0, j)).unwrap();
    let before = sim.sessions_of(0);
    sim.connect_on_demand(0, far);
    assert!(sim.run_until(LIMIT, |sim| sim.has_session(0, far)));
    assert_eq!(sim.sessions_of(0), before + 1);
    // Nothing else changes: no member drops, the rings agree.
    sim.run_for(Duration::from_secs(2));
    assert!((0..n).all(|i| downs(&sim, i, 0).is_empty()));
    assert!(sim.converged());
}

/// A clean split of 100 nodes, 60 | 40, held until each side has said the
/// other down, then healed. Every node must take back the other side, and
/// without a storm: before, two nodes that each held a fact saying the
/// other down answered each other's every heartbeat with that fact, and
/// neither learned from a peer it had not admitted, so across the old cut
/// about 1,300 pairs exchanged heartbeats as fast as the network carried
/// them (21 million heartbeats a second in all, against 1,500 idle) and
/// the two sides took 25.6 s to take each other back.
#[test]
fn a_hundred_nodes_healed_after_a_split_take_each_other_back_without_a_storm() {
    let n = 100;
    let mut sim = formed(n, Network::default());
    let idle = {
        let sent = sim.heartbeats_sent;
        sim.run_for(Duration::from_secs(2));
        (sim.heartbeats_sent - sent) / 2
    };
    let minority: Vec<usize> = (0..n).filter(|i| i % 5 < 2).collect();
    sim.partition(&minority);
    sim.run_for(Duration::from_secs(6));
    let sent = sim.heartbeats_sent;
    let healed_at = sim.now();
    sim.heal();
    assert!(
        converge(&mut sim, Duration::from_millis(20), LIMIT),
        "the two sides did not take each other back"
    );
    let took = sim.now() - healed_at;
    // Five seconds from the heal: the idle rate, plus a burst of at most
    // a thousand heartbeats per node for taking back 40 or 60 members.
    sim.run_for(Duration::from_secs(5).saturating_sub(took));
    let healing = sim.heartbeats_sent - sent;
    let most = idle * 5 + 1000 * n as u64;
    println!(
        "healed in {took:?}; {healing} heartbeats in the 5 s from the heal (idle: {idle} a second)"
    );
    assert!(
        healing < most,
        "{healing} heartbeats in the 5 s from the heal, at most {most}"
    );
}

/// A bridge with bounded sessions: 30 nodes, 14 | 15 cut both ways, the
/// last node reaching both. Once the cut has settled, rings hold still
/// while it lasts. They did not (db4f049: 7,615 ring changes in 10 s across
/// the 30 nodes): a watcher across the cut said a member down, the bridge
/// passed the fact on, the member (alive) refuted it at its next life, the
/// refutation reached the watcher's side through the bridge, and the
/// watcher said it down again. A watcher now says such a member down once
/// (see `Membership::expire_silent_members`).
#[test]
fn rings_hold_still_under_a_bridge_with_bounded_sessions() {
    let n = 30;
    let mut sim = bridged(n);
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    sim.run_for(Duration::from_secs(10));
    let changes: usize = (0..n)
        .map(|i| {
            sim.events(i)[marks[i]..]
                .iter()
                .filter(|e| matches!(e, TopologyEvent::RingChanged { .. }))
                .count()
        })
        .sum();
    println!("{changes} ring changes in 10 s under a steady bridge");
    assert!(
        changes <= n,
        "{changes} ring changes in 10 s under a steady bridge"
    );
    // Nobody died: every ring holds every node, each watcher's word that a
    // member across the cut was down having been answered.
    for i in 0..n {
        let members = sim.node(i).ring().members().len();
        assert_eq!(members, n, "node {i}'s ring has {members} of {n} members");
    }
}

/// `n` nodes formed, then cut `0..14 | 14..n-1` both ways, the last node
/// reaching both sides, and 10 s for the cut to settle.
fn bridged(n: usize) -> Sim {
    let mut sim = formed(n, Network::default());
    for x in 0..14 {
        for y in 14..n - 1 {
            sim.cut_between(x, y);
        }
    }
    sim.run_for(Duration::from_secs(10));
    sim
}

/// Under the same bridge, a watcher that no longer says a member across
/// the cut down does not keep dead members: a frozen node's watchers on
/// its own side, and a killed node's neighbours, still take it out of
/// every ring.
#[test]
fn under_a_bridge_a_frozen_node_and_a_killed_one_still_leave_every_ring() {
    let n = 30;
    let mut sim = bridged(n);
    for (gone, kill) in [(3, false), (20, true)] {
        let name = sim.name(gone).clone();
        if kill {
            sim.kill(gone);
        } else {
            sim.pause(gone);
        }
        let out = |sim: &Sim| {
            (0..n)
                .filter(|&i| i != 3 && i != 20)
                .all(|i| !sim.node(i).ring().contains(&name))
        };
        let since = sim.now();
        assert!(sim.run_until(LIMIT, out), "node {gone} is still in a ring");
        println!(
            "node {gone} (killed: {kill}) out of every ring in {:?}",
            sim.now() - since
        );
    }
}
