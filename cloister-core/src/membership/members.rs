//! Members: heartbeats in and out, silence, goodbyes, the ring, the sentry
//! and the node's state.

use std::time::Duration;

use super::*;

impl Membership {
    pub(super) fn heartbeat(&mut self, now: Duration, heartbeat: Heartbeat) {
        if heartbeat.from == self.me || heartbeat.app != self.config.app || !self.is_running() {
            return;
        }
        let name = heartbeat.from.clone();
        if heartbeat.ring_vnodes != self.ring_vnodes() {
            let why = format!(
                "refused: it places keys with {}, this node with {} (every node needs the same \
                 `ring` and `ring_vnodes`)",
                describe_ring(heartbeat.ring_vnodes),
                describe_ring(self.ring_vnodes()),
            );
            let peer = self
                .peers
                .entry(name.clone())
                .or_insert_with(|| Peer::new(None, now));
            if peer.refused.as_ref() != Some(&why) {
                peer.refused = Some(why.clone());
                self.effects.push_back(Effect::Refused { peer: name, why });
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&name) else {
            // No session yet: keep it until the ready event arrives.
            let mut peer = Peer::new(None, now);
            peer.early = Some(heartbeat);
            self.peers.insert(name, peer);
            return;
        };
        peer.refused = None;
        if peer.session.is_none() {
            peer.early = Some(heartbeat);
            return;
        }
        if peer.left.is_some_and(|left| heartbeat.incarnation <= left) {
            return;
        }
        if heartbeat.leaving {
            peer.left = Some(heartbeat.incarnation);
            if peer.member.is_some() {
                self.remove_member(&name, DownReason::Left);
            }
            return;
        }
        match &mut peer.member {
            Some(member) if member.incarnation == heartbeat.incarnation => {
                member.last_heard = now;
                member.digest = heartbeat.digest;
            }
            Some(member) if member.incarnation > heartbeat.incarnation => {} // stale
            Some(member) => {
                let old = member.incarnation;
                *member = Member {
                    incarnation: heartbeat.incarnation,
                    last_heard: now,
                    digest: heartbeat.digest,
                };
                self.publish(TopologyEvent::NodeDown {
                    node: name.clone(),
                    incarnation: old,
                    reason: DownReason::Restarted,
                });
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: heartbeat.incarnation,
                });
                self.elect_sentry(); // a restarted sentry is the newest now
                self.send_heartbeat(&name, false);
            }
            None => {
                peer.member = Some(Member {
                    incarnation: heartbeat.incarnation,
                    last_heard: now,
                    digest: heartbeat.digest,
                });
                let deadline = now + self.config.heartbeat_timeout;
                self.next_peer_timer = earliest(self.next_peer_timer, deadline);
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: heartbeat.incarnation,
                });
                self.rebuild_ring();
                self.send_heartbeat(&name, false);
                self.evaluate();
                if !self
                    .peers
                    .values()
                    .any(|p| p.session.is_some() && p.member.is_none())
                {
                    self.next_introduce = None; // everyone connected has answered
                }
            }
        }
    }

    /// Drops every member silent for `heartbeat_timeout`, and its session.
    pub(super) fn expire_silent_members(&mut self, now: Duration) {
        let timeout = self.config.heartbeat_timeout;
        let silent: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.member
                    .as_ref()
                    .is_some_and(|m| m.last_heard + timeout <= now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in silent {
            let Some(peer) = self.peers.get_mut(&name) else {
                continue;
            };
            peer.grace_until = None;
            if let Some(session) = peer.session.take() {
                self.effects.push_back(Effect::Disconnect {
                    peer: name.clone(),
                    session,
                });
            }
            // Give a frozen peer a backoff before the first redial.
            let delay = backoff(&self.config, &mut self.rng, 0);
            peer.dial = Dial::Idle { at: now + delay };
            peer.last_error = Some(format!("no heartbeat for {timeout:?}"));
            self.remove_member(&name, DownReason::Unresponsive);
        }
    }

    pub(super) fn remove_member(&mut self, name: &NodeName, reason: DownReason) {
        let Some(member) = self.peers.get_mut(name).and_then(|p| p.member.take()) else {
            return;
        };
        self.publish(TopologyEvent::NodeDown {
            node: name.clone(),
            incarnation: member.incarnation,
            reason,
        });
        self.rebuild_ring();
        self.evaluate();
    }

    pub(super) fn rebuild_ring(&mut self) {
        let members = std::iter::once(self.me.clone()).chain(
            self.peers
                .iter()
                .filter(|(_, p)| p.member.is_some())
                .map(|(n, _)| n.clone()),
        );
        self.ring = Arc::new(build_ring(&self.config, members));
        self.publish(TopologyEvent::RingChanged {
            members: self.ring.members().to_vec(),
            digest: self.ring.digest(),
        });
        self.elect_sentry();
    }

    /// Moves the sentry to the member up longest, telling subscribers.
    pub(super) fn elect_sentry(&mut self) {
        let mine = (self.incarnation, &self.me);
        let members = self
            .peers
            .iter()
            .filter_map(|(name, p)| p.member.as_ref().map(|m| (m.incarnation, name)));
        let (_, oldest) = members.fold(mine, |a, b| a.min(b));
        if *oldest != self.sentry {
            self.sentry = oldest.clone();
            let sentry = self.sentry.clone();
            self.publish(TopologyEvent::SentryChanged { sentry });
        }
    }

    /// Applies the consensus rule to the current membership.
    pub(super) fn evaluate(&mut self) {
        let enough = self.ring.len() >= self.config.consensus;
        let next = match (self.state, enough) {
            (NodeState::Assembling | NodeState::Rehashing, true) => NodeState::Ready,
            (NodeState::Ready, false) => NodeState::Rehashing,
            (state, _) => state,
        };
        self.set_state(next);
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

    pub(super) fn leave(&mut self) {
        if !self.is_running() {
            return;
        }
        self.heartbeat_all(true);
        self.next_resolve = None;
        self.next_heartbeat = None;
        self.next_introduce = None;
        self.next_peer_timer = None;
        self.set_state(NodeState::Stopping);
    }

    pub(super) fn leave_complete(&mut self) {
        if self.state == NodeState::Stopping {
            self.set_state(NodeState::Stopped);
        }
    }

    /// How often a connected peer that is not a member yet hears from us
    /// while we wait for its first heartbeat: an eighth of the interval.
    pub(super) fn introduce_every(&self) -> Duration {
        (self.config.heartbeat_interval / 8).max(Duration::from_millis(1))
    }

    /// Resends our heartbeat to connected peers that have not answered yet,
    /// for one `heartbeat_interval` after their session came up.
    pub(super) fn introduce(&mut self, now: Duration) {
        let waiting: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some() && p.member.is_none())
            .filter(|(_, p)| p.introduce_until.is_some_and(|until| until > now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &waiting {
            self.send_heartbeat(name, false);
        }
        self.next_introduce = (!waiting.is_empty()).then(|| now + self.introduce_every());
    }

    pub(super) fn heartbeat_all(&mut self, leaving: bool) {
        let connected = self.connected();
        for name in &connected {
            self.send_heartbeat(name, leaving);
        }
    }

    pub(super) fn send_heartbeat(&mut self, to: &NodeName, leaving: bool) {
        let heartbeat = Heartbeat {
            from: self.me.clone(),
            app: self.config.app.clone(),
            incarnation: self.incarnation,
            digest: self.ring.digest(),
            ring_vnodes: self.ring_vnodes(),
            leaving,
        };
        self.effects.push_back(Effect::SendHeartbeat {
            to: to.clone(),
            heartbeat,
        });
    }
}

/// A ring configuration as the config spells it.
fn describe_ring(vnodes: u32) -> String {
    match vnodes {
        0 => "`ring = \"external\"`".to_string(),
        n => format!("`ring_vnodes = {n}`"),
    }
}
