//! Partial partitions in the simulator: a bridge node that sees both sides,
//! a one-way cut, a flapping link. With a quorum configured the cluster
//! ends on one ring with one sentry, the rest out of `Ready`, and heals.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::quorum::{majority, no_quorum, one_ready_side, settle, LIMIT};
use super::*;
use crate::events::DownReason;

const STEP: Duration = Duration::from_millis(10);

/// Every node but those of `out` is ready on one ring of exactly them, with
/// one sentry; the nodes of `out` have no quorum.
fn one_ring_without(sim: &Sim, n: usize, out: &[usize]) -> bool {
    let kept: Vec<usize> = (0..n).filter(|i| !out.contains(i)).collect();
    one_ready_side(sim, &kept) && no_quorum(sim, out)
}

fn formed(n: usize) -> Sim {
    formed_with(n, &majority())
}

fn formed_with(n: usize, config: &Config) -> Sim {
    let mut sim = Sim::new(n, config, Network::default());
    sim.start_all();
    settle(&mut sim, Duration::from_millis(100), LIMIT, Sim::converged);
    sim
}

/// Node `i` published `NodeDown` with reason `downed` for `node`.
fn downed_by(sim: &Sim, i: usize, node: usize) -> bool {
    let name = sim.name(node);
    sim.events(i).iter().any(|e| {
        matches!(e, TopologyEvent::NodeDown { node, reason: DownReason::Downed, .. } if node == name)
    })
}

#[test]
fn a_bridge_between_two_pairs_ends_on_one_ring_of_three_and_heals() {
    let mut sim = formed(5);
    // 0, 1 | 3, 4; node 2 reaches all four.
    for a in [0, 1] {
        for b in [3, 4] {
            sim.cut_between(a, b);
        }
    }
    let sides = |sim: &Sim| {
        [[3, 4], [0, 1]]
            .into_iter()
            .find(|out| one_ring_without(sim, 5, out))
    };
    settle(&mut sim, STEP, LIMIT, |sim| sides(sim).is_some());
    let out = sides(&sim).unwrap();
    // The bridge took them out of its ring for the partial partition.
    assert!(
        out.iter().all(|&i| downed_by(&sim, 2, i)),
        "{:?}",
        sim.events(2)
    );
    // And it holds while the fault lasts.
    sim.run_for(Duration::from_secs(10));
    assert!(one_ring_without(&sim, 5, &out));

    sim.heal();
    assert!(sim.run_until(LIMIT, Sim::converged), "not healed");
}

/// The links of a bridge cut one after another, as a firewall takes its
/// rules: a watcher drops a member on a peer's report before its own
/// timeout fires, and that must count as its own observation too, or the
/// records name only the first links cut and the nodes taken out may be
/// one of each side (with 4 | 3 | 0 1 cut in that order they were 4 and 3).
#[test]
fn a_bridge_cut_link_by_link_still_ends_on_one_ring_of_three() {
    for (a, b) in [([0, 1], [3, 4]), ([4, 0], [3, 1])] {
        for seed in 1..=4 {
            let config = Config {
                heartbeat_interval: Duration::from_millis(100),
                heartbeat_timeout: Duration::from_millis(600),
                stable_after: Duration::from_secs(1),
                ..majority()
            };
            let network = Network {
                seed,
                ..Network::default()
            };
            let mut sim = Sim::new(5, &config, network);
            sim.start_all();
            settle(&mut sim, Duration::from_millis(100), LIMIT, Sim::converged);
            for x in a {
                for y in b {
                    sim.cut_between(x, y);
                    sim.run_for(Duration::from_millis(150));
                }
            }
            let sides = |sim: &Sim| [a, b].iter().any(|out| one_ring_without(sim, 5, out));
            settle(&mut sim, STEP, LIMIT, sides);
            sim.heal();
            assert!(
                sim.run_until(LIMIT, Sim::converged),
                "seed {seed}: not healed"
            );
        }
    }
}

#[test]
fn a_one_way_cut_takes_one_end_out_of_every_ring_until_it_heals() {
    let mut sim = formed(5);
    // Node 0 stops hearing node 3; node 3 still hears node 0.
    sim.cut(3, 0);
    let end = |sim: &Sim| [0, 3].into_iter().find(|&x| one_ring_without(sim, 5, &[x]));
    settle(&mut sim, STEP, LIMIT, |sim| end(sim).is_some());
    let out = end(&sim).unwrap();
    sim.run_for(Duration::from_secs(10));
    assert!(one_ring_without(&sim, 5, &[out]));

    sim.heal();
    assert!(sim.run_until(LIMIT, Sim::converged), "not healed");
}

/// Cuts the link between `a` and `b` for 2 s (longer than the heartbeat
/// timeout) and joins it for 1 s, five times: each cut drops the pair, none
/// lasts `stable_after`. Then every node converges, and none downed a node.
fn flap_downs_nobody(sim: &mut Sim, n: usize, a: usize, b: usize) {
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    for _ in 0..5 {
        sim.cut_between(a, b);
        sim.run_for(Duration::from_secs(2));
        sim.heal();
        sim.run_for(Duration::from_secs(1));
    }
    settle(sim, Duration::from_millis(100), LIMIT, Sim::converged);
    for (i, mark) in marks.into_iter().enumerate() {
        let downed = sim.events(i)[mark..].iter().any(|e| {
            matches!(
                e,
                TopologyEvent::NodeDown {
                    reason: DownReason::Downed,
                    ..
                }
            )
        });
        assert!(
            !downed,
            "node {i} downed a node: {:?}",
            &sim.events(i)[mark..]
        );
    }
}

#[test]
fn a_link_flapping_faster_than_stable_after_downs_nobody_and_heals() {
    let mut sim = formed(5);
    flap_downs_nobody(&mut sim, 5, 0, 3);
}

/// The index of node `name` in `sim`.
fn index(sim: &Sim, n: usize, name: &NodeName) -> usize {
    (0..n).find(|&i| sim.name(i) == name).unwrap()
}

#[test]
fn two_hundred_nodes_take_one_end_of_a_one_way_cut_out_of_every_ring_and_ride_out_a_flapping_link()
{
    let n = 200;
    let mut sim = formed(n);
    // Node 0 stops hearing a node it watches.
    let subject = index(&sim, n, &sim.node(0).watched()[0]);
    sim.cut(subject, 0);
    let end = |sim: &Sim| {
        [0, subject]
            .into_iter()
            .find(|&x| one_ring_without(sim, n, &[x]))
    };
    settle(&mut sim, Duration::from_millis(100), LIMIT, |sim| {
        end(sim).is_some()
    });
    sim.heal();
    settle(&mut sim, Duration::from_millis(100), LIMIT, Sim::converged);
    // The same link, flapping faster than `stable_after`.
    flap_downs_nobody(&mut sim, n, 0, subject);
}

/// Of `n` formed nodes, `smaller` (the first ones) and the rest but the
/// last are cut from each other both ways; the last node reaches both
/// sides. Every node but the smaller side must end ready on one ring with
/// one sentry, the smaller side without quorum, and stay so; healed, all
/// converge on one ring again.
fn a_bridge_between_halves_larger_than_monitors(n: usize, smaller: usize) {
    // Rebuilding rings of 200 members as the smaller side comes back is
    // most of what healing costs the simulator; how finely the ring
    // spreads keys does not matter here.
    let config = Config {
        ring_vnodes: 32,
        ..majority()
    };
    let mut sim = formed_with(n, &config);
    let bridge = n - 1;
    let small: Vec<usize> = (0..smaller).collect();
    let large: Vec<usize> = (smaller..bridge).collect();
    assert!(small.len() < large.len() && small.len() > sim.node(0).watched().len());
    let cut_at = sim.now();
    for &a in &small {
        for &b in &large {
            sim.cut_between(a, b);
        }
    }
    let step = Duration::from_millis(100);
    settle(&mut sim, step, LIMIT, |sim| {
        one_ring_without(sim, n, &small)
    });
    let seed = sim.network.seed;
    eprintln!(
        "{n} nodes, {} | {} + bridge: one ring {:?} after the cut (seed {seed})",
        small.len(),
        large.len(),
        sim.now() - cut_at
    );
    // The bridge took the smaller side out of its ring for the partial
    // partition, and that holds while the fault lasts.
    assert!(
        small.iter().all(|&i| downed_by(&sim, bridge, i)),
        "seed {seed}"
    );
    sim.run_for(Duration::from_secs(5));
    assert!(
        one_ring_without(&sim, n, &small),
        "seed {seed}: did not hold"
    );

    sim.heal();
    let healed_at = sim.now();
    settle(&mut sim, step, LIMIT, Sim::converged);
    eprintln!("one ring of all {:?} after the heal", sim.now() - healed_at);
}

#[test]
fn two_hundred_nodes_with_a_bridge_between_halves_of_99_and_100_keep_the_larger() {
    a_bridge_between_halves_larger_than_monitors(200, 99);
}

#[test]
fn two_hundred_nodes_with_a_bridge_between_halves_of_79_and_120_keep_the_larger() {
    a_bridge_between_halves_larger_than_monitors(200, 79);
}

/// A cut between two members of 20 that neither watch nor are watched by
/// each other: no heartbeat runs between them, so only the probes (one
/// member not watched per round) find it. Once they have, one end is out
/// of every ring and the rest agree on one ring and one sentry; healed,
/// all 20 converge again.
#[test]
fn a_cut_between_two_members_that_do_not_watch_each_other_takes_one_end_out() {
    let n = 20;
    let mut sim = formed(n);
    let unwatched = |sim: &Sim, a: usize, b: usize| {
        let (na, nb) = (sim.name(a), sim.name(b));
        !sim.node(a).watched().contains(nb) && !sim.node(b).watched().contains(na)
    };
    let b = (1..n).find(|&b| unwatched(&sim, 0, b)).unwrap();
    let cut_at = sim.now();
    sim.cut_between(0, b);
    let end = |sim: &Sim| [0, b].into_iter().find(|&x| one_ring_without(sim, n, &[x]));
    settle(&mut sim, Duration::from_millis(100), LIMIT, |sim| {
        end(sim).is_some()
    });
    let out = end(&sim).unwrap();
    eprintln!(
        "{n} nodes: node {out} of the cut 0|{b} out of every ring {:?} after the cut",
        sim.now() - cut_at
    );
    sim.run_for(Duration::from_secs(10));
    assert!(one_ring_without(&sim, n, &[out]), "did not hold");
    sim.heal();
    settle(&mut sim, Duration::from_millis(100), LIMIT, Sim::converged);
}

/// A fault with three sides: groups of `sizes` nodes cut from each other
/// both ways, and one more node (a bridge) that reaches all three. The
/// records then form odd cycles, so the decision is not a two-sided split.
/// Whatever it takes out, the nodes it keeps must reach each other: every
/// node ends either out (`no_quorum`, no sentry) or on one ring with one
/// sentry, that ring spans no two groups, and it holds while the fault
/// lasts. Where the bridge and the largest group are no majority, no node
/// stays ready. Healed, all converge again.
fn three_sides(sizes: [usize; 3], seed: u64) {
    let n = sizes.iter().sum::<usize>() + 1;
    let config = Config {
        ring_vnodes: 32,
        ..majority()
    };
    let network = Network {
        seed,
        ..Network::default()
    };
    let mut sim = Sim::new(n, &config, network);
    sim.start_all();
    settle(&mut sim, Duration::from_millis(100), LIMIT, Sim::converged);
    let groups: [Vec<usize>; 3] = [
        (0..sizes[0]).collect(),
        (sizes[0]..sizes[0] + sizes[1]).collect(),
        (sizes[0] + sizes[1]..n - 1).collect(),
    ];
    for (g, first) in groups.iter().enumerate() {
        for second in &groups[g + 1..] {
            for &a in first {
                for &b in second {
                    sim.cut_between(a, b);
                }
            }
        }
    }
    // The kept nodes, once every node is either out or on their ring and
    // that ring spans no two groups.
    let kept = |sim: &Sim| -> Option<Vec<usize>> {
        let ready: Vec<usize> = (0..n)
            .filter(|&i| sim.node(i).state() == NodeState::Ready)
            .collect();
        let out: Vec<usize> = (0..n).filter(|i| !ready.contains(i)).collect();
        let sides = groups
            .iter()
            .filter(|g| g.iter().any(|i| ready.contains(i)))
            .count();
        let settled = if ready.is_empty() {
            no_quorum(sim, &out)
        } else {
            sides == 1 && one_ring_without(sim, n, &out)
        };
        settled.then_some(ready)
    };
    let cut_at = sim.now();
    settle(&mut sim, Duration::from_millis(100), LIMIT, |sim| {
        kept(sim).is_some()
    });
    let on = kept(&sim).unwrap();
    eprintln!(
        "{sizes:?} + bridge: {} ready {:?} after the cut (seed {seed})",
        on.len(),
        sim.now() - cut_at
    );
    let largest = sizes.iter().max().unwrap() + 1;
    if largest > n / 2 {
        assert!(on.len() > n / 2, "seed {seed}: {on:?} ready");
    } else {
        assert!(
            on.is_empty(),
            "seed {seed}: {on:?} ready without a majority"
        );
    }
    sim.run_for(Duration::from_secs(10));
    assert_eq!(kept(&sim), Some(on), "seed {seed}: did not hold");
    sim.heal();
    settle(&mut sim, Duration::from_millis(100), LIMIT, Sim::converged);
}

#[test]
fn a_fault_with_three_sides_keeps_one_ring_of_nodes_that_reach_each_other() {
    for seed in 1..=3 {
        three_sides([6, 3, 2], seed);
        three_sides([2, 6, 3], seed);
        three_sides([4, 4, 3], seed);
    }
}

/// The same at 200 nodes: 2.5 minutes in a release build, too long for CI;
/// run it by hand with
/// `cargo test -p cloister-core --release --lib -- --ignored three_sides`.
#[test]
#[ignore = "2.5 minutes in a release build; run by hand"]
fn two_hundred_nodes_under_a_fault_with_three_sides_keep_one_ring() {
    three_sides([110, 50, 39], 1);
}
