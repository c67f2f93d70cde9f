//! ractor_cluster's session events, turned into Manager messages.
//!
//! The callbacks run inside the NodeServer actor, so they only cast. What
//! counts: a session is up when it is *ready* (authenticated and synced); a
//! close counts only for the session it names (the core ignores a close of a
//! session that was already replaced); an opened session is watched so one
//! that never finishes its handshake can be closed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use ractor::{ActorCell, ActorRef};
use ractor_cluster::node::{NodeEventSubscription, NodeServerSessionInformation};
use ractor_cluster::NodeSessionMessage;

use crate::accept::gate::Gates;
use crate::manager::{CloisterMessage, Internal};

/// One session event, as the Manager needs it.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    /// A TCP connection arrived or was made; its handshake has not run.
    Opened {
        id: u64,
        actor: ActorRef<NodeSessionMessage>,
        inbound: bool,
        /// The peer's address, as the accept loop saw it for an inbound
        /// one (`tls_check_names` matches the two).
        addr: String,
    },
    /// The session passed the cookie check (and won any duplicate election).
    Authenticated { id: u64, peer: Option<String> },
    /// The session is ready: the peer is up.
    Ready { id: u64, peer: String },
    /// A session the NodeServer lists but never reported ready: found when
    /// dialing its peer (see `ManagerState::dial`), or elected over the
    /// peer's ready session (`Effect::Adopt`).
    Adopted {
        id: u64,
        peer: String,
        actor: ActorCell,
    },
    /// The session closed (for any reason, authenticated or not).
    Closed { id: u64, peer: Option<String> },
}

/// Forwards NodeServer events to the Manager, and opens the gate of a
/// plain inbound connection when its session authenticates
/// ([`crate::accept::gate`]).
pub(crate) struct Forwarder {
    pub(crate) manager: ActorRef<CloisterMessage>,
    pub(crate) gates: Arc<Gates>,
    pub(crate) authenticated: Arc<Authenticated>,
}

/// The sessions the NodeServer has reported authenticated and not closed,
/// as of its last callback: ahead of the Manager's mailbox, where the same
/// news may still wait behind a handshake deadline that fired a moment
/// before. The Manager does not close as "never authenticated" a session
/// listed here (on a loaded machine it did: the survivor of a duplicate
/// election, closed just after the loser, left both nodes without a session
/// and each took the other for crashed).
#[derive(Debug, Default)]
pub(crate) struct Authenticated(Mutex<HashSet<u64>>);

impl Authenticated {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether session `id` has authenticated, as far as the NodeServer said.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.set().contains(&id)
    }
}

impl Forwarder {
    fn send(&self, event: SessionEvent) {
        let _ = self
            .manager
            .cast(CloisterMessage::Internal(Internal::Session(event)));
    }
}

fn peer(ses: &NodeServerSessionInformation) -> Option<String> {
    ses.peer_name.as_ref().map(|p| p.name.clone())
}

impl NodeEventSubscription for Forwarder {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Opened {
            id: ses.node_id,
            actor: ses.actor,
            inbound: ses.is_server,
            addr: ses.peer_addr,
        });
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.authenticated.set().remove(&ses.node_id);
        let peer = peer(&ses);
        self.send(SessionEvent::Closed {
            id: ses.node_id,
            peer,
        });
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if ses.is_server {
            self.gates.authenticated(&ses.peer_addr);
        }
        self.authenticated.set().insert(ses.node_id);
        self.send(SessionEvent::Authenticated {
            id: ses.node_id,
            peer: peer(&ses),
        });
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        if let Some(peer) = peer(&ses) {
            self.send(SessionEvent::Ready {
                id: ses.node_id,
                peer,
            });
        }
    }
}
