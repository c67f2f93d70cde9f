//! Leaving: the goodbye, the drain, the stop.
//!
//! Step by step, from [`Input::Leave`](super::Input::Leave) at `now`:
//! 1. The node goes `Stopping`: it is not ready (probes fail) and dials,
//!    resolves and heartbeats no more.
//! 2. It says goodbye to every connected peer (a heartbeat with `leaving`):
//!    each takes it out of its ring at once and reports it `left`. The
//!    sessions stay open, so the application can still hand off.
//! 3. It takes itself out of its own ring, which now matches the peers'
//!    rings: `node_for` names the owner of each key after it.
//! 4. It publishes [`TopologyEvent::Leaving`] with `drain_timeout`.
//!    While it drains, a peer's goodbye still takes that peer out of its
//!    ring, so it never hands off to a node that leaves with it.
//! 5. It ends with [`Effect::Left`] (`-> Stopped`) once the application has
//!    drained ([`Input::Drained`](super::Input::Drained)), or at
//!    `now + drain_timeout`, whichever comes first, but never before
//!    `now + GOODBYE_LINGER`: the goodbyes must leave the socket buffers
//!    before the runtime closes the sessions.

use std::time::Duration;

use crate::events::{DownReason, NodeState, TopologyEvent};

use super::{Effect, Heartbeat, Membership};

/// How long the goodbyes get to go out, and be read, before a drained
/// node stops. A peer learns of the goodbye and of the closed session by
/// two paths (its herald, its NodeServer's session events); 50 ms let the
/// close overtake the goodbye on a loaded machine (a Swarm scale-down in CI
/// reported a leaving node `crashed`).
pub const GOODBYE_LINGER: Duration = Duration::from_millis(250);

/// A leave under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaving {
    /// Not before: the goodbyes are still going out.
    linger_until: Duration,
    /// At the latest: `drain_timeout` after the leave.
    deadline: Duration,
    /// The application has drained.
    drained: bool,
}

impl Membership {
    pub(super) fn leave(&mut self, now: Duration) {
        if !self.is_running() {
            return;
        }
        self.next_resolve = None;
        self.next_heartbeat = None;
        self.next_introduce = None;
        self.next_peer_timer = None;
        self.ring_due = None;
        self.leaving = Some(Leaving {
            linger_until: now + GOODBYE_LINGER,
            // Even undrained, the goodbyes get their linger.
            deadline: now + self.config.drain_timeout.max(GOODBYE_LINGER),
            drained: false,
        });
        self.set_state(NodeState::Stopping);
        self.heartbeat_all(true);
        self.rebuild_ring();
        let drain_timeout = self.config.drain_timeout;
        self.publish(TopologyEvent::Leaving { drain_timeout });
    }

    /// While this node leaves, a peer's goodbye still takes the peer out
    /// of its ring at once, so the handoff never aims at a node that leaves
    /// too (two nodes of a rolling update, a scale-down by several). Other
    /// heartbeats, closed sessions and the rest are ignored.
    pub(super) fn heard_while_leaving(&mut self, now: Duration, heartbeat: Heartbeat) {
        if !heartbeat.leaving || heartbeat.app != self.config.app {
            return;
        }
        let name = heartbeat.from.clone();
        let Some(session) = self.peers.get(&name).and_then(|p| p.session) else {
            return;
        };
        if !self.check_token(&name, &heartbeat).0 {
            return;
        }
        let Some(peer) = self.peers.get_mut(&name) else {
            return;
        };
        peer.left = Some(session);
        if peer.member.is_some() {
            self.remove_member(now, &name, DownReason::Left);
            self.note_left();
            self.ring_due = None;
            self.rebuild_ring();
        }
    }

    pub(super) fn drained(&mut self, now: Duration) {
        if let Some(leaving) = self.leaving.as_mut() {
            leaving.drained = true;
        }
        self.leave_timeout(now);
    }

    /// When the leave may end next.
    pub(super) fn leave_due(&self) -> Option<Duration> {
        let leaving = self.leaving.filter(|_| self.state == NodeState::Stopping)?;
        Some(if leaving.drained {
            leaving.linger_until.min(leaving.deadline)
        } else {
            leaving.deadline
        })
    }

    /// Ends the leave if it is due at `now`.
    pub(super) fn leave_timeout(&mut self, now: Duration) {
        let Some(due) = self.leave_due() else {
            return;
        };
        if due > now {
            return;
        }
        let drained = self.leaving.is_some_and(|l| l.drained);
        self.set_state(NodeState::Stopped);
        self.effects.push_back(Effect::Left { drained });
    }

    /// True once the leave began: this node is out of its own ring.
    pub(super) fn is_leaving(&self) -> bool {
        self.leaving.is_some()
    }
}
