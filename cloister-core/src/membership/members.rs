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
        let Some(peer) = self.peers.get_mut(&name) else {
            // Nobody is connected, or wanted, under this name: keep nothing.
            return self.drop_stranger(name);
        };
        let Some(session) = peer.session else {
            // A known peer, quicker than its session's ready event: keep the
            // latest in its one slot until the session is up.
            peer.early = Some(heartbeat);
            return;
        };
        let (counts, learned) = self.check_token(&name, &heartbeat);
        let answered = counts && self.heard(now, &name, session, heartbeat);
        if learned && !answered {
            // Echo its new token at once, so it can hear us too.
            self.send_heartbeat(&name, false);
        }
    }

    /// The token handshake (see `peer::Tokens`) for `heartbeat`, which names
    /// `name`, a peer with a session: whether it counts (it echoes our token
    /// for that session), and whether it taught us a new token of the peer.
    /// Reports the first suspicious drop of the session.
    fn check_token(&mut self, name: &NodeName, heartbeat: &Heartbeat) -> (bool, bool) {
        let Some(peer) = self.peers.get_mut(name) else {
            return (false, false);
        };
        let tokens = &mut peer.tokens;
        let counts = tokens.mine != 0 && heartbeat.echo == tokens.mine;
        // Late heartbeats of the session this one replaced: not suspicious.
        let late = !counts && heartbeat.echo != 0 && heartbeat.echo == tokens.previous;
        // Before the first heartbeat that counts, the latest one's token is
        // the best guess (that is how the handshake starts); after it, only
        // heartbeats that count may change it.
        let learned = heartbeat.token != 0
            && heartbeat.token != tokens.theirs
            && (counts || (!tokens.verified && !late));
        if learned {
            tokens.theirs = heartbeat.token;
        }
        if counts {
            tokens.verified = true;
        } else {
            // A peer that has not heard our token yet says hello with 0.
            let hello = heartbeat.echo == 0 && !tokens.verified;
            // Its token, learned from a heartbeat that counted, is as secret
            // as ours: the peer itself, with an echo overtaken by events.
            let outdated = tokens.verified && heartbeat.token == tokens.theirs;
            if !hello && !late && !outdated && !tokens.reported {
                tokens.reported = true;
                self.effects.push_back(Effect::Dropped {
                    claimed: name.clone(),
                    why: DropReason::NotEchoed,
                });
            }
        }
        (counts, learned)
    }

    /// A heartbeat naming a peer this node knows nothing of: dropped, and
    /// reported once per name while fewer than `MAX_REPORTED_STRANGERS` were.
    fn drop_stranger(&mut self, name: NodeName) {
        if self.unknown_names.len() < MAX_REPORTED_STRANGERS
            && self.unknown_names.insert(name.clone())
        {
            self.effects.push_back(Effect::Dropped {
                claimed: name,
                why: DropReason::NoSession,
            });
        }
    }

    /// A heartbeat that counts, from `name` over `session`: admits, refreshes,
    /// restarts or lets go of the member. Returns whether it answered.
    fn heard(&mut self, now: Duration, name: &NodeName, session: SessionId, hb: Heartbeat) -> bool {
        let vnodes = self.ring_vnodes();
        let Some(peer) = self.peers.get_mut(name) else {
            return false;
        };
        if hb.ring_vnodes != vnodes {
            let why = format!(
                "refused: it places keys with {}, this node with {} (every node needs the same \
                 `ring` and `ring_vnodes`)",
                describe_ring(hb.ring_vnodes),
                describe_ring(vnodes),
            );
            if peer.refused.as_ref() != Some(&why) {
                peer.refused = Some(why.clone());
                let peer = name.clone();
                self.effects.push_back(Effect::Refused { peer, why });
            }
            return false;
        }
        peer.refused = None;
        if peer.left == Some(session) {
            return false; // sent before the goodbye of this same session
        }
        if hb.leaving {
            peer.left = Some(session);
            if peer.member.is_some() {
                self.remove_member(now, name, DownReason::Left);
            }
            return false;
        }
        match &mut peer.member {
            Some(member) if member.incarnation == hb.incarnation => {
                member.last_heard = now;
                member.digest = hb.digest;
                false
            }
            Some(member) => {
                // Another process under the same name, proven by its session:
                // whichever way the two wall clocks compare.
                let old = member.incarnation;
                *member = Member {
                    incarnation: hb.incarnation,
                    last_heard: now,
                    digest: hb.digest,
                };
                self.publish(TopologyEvent::NodeDown {
                    node: name.clone(),
                    incarnation: old,
                    reason: DownReason::Restarted,
                });
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: hb.incarnation,
                });
                self.elect_sentry(); // a restarted sentry is the newest now
                self.send_heartbeat(name, false);
                true
            }
            None => {
                peer.member = Some(Member {
                    incarnation: hb.incarnation,
                    last_heard: now,
                    digest: hb.digest,
                });
                let deadline = now + self.config.heartbeat_timeout;
                self.next_peer_timer = earliest(self.next_peer_timer, deadline);
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: hb.incarnation,
                });
                self.membership_changed(now);
                // Answered once the ring includes it, so the answer carries
                // the new digest.
                self.answer_after_rebuild.insert(name.clone());
                if !self
                    .peers
                    .values()
                    .any(|p| p.session.is_some() && p.member.is_none())
                {
                    self.next_introduce = None; // everyone connected has answered
                }
                true
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
            self.remove_member(now, &name, DownReason::Unresponsive);
        }
    }

    pub(super) fn remove_member(&mut self, now: Duration, name: &NodeName, reason: DownReason) {
        let Some(member) = self.peers.get_mut(name).and_then(|p| p.member.take()) else {
            return;
        };
        self.publish(TopologyEvent::NodeDown {
            node: name.clone(),
            incarnation: member.incarnation,
            reason,
        });
        self.membership_changed(now);
    }

    /// The members changed: the ring, the sentry and the node's state follow
    /// at the next timeout, which is due at once. Every change that arrives
    /// before it (a burst of joins while a cluster forms) shares one
    /// rebuild: a ring of 100 members takes milliseconds to build, and
    /// building it once per join made formation cost O(n²) per node.
    pub(super) fn membership_changed(&mut self, now: Duration) {
        self.ring_due = Some(self.ring_due.map_or(now, |due| due.min(now)));
    }

    /// Builds the ring of the current members if they changed since the
    /// last build, then elects the sentry and applies the consensus rule.
    pub(super) fn rebuild_ring_if_due(&mut self, now: Duration) {
        if self.ring_due.is_some_and(|due| due <= now) {
            self.ring_due = None;
            self.rebuild_ring();
            for name in std::mem::take(&mut self.answer_after_rebuild) {
                if self.peers.get(&name).is_some_and(|p| p.session.is_some()) {
                    self.send_heartbeat(&name, false);
                }
            }
            self.evaluate();
        }
    }

    fn rebuild_ring(&mut self) {
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
        let tokens = self.peers.get(to).map(|p| p.tokens).unwrap_or_default();
        let heartbeat = Heartbeat {
            from: self.me.clone(),
            app: self.config.app.clone(),
            incarnation: self.incarnation,
            digest: self.ring.digest(),
            ring_vnodes: self.ring_vnodes(),
            leaving,
            token: tokens.mine,
            echo: tokens.theirs,
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
