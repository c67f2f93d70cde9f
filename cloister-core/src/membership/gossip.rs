//! Under `sessions = "bounded"`: what every node knows of every member,
//! passed on from neighbour to neighbour.
//!
//! A node holds sessions with a few peers only (see `monitors::neighbours`),
//! so it learns most members from others. Each node keeps one [`Fact`] per
//! node name: up or down, for an incarnation and a *life*. Facts merge the
//! same way everywhere, whatever order they arrive in: the greater
//! `(incarnation, life)` wins, and at equal ones down wins. So every node
//! that has heard the same facts holds the same table, and two neighbours
//! can tell by a digest.
//!
//! Who says what:
//! - *up* comes from the node itself: its heartbeats carry its
//!   incarnation and life, and a neighbour that admits it over their
//!   session passes it on.
//! - *down* comes from a neighbour that saw it: the session closed
//!   (crashed), no heartbeat for `heartbeat_timeout` (unresponsive), or a
//!   goodbye (left).
//! - A node that learns it is said down while it is alive takes the next
//!   life and says up again (SWIM's refutation): a freeze, a slow machine
//!   or a broken session cost it one drop, never its place for good.
//!
//! What is new to a node goes to every neighbour it holds a session with,
//! batched over a few milliseconds. Every heartbeat carries the table's
//! digest; a neighbour whose digest differs for a heartbeat interval gets
//! the whole table, so a lost message never leaves a ring different for
//! good. A down fact is forgotten after [`TOMBSTONE_INTERVALS`] heartbeat
//! intervals, so names that come and go (pods with new addresses) do not
//! pile up.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

use crate::events::DownReason;
use crate::names::{Incarnation, NodeName};

/// What one node says of one member (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fact {
    /// The member.
    pub node: NodeName,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Counts up each time the member, alive, learned that it was said
    /// down: its say over an older life.
    #[serde(default)]
    pub life: u32,
    /// Why it is down; `None` while it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<DownReason>,
}

impl Fact {
    /// That `node`, this incarnation and life of it, is up.
    pub(super) fn up(node: &NodeName, incarnation: Incarnation, life: u32) -> Fact {
        Fact {
            node: node.clone(),
            incarnation,
            life,
            down: None,
        }
    }

    /// The order facts about one node merge in: greater wins.
    fn rank(&self) -> (Incarnation, u32, bool) {
        (self.incarnation, self.life, self.down.is_some())
    }
}

/// How many heartbeat intervals a down fact is kept (100: 30 s by
/// default), long enough for every node to hear it before it is forgotten.
pub const TOMBSTONE_INTERVALS: u32 = 100;

/// One node's table of facts, with an order-free digest kept as it changes.
#[derive(Debug, Default)]
pub(super) struct Facts {
    /// Each fact and when this node learned it.
    by_node: BTreeMap<NodeName, (Fact, Duration)>,
    digest: u64,
    /// Every fact, as last sent whole; `None` once the table changed.
    all: Option<Arc<[Fact]>>,
}

impl Facts {
    /// Merges `fact` learned at `now`: true when it is news (it replaced
    /// an older fact or was the first about its node).
    pub(super) fn merge(&mut self, now: Duration, fact: &Fact) -> bool {
        if !self.is_news(fact) {
            return false;
        }
        if let Some((old, _)) = self.by_node.get(&fact.node) {
            self.digest ^= hash(old);
        }
        self.digest ^= hash(fact);
        self.by_node.insert(fact.node.clone(), (fact.clone(), now));
        self.all = None;
        true
    }

    /// The fact about `node` that outranks its being up at `incarnation`
    /// and `life` (said down then, or a later incarnation or life), if any.
    pub(super) fn outranks_up(
        &self,
        node: &NodeName,
        incarnation: Incarnation,
        life: u32,
    ) -> Option<&Fact> {
        let known = self.get(node)?;
        (known.rank() > (incarnation, life, false)).then_some(known)
    }

    /// Whether merging `fact` would change the table.
    pub(super) fn is_news(&self, fact: &Fact) -> bool {
        (self.by_node.get(&fact.node)).is_none_or(|(old, _)| fact.rank() > old.rank())
    }

    /// The fact about `node`, if any.
    pub(super) fn get(&self, node: &NodeName) -> Option<&Fact> {
        self.by_node.get(node).map(|(fact, _)| fact)
    }

    /// Every fact, for a neighbour whose table differs.
    pub(super) fn all(&mut self) -> Arc<[Fact]> {
        let by_node = &self.by_node;
        let all =
            (self.all).get_or_insert_with(|| by_node.values().map(|(f, _)| f.clone()).collect());
        Arc::clone(all)
    }

    /// The table's digest: equal tables have equal digests. Never 0, which
    /// on the wire means "not under bounded sessions".
    pub(super) fn digest(&self) -> u64 {
        self.digest.max(1)
    }

    /// Forgets down facts learned `ttl` or more before `now`.
    pub(super) fn forget_old_downs(&mut self, now: Duration, ttl: Duration) {
        let old: Vec<NodeName> = (self.by_node.iter())
            .filter(|(_, (fact, at))| fact.down.is_some() && *at + ttl <= now)
            .map(|(node, _)| node.clone())
            .collect();
        for node in old {
            if let Some((fact, _)) = self.by_node.remove(&node) {
                self.digest ^= hash(&fact);
                self.all = None;
            }
        }
    }
}

fn hash(fact: &Fact) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x0066_6163_7473, 0); // "facts"
    fact.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fact(node: &str, incarnation: u64, life: u32, down: Option<DownReason>) -> Fact {
        Fact {
            node: node.parse().unwrap(),
            incarnation: Incarnation(incarnation),
            life,
            down,
        }
    }

    #[test]
    fn any_order_of_the_same_facts_gives_the_same_table_and_digest() {
        let facts = [
            fact("a@10.0.0.1", 1, 0, None),
            fact("a@10.0.0.1", 1, 0, Some(DownReason::Unresponsive)),
            fact("a@10.0.0.1", 1, 1, None),
            fact("b@10.0.0.2", 5, 0, None),
            fact("b@10.0.0.2", 4, 3, Some(DownReason::Crashed)),
            fact("b@10.0.0.2", 6, 0, Some(DownReason::Left)),
        ];
        let mut forward = Facts::default();
        facts
            .iter()
            .for_each(|f| _ = forward.merge(Duration::ZERO, f));
        let mut backward = Facts::default();
        facts
            .iter()
            .rev()
            .for_each(|f| _ = backward.merge(Duration::ZERO, f));
        assert_eq!(forward.digest(), backward.digest());
        assert_eq!(forward.all(), backward.all());
        // A later life beats a down; at one life, down beats up.
        let a = forward.get(&"a@10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!((a.life, a.down), (1, None));
        let b = forward.get(&"b@10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            (b.incarnation, b.down),
            (Incarnation(6), Some(DownReason::Left))
        );
    }

    #[test]
    fn a_fact_no_newer_than_the_table_is_not_news() {
        let mut facts = Facts::default();
        assert!(facts.merge(Duration::ZERO, &fact("a@10.0.0.1", 2, 0, None)));
        assert!(!facts.merge(Duration::ZERO, &fact("a@10.0.0.1", 2, 0, None)));
        assert!(!facts.merge(Duration::ZERO, &fact("a@10.0.0.1", 1, 9, None)));
        let down = fact("a@10.0.0.1", 2, 0, Some(DownReason::Crashed));
        assert!(facts.merge(Duration::ZERO, &down));
        assert!(!facts.merge(Duration::ZERO, &fact("a@10.0.0.1", 2, 0, None)));
    }

    #[test]
    fn down_facts_are_forgotten_after_their_time_and_the_digest_follows() {
        let mut facts = Facts::default();
        facts.merge(Duration::ZERO, &fact("a@10.0.0.1", 1, 0, None));
        let empty_but_a = facts.digest();
        let down = fact("b@10.0.0.2", 1, 0, Some(DownReason::Crashed));
        facts.merge(Duration::from_secs(1), &down);
        assert_ne!(facts.digest(), empty_but_a);
        facts.forget_old_downs(Duration::from_secs(30), Duration::from_secs(30));
        assert!(facts.get(&down.node).is_some(), "kept until its time");
        facts.forget_old_downs(Duration::from_secs(31), Duration::from_secs(30));
        assert!(facts.get(&down.node).is_none());
        assert_eq!(facts.digest(), empty_but_a);
    }
}
