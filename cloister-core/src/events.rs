//! Topology events: what cloister tells subscribers, as plain serde data.
//!
//! The membership machine publishes these in the order they happen: a change of
//! membership (`NodeUp`/`NodeDown`), then the ring it produced (`RingChanged`),
//! then the node state it led to (`StateChanged`). Changes that arrive
//! together (a cluster forming) share one `RingChanged` after all their
//! `NodeUp`/`NodeDown` events. Two nodes that see the same membership changes
//! end with the same ring and the same digest.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{Incarnation, NodeName};
use crate::ring::Digest;

/// The state of this node's view of the cluster, named after cloister's monitor.
///
/// ```text
/// Down -> Assembling -> Ready <-> Rehashing
///              \          |  ^       |
///               \         v  |       v
///                \       NoQuorum <--'      (only with a `quorum`)
///                 \
///                  `----> Stopping -> Stopped  (from any running state,
///                                              on leave, after the drain)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Not started yet.
    Down,
    /// Started, with fewer than `consensus` members so far. The boot is held here.
    Assembling,
    /// At least `consensus` members, this node included.
    Ready,
    /// Was ready, then fell below `consensus`; returns to `Ready` when enough
    /// members are back.
    Rehashing,
    /// Was ready, then saw fewer members than `quorum` (the minority side of
    /// a partition, or most of the cluster gone): routing by key is refused
    /// and no sentry is named. It keeps its sessions and dials, and is ready
    /// again when quorum is back.
    NoQuorum,
    /// Leaving: peers have been told, the application drains (see
    /// [`TopologyEvent::Leaving`]); not ready.
    Stopping,
    /// Left. Final.
    Stopped,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Down => "down",
            NodeState::Assembling => "assembling",
            NodeState::Ready => "ready",
            NodeState::Rehashing => "rehashing",
            NodeState::NoQuorum => "no_quorum",
            NodeState::Stopping => "stopping",
            NodeState::Stopped => "stopped",
        })
    }
}

/// Why a node left this node's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// Its session closed: the process died or the connection broke.
    Crashed,
    /// It stayed connected but sent no heartbeat for `heartbeat_timeout`
    /// (frozen, overloaded, or cut off by a partition).
    Unresponsive,
    /// It said goodbye.
    Left,
    /// It came back as another incarnation over a new session: the old process
    /// is gone and the new one, under the same name, replaced it (a `NodeUp` follows).
    Restarted,
    /// With a quorum configured, it was taken out of every ring to end a
    /// partial partition: some members could not reach it, or it could not
    /// reach them, for `stable_after`, while others still could (see
    /// `Config::stable_after`). It is back once every member hears it.
    Downed,
}

impl DownReason {
    /// The reason as events and metrics spell it: `crashed`, `unresponsive`...
    pub fn name(self) -> &'static str {
        match self {
            DownReason::Crashed => "crashed",
            DownReason::Unresponsive => "unresponsive",
            DownReason::Left => "left",
            DownReason::Restarted => "restarted",
            DownReason::Downed => "downed",
        }
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// This node's view of the cluster at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// This node's name.
    pub node: NodeName,
    /// This node's incarnation.
    pub incarnation: Incarnation,
    /// This node's state.
    pub state: NodeState,
    /// How many members (this node included) make the cluster ready.
    pub consensus: usize,
    /// How many members (this node included) hold quorum now; `None` when
    /// `quorum = "off"`. Below it, a node that was ready is `NoQuorum`.
    #[serde(default)]
    pub quorum: Option<usize>,
    /// The ring's members, sorted; this node is one of them.
    pub members: Vec<NodeName>,
    /// The ring's digest: a hash of the member names. Equal digests mean equal
    /// rings: the digest does not cover `ring_vnodes`, but members must share
    /// it (a peer with another value is refused).
    pub digest: Digest,
    /// True when every member this node watches last sent this node's ring
    /// digest: the members agree on the ring (watching links every member
    /// to every other, so when every member says so, all rings agree).
    ///
    /// Usually false in the snapshot of `StateChanged { to: Ready }`: a node
    /// turns ready the moment it has admitted enough members, and their
    /// heartbeats carry the new ring's digest from their next round, about
    /// one `heartbeat_interval` (default 300 ms) later. No event marks it
    /// turning true: read it from `Cloister::snapshot()` (lock-free) when
    /// you need it, or compare `digest` with what your peers report.
    pub converged: bool,
    /// The member marked to run singleton work: the one up longest (smallest
    /// incarnation), ties broken by name. Members that agree on membership
    /// agree on it without exchanging a message; two sides of a partition
    /// each have their own (compare digests to know whether you agree),
    /// unless a `quorum` is configured: then only the side that holds it
    /// names one, and this is `None` elsewhere.
    pub sentry: Option<NodeName>,
}

impl Snapshot {
    /// Whether this view holds quorum: always with `quorum = "off"`; with a
    /// quorum, exactly when a sentry is named (the sentry is named only
    /// while the members hold quorum, the tie breaker's half included).
    pub fn holds_quorum(&self) -> bool {
        self.quorum.is_none() || self.sentry.is_some()
    }
}

/// A change of topology, published to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TopologyEvent {
    /// The view when a subscriber subscribed: always the first event it gets.
    Snapshot {
        /// The view at that moment.
        snapshot: Snapshot,
    },
    /// The node state changed; `snapshot` is the view right after the change.
    StateChanged {
        /// The state before.
        from: NodeState,
        /// The state after.
        to: NodeState,
        /// The view right after the change.
        snapshot: Snapshot,
    },
    /// A node became a member.
    NodeUp {
        /// Its name.
        node: NodeName,
        /// The incarnation that joined.
        incarnation: Incarnation,
    },
    /// A node stopped being a member.
    NodeDown {
        /// Its name.
        node: NodeName,
        /// The incarnation that left.
        incarnation: Incarnation,
        /// Why.
        reason: DownReason,
    },
    /// The sentry moved to another member, or (with a `quorum`) there is
    /// none any more, or there is one again.
    SentryChanged {
        /// The new sentry; `None` while the members do not hold quorum.
        sentry: Option<NodeName>,
    },
    /// The ring changed.
    RingChanged {
        /// The new members, sorted.
        members: Vec<NodeName>,
        /// The new ring's digest.
        digest: Digest,
    },
    /// This node is leaving: it is `stopping`, its peers have been told
    /// (they report it `left`), and its own ring no longer holds it, so
    /// `node_for` names the node that owns each key after it. Hand off
    /// what this node owns, then release your drain hold: the node stops
    /// once every hold is released, or after `drain_timeout`.
    Leaving {
        /// How long the node waits for the holds, from now.
        #[serde(with = "humantime_serde")]
        drain_timeout: std::time::Duration,
    },
}

impl TopologyEvent {
    /// The event's name as it appears in the serialized form (`"node_up"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            TopologyEvent::Snapshot { .. } => "snapshot",
            TopologyEvent::StateChanged { .. } => "state_changed",
            TopologyEvent::NodeUp { .. } => "node_up",
            TopologyEvent::NodeDown { .. } => "node_down",
            TopologyEvent::RingChanged { .. } => "ring_changed",
            TopologyEvent::SentryChanged { .. } => "sentry_changed",
            TopologyEvent::Leaving { .. } => "leaving",
        }
    }
}
