//! What a node can tell an operator about itself: the view, every known
//! peer, the ring's shares, counters and recent events. The management
//! endpoint serves it; an application can also ask for it with [`inspect`].

use std::collections::VecDeque;
use std::time::Duration;

use cloister_core::membership::{PeerStatus, Telemetry};
use cloister_core::{NodeName, Snapshot, TopologyEvent};
use ractor::ActorRef;
use serde::Serialize;

use crate::{CloisterError, CloisterMessage, Stats};

/// How many recent topology events a Manager keeps for [`Inspection`].
pub const RECENT_EVENTS: usize = 64;

/// One node's account of itself at one moment: see [`inspect`].
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The view: state, members, digest, sentry, quorum.
    pub snapshot: Snapshot,
    /// Every peer this node knows, member or not, by name.
    pub peers: Vec<PeerStatus>,
    /// Each member's share of the keys (empty under `ring = "external"`).
    pub shares: Vec<Share>,
    /// What the membership machine counted: dials, events by kind,
    /// heartbeat gaps, detections, the time to `Ready`.
    pub telemetry: Telemetry,
    /// What the Manager counted: wake-ups, events, strangers.
    pub stats: Stats,
    /// Milliseconds since the Manager started.
    pub uptime_ms: u64,
    /// The last [`RECENT_EVENTS`] topology events, oldest first.
    pub recent_events: Vec<RecentEvent>,
}

/// A member's share of the keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    /// The member.
    pub node: NodeName,
    /// Its share, 0.0 to 1.0.
    pub share: f64,
}

/// A topology event and when it was published.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEvent {
    /// Milliseconds since the Manager started.
    pub at_ms: u64,
    /// The event.
    pub event: TopologyEvent,
}

/// The recent events a Manager keeps, at most [`RECENT_EVENTS`].
#[derive(Debug, Default)]
pub(crate) struct Recent(VecDeque<RecentEvent>);

impl Recent {
    pub(crate) fn push(&mut self, at: Duration, event: &TopologyEvent) {
        if self.0.len() == RECENT_EVENTS {
            self.0.pop_front();
        }
        let event = match event {
            // The view is in the inspection already; the last ring does not
            // need its snapshot's copy.
            TopologyEvent::StateChanged { from, to, snapshot } => TopologyEvent::StateChanged {
                from: *from,
                to: *to,
                snapshot: Snapshot {
                    members: Vec::new(),
                    ..snapshot.clone()
                },
            },
            other => other.clone(),
        };
        self.0.push_back(RecentEvent {
            at_ms: millis(at),
            event,
        });
    }

    pub(crate) fn to_vec(&self) -> Vec<RecentEvent> {
        self.0.iter().cloned().collect()
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Asks the Manager for its [`Inspection`], waiting at most `timeout`.
///
/// # Examples
///
/// Print who this node watches and how long ago it heard each:
///
/// ```no_run
/// # async fn demo(manager: ractor::ActorRef<cloister_ractor::CloisterMessage>) {
/// let inspection = cloister_ractor::inspect(&manager, std::time::Duration::from_secs(1))
///     .await
///     .expect("the Manager answers");
/// for peer in inspection.peers.iter().filter(|p| p.watched) {
///     println!("{} heard {:?} ms ago", peer.name, peer.heard_ms_ago);
/// }
/// # }
/// ```
pub async fn inspect(
    manager: &ActorRef<CloisterMessage>,
    timeout: Duration,
) -> Result<Inspection, CloisterError> {
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    ractor::call_t!(manager, CloisterMessage::Inspect, millis)
        .map_err(|e| CloisterError::ManagerGone(e.to_string()))
}
