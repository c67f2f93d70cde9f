//! Probes: with a quorum configured, each member also checks, slowly and in
//! turn, the members it does not watch, so that its observation (see
//! `reachability`) can name a member it cannot reach although neither
//! watches the other.
//!
//! Watchers alone see a cut only between a watcher and the node it watches.
//! Under a bridge between two halves larger than `monitors`, a node whose
//! watchers and watched members all sit on its own half is then named by no
//! record, and the decision keeps it on the other half's ring although it
//! reaches none of it; a cut between two members that do not watch each
//! other is not seen at all.
//!
//! Each heartbeat round a member probes the next member it does not watch,
//! in the order it watches members (hash order after itself: names in
//! order are often one subnet, then another, which is how faults split a
//! cluster): one heartbeat saying it has not admitted the receiver, which
//! any member answers at once (a node of an earlier version too). A member
//! that sends no heartbeat that counts within `heartbeat_timeout` goes into
//! this node's observation, as a watcher's silent member does (it stays a
//! member: a probe only informs the decision), up to `monitors` members so
//! recorded: enough to tie a node to its side of a bridge, few enough that
//! observations stay small. Each is probed again every round and leaves the
//! observation at its first heartbeat. No new member is probed while
//! `monitors` are recorded.
//!
//! The cost: one probe and one answer per member per heartbeat round (at
//! the default 300 ms, 3.3 of each a second per node, whatever the
//! cluster's size), and up to `monitors` probes per round while a fault
//! lasts. A whole sweep takes one round per member not watched: a minute
//! at 200 nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

/// The probes of one node.
#[derive(Debug, Default)]
pub(super) struct Probes {
    /// Probes out: by when each member must have sent a heartbeat that
    /// counts.
    due: BTreeMap<NodeName, Duration>,
    /// Members whose probe went unanswered, in this node's observation
    /// until they are heard.
    recorded: BTreeSet<NodeName>,
    /// The members this node does not watch, in the order it watches
    /// members (see `monitors`): hash order after it. Names in order are
    /// often sides of a fault (one subnet, then another); hash order is not.
    order: Vec<NodeName>,
    /// Where in `order` the next turn starts.
    turn: usize,
}

impl Probes {
    /// When the next probe runs out.
    pub(super) fn next_due(&self) -> Option<Duration> {
        self.due.values().min().copied()
    }

    /// The ring was rebuilt: the members not watched, in watch order. The
    /// turn goes on from about where it was.
    pub(super) fn new_order(&mut self, order: Vec<NodeName>) {
        self.order = order;
    }

    /// A heartbeat that counts came from `name`: its probe is answered.
    pub(super) fn answered(&mut self, name: &NodeName) {
        self.due.remove(name);
        self.recorded.remove(name);
    }
}

impl Membership {
    /// A member this node may probe: it does not watch it, and they share
    /// a session.
    fn probe_target(&self, name: &NodeName) -> bool {
        self.peers
            .get(name)
            .is_some_and(|p| p.member.is_some() && !p.watching && p.session.is_some())
    }

    /// The recorded members that are still members to probe.
    fn recorded_targets(&self) -> Vec<NodeName> {
        let recorded = self.reach.probes.recorded.iter();
        recorded.filter(|n| self.probe_target(n)).cloned().collect()
    }

    /// One heartbeat round's probes: the members recorded, and the next
    /// member in turn while fewer than `monitors` are recorded.
    pub(super) fn probe_round(&mut self, now: Duration) {
        if !self.resolves_partial_partitions() || self.is_downed() {
            return;
        }
        let mut targets = self.recorded_targets();
        if targets.len() < self.config.monitors {
            targets.extend(self.next_in_turn());
        }
        let deadline = now + self.config.heartbeat_timeout;
        for name in targets {
            self.reach
                .probes
                .due
                .entry(name.clone())
                .or_insert(deadline);
            self.send_probe(&name);
        }
    }

    /// The next member in turn, in watch order, that this node may probe
    /// and has not recorded.
    fn next_in_turn(&mut self) -> Option<NodeName> {
        let probes = &self.reach.probes;
        let len = probes.order.len();
        let found = (0..len).map(|i| (probes.turn + i) % len).find(|&i| {
            let name = &probes.order[i];
            self.probe_target(name) && !probes.recorded.contains(name)
        });
        let i = found?;
        self.reach.probes.turn = (i + 1) % len;
        Some(self.reach.probes.order[i].clone())
    }

    /// Probes that ran out: their members go into this node's observation,
    /// up to `monitors` of them.
    pub(super) fn expire_probes(&mut self, now: Duration) {
        let due: Vec<NodeName> = (self.reach.probes.due.iter())
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        let mut room = (self.config.monitors).saturating_sub(self.recorded_targets().len());
        let mut silent = Vec::new();
        for name in due {
            self.reach.probes.due.remove(&name);
            if room == 0 || self.reach.probes.recorded.contains(&name) || !self.probe_target(&name)
            {
                continue;
            }
            let Some(incarnation) = self.incarnation_of(&name) else {
                continue;
            };
            room -= 1;
            self.reach.probes.recorded.insert(name.clone());
            silent.push(Suspect {
                node: name,
                incarnation,
            });
        }
        if !silent.is_empty() {
            self.observe_unreachable(now, &silent);
        }
    }
}
