//! Connections before they authenticate: each gets a deadline, and one that
//! misses it is closed. Those that close unauthenticated are counted for the
//! log, never a line each: anyone who can reach the port can open them.
//!
//! Not every such close is a stranger. A connection this node dialed fails
//! as a dial (`Input::DialFailed`, or no session by the dial timeout). And
//! when two nodes dial each other at
//! once, ractor_cluster keeps one connection and closes the other, often
//! before it authenticates; the closed one names a peer this node knows.
//! Such a close counts as a stranger only if no session with that peer is
//! up, or authenticates, within the handshake timeout (a wrong cookie).
//!
//! On a machine slower than the timers assume (100 nodes forming on two
//! cores), handshakes take longer than their timeouts. Closing them then
//! only makes more work: every redial starts a new handshake, and the
//! cluster stops forming. So the timeouts stretch: each of this node's own
//! dials whose connection is up but whose handshake expires doubles the
//! handshake and dial timeouts, up to [`MAX_STRETCH`] doublings (several
//! that expire together double them once each: counted as one signal, the
//! stretch grew too slowly and 100 nodes formed in about 30 s instead of
//! 18 s on two cores, see BENCHMARKS.md); each
//! handshake that finishes within half the base timeout halves them again.
//! Only this node's own dials stretch them, so strangers holding
//! connections open do not, and neither does a peer that is down (its
//! dials fail or time out before any connection is up). A frozen peer
//! does: its kernel still accepts the connection.

use std::net::IpAddr;
use std::time::Duration;

use super::*;

/// A connection still in its handshake.
#[derive(Debug, Clone, Copy)]
pub(super) struct Handshake {
    /// When it is closed if it has not authenticated.
    pub(super) deadline: Duration,
    /// Accepted on this node's port, rather than dialed.
    inbound: bool,
    /// Where an accepted one came from, if known.
    from: Option<IpAddr>,
    /// When it opened.
    opened: Duration,
}

/// How many of the addresses strangers came from a report names: enough to
/// find the culprit, few enough for one line.
pub const STRANGERS_NAMED: usize = 4;

/// Adds `ip` to the addresses a report of strangers names, unless it is
/// there or [`STRANGERS_NAMED`] are.
pub fn name_stranger(named: &mut Vec<IpAddr>, ip: IpAddr) {
    if named.len() < STRANGERS_NAMED && !named.contains(&ip) {
        named.push(ip);
    }
}

/// Connections closed without authenticating: counted (see [`Tally`]), and
/// the first few addresses they came from since the last report.
#[derive(Debug, Default)]
pub(super) struct Strangers {
    tally: Tally,
    from: Vec<IpAddr>,
}

impl Strangers {
    fn note(&mut self, now: Duration, from: Option<IpAddr>) -> Option<Effect> {
        if let Some(ip) = from {
            name_stranger(&mut self.from, ip);
        }
        let count = self.tally.note(now)?;
        Some(self.report(count))
    }

    fn flush(&mut self, now: Duration) -> Option<Effect> {
        let count = self.tally.flush(now)?;
        Some(self.report(count))
    }

    fn report(&mut self, count: u64) -> Effect {
        let from = std::mem::take(&mut self.from);
        Effect::Strangers { count, from }
    }

    /// When the strangers counted since the last report are due.
    pub(super) fn due(&self) -> Option<Duration> {
        self.tally.due()
    }
}

/// How many times the dial and handshake timeouts may double: 8 times the
/// configured ones at most.
pub(super) const MAX_STRETCH: u32 = 3;

impl Config {
    /// The longest a connection may take to authenticate: the handshake
    /// timeout at its most stretched. The runtime's accept loop keeps a
    /// connection in its caps no longer than this.
    pub fn longest_handshake(&self) -> Duration {
        self.handshake_timeout() * (1 << MAX_STRETCH)
    }
}

impl Membership {
    /// The handshake timeout, stretched as slow handshakes require.
    pub(super) fn handshake_deadline(&self) -> Duration {
        self.config.handshake_timeout() * (1 << self.stretch)
    }

    /// The dial timeout, stretched as slow dials require.
    pub(super) fn dial_deadline(&self) -> Duration {
        self.config.dial_timeout * (1 << self.stretch)
    }

    /// One of this node's own handshakes expired: the timeouts double, and
    /// the operator hears of it.
    pub(super) fn stretch_timeouts(&mut self) {
        if self.stretch < MAX_STRETCH {
            self.stretch += 1;
            self.effects.push_back(Effect::Slow {
                dial_timeout: self.dial_deadline(),
                handshake_timeout: self.handshake_deadline(),
            });
        }
    }

    pub(super) fn session_opened(
        &mut self,
        now: Duration,
        session: SessionId,
        inbound: bool,
        from: Option<IpAddr>,
    ) {
        let deadline = now.saturating_add(self.handshake_deadline());
        let from = from.filter(|_| inbound);
        let handshake = Handshake {
            deadline,
            inbound,
            from,
            opened: now,
        };
        self.handshakes.insert(session, handshake);
    }

    pub(super) fn authenticated(
        &mut self,
        now: Duration,
        session: SessionId,
        name: Option<NodeName>,
    ) {
        if let Some(handshake) = self.handshakes.remove(&session) {
            // Done within half the base timeout: the machine keeps up again.
            let took = now.saturating_sub(handshake.opened);
            if self.stretch > 0 && took < self.config.handshake_timeout() / 2 {
                self.stretch -= 1;
                self.effects.push_back(Effect::Slow {
                    dial_timeout: self.dial_deadline(),
                    handshake_timeout: self.handshake_deadline(),
                });
            }
        }
        let Some(name) = name else { return };
        let Some(peer) = self.peers.get_mut(&name) else {
            return; // an unknown peer is heard of when its session is up
        };
        peer.unproven = None; // the closes before it were duplicates
        if peer.session == Some(session) {
            return;
        }
        self.authenticated.insert(session, name.clone());
        if peer.session.is_none() && peer.grace.is_some() {
            // A member whose session closed: this is its replacement.
            self.effects.push_back(Effect::Adopt {
                peer: name,
                session,
            });
        }
    }

    /// The authenticated session of `name` waiting to be reported up, if any.
    pub(super) fn pending_session(&self, name: &NodeName) -> Option<SessionId> {
        self.authenticated
            .iter()
            .find(|(_, peer)| *peer == name)
            .map(|(session, _)| *session)
    }

    /// A connection closed (`peer`: the name it gave, if any): if it was
    /// still in its handshake, it is a stranger, or a duplicate to prove.
    pub(super) fn connection_closed(
        &mut self,
        now: Duration,
        session: SessionId,
        peer: Option<&NodeName>,
    ) {
        self.authenticated.remove(&session);
        let Some(handshake) = self.handshakes.remove(&session) else {
            return;
        };
        if !handshake.inbound {
            return; // this node's own dial: it fails as a dial
        }
        let live = peer.is_some_and(|name| self.pending_session(name).is_some());
        let until = now.saturating_add(self.handshake_deadline());
        match peer.and_then(|name| self.peers.get_mut(name)) {
            // A duplicate of a session that is up or authenticated.
            Some(peer) if peer.session.is_some() || live => {}
            Some(peer) => {
                let count = peer.unproven.map_or(0, |(count, _)| count);
                peer.unproven = Some((count + 1, until));
                self.next_peer_timer = earliest(self.next_peer_timer, until);
            }
            None => self.note_stranger(now, handshake.from),
        }
    }

    /// Closes every connection whose handshake deadline passed, counts the
    /// named closes no session proved duplicates, and reports the strangers
    /// counted since the last report when that is due.
    pub(super) fn expire_handshakes(&mut self, now: Duration) {
        let expired: Vec<(SessionId, Handshake)> = (self.handshakes.iter())
            .filter(|(_, handshake)| handshake.deadline <= now)
            .map(|(session, handshake)| (*session, *handshake))
            .collect();
        for (session, handshake) in expired {
            self.handshakes.remove(&session);
            self.effects.push_back(Effect::CloseSession { session });
            if handshake.inbound {
                self.note_stranger(now, handshake.from);
            } else {
                self.stretch_timeouts();
            }
        }
        let mut unproven = 0;
        for peer in self.peers.values_mut() {
            if let Some((count, until)) = peer.unproven {
                if until <= now {
                    peer.unproven = None;
                    if peer.session.is_none() {
                        unproven += count;
                    }
                }
            }
        }
        for _ in 0..unproven {
            self.note_stranger(now, None);
        }
        if let Some(report) = self.strangers.flush(now) {
            self.effects.push_back(report);
        }
    }

    fn note_stranger(&mut self, now: Duration, from: Option<IpAddr>) {
        if let Some(report) = self.strangers.note(now, from) {
            self.effects.push_back(report);
        }
    }
}
