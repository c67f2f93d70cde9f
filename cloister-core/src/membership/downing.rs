//! The decision under a partial partition: which nodes the contested
//! reachability records take out of every ring (see `reachability`). A pure
//! function of the records, so nodes that know the same records take out
//! the same nodes.

use std::collections::BTreeSet;

use crate::names::{Incarnation, NodeName};

/// A node, as one of its incarnations.
pub type Who = (NodeName, Incarnation);

/// The nodes to take out of every ring, given the contested records
/// `(observer, subject)`: "the observer cannot hear the subject, while
/// another node hears it".
///
/// Records that share a node make one fault, decided alone. A fault whose
/// records all run between two sets of nodes (a bridge between two halves,
/// a one-way cut, a node that hears nobody) is a partition between those
/// sets: the smaller set goes whole, ties broken towards the set holding
/// the youngest incarnation, then the greatest name. Taking out whoever is
/// named most instead mixes the halves of a bridge as soon as each member
/// watches only a few nodes of the other half: the records are then a
/// sparse graph between the halves, and its most-named nodes lie on both
/// sides. Any other fault (an odd cycle of cuts) loses, one at a time, the
/// node named by most of its records, with the same tie break, until none
/// remains among the nodes kept. Nodes that know the same records compute
/// the same set.
pub fn downed(records: &BTreeSet<(Who, Who)>) -> BTreeSet<Who> {
    let faults = Faults::new(records);
    let mut out = BTreeSet::new();
    let mut side: Vec<Option<bool>> = vec![None; faults.nodes.len()];
    for start in 0..faults.nodes.len() {
        if side[start].is_some() {
            continue;
        }
        // The fault `start` is part of, as two sides if it has two.
        side[start] = Some(false);
        let mut fault = vec![start];
        let mut two_sided = true;
        let mut next = vec![start];
        while let Some(node) = next.pop() {
            let here = side[node] == Some(true);
            for &other in &faults.links[node] {
                match side[other] {
                    Some(there) => two_sided &= there != here,
                    None => {
                        side[other] = Some(!here);
                        fault.push(other);
                        next.push(other);
                    }
                }
            }
        }
        let gone = if two_sided {
            let [a, b]: [Vec<usize>; 2] = [false, true].map(|s| {
                fault
                    .iter()
                    .copied()
                    .filter(|&node| side[node] == Some(s))
                    .collect()
            });
            let youngest = |set: &[usize]| set.iter().map(|&node| faults.rank(node)).max();
            let a_goes = (a.len(), youngest(&b))
                .cmp(&(b.len(), youngest(&a)))
                .is_le();
            if a_goes {
                a
            } else {
                b
            }
        } else {
            faults.most_named(&fault)
        };
        out.extend(gone.into_iter().map(|node| faults.nodes[node].clone()));
    }
    out
}

/// The records with their nodes numbered in order, so that deciding costs
/// no comparison of names.
struct Faults<'a> {
    /// Every node named, in order.
    nodes: Vec<&'a Who>,
    /// The records, as numbers into `nodes`.
    records: Vec<(usize, usize)>,
    /// Each node's neighbours: the nodes a record ties it to, either way.
    links: Vec<Vec<usize>>,
    /// Each node's records, as numbers into `records`.
    named_by: Vec<Vec<usize>>,
}

impl<'a> Faults<'a> {
    fn new(records: &'a BTreeSet<(Who, Who)>) -> Self {
        let named: BTreeSet<&Who> = records.iter().flat_map(|(o, s)| [o, s]).collect();
        let nodes: Vec<&Who> = named.into_iter().collect();
        let number = |who: &Who| nodes.binary_search(&who).unwrap_or_default();
        let records: Vec<(usize, usize)> = records
            .iter()
            .map(|(observer, subject)| (number(observer), number(subject)))
            .collect();
        let mut links = vec![Vec::new(); nodes.len()];
        let mut named_by = vec![Vec::new(); nodes.len()];
        for (i, &(observer, subject)) in records.iter().enumerate() {
            links[observer].push(subject);
            links[subject].push(observer);
            named_by[observer].push(i);
            named_by[subject].push(i);
        }
        Faults {
            nodes,
            records,
            links,
            named_by,
        }
    }

    /// How a tie between nodes named equally often breaks: the greater
    /// goes (the youngest incarnation, then the greatest name).
    fn rank(&self, node: usize) -> (Incarnation, &NodeName) {
        let (name, incarnation) = self.nodes[node];
        (*incarnation, name)
    }

    /// Takes out of `fault`, one at a time, the node most of its records
    /// name, until no record remains between nodes kept: ties towards the
    /// youngest incarnation, then the greatest name.
    fn most_named(&self, fault: &[usize]) -> Vec<usize> {
        let mut count = vec![0usize; self.nodes.len()];
        let mut live = vec![false; self.records.len()];
        for &node in fault {
            for &record in &self.named_by[node] {
                if !live[record] {
                    live[record] = true;
                    let (observer, subject) = self.records[record];
                    count[observer] += 1;
                    count[subject] += 1;
                }
            }
        }
        let mut out = Vec::new();
        loop {
            let most = fault
                .iter()
                .copied()
                .filter(|&node| count[node] > 0)
                .max_by(|&a, &b| (count[a], self.rank(a)).cmp(&(count[b], self.rank(b))));
            let Some(node) = most else {
                return out;
            };
            for &record in &self.named_by[node] {
                if std::mem::take(&mut live[record]) {
                    let (observer, subject) = self.records[record];
                    count[observer] -= 1;
                    count[subject] -= 1;
                }
            }
            out.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn who(name: &str, incarnation: u64) -> Who {
        (
            format!("{name}@10.0.0.1")
                .parse::<NodeName>()
                .unwrap_or_else(|e| panic!("{e}")),
            Incarnation(incarnation),
        )
    }

    /// The rule as first written, over the records themselves: the
    /// numbered version must decide the same.
    fn reference(records: &BTreeSet<(Who, Who)>) -> BTreeSet<Who> {
        let mut links: BTreeMap<&Who, BTreeSet<&Who>> = BTreeMap::new();
        for (observer, subject) in records {
            links.entry(observer).or_default().insert(subject);
            links.entry(subject).or_default().insert(observer);
        }
        let mut out = BTreeSet::new();
        let mut seen: BTreeSet<&Who> = BTreeSet::new();
        for &start in links.keys() {
            if !seen.insert(start) {
                continue;
            }
            // The fault `start` is part of, as two sides if it has two.
            let mut side: BTreeMap<&Who, bool> = BTreeMap::from([(start, false)]);
            let mut two_sided = true;
            let mut next = vec![start];
            while let Some(who) = next.pop() {
                let here = side[who];
                for &other in &links[who] {
                    match side.get(other) {
                        Some(&there) => two_sided &= there != here,
                        None => {
                            side.insert(other, !here);
                            seen.insert(other);
                            next.push(other);
                        }
                    }
                }
            }
            if two_sided {
                let [a, b]: [BTreeSet<&Who>; 2] = [false, true].map(|s| {
                    side.iter()
                        .filter(|(_, &x)| x == s)
                        .map(|(w, _)| *w)
                        .collect()
                });
                let youngest = |set: &BTreeSet<&Who>| set.iter().map(|w| (w.1, w.0.clone())).max();
                let a_goes = (a.len(), youngest(&b))
                    .cmp(&(b.len(), youngest(&a)))
                    .is_le();
                out.extend(if a_goes { a } else { b }.into_iter().cloned());
            } else {
                let fault = records
                    .iter()
                    .filter(|(observer, _)| side.contains_key(observer));
                out.extend(reference_most_named(fault));
            }
        }
        out
    }

    /// Takes out, one at a time, the node most of `records` name, until none
    /// remains among the nodes kept: ties towards the youngest incarnation,
    /// then the greatest name.
    fn reference_most_named<'a>(
        records: impl Iterator<Item = &'a (Who, Who)> + Clone,
    ) -> BTreeSet<Who> {
        let mut out: BTreeSet<Who> = BTreeSet::new();
        loop {
            let mut named: BTreeMap<&Who, usize> = BTreeMap::new();
            let kept = records
                .clone()
                .filter(|(observer, subject)| !out.contains(observer) && !out.contains(subject));
            for (observer, subject) in kept {
                *named.entry(observer).or_default() += 1;
                *named.entry(subject).or_default() += 1;
            }
            let most = named
                .into_iter()
                .max_by(|(a, m), (b, n)| m.cmp(n).then(a.1.cmp(&b.1)).then(a.0.cmp(&b.0)));
            let Some((who, _)) = most else {
                return out;
            };
            out.insert(who.clone());
        }
    }

    fn records(pairs: &[(&Who, &Who)]) -> BTreeSet<(Who, Who)> {
        pairs
            .iter()
            .map(|(o, s)| ((*o).clone(), (*s).clone()))
            .collect()
    }

    #[test]
    fn a_bridge_loses_one_half_a_one_way_cut_one_end_a_deaf_node_itself() {
        let [a, b, c, d] = [who("a", 1), who("b", 2), who("d", 4), who("e", 5)];
        // a, b | d, e, with the bridge between them named by no record.
        let bridge = records(&[
            (&a, &c),
            (&a, &d),
            (&b, &c),
            (&b, &d),
            (&c, &a),
            (&c, &b),
            (&d, &a),
            (&d, &b),
        ]);
        assert_eq!(downed(&bridge), [c.clone(), d.clone()].into());
        // a cannot hear e, one way or both: the younger end goes.
        assert_eq!(downed(&records(&[(&a, &d)])), [d.clone()].into());
        assert_eq!(downed(&records(&[(&a, &d), (&d, &a)])), [d.clone()].into());
        // e hears nobody (the others hear each other): e goes, alone.
        let deaf = records(&[(&d, &a), (&d, &b), (&d, &c)]);
        assert_eq!(downed(&deaf), [d].into());
        assert!(downed(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_bridge_between_halves_larger_than_monitors_loses_the_smaller_half_whole() {
        // 25 | 24: each node watches 5 others, about half of them across,
        // so the records are a sparse graph between the halves. Taking out
        // the most named first removed nodes of both halves.
        let nodes: Vec<Who> = (0..49).map(|i| who(&format!("n{i}"), 1)).collect();
        let mut rng = fastrand::Rng::with_seed(12);
        let mut pairs = BTreeSet::new();
        for (i, observer) in nodes.iter().enumerate() {
            for _ in 0..5 {
                let j = rng.usize(..49);
                if (i < 25) != (j < 25) {
                    pairs.insert((observer.clone(), nodes[j].clone()));
                }
            }
        }
        let out = downed(&pairs);
        let named: BTreeSet<&Who> = pairs.iter().flat_map(|(o, s)| [o, s]).collect();
        let small: BTreeSet<Who> = nodes[25..]
            .iter()
            .filter(|w| named.contains(w))
            .cloned()
            .collect();
        assert_eq!(out, small);
        assert_ne!(
            reference_most_named(pairs.iter()),
            small,
            "the old rule did not mix"
        );
        // Three nodes cut from each other: two go, the youngest first.
        let [a, b, c] = [who("a", 1), who("b", 2), who("c", 3)];
        let triangle = records(&[(&a, &b), (&b, &c), (&c, &a)]);
        assert_eq!(downed(&triangle), [b, c].into());
    }

    #[test]
    fn numbering_the_nodes_decides_as_the_rule_over_records_did() {
        // Few names and incarnations, so that faults share nodes, form odd
        // cycles, and name two incarnations of one node.
        let mut rng = fastrand::Rng::with_seed(11);
        for round in 0..3000 {
            let nodes = rng.usize(2..12);
            let records: BTreeSet<(Who, Who)> = (0..rng.usize(0..3 * nodes))
                .map(|_| {
                    let mut one = || who(&format!("n{}", rng.usize(..nodes)), rng.u64(1..3));
                    (one(), one())
                })
                .collect();
            assert_eq!(
                downed(&records),
                reference(&records),
                "round {round}: {records:?}"
            );
        }
    }

    #[test]
    fn the_decision_does_not_depend_on_the_order_records_were_learned() {
        let nodes: Vec<Who> = (0..6).map(|i| who(&format!("n{i}"), 10 - i)).collect();
        let mut rng = fastrand::Rng::with_seed(3);
        let pairs: Vec<(Who, Who)> = (0..12)
            .map(|_| (nodes[rng.usize(..6)].clone(), nodes[rng.usize(..6)].clone()))
            .filter(|(o, s)| o != s)
            .collect();
        let forward: BTreeSet<(Who, Who)> = pairs.iter().cloned().collect();
        let backward: BTreeSet<(Who, Who)> = pairs.iter().rev().cloned().collect();
        let out = downed(&forward);
        assert_eq!(out, downed(&backward));
        let kept = |w: &Who| !out.contains(w);
        assert!(forward.iter().all(|(o, s)| !(kept(o) && kept(s))));
    }
}
