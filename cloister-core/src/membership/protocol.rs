//! What the membership machine takes in and gives out: inputs, effects, the
//! heartbeat two Managers exchange, and the assembly report.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Fact;
#[allow(unused_imports)] // for doc links
use super::Membership;
use crate::events::TopologyEvent;
use crate::names::{Incarnation, NodeAddr, NodeName, SentryNode};
use crate::ring::Digest;

/// Identifies one connection to a peer (ractor_cluster's per-connection node
/// id). Only events about a peer's *current* session count: a late
/// disconnect of a session that was already replaced is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// What one cloister Manager tells another, every `heartbeat_interval` and at
/// once on a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's name.
    pub from: NodeName,
    /// The sender's app: heartbeats from another app are ignored.
    pub app: String,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// The digest of the sender's ring, to tell whether members agree.
    pub digest: Digest,
    /// The sender's virtual nodes per member, 0 when its application keeps
    /// its own ring (`ring = "external"`). Nodes that would place keys
    /// differently do not admit each other.
    pub ring_vnodes: u32,
    /// True in the goodbye a leaving node sends.
    pub leaving: bool,
    /// The sender's token for its current session with the receiver: a
    /// random number drawn when that session came up, sent over it only,
    /// so only the receiver learns it. Never 0.
    #[serde(default)]
    pub token: u64,
    /// The receiver's token for this session as the sender last heard it,
    /// 0 before it has heard one. A heartbeat counts only if it echoes the
    /// token the receiver gave its claimed sender: proof that it came from
    /// that peer's session and not from another peer naming it.
    #[serde(default)]
    pub echo: u64,
    /// The sender watches the receiver (see [`monitors`](super::monitors)):
    /// the receiver sends it a heartbeat every `heartbeat_interval`, and the
    /// sender drops the receiver after `heartbeat_timeout` without one.
    /// False stops those heartbeats. A peer that predates the field watches
    /// every member, so it reads as true.
    #[serde(default = "watching_by_default")]
    pub watching: bool,
    /// The sender counts the receiver as a member. A receiver that counts
    /// the sender as a member answers a heartbeat without it at once:
    /// members heartbeat only their watchers, so a lost answer would
    /// otherwise leave the pair admitted on one side only. With a quorum
    /// configured it is also false in a probe of a member the sender does
    /// not watch (see `membership::probes`), for the same answer. A peer
    /// that predates the field reads as true.
    #[serde(default = "watching_by_default")]
    pub admitted: bool,
    /// Members the sender watched and dropped as unresponsive, just now:
    /// pushed once to every member, which drops them too, so a frozen node
    /// leaves every ring within one trip of its watchers' timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresponsive: Vec<Suspect>,
    /// With a quorum configured: what members observed, the sender's own
    /// and those it learned from others, while any member cannot hear
    /// another (see [`Observation`]). Empty in a healthy cluster. Shared:
    /// every heartbeat a node sends until its observations change carries
    /// the same list, so a round of hundreds of heartbeats copies none of
    /// it (the wire form is a plain list).
    #[serde(default, skip_serializing_if = "observations_are_empty")]
    pub observations: Arc<[Observation]>,
    /// The sender took the receiver, this incarnation of it, out of its
    /// ring to end a partial partition: the receiver leaves `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downed: Option<Incarnation>,
    /// Under `sessions = "bounded"`: the sender's life (see
    /// [`Fact::life`]), 0 until it was said down while alive.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub life: u32,
    /// Under `sessions = "bounded"`: facts new to the sender, or its whole
    /// table for a neighbour whose digest differed (see `gossip`). Shared
    /// between the heartbeats of one sending.
    #[serde(default, skip_serializing_if = "facts_are_empty")]
    pub news: Arc<[Fact]>,
    /// Under `sessions = "bounded"`: the digest of the sender's table of
    /// facts; 0 under a full mesh.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub table: u64,
}

/// The members one node watched and cannot hear, as that node said last:
/// the reachability records behind the partial-partition rule (see
/// `membership::reachability`). Only its observer makes a new version; the
/// others pass the latest on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Who observed.
    pub observer: NodeName,
    /// The observer's incarnation: a new one replaces every older version.
    pub incarnation: Incarnation,
    /// Counts up with each change within one incarnation.
    pub version: u64,
    /// The members it watched and stopped hearing; empty once it hears them
    /// all again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<Suspect>,
    /// Nodes it hears although another member's observation says they
    /// cannot be heard: what makes that a partial partition rather than a
    /// crash, a freeze or a clean split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reachable: Vec<Suspect>,
}

/// A member a watcher dropped as unresponsive (see
/// [`Heartbeat::unresponsive`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Suspect {
    /// The member.
    pub node: NodeName,
    /// Its incarnation: a receiver that knows another one ignores the report.
    pub incarnation: Incarnation,
}

fn observations_are_empty(observations: &Arc<[Observation]>) -> bool {
    observations.is_empty()
}

fn facts_are_empty(facts: &Arc<[Fact]>) -> bool {
    facts.is_empty()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn watching_by_default() -> bool {
    true
}

/// Why a heartbeat was dropped unheard (see [`Effect::Dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    /// This node has no session with the peer the heartbeat names, and does
    /// not know it: no state is kept for a name nobody connected as.
    NoSession,
    /// It does not echo the token this node gave the named peer on their
    /// current session: sent by another peer in its name, or over a session
    /// this node has not seen come up yet (then the next one will count).
    NotEchoed,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropReason::NoSession => {
                "dropped a heartbeat naming a peer this node has no session with"
            }
            DropReason::NotEchoed => {
                "dropped a heartbeat that does not echo this node's token for the named peer's \
                 session: another peer sent it in that name, or it came over a session this \
                 node has not seen come up yet"
            }
        })
    }
}

/// Something that happened, fed to [`Membership::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Begin assembling (`Down -> Assembling`).
    Start,
    /// The DNS service answered with these peers (the complete current answer;
    /// this node's own entry may be among them and is skipped).
    Discovered(Vec<SentryNode>),
    /// Resolving the DNS service failed; the error is kept for reports.
    DiscoveryFailed(String),
    /// A dial to `peer` failed before a session was ready.
    DialFailed {
        /// Whom we dialed.
        peer: NodeName,
        /// What went wrong, for the operator.
        error: String,
    },
    /// ractor_cluster opened a connection, either side; its handshake has
    /// not run. It is closed ([`Effect::CloseSession`]) if it does not
    /// authenticate within [`Config::handshake_timeout`](crate::Config::handshake_timeout).
    SessionOpened {
        /// The connection's id.
        session: SessionId,
        /// Accepted on this node's port, not dialed by this node. Only an
        /// accepted connection that closes unauthenticated is a stranger: a
        /// dial that fails its handshake fails as a dial.
        inbound: bool,
        /// Where an accepted connection came from, if known: named in the
        /// log if it never authenticates.
        from: Option<std::net::IpAddr>,
    },
    /// The connection passed the cookie check, and won ractor_cluster's
    /// duplicate election at that moment. It is not ready yet: that comes
    /// as [`Input::SessionUp`], or never, when the election is lost later.
    SessionAuthenticated {
        /// The connection's id.
        session: SessionId,
        /// The name the peer gave, if it is a valid node name.
        peer: Option<NodeName>,
    },
    /// A connection closed before it said whose it was (no peer name). A
    /// connection with a peer name closes as [`Input::SessionDown`].
    ConnectionClosed {
        /// The connection's id.
        session: SessionId,
    },
    /// A session with `peer` became ready (authenticated), whoever dialed.
    SessionUp {
        /// The peer.
        peer: NodeName,
        /// This session's id.
        session: SessionId,
    },
    /// A session with `peer` closed (authenticated or not).
    SessionDown {
        /// The peer.
        peer: NodeName,
        /// The session that closed.
        session: SessionId,
    },
    /// A peer's Manager sent a heartbeat.
    Heartbeat(Heartbeat),
    /// The application asked this node to leave: it goes `Stopping`, says
    /// goodbye to every connected peer, takes itself out of its own ring (so
    /// its lookups name the nodes that own its keys after it) and publishes
    /// [`TopologyEvent::Leaving`](crate::TopologyEvent::Leaving). It ends
    /// with [`Effect::Left`] once drained, or at `drain_timeout`.
    Leave,
    /// The application needs a session with member `peer` (under
    /// `sessions = "bounded"`, to route to it): it is dialed, as a
    /// neighbour is, until a session is up. Nothing happens for a peer
    /// that has a session, or whose address this node does not know.
    Connect {
        /// The member.
        peer: NodeName,
    },
    /// Peer `peer`, connected, runs a cloister node of another `app` and
    /// none of this node's (the runtime saw it, not a heartbeat: nodes of
    /// different apps do not exchange heartbeats): it is refused, and the
    /// report and the log say why.
    OtherApp {
        /// The peer.
        peer: NodeName,
        /// The app it runs, as the peer names it.
        app: String,
    },
    /// The application has handed off what it owned (every drain hold is
    /// released): the leave may end now, after the goodbyes have had
    /// [`GOODBYE_LINGER`](crate::membership::GOODBYE_LINGER) to go out.
    Drained,
}

/// Something for the runtime to carry out, drained with [`Membership::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Open a session to `peer` at `addr` (unless the runtime already has one).
    Dial {
        /// The peer's name.
        peer: NodeName,
        /// Where it listens.
        addr: NodeAddr,
        /// How long the connection may take: the dial timeout, stretched
        /// while dials are slow (see [`Effect::Slow`]).
        timeout: std::time::Duration,
    },
    /// Close this session with `peer` (it stopped answering).
    Disconnect {
        /// The peer.
        peer: NodeName,
        /// The session to close.
        session: SessionId,
    },
    /// Close this connection: it did not authenticate within
    /// [`Config::handshake_timeout`](crate::Config::handshake_timeout)
    /// (garbage on the port, a wrong cookie, a half-finished handshake).
    CloseSession {
        /// The connection's id.
        session: SessionId,
    },
    /// Take `session`, authenticated but not reported ready, as `peer`'s
    /// session ([`Input::SessionUp`]) if it is still open. Comes when a
    /// member's session closed because ractor_cluster elected this one over
    /// it: ractor_cluster reports a session ready only if it is elected at
    /// that moment, so the elected one may never be reported, and waiting
    /// for it would drop a live peer as crashed.
    Adopt {
        /// The peer.
        peer: NodeName,
        /// Its authenticated session.
        session: SessionId,
    },
    /// Connections closed without authenticating, for the operator's log:
    /// the first at once, then a count at most every
    /// [`REPORT_EVERY`](crate::tally::REPORT_EVERY), never a line each.
    Strangers {
        /// How many since the last report.
        count: u64,
        /// The first addresses they came from since the last report, at
        /// most [`STRANGERS_NAMED`](crate::membership::STRANGERS_NAMED),
        /// where known (a connection dialed twice at once and closed
        /// unproven has none).
        from: Vec<std::net::IpAddr>,
    },
    /// This node's wake-up came `late` after it was due, more than a
    /// heartbeat interval: the node did not run meanwhile (an overloaded
    /// machine or a paused process). Its watched members' silence during
    /// that time was not counted against them; for the operator's log.
    Stalled {
        /// How late the wake-up was.
        late: std::time::Duration,
    },
    /// The reachability records held still for `stable_after` and this
    /// node decided which nodes are out of every ring under a partial
    /// partition (none: the partition is over). For the operator's log.
    Downing {
        /// The nodes now out of every ring.
        downed: Vec<NodeName>,
        /// The contested records it decided on, `(observer, subject)`: the
        /// observer cannot hear the subject while another node can.
        records: Vec<(NodeName, NodeName)>,
    },
    /// Under bounded sessions, a member this node watches came back after
    /// this node said it down as unresponsive, and this node still hears
    /// nothing from it: it is alive, others reach it, and the link between
    /// the two fails (a partial partition). It stays a member, and this
    /// node does not say it down again until it hears it. For the
    /// operator's log, once each time.
    Unheard {
        /// The member.
        peer: NodeName,
    },
    /// Dials or handshakes took longer than their timeouts (or are fast
    /// again): these are the timeouts now, between the configured ones and
    /// eight times those. For the operator's log.
    Slow {
        /// How long a dial may take to give a ready session.
        dial_timeout: std::time::Duration,
        /// How long a connection may take to authenticate.
        handshake_timeout: std::time::Duration,
    },
    /// Resolve the DNS service now and answer with [`Input::Discovered`] or
    /// [`Input::DiscoveryFailed`]. Comes again every `discovery_tick`.
    Resolve,
    /// Send this heartbeat to `to`'s Manager.
    SendHeartbeat {
        /// The peer.
        to: NodeName,
        /// What to send.
        heartbeat: Heartbeat,
    },
    /// Tell subscribers.
    Publish(TopologyEvent),
    /// The leave is over (`-> Stopped`): stop the node. Comes once, after
    /// [`Input::Leave`], when the application drained or `drain_timeout`
    /// passed, and never before the goodbyes had
    /// [`GOODBYE_LINGER`](crate::membership::GOODBYE_LINGER) to go out.
    Left {
        /// True when the application said it had drained
        /// ([`Input::Drained`]); false when `drain_timeout` passed first.
        drained: bool,
    },
    /// A peer's heartbeats are refused from now on (it belongs to another
    /// `app`, or would place keys differently); for the operator's log. Emitted when the reason first
    /// appears or changes, not for every refused heartbeat.
    Refused {
        /// The peer.
        peer: NodeName,
        /// Why, in words.
        why: String,
    },
    /// A heartbeat claiming to come from `claimed` was dropped without
    /// counting; for the operator's log. Said once per claimed peer and
    /// session ([`DropReason::NotEchoed`]), or once per unknown name, up to
    /// a fixed number of names ([`DropReason::NoSession`]).
    Dropped {
        /// The sender the heartbeat names.
        claimed: NodeName,
        /// Why it was dropped.
        why: DropReason,
    },
}

/// Where assembly stands: what the node waits for, for progress logs and for
/// the error at the startup deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssemblyReport {
    /// How many members, this node included, make it ready: `consensus`,
    /// or the `quorum` when that needs more.
    pub wanted: usize,
    /// The members so far, sorted, this node included.
    pub members: Vec<NodeName>,
    /// Known peers that are not members, with why.
    pub missing: Vec<MissingPeer>,
    /// The last discovery error, if the last attempt failed.
    pub discovery_error: Option<String>,
}

/// A known peer that is not a member yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingPeer {
    /// Its name.
    pub name: NodeName,
    /// Where it is dialed, if known.
    pub addr: Option<NodeAddr>,
    /// Failed dials in a row.
    pub failed_dials: u32,
    /// Why it is not a member, in words.
    pub why: String,
}
