//! Connections: discovery answers, dials with backoff, sessions opening
//! and closing, and the grace that hides a replaced session.

use std::time::Duration;

use super::*;

impl Membership {
    pub(super) fn start(&mut self, now: Duration) {
        if self.state != NodeState::Down {
            return;
        }
        self.started_at = Some(now);
        self.set_state(NodeState::Assembling);
        self.say_up(now);
        self.next_heartbeat = Some(next_round(now, self.config.heartbeat_interval));
        match self.config.sentry.clone() {
            Sentry::Nodes(nodes) => self.discovered(now, nodes),
            Sentry::Service(_) => {
                self.effects.push_back(Effect::Resolve);
                self.next_resolve = Some(now + self.config.discovery_tick);
            }
        }
        self.evaluate();
        self.note_ready(now);
    }

    pub(super) fn discovered(&mut self, now: Duration, found: Vec<SentryNode>) {
        self.discovery_error = None;
        if !self.is_running() {
            return;
        }
        self.plan.listings += 1;
        for peer in self.peers.values_mut() {
            peer.listed = false;
        }
        for SentryNode { name, addr } in found {
            if name == self.me {
                continue;
            }
            let peer = self
                .peers
                .entry(name)
                .or_insert_with(|| Peer::new(None, now));
            peer.addr = Some(addr);
            peer.listed = true;
        }
        // A peer gone from the answer is forgotten unless it is still connected.
        self.peers
            .retain(|_, p| p.listed || p.session.is_some() || p.member.is_some());
        self.update_wanted(now);
        self.forget_unknown_subjects(now);
        self.run_dials(now);
    }

    /// Dials every wanted peer without a session whose time has come, and
    /// counts overdue dials as failed.
    pub(super) fn run_dials(&mut self, now: Duration) {
        let mut next: Option<Duration> = None;
        let timeout = self.config.heartbeat_timeout;
        let dial_timeout = self.dial_deadline();
        for (name, peer) in &mut self.peers {
            if let Some((_, until)) = peer.unproven {
                next = earliest(next, until);
            }
            if peer.member.is_some() || peer.session.is_none() {
                peer.hold_until = None; // back, or its session closed
            }
            if let (Some(until), Some(session)) = (peer.hold_until, peer.session) {
                if until > now {
                    next = earliest(next, until);
                    continue;
                }
                // Still silent since it was dropped: let the session go.
                peer.hold_until = None;
                peer.session = None;
                let delay = backoff(&self.config, &mut self.rng, 0);
                peer.dial = Dial::Idle { at: now + delay };
                next = earliest(next, now + delay);
                self.effects.push_back(Effect::Disconnect {
                    peer: name.clone(),
                    session,
                });
                continue;
            }
            if let Some(member) = peer.member.as_ref().filter(|_| peer.watching) {
                next = earliest(next, member.last_heard + timeout);
            }
            if let Some(suspicion) = &peer.suspected {
                next = earliest(next, suspicion.until);
            }
            if let Some(grace) = &peer.grace {
                next = earliest(next, grace.until);
                continue;
            }
            if peer.session.is_some() || !peer.wanted {
                continue;
            }
            let Some(addr) = peer.addr.clone() else {
                continue;
            };
            if let Dial::Pending { deadline } = peer.dial {
                if deadline > now {
                    next = earliest(next, deadline);
                    continue;
                }
                peer.last_error = Some(format!(
                    "dialed, but no ready session within {dial_timeout:?} (wrong cookie, TLS on \
                     one side only, not a cloister node, frozen, or a machine slower than the \
                     timeouts)"
                ));
                let delay = backoff(&self.config, &mut self.rng, peer.failed_dials);
                peer.failed_dials = peer.failed_dials.saturating_add(1);
                peer.dial = Dial::Idle { at: now + delay };
                self.telemetry.dial_failures += 1;
            }
            match peer.dial {
                Dial::Idle { at } if at <= now => {
                    let deadline = now + dial_timeout;
                    peer.dial = Dial::Pending { deadline };
                    next = earliest(next, deadline);
                    self.telemetry.dials += 1;
                    self.effects.push_back(Effect::Dial {
                        peer: name.clone(),
                        addr,
                        timeout: dial_timeout,
                    });
                }
                Dial::Idle { at } | Dial::Pending { deadline: at } => next = earliest(next, at),
            }
        }
        self.next_peer_timer = next;
    }

    pub(super) fn dial_failed(&mut self, now: Duration, name: &NodeName, error: String) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.session.is_some() || !matches!(peer.dial, Dial::Pending { .. }) {
            return;
        }
        let delay = backoff(&self.config, &mut self.rng, peer.failed_dials);
        peer.failed_dials = peer.failed_dials.saturating_add(1);
        self.telemetry.dial_failures += 1;
        peer.last_error = Some(error);
        peer.dial = Dial::Idle { at: now + delay };
        self.next_peer_timer = earliest(self.next_peer_timer, now + delay);
    }

    pub(super) fn session_up(&mut self, now: Duration, name: NodeName, session: SessionId) {
        if name == self.me || !self.is_running() {
            return;
        }
        self.authenticated.remove(&session);
        let peer = self
            .peers
            .entry(name.clone())
            .or_insert_with(|| Peer::new(None, now));
        peer.unproven = None;
        let renewed = peer.session != Some(session);
        if renewed {
            // A new session, a new handshake; the same one reported twice
            // (both sides dialed) keeps its tokens. Whether the peer watches
            // us, its heartbeats on the new session will say.
            peer.tokens.renew(self.token_source.next());
            peer.watches_me = false;
        }
        peer.session = Some(session);
        peer.grace = None;
        peer.introduce_until = Some(now + self.config.heartbeat_interval);
        peer.failed_dials = 0;
        peer.last_error = None;
        // `refused` stays until a heartbeat of this session says otherwise
        // (see `Membership::refuses`): not said twice for a duplicate session
        // that replaces this one.
        peer.dial = Dial::Idle { at: now };
        let early = peer.early.take();
        if renewed {
            self.forget_downs_me(&name); // its heartbeats will say again
        }
        if self.is_bounded() {
            // A member learned from others may be one this node watches.
            for other in self.assign_monitors(now) {
                if other != name && self.peers.get(&other).is_some_and(|p| p.session.is_some()) {
                    self.send_heartbeat(&other, false);
                }
            }
        }
        self.send_heartbeat(&name, false);
        self.next_introduce = earliest(self.next_introduce, now + self.introduce_every());
        if let Some(heartbeat) = early {
            self.heartbeat(now, heartbeat);
        }
    }

    pub(super) fn session_down(&mut self, now: Duration, name: &NodeName, session: SessionId) {
        let replacement = self.pending_session(name);
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.session != Some(session) {
            return; // a session that was already replaced or dropped
        }
        peer.session = None;
        peer.hold_until = None;
        peer.refused = None; // its next session's heartbeats will tell
        peer.dial = Dial::Idle { at: now };
        self.forget_downs_me(name);
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.member.is_some() {
            if let Some(replacement) = replacement {
                // ractor_cluster elected another session over this one.
                peer.grace = Some(Grace {
                    until: now + self.config.session_grace,
                    waits: Vec::new(),
                });
                self.in_grace.insert(name.clone());
                self.effects.push_back(Effect::Adopt {
                    peer: name.clone(),
                    session: replacement,
                });
            } else if self.config.session_grace.is_zero() || self.handshakes.is_empty() {
                // No connection is in its handshake, so none can replace
                // this one: the peer's only session closed, it crashed.
                self.remove_member(now, name, DownReason::Crashed);
            } else {
                peer.grace = Some(Grace {
                    until: now + self.config.session_grace,
                    waits: self.handshakes.keys().copied().collect(),
                });
                self.in_grace.insert(name.clone());
            }
        }
        self.run_dials(now);
    }

    /// Ends the grace of every member for whom no replacing session can
    /// come now: none of the connections it waits for is still in its
    /// handshake (each authenticated as another peer, closed or expired),
    /// or, on a timeout (`at_cap`), its cap has passed. Those members
    /// crashed. On a loaded machine a duplicate's handshake takes longer
    /// than any fixed grace; on an idle one the first rule ends the grace
    /// within milliseconds.
    ///
    /// Only timeouts apply the cap: the runtime stamps an input when it
    /// handles it, and its wake-up waits behind the inputs, so the
    /// replacement's own authentication may carry a time past the cap.
    ///
    /// Runs on every connection event and timeout, so it looks only at
    /// `in_grace`, not at every peer.
    pub(super) fn end_graces(&mut self, now: Duration, at_cap: bool) {
        if self.in_grace.is_empty() {
            return;
        }
        let Membership {
            in_grace,
            peers,
            handshakes,
            authenticated,
            ..
        } = self;
        let mut over = Vec::new();
        in_grace.retain(|name| {
            let Some(peer) = peers.get_mut(name) else {
                return false;
            };
            let Some(grace) = &mut peer.grace else {
                return false; // ended meanwhile: its session is back, or it was dropped
            };
            let awaited = !grace.waits.is_empty();
            grace.waits.retain(|session| {
                handshakes.contains_key(session) || authenticated.get(session) == Some(name)
            });
            let capped = at_cap && grace.until <= now;
            if !capped && (!awaited || !grace.waits.is_empty()) {
                return true;
            }
            peer.grace = None;
            peer.dial = Dial::Idle { at: now };
            over.push(name.clone());
            false
        });
        for name in over {
            self.remove_member(now, &name, DownReason::Crashed);
        }
    }
}
