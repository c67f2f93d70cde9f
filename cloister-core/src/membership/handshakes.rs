//! Connections before they authenticate: each gets a deadline, and one that
//! misses it is closed. Those that close unauthenticated are counted for the
//! log, never a line each: anyone who can reach the port can open them.

use std::time::Duration;

use super::*;

impl Membership {
    pub(super) fn session_opened(&mut self, now: Duration, session: SessionId) {
        let deadline = now.saturating_add(self.config.handshake_timeout());
        self.handshakes.insert(session, deadline);
    }

    pub(super) fn authenticated(&mut self, session: SessionId) {
        self.handshakes.remove(&session);
    }

    /// A connection closed: if it was still in its handshake, it is one
    /// more stranger.
    pub(super) fn connection_closed(&mut self, now: Duration, session: SessionId) {
        if self.handshakes.remove(&session).is_some() {
            self.note_stranger(now);
        }
    }

    /// Closes every connection whose handshake deadline passed, and reports
    /// the strangers counted since the last report when that is due.
    pub(super) fn expire_handshakes(&mut self, now: Duration) {
        let expired: Vec<SessionId> = self
            .handshakes
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(session, _)| *session)
            .collect();
        for session in expired {
            self.handshakes.remove(&session);
            self.effects.push_back(Effect::CloseSession { session });
            self.note_stranger(now);
        }
        if let Some(count) = self.strangers.flush(now) {
            self.effects.push_back(Effect::Strangers { count });
        }
    }

    fn note_stranger(&mut self, now: Duration) {
        if let Some(count) = self.strangers.note(now) {
            self.effects.push_back(Effect::Strangers { count });
        }
    }
}
