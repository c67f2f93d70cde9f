//! Bounded monitors in the simulator: who watches whom, what a frozen node
//! costs the cluster, and what an idle one costs a node, up to 1,000 nodes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::config::RingMode;
use crate::events::DownReason;

fn config(monitors: usize) -> Config {
    Config {
        monitors,
        ..Config::default()
    }
}

/// Runs in steps of `step` until the cluster converged, at most `limit`:
/// [`Sim::converged`] reads every member of every node, too slow to check
/// every half millisecond at 1,000 nodes.
pub(super) fn converge(sim: &mut Sim, step: Duration, limit: Duration) -> bool {
    let end = sim.now() + limit;
    while sim.now() < end {
        sim.run_for(step);
        if sim.converged() {
            return true;
        }
    }
    false
}

/// The `NodeDown` events node `i` published from event number `since` on.
pub(super) fn downs(sim: &Sim, i: usize, since: usize) -> Vec<(NodeName, DownReason)> {
    sim.events(i)[since.min(sim.events(i).len())..]
        .iter()
        .filter_map(|e| match e {
            TopologyEvent::NodeDown { node, reason, .. } => Some((node.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// Forms `n` nodes with `monitors`, pauses one, and checks that every other
/// node drops it as unresponsive, and nobody else, within the heartbeat
/// timeout and a few trips; then resumes it and checks it is back in every
/// ring. Returns the simulator, converged again.
pub(super) fn freeze_and_resume(n: usize, cfg: &Config, frozen: usize) -> Sim {
    let mut sim = Sim::new(n, cfg, Network::default());
    sim.start_all();
    let step = Duration::from_millis(50);
    assert!(
        converge(&mut sim, step, LIMIT),
        "{n} nodes did not converge"
    );
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    let name = sim.name(frozen).clone();

    sim.pause(frozen);
    // Its watchers hear its last heartbeat at most an interval before the
    // pause; they drop it a timeout later and tell everyone at once.
    let bound = cfg.heartbeat_interval + cfg.heartbeat_timeout + Duration::from_millis(20);
    let dropped_everywhere = |sim: &Sim| {
        (0..n)
            .filter(|&i| i != frozen)
            .all(|i| !sim.node(i).ring().contains(&name))
    };
    assert!(
        sim.run_until(bound, dropped_everywhere),
        "after {bound:?} some node still had the frozen node in its ring"
    );
    for i in (0..n).filter(|&i| i != frozen) {
        assert_eq!(
            downs(&sim, i, marks[i]),
            [(name.clone(), DownReason::Unresponsive)],
            "node {i}"
        );
    }

    sim.resume(frozen);
    assert!(converge(&mut sim, step, LIMIT), "it did not come back");
    sim
}

#[test]
fn watching_is_bounded_and_every_member_is_watched() {
    let mut sim = Sim::new(30, &config(3), Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    // The last changes of who watches whom are on their way.
    sim.run_for(Duration::from_millis(10));
    let mut watched_by = std::collections::BTreeMap::<NodeName, usize>::new();
    for i in 0..30 {
        let watched = sim.node(i).watched();
        assert_eq!(watched.len(), 3, "node {i} watches {watched:?}");
        // What a node watches, the watched member knows: it heartbeats it.
        for w in &watched {
            let j = sim.by_name[w];
            assert!(sim.node(j).watchers().contains(sim.name(i)), "{i} -> {j}");
            *watched_by.entry(w.clone()).or_default() += 1;
        }
        assert_eq!(sim.node(i).watchers().len(), 3, "node {i}");
    }
    assert!(watched_by.values().all(|&w| w == 3));
}

#[test]
fn a_frozen_node_leaves_every_ring_though_only_two_nodes_watch_it() {
    let sim = freeze_and_resume(20, &config(2), 7);
    assert!((0..20).all(|i| sim.node(i).ring().len() == 20));
}

#[test]
fn a_cluster_no_larger_than_monitors_plus_one_is_a_full_mesh() {
    let mut sim = Sim::new(6, &config(5), Network::default());
    sim.start_all();
    assert!(sim.run_until(LIMIT, Sim::converged));
    for i in 0..6 {
        assert_eq!(sim.node(i).watched().len(), 5);
        assert_eq!(sim.node(i).watchers().len(), 5);
    }
}

#[test]
fn a_thousand_nodes_form_heartbeat_five_peers_each_and_drop_a_frozen_one() {
    // Members only: this is about membership, and a hash ring of 1,000
    // members at 256 virtual nodes takes ~100 ms to build, per change.
    let cfg = Config {
        ring: RingMode::External,
        ..config(5)
    };
    let n = 1_000;
    let mut sim = freeze_and_resume(n, &cfg, 321);

    // Idle, every node sends a heartbeat to its five watchers per interval.
    let before = sim.heartbeats_sent;
    let rounds = 10;
    sim.run_for(cfg.heartbeat_interval * rounds);
    let per_node = (sim.heartbeats_sent - before) as f64 / (n as f64 * f64::from(rounds));
    assert!(
        per_node <= 5.5,
        "{per_node:.2} heartbeats per node per interval"
    );
    assert!((0..n).all(|i| sim.node(i).ring().len() == n));
    println!(
        "1000 nodes: {per_node:.2} heartbeats per node per interval, {} messages in all, \
         {:?} of virtual time",
        sim.delivered,
        sim.now()
    );
}

/// Generous bound on virtual time: a scenario that needs more is a bug.
pub(super) const LIMIT: Duration = Duration::from_secs(60);
