//! Who watches whom: a bounded number of peers per member, so a node's
//! heartbeat cost does not grow with the cluster.
//!
//! Members are ordered by a hash of their name, not by the name itself, so
//! that nodes named `shop@10.0.0.1` to `shop@10.0.0.9` do not all watch their
//! neighbours on one host. Each member watches the `k` members after it in
//! that order, wrapping around, and so is watched by the `k` before it. With
//! `k + 1` members or fewer, every member watches every other: a full mesh.
//!
//! A watcher *subscribes* to the members it watches (its heartbeats to them
//! say [`Heartbeat::watching`](super::Heartbeat::watching)), and a member
//! sends its periodic heartbeats to its subscribers. So two nodes whose views
//! of the membership differ for a moment never wait for heartbeats nobody
//! sends, and the order below is not a wire promise: a node of another
//! version with another assignment still gets what it subscribes to.

use std::collections::BTreeSet;
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::names::NodeName;

/// The members `me` watches among `members` (which may or may not list
/// `me`), at most `k` of them: the `k` that follow `me` in hash order. Every
/// node that agrees on the members agrees on the assignment.
///
/// ```
/// use cloister_core::membership::monitors;
/// use cloister_core::NodeName;
/// let members: Vec<NodeName> = (1..=20)
///     .map(|i| format!("app@10.0.0.{i}").parse().unwrap())
///     .collect();
/// let watched = monitors(&members, &members[0], 5);
/// assert_eq!(watched.len(), 5);
/// assert!(!watched.contains(&&members[0]));
/// // Each member is watched by exactly 5 others.
/// for m in &members {
///     let watchers = members.iter().filter(|w| monitors(&members, w, 5).contains(&m));
///     assert_eq!(watchers.count(), 5);
/// }
/// ```
pub fn monitors<'a>(members: &'a [NodeName], me: &NodeName, k: usize) -> Vec<&'a NodeName> {
    let mut order = watch_order(members, me);
    order.truncate(k);
    order
}

/// Under `sessions = "bounded"`, the peers among `known` (which may or may
/// not list `me`) that `me` keeps sessions with: the `k` on each side of it
/// in hash order (those it watches and those that watch it), and the ones
/// a half, a quarter, an eighth... of the way round on each side, while
/// that is farther than `k`. So any member reaches any other within about
/// `log2(n / k)` hops, with about `2 * k + 2 * log2(n / k)` sessions. The
/// relation is symmetric: when two nodes know the same peers, each picks
/// the other or neither does.
///
/// ```
/// use cloister_core::membership::neighbours;
/// use cloister_core::NodeName;
/// let known: Vec<NodeName> = (1..=100)
///     .map(|i| format!("app@10.0.0.{i}").parse().unwrap())
///     .collect();
/// let mine = neighbours(&known, &known[0], 5);
/// assert!(mine.len() <= 2 * 5 + 2 * 4);
/// for peer in &mine {
///     assert!(neighbours(&known, peer, 5).contains(&known[0]));
/// }
/// ```
pub fn neighbours<'a>(known: &'a [NodeName], me: &NodeName, k: usize) -> BTreeSet<&'a NodeName> {
    let order = watch_order(known, me);
    let m = order.len();
    let mut picked = BTreeSet::new();
    // Ahead by `d` (1 is the next) and behind by `d`, around the circle of
    // `m + 1` nodes that includes `me`.
    let mut pick = |d: usize| {
        if (1..=m).contains(&d) {
            picked.insert(order[d - 1]);
            picked.insert(order[m - d]);
        }
    };
    (1..=k).for_each(&mut pick);
    let mut d = m.div_ceil(2); // half of the m + 1 around the circle
    while d > k {
        pick(d);
        d /= 2;
    }
    picked
}

/// Every member of `members` but `me`, in the order `me` watches them:
/// hash order, starting after `me` and wrapping around. The first `k` are
/// [`monitors`]; probes (see `probes`) go through the rest in turn.
pub(super) fn watch_order<'a>(members: &'a [NodeName], me: &NodeName) -> Vec<&'a NodeName> {
    let mut order: Vec<(u64, &NodeName)> = members
        .iter()
        .filter(|m| *m != me)
        .map(|m| (position(m), m))
        .collect();
    order.sort_unstable();
    // The first member after `me` in hash order (ties broken by name).
    let mine = (position(me), me);
    let start = order.partition_point(|entry| *entry < mine);
    order.rotate_left(start);
    order.into_iter().map(|(_, m)| m).collect()
}

/// A member's place in the watch order: SipHash-1-3 of its name under a
/// fixed key.
fn position(name: &NodeName) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x6d6f_6e69_746f_7273, 0); // "monitors"
    hasher.write(name.as_str().as_bytes());
    hasher.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<NodeName> {
        (0..n)
            .map(|i| {
                format!("app@10.0.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn small_clusters_are_a_full_mesh() {
        let members = names(4);
        for me in &members {
            assert_eq!(monitors(&members, me, 3).len(), 3);
            assert_eq!(monitors(&members, me, 9).len(), 3);
        }
    }

    #[test]
    fn every_member_is_watched_by_k_and_watches_k() {
        let members = names(100);
        let mut watched_by = std::collections::BTreeMap::<&NodeName, usize>::new();
        for me in &members {
            let watched = monitors(&members, me, 5);
            assert_eq!(watched.len(), 5);
            assert!(!watched.contains(&me));
            for w in watched {
                *watched_by.entry(w).or_default() += 1;
            }
        }
        assert_eq!(watched_by.len(), 100);
        assert!(watched_by.values().all(|&n| n == 5));
    }

    #[test]
    fn the_assignment_ignores_the_order_members_are_listed_in() {
        let members = names(30);
        let mut reversed = members.clone();
        reversed.reverse();
        for me in &members {
            assert_eq!(monitors(&members, me, 4), monitors(&reversed, me, 4));
        }
    }

    #[test]
    fn neighbours_by_address_do_not_all_watch_each_other() {
        // Consecutive addresses are scattered by the hash: node 0 does not
        // simply watch nodes 1 to 5.
        let members = names(50);
        let watched = monitors(&members, &members[0], 5);
        let next_five: Vec<&NodeName> = members[1..6].iter().collect();
        assert_ne!(watched, next_five);
    }

    #[test]
    fn neighbours_are_symmetric_bounded_and_connect_everyone_in_few_hops() {
        for (n, k) in [(3, 5), (7, 5), (100, 5), (1000, 5), (200, 3)] {
            let known = names(n);
            let sets: Vec<BTreeSet<&NodeName>> =
                known.iter().map(|me| neighbours(&known, me, k)).collect();
            let index: std::collections::BTreeMap<&NodeName, usize> =
                known.iter().enumerate().map(|(i, n)| (n, i)).collect();
            let bound = 2 * k + 2 * (usize::BITS - (n / k).leading_zeros()) as usize;
            for (i, set) in sets.iter().enumerate() {
                assert!(!set.contains(&known[i]), "{n}: not itself");
                assert!(
                    set.len() <= bound.min(n - 1),
                    "{n}: {} > {bound}",
                    set.len()
                );
                for peer in set {
                    assert!(sets[index[peer]].contains(&known[i]), "{n}: symmetric");
                }
            }
            // Breadth-first from node 0: everyone, within about log2(n/k) + 2 hops.
            let mut hops = vec![usize::MAX; n];
            hops[0] = 0;
            let mut frontier = vec![0];
            while let Some(i) = frontier.pop() {
                for peer in &sets[i] {
                    let j = index[peer];
                    if hops[j] > hops[i] + 1 {
                        hops[j] = hops[i] + 1;
                        frontier.push(j);
                    }
                }
            }
            let far = hops.iter().max().copied().unwrap_or(0);
            let log = (usize::BITS - (n / k).leading_zeros()) as usize;
            assert!(far <= log + 2, "{n} nodes: {far} hops, log2(n/k) = {log}");
        }
    }
}
