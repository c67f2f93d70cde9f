//! What a change of members does: events, the ring rebuilt (at most once
//! per batch), the monitors assigned, the sentry and the node's state.

use std::time::Duration;

use super::*;

impl Membership {
    /// Member `name` came back as incarnation `new`, replacing `old`: says
    /// so, and elects the sentry again (a restarted sentry is the newest).
    pub(super) fn restarted(&mut self, name: &NodeName, old: Incarnation, new: Incarnation) {
        self.publish(TopologyEvent::NodeDown {
            node: name.clone(),
            incarnation: old,
            reason: DownReason::Restarted,
        });
        self.publish(TopologyEvent::NodeUp {
            node: name.clone(),
            incarnation: new,
        });
        self.elect_sentry();
    }

    /// Takes member `name` out, for a reason this node saw itself; under
    /// bounded sessions every member hears it (see `gossip`).
    pub(super) fn remove_member(&mut self, now: Duration, name: &NodeName, reason: DownReason) {
        let Some(member) = self.drop_member(now, name, reason) else {
            return;
        };
        // A session that closed while this node was waking from a stall
        // was most likely closed by a peer that dropped it: only this
        // node's own ring lets the member go (it is redialed); the
        // cluster hears of a real crash from the member's other peers.
        let seen_waking = reason == DownReason::Crashed && self.waking(now);
        if !seen_waking
            && matches!(
                reason,
                DownReason::Crashed | DownReason::Unresponsive | DownReason::Left
            )
        {
            let fact = Fact {
                node: name.clone(),
                incarnation: member.incarnation,
                life: member.life,
                down: Some(reason),
            };
            self.record(now, fact);
        }
    }

    /// Takes member `name` out of this node's members, and says so.
    pub(super) fn drop_member(
        &mut self,
        now: Duration,
        name: &NodeName,
        reason: DownReason,
    ) -> Option<Member> {
        let peer = self.peers.get_mut(name)?;
        peer.watching = false;
        let member = peer.member.take()?;
        self.members -= 1;
        self.publish(TopologyEvent::NodeDown {
            node: name.clone(),
            incarnation: member.incarnation,
            reason,
        });
        self.membership_changed(now);
        Some(member)
    }

    /// The members changed: the ring, the sentry and the node's state follow
    /// at the next timeout. That is due at once after a quiet spell, so a
    /// crash leaves the ring without delay; but within [`ring_batch`] of
    /// the last rebuild it waits for the end of that spell, and every
    /// change that arrives meanwhile (a burst of joins while a cluster
    /// forms) shares one rebuild: one ring, one `ring_changed`, and at most
    /// one layout of its virtual nodes by whoever looks a key up in it
    /// (about 0.15 ms for 100 members of 256 vnodes; see [`Ring`]).
    pub(super) fn membership_changed(&mut self, now: Duration) {
        let spacing = ring_batch(&self.config, 1 + self.members, self.ring_vnodes());
        let due = match self.last_rebuild {
            Some(last) => now.max(last + spacing),
            None => now,
        };
        self.ring_due = Some(self.ring_due.map_or(due, |at| at.min(due)));
    }

    /// Builds the ring of the current members if they changed since the
    /// last build, then elects the sentry and applies the consensus rule.
    pub(super) fn rebuild_ring_if_due(&mut self, now: Duration) {
        if self.ring_due.is_some_and(|due| due <= now) {
            self.ring_due = None;
            self.last_rebuild = Some(now);
            self.rebuild_ring();
            self.update_wanted(now); // who the neighbours are follows the ring
            self.reachability_members_changed(now); // whose observations count
            let mut tell = std::mem::take(&mut self.answer_after_rebuild);
            tell.extend(self.assign_monitors(now));
            for name in tell {
                if self.peers.get(&name).is_some_and(|p| p.session.is_some()) {
                    self.send_heartbeat(&name, false);
                }
            }
            self.evaluate();
            self.note_ready(now);
        }
    }

    /// Counts the time to the first `Ready`.
    pub(super) fn note_ready(&mut self, now: Duration) {
        if self.state == NodeState::Ready && self.telemetry.ready_after.is_none() {
            let start = self.started_at.unwrap_or(now);
            self.telemetry.ready_after = Some(now.saturating_sub(start));
        }
    }

    /// Watches the members [`monitors`] assigns this node in the current
    /// ring, and only those. Returns the peers whose watch changed: they
    /// must hear it (our heartbeats say whether we watch them). A newly
    /// watched member gets a full `heartbeat_timeout` from now, since it
    /// sends us heartbeats only once it hears that we watch it.
    pub(super) fn assign_monitors(&mut self, now: Duration) -> Vec<NodeName> {
        let order: Vec<NodeName> = monitors::watch_order(self.ring.members(), &self.me)
            .into_iter()
            .cloned()
            .collect();
        let k = self.config.monitors.min(order.len());
        let assigned: BTreeSet<NodeName> = order[..k].iter().cloned().collect();
        self.reach.probes.new_order(order[k..].to_vec());
        let mut changed = Vec::new();
        // Under bounded sessions a member is watched over its session only:
        // one learned from others is dialed first (see `update_wanted`).
        let bounded = self.is_bounded();
        for (name, peer) in &mut self.peers {
            let watch = assigned.contains(name)
                && peer.member.is_some()
                && (peer.session.is_some() || !bounded);
            if watch == peer.watching {
                continue;
            }
            peer.watching = watch;
            if let Some(member) = peer.member.as_mut().filter(|_| watch) {
                member.last_heard = member.last_heard.max(now);
                let deadline = member.last_heard + self.config.heartbeat_timeout;
                self.next_peer_timer = earliest(self.next_peer_timer, deadline);
            }
            changed.push(name.clone());
        }
        changed
    }

    pub(super) fn rebuild_ring(&mut self) {
        debug_assert_eq!(
            self.members,
            self.peers.values().filter(|p| p.member.is_some()).count()
        );
        // A leaving node's ring is the one its peers keep after its goodbye.
        let me = (!self.is_leaving()).then(|| self.me.clone());
        let members = me.into_iter().chain(
            self.peers
                .iter()
                .filter(|(_, p)| p.member.is_some())
                .map(|(n, _)| n.clone()),
        );
        // The members it keeps keep their virtual nodes: not hashed again.
        self.ring = Arc::new(self.ring.with_members(members));
        self.publish(TopologyEvent::RingChanged {
            members: self.ring.members().to_vec(),
            digest: self.ring.digest(),
        });
        self.note_ring_size();
        self.elect_sentry();
    }

    pub(super) fn set_state(&mut self, to: NodeState) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        let snapshot = self.snapshot();
        self.publish(TopologyEvent::StateChanged { from, to, snapshot });
    }
}

/// The shortest time between two ring rebuilds: 100 ns per ring point,
/// about six times what laying out a rebuilt ring takes when it keeps most
/// members (`Ring::with_members` and a lookup: 150 us for 100 members of
/// 256 vnodes on a 2-core machine), so the layouts of a node that routes
/// keys cost it at most a sixth of a core however fast members change; at
/// most a sixteenth of the heartbeat interval. 100 members of 256 vnodes:
/// 2.6 ms; 3 members: 77 us. (It was 750 ns per point while every rebuild
/// hashed and sorted the whole ring; the shorter spacing formed 100
/// processes about 90 ms sooner, BENCHMARKS.md.)
pub(super) fn ring_batch(config: &Config, members: usize, vnodes: u32) -> Duration {
    const PER_POINT: Duration = Duration::from_nanos(100);
    let points = u32::try_from(members)
        .unwrap_or(u32::MAX)
        .saturating_mul(vnodes.max(1));
    PER_POINT
        .saturating_mul(points)
        .min(config.heartbeat_interval / 16)
}
