//! The quorum rule: how many members a node must see to be `Ready` and to
//! name a sentry, so that two sides of a partition never both serve.
//!
//! A node counts the members of its own ring, itself included, against
//! the number `quorum` asks for: a fixed count, or a majority of the
//! cluster's size. That size is the static list (this node added when it
//! is not listed) or `expected_size`; in service mode, where no list says
//! it, the most members this node has seen at once, less those that said
//! goodbye since (a node scaled away gracefully no longer counts; one that
//! crashed or froze still does, since the other side of a partition looks
//! exactly like that).
//!
//! Each node decides from its own ring, with no extra message: under a
//! clean partition every node of a side has the same ring, so the sides
//! decide alike. A side of exactly half has no majority; `tie_breaker =
//! "oldest"` gives it quorum if it holds the last sentry named under quorum,
//! which both halves knew before the split.

use super::*;
use crate::config::{fixed_size, Quorum, TieBreaker};

impl Membership {
    /// How many members, this node included, hold quorum now; `None` when
    /// `quorum = "off"`.
    pub fn quorum_needed(&self) -> Option<usize> {
        match self.config.quorum {
            Quorum::Off => None,
            Quorum::AtLeast(count) => Some(count),
            Quorum::Majority => Some(self.cluster_size() / 2 + 1),
        }
    }

    /// The cluster's size a majority is of.
    fn cluster_size(&self) -> usize {
        let sentry = &self.config.sentry;
        let listed = sentry
            .nodes()
            .is_some_and(|nodes| nodes.iter().any(|node| node.name == self.me));
        fixed_size(sentry, self.config.expected_size, listed).unwrap_or(self.largest)
    }

    /// Whether the current ring holds quorum (always, with `quorum = "off"`).
    pub(super) fn has_quorum(&self) -> bool {
        let members = self.ring.len();
        let Some(needed) = self.quorum_needed() else {
            return true;
        };
        if self.is_downed() {
            return false; // out of the ring that holds it: see `reachability`
        }
        if members >= needed {
            return true;
        }
        // An even split: the half with the last quorum's sentry keeps it.
        self.config.tie_breaker == TieBreaker::Oldest
            && members * 2 == self.cluster_size()
            && self
                .quorum_sentry
                .as_ref()
                .is_some_and(|sentry| self.ring.members().contains(sentry))
    }

    /// Counts a ring just built towards the cluster's size (service mode).
    pub(super) fn note_ring_size(&mut self) {
        self.largest = self.largest.max(self.ring.len());
    }

    /// A member said goodbye: it no longer counts towards the cluster's size.
    pub(super) fn note_left(&mut self) {
        self.largest = self.largest.saturating_sub(1).max(1);
    }

    /// The sentry the current ring names: the member up longest, if the
    /// ring holds quorum.
    pub(super) fn elected_sentry(&self) -> Option<NodeName> {
        if !self.has_quorum() {
            return None;
        }
        // A leaving node is out of its own ring: it names the peers' sentry.
        let mine = (!self.is_leaving()).then_some((self.incarnation, &self.me));
        let members = self
            .peers
            .iter()
            .filter_map(|(name, p)| p.member.as_ref().map(|m| (m.incarnation, name)));
        let (_, oldest) = mine.into_iter().chain(members).min()?;
        Some(oldest.clone())
    }

    /// Moves the sentry to the member up longest (or to none, without
    /// quorum), telling subscribers.
    pub(super) fn elect_sentry(&mut self) {
        let elected = self.elected_sentry();
        if elected.is_some() {
            self.quorum_sentry.clone_from(&elected);
        }
        if elected != self.sentry {
            self.sentry.clone_from(&elected);
            self.publish(TopologyEvent::SentryChanged { sentry: elected });
        }
    }

    /// Applies the consensus and quorum rules to the current ring.
    pub(super) fn evaluate(&mut self) {
        let enough = self.ring.len() >= self.config.consensus;
        let quorum = self.has_quorum();
        let next = match (self.state, enough && quorum) {
            (NodeState::Assembling | NodeState::Rehashing | NodeState::NoQuorum, true) => {
                NodeState::Ready
            }
            (NodeState::Ready | NodeState::Rehashing, false) if !quorum => NodeState::NoQuorum,
            (NodeState::Ready, false) => NodeState::Rehashing,
            (NodeState::NoQuorum, false) if quorum => NodeState::Rehashing,
            (state, _) => state,
        };
        self.set_state(next);
    }
}
