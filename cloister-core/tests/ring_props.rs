//! Properties of the consistent-hash ring that any membership must keep:
//! placement does not depend on how the membership was listed, a membership
//! change moves only the keys it must, and no member carries far more than its
//! share. Case counts are kept low so the file runs in seconds in debug.

use std::collections::HashMap;

use cloister_core::{NodeName, Ring};
use proptest::prelude::*;
use proptest::sample::Index;

/// `Config::default().ring_vnodes`.
const DEFAULT_VNODES: u32 = 256;

fn member() -> impl Strategy<Value = NodeName> {
    ("[a-z][a-z0-9_-]{0,7}", any::<u8>(), 1u8..=254).prop_map(|(node, a, b)| {
        format!("{node}@10.1.{a}.{b}")
            .parse()
            .expect("the strategy builds valid names")
    })
}

/// Distinct members, in ascending order.
fn members(count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<NodeName>> {
    prop::collection::btree_set(member(), count).prop_map(|set| set.into_iter().collect())
}

fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 100)
}

fn vnodes() -> impl Strategy<Value = u32> {
    1u32..=300
}

/// The busiest member's share of `key_count` keys over the mean share.
fn max_over_mean_load(ring: &Ring, key_count: usize) -> f64 {
    let mut load: HashMap<&NodeName, usize> = HashMap::new();
    for i in 0..key_count {
        if let Some(owner) = ring.node_for(format!("key-{i}")) {
            *load.entry(owner).or_default() += 1;
        }
    }
    let max = load.values().copied().max().unwrap_or(0);
    max as f64 / (key_count as f64 / ring.len() as f64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn placement_ignores_listing_order_and_repeats(
        (members, listed) in members(1..12).prop_flat_map(|members| {
            // Every member twice, in any order.
            let twice = [members.clone(), members.clone()].concat();
            (Just(members), Just(twice).prop_shuffle())
        }),
        vnodes in vnodes(),
        keys in keys(),
    ) {
        let sorted = Ring::new(members, vnodes);
        let shuffled = Ring::new(listed, vnodes);
        prop_assert_eq!(sorted.digest(), shuffled.digest());
        for key in &keys {
            prop_assert_eq!(sorted.nodes_for(key, 3), shuffled.nodes_for(key, 3));
        }
    }

    #[test]
    fn nodes_for_starts_with_the_owner_and_never_repeats(
        members in members(1..12),
        vnodes in vnodes(),
        keys in keys(),
        n in 0usize..15,
    ) {
        let ring = Ring::new(members, vnodes);
        for key in &keys {
            let nodes = ring.nodes_for(key, n);
            prop_assert_eq!(nodes.len(), n.min(ring.len()));
            if n > 0 {
                prop_assert_eq!(Some(nodes[0]), ring.node_for(key));
            }
            let mut distinct = nodes.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), nodes.len());
        }
    }

    #[test]
    fn a_ring_rebuilt_from_another_places_every_key_as_a_new_ring(
        pool in members(1..16),
        before in prop::collection::vec(any::<bool>(), 16),
        between in prop::collection::vec(any::<bool>(), 16),
        after in prop::collection::vec(any::<bool>(), 16),
        vnodes in vnodes(),
        looked_up in any::<(bool, bool)>(),
        keys in keys(),
    ) {
        // Three memberships drawn from one pool: some members stay, some
        // leave, some arrive, any of them may be empty. Each ring is laid
        // out at its first lookup, from the last laid-out ring before it:
        // the first, the one between, or none.
        let pick = |chosen: &[bool]| -> Vec<NodeName> {
            pool.iter().zip(chosen).filter(|(_, c)| **c).map(|(m, _)| m.clone()).collect()
        };
        let (before, between, after) = (pick(&before), pick(&between), pick(&after));
        let first = Ring::new(before.clone(), vnodes);
        if looked_up.0 {
            let _ = first.node_for("lay it out");
        }
        let second = first.with_members(between);
        if looked_up.1 {
            let _ = second.node_for("lay it out");
        }
        let rebuilt = second.with_members(after.clone());
        let fresh = Ring::new(after.clone(), vnodes);
        prop_assert_eq!(rebuilt.members(), fresh.members());
        prop_assert_eq!(rebuilt.digest(), fresh.digest());
        prop_assert_eq!(rebuilt.vnodes(), fresh.vnodes());
        for key in &keys {
            prop_assert_eq!(rebuilt.nodes_for(key, 4), fresh.nodes_for(key, 4));
        }
        prop_assert_eq!(rebuilt.shares(), fresh.shares());
        // A members-only ring stays one.
        let listed = Ring::members_only(before).with_members(after);
        prop_assert_eq!(listed.digest(), fresh.digest());
        prop_assert_eq!(listed.vnodes(), 0);
        prop_assert!(listed.node_for("key").is_none());
    }

    #[test]
    fn a_leaving_member_moves_only_the_keys_it_owned(
        members in members(2..12),
        leaver in any::<Index>(),
        vnodes in vnodes(),
        keys in keys(),
    ) {
        let gone = leaver.get(&members).clone();
        let before = Ring::new(members.clone(), vnodes);
        let after = Ring::new(members.into_iter().filter(|m| *m != gone), vnodes);
        for key in &keys {
            let owner = before.node_for(key).expect("the ring has members");
            if *owner != gone {
                prop_assert_eq!(after.node_for(key), Some(owner));
            }
            // Its keys, and its replica slots, pass to the next member clockwise.
            let successors: Vec<&NodeName> =
                before.nodes_for(key, 4).into_iter().filter(|m| **m != gone).take(3).collect();
            prop_assert_eq!(after.nodes_for(key, 3), successors);
        }
    }

    #[test]
    fn a_joining_member_takes_only_keys_for_itself(
        members in members(1..12),
        newcomer in member(),
        vnodes in vnodes(),
        keys in keys(),
    ) {
        prop_assume!(!members.contains(&newcomer));
        let before = Ring::new(members.clone(), vnodes);
        let after = Ring::new(members.into_iter().chain([newcomer.clone()]), vnodes);
        for key in &keys {
            let owner = after.node_for(key);
            prop_assert!(
                owner == Some(&newcomer) || owner == before.node_for(key),
                "key {:?} moved from {:?} to {:?}, not to the newcomer",
                key, before.node_for(key), owner,
            );
        }
    }
}

proptest! {
    // Each case places 100,000 keys; a few cases are enough to catch a broken
    // spread (1 virtual node per member gives 2x to 3x the mean).
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn ten_members_at_the_default_vnodes_stay_near_their_share(members in members(10..11)) {
        // Measured over 3,000 random 10-member sets, 100,000 keys each: median
        // 1.095, p99 1.196, p99.9 1.232, worst 1.251. A member's share varies
        // by about 1/sqrt(256) = 6.3%, so 1.35 is some 5.5 standard deviations
        // out: crossing it means a bug, not an unlucky membership. (The 1.10
        // goal holds for about half of all memberships; BENCHMARKS.md.)
        let ring = Ring::new(members, DEFAULT_VNODES);
        let load = max_over_mean_load(&ring, 100_000);
        prop_assert!(load <= 1.35, "max/mean load {load:.3}");
    }

    #[test]
    fn three_to_twenty_members_stay_near_their_share(members in members(3..21)) {
        // Measured as above for 3 to 20 members: median 1.098, p99.9 1.252,
        // worst 1.297; more members make the busiest one more extreme.
        let ring = Ring::new(members, DEFAULT_VNODES);
        let load = max_over_mean_load(&ring, 100_000);
        prop_assert!(load <= 1.45, "max/mean load {load:.3}");
    }
}
