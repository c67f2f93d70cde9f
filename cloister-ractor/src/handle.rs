//! The ring handle: lock-free reads of the latest ring and view, from any thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cloister_core::{Digest, NodeName, NodeState, Ring, Snapshot};
use ractor::{ActorCell, ActorRef};

use crate::drain::{DrainHold, DrainHolds};
use crate::manager::{CloisterMessage, Internal};
use crate::members::is_closing;
use crate::stats::{Counters, Stats};

/// What a [`Cloister`] handle reads: replaced whole by the Manager on every
/// change, never mutated.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) ring: Arc<Ring>,
    pub(crate) snapshot: Snapshot,
    /// Ready ractor_cluster sessions by id: which node a remote actor is on
    /// (a remote `ActorId`'s node is its session's id).
    pub(crate) sessions: Arc<BTreeMap<u64, NodeName>>,
    /// The actors of those sessions (where the Manager saw them open).
    pub(crate) links: Arc<BTreeMap<u64, ActorCell>>,
    /// Each group's actor on each node, as routing found it in this view
    /// (see `routing::View::actor_on`): a lookup by name instead of a scan
    /// of the group. Starts empty with every view.
    pub(crate) found: ArcSwap<Found>,
    /// Why the Manager is gone, once it is: routing then fails with
    /// [`RouteError::Stopped`](crate::RouteError::Stopped).
    pub(crate) stopped: Option<String>,
    /// Under `sessions = "bounded"`: a member without a session is
    /// [`RouteError::Connecting`](crate::RouteError::Connecting), and the
    /// Manager is asked to dial it.
    pub(crate) on_demand: bool,
}

/// Group name -> node -> that node's actor in the group.
pub(crate) type Found = HashMap<String, HashMap<NodeName, ActorCell>>;

impl View {
    /// A view with nothing found yet.
    pub(crate) fn new(
        ring: Arc<Ring>,
        snapshot: Snapshot,
        sessions: Arc<BTreeMap<u64, NodeName>>,
        links: Arc<BTreeMap<u64, ActorCell>>,
        on_demand: bool,
    ) -> View {
        View {
            ring,
            snapshot,
            sessions,
            links,
            found: ArcSwap::default(),
            stopped: None,
            on_demand,
        }
    }

    /// The view a handle keeps once the Manager is gone: state `Stopped`,
    /// no members, no sessions, no sentry of its own, and the cause.
    pub(crate) fn stopped(mut snapshot: Snapshot, ring: Arc<Ring>, cause: String) -> View {
        snapshot.state = NodeState::Stopped;
        snapshot.members.clear();
        snapshot.sentry = None;
        snapshot.converged = false;
        View {
            ring,
            snapshot,
            sessions: Arc::default(),
            links: Arc::default(),
            found: ArcSwap::default(),
            stopped: Some(cause),
            on_demand: false,
        }
    }

    /// Whether `node` has a ready session that is not closing. A session
    /// dies before its close is reported (ractor stops its actor, and with
    /// it the proxies of remote actors, first), so the status says it first.
    pub(crate) fn connected(&self, node: &NodeName) -> bool {
        self.sessions.iter().any(|(id, peer)| {
            peer == node && self.links.get(id).is_none_or(|link| !is_closing(link))
        })
    }
}

/// A cheap, cloneable handle on this node's view of the cluster.
///
/// Every read loads the latest snapshot the Manager published (an atomic
/// pointer swap): no actor round trip, callable from any thread, never
/// blocking. Two members whose `digest()` is equal answer `node_for` alike
/// (members share `ring_vnodes`: a peer with another value is refused).
///
/// ```no_run
/// # fn demo(cloister: cloister_ractor::Cloister) {
/// match cloister.node_for("user:42") {
///     Some(owner) if owner == *cloister.me() => { /* handle it here */ }
///     Some(owner) => { /* forward to owner */ let _ = owner; }
///     None => { /* only under `ring = "external"`: place it with your own ring */ }
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Cloister {
    view: Arc<ArcSwap<View>>,
    me: NodeName,
    counters: Arc<Counters>,
    holds: Arc<DrainHolds>,
    /// The Manager, asked for sessions on demand (`sessions = "bounded"`).
    manager: ActorRef<CloisterMessage>,
}

impl Cloister {
    pub(crate) fn new(
        view: Arc<ArcSwap<View>>,
        me: NodeName,
        counters: Arc<Counters>,
        holds: Arc<DrainHolds>,
        manager: ActorRef<CloisterMessage>,
    ) -> Self {
        Cloister {
            view,
            me,
            counters,
            holds,
            manager,
        }
    }

    /// Asks the Manager for a session with member `node` (`sessions =
    /// "bounded"`); said again while it is dialed, it changes nothing.
    pub(crate) fn request_session(&self, node: &NodeName) {
        let ask = CloisterMessage::Internal(Internal::Connect(node.clone()));
        let _ = self.manager.cast(ask); // a stopped Manager: the view says Stopped
    }

    /// Takes a drain hold: when this node leaves ([`crate::leave`], or
    /// SIGTERM through [`crate::leave_on_signal`]), it waits for every hold
    /// to be released (or for `drain_timeout`) before it stops, so what it
    /// owns can be handed off. `what` names the holder in the log and in
    /// [`LeaveOutcome::DrainTimedOut`](crate::LeaveOutcome::DrainTimedOut).
    ///
    /// Take it at start, before any leave; on
    /// [`TopologyEvent::Leaving`](cloister_core::TopologyEvent::Leaving),
    /// hand off to the owners `node_for` names now (this node is out of its
    /// own ring by then), then drop the hold.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// let hold = cloister.hold_drain("sessions store");
    /// // ... on `TopologyEvent::Leaving`: hand off what this node owns, then
    /// hold.release();
    /// # }
    /// ```
    pub fn hold_drain(&self, what: impl Into<String>) -> DrainHold {
        self.holds.take(what.into())
    }

    /// What the Manager has done so far: timer wake-ups, events, strangers
    /// turned away. Counts only grow; read twice for a rate.
    ///
    /// # Examples
    ///
    /// Check that an idle node wakes no more often than it did at start:
    ///
    /// ```no_run
    /// # async fn demo(cloister: cloister_ractor::Cloister) {
    /// let before = cloister.stats().wakeups;
    /// tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    /// println!("{} wake-ups a second", cloister.stats().wakeups - before);
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.counters.read()
    }

    /// Where this node's management endpoint listens (`/ready`, `/alive`,
    /// `/members`, `/metrics`): `None` unless
    /// `management_addr` is set. With port 0 in `management_addr`, this is
    /// the port the OS picked.
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// if let Some(addr) = cloister.management_addr() {
    ///     println!("probes at http://{addr}/ready");
    /// }
    /// # }
    /// ```
    pub fn management_addr(&self) -> Option<std::net::SocketAddr> {
        self.counters.management_addr()
    }

    #[cfg(feature = "management")]
    pub(crate) fn set_management_addr(&self, addr: std::net::SocketAddr) {
        self.counters.set_management_addr(addr);
    }

    /// The whole current view, for the routing functions.
    pub(crate) fn view(&self) -> arc_swap::Guard<Arc<View>> {
        self.view.load()
    }

    /// This node's name.
    ///
    /// # Examples
    ///
    /// Print this node's name, or compare an owner with it:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// println!("running as {}", cloister.me()); // e.g. `shop@10.0.0.1`
    /// let local = cloister.node_for("user:42").as_ref() == Some(cloister.me());
    /// # let _ = local; }
    /// ```
    pub fn me(&self) -> &NodeName {
        &self.me
    }

    /// The member that owns `key`. `None` under `ring = "external"` (the
    /// application keeps its own ring), never otherwise: the Manager's ring
    /// always holds at least this node.
    ///
    /// # Examples
    ///
    /// Find where a key lives, from any thread, without an actor round trip:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// if let Some(owner) = cloister.node_for("user:42") {
    ///     println!("user:42 is kept on {owner}");
    /// }
    /// # }
    /// ```
    ///
    /// It answers from this node's ring also while a configured `quorum`
    /// is not held, when the side that holds it may place the key
    /// elsewhere: check [`Cloister::state`], or route with
    /// [`Cloister::route`], which refuses then.
    pub fn node_for(&self, key: impl AsRef<[u8]>) -> Option<NodeName> {
        self.view.load().ring.node_for(key).cloned()
    }

    /// Up to `n` distinct members for `key`, its owner first: where to keep
    /// replicas.
    ///
    /// # Examples
    ///
    /// Pick the owner and two replicas of a key (fewer in a smaller cluster):
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// let replicas = cloister.nodes_for("user:42", 3);
    /// assert_eq!(replicas.first(), cloister.node_for("user:42").as_ref());
    /// for node in &replicas[1..] {
    ///     println!("copy to {node}");
    /// }
    /// # }
    /// ```
    pub fn nodes_for(&self, key: impl AsRef<[u8]>, n: usize) -> Vec<NodeName> {
        self.view
            .load()
            .ring
            .nodes_for(key, n)
            .into_iter()
            .cloned()
            .collect()
    }

    /// True when this node owns `key` (cloister's `mine?`).
    ///
    /// # Examples
    ///
    /// Keep only the keys this node is responsible for:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister, keys: Vec<String>) {
    /// let mine: Vec<String> = keys.into_iter().filter(|key| cloister.is_mine(key)).collect();
    /// # let _ = mine; }
    /// ```
    pub fn is_mine(&self, key: impl AsRef<[u8]>) -> bool {
        self.view.load().ring.node_for(key) == Some(&self.me)
    }

    /// The members, sorted, this node included (but once it leaves: from
    /// [`TopologyEvent::Leaving`](cloister_core::TopologyEvent::Leaving) on,
    /// the members its peers keep).
    ///
    /// # Examples
    ///
    /// List the cluster, for a status page or a log line:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// let members = cloister.members();
    /// println!("{} member(s): {members:?}", members.len());
    /// # }
    /// ```
    pub fn members(&self) -> Vec<NodeName> {
        self.view.load().ring.members().to_vec()
    }

    /// The peers this node has a ready ractor_cluster session with, sorted:
    /// every other member under a full mesh; under `sessions = "bounded"`,
    /// its neighbours and the members it opened sessions to for routing.
    /// Read from the Manager's last published view, like every other read
    /// here: no message to the Manager.
    ///
    /// # Examples
    ///
    /// Log how many sessions this node holds:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// let sessions = cloister.sessions();
    /// println!("{} session(s): {sessions:?}", sessions.len());
    /// # }
    /// ```
    pub fn sessions(&self) -> Vec<NodeName> {
        let mut peers: Vec<NodeName> = self.view.load().sessions.values().cloned().collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// The current ring itself, for many lookups against one version.
    ///
    /// # Examples
    ///
    /// Place a batch of keys against one ring, even if the topology changes
    /// meanwhile:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister, keys: &[&str]) {
    /// let ring = cloister.ring();
    /// for key in keys {
    ///     println!("{key} -> {:?}", ring.node_for(key));
    /// }
    /// # }
    /// ```
    pub fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.view.load().ring)
    }

    /// This node's state. After a [`leave`](crate::leave) it is `Stopping`
    /// while it drains, then `Stopped`. Once the Manager is gone, for whatever reason (a leave,
    /// a failed child, a panic, its supervisor stopping it), every handle it
    /// gave out says `Stopped`, has no members and no sentry, and routing
    /// fails with [`RouteError::Stopped`](crate::RouteError::Stopped) naming
    /// the cause. A supervisor that restarts the Manager gets a new handle
    /// from the new Manager; handles of the old one stay `Stopped`.
    ///
    /// # Examples
    ///
    /// Refuse work while the cluster is below `consensus`:
    ///
    /// ```no_run
    /// use cloister_core::NodeState;
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// if cloister.state() != NodeState::Ready {
    ///     eprintln!("not ready ({}), try again later", cloister.state());
    /// }
    /// # }
    /// ```
    pub fn state(&self) -> NodeState {
        self.view.load().snapshot.state
    }

    /// The sentry: the member up longest, marked to run singleton work
    /// (cloister's sentry). Every member that agrees on the membership (equal
    /// [`Cloister::digest`]) agrees on it, with no extra message. Without a
    /// `quorum`, two sides of a partition each have their own; with one,
    /// only the side that holds quorum names a sentry, and this is `None`
    /// on the other.
    ///
    /// # Examples
    ///
    /// Say where singleton work runs:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// match cloister.sentry() {
    ///     Some(sentry) => println!("singleton jobs run on {sentry}"),
    ///     None => println!("no quorum: no singleton job runs on this side"),
    /// }
    /// # }
    /// ```
    pub fn sentry(&self) -> Option<NodeName> {
        self.view.load().snapshot.sentry.clone()
    }

    /// Whether this node's members hold the configured `quorum` (always
    /// with `quorum = "off"`), and its Manager runs. Routing by key refuses
    /// with [`RouteError::NoQuorum`](crate::RouteError::NoQuorum) while this
    /// is false; an application that writes through other paths (such as
    /// [`Cloister::actor_on`]) checks it before it acknowledges a write.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// if !cloister.holds_quorum() {
    ///     eprintln!("refusing the write: this side of the cluster has no quorum");
    /// }
    /// # }
    /// ```
    pub fn holds_quorum(&self) -> bool {
        let view = self.view.load();
        view.stopped.is_none() && view.snapshot.holds_quorum()
    }

    /// True when this node is the sentry.
    ///
    /// # Examples
    ///
    /// Run a periodic cleanup on exactly one member (per side of a partition,
    /// or only on the side with quorum when a `quorum` is configured):
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// if cloister.is_sentry() {
    ///     // purge expired sessions cluster-wide
    /// }
    /// # }
    /// ```
    pub fn is_sentry(&self) -> bool {
        let view = self.view.load();
        view.stopped.is_none() && view.snapshot.sentry.as_ref() == Some(&self.me)
    }

    /// The digest of the current ring.
    ///
    /// # Examples
    ///
    /// Check that a peer places keys as this node does, from a digest it
    /// reported:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister, peer_digest: cloister_core::Digest) {
    /// if cloister.digest() != peer_digest {
    ///     println!("rings differ: ours is {}", cloister.digest());
    /// }
    /// # }
    /// ```
    pub fn digest(&self) -> Digest {
        self.view.load().ring.digest()
    }

    /// The whole view: state, members, digest, whether members agree.
    /// `converged` is usually false right at `ready` (the members' next
    /// heartbeats carry the new ring, a `heartbeat_interval` later) and
    /// turns true here without an event.
    ///
    /// # Examples
    ///
    /// Report health from one consistent view:
    ///
    /// ```no_run
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// let view = cloister.snapshot();
    /// println!(
    ///     "{} is {} with {}/{} members, converged: {}",
    ///     view.node, view.state, view.members.len(), view.consensus, view.converged
    /// );
    /// # }
    /// ```
    ///
    /// Wait, bounded, until every member agrees on the ring:
    ///
    /// ```no_run
    /// # async fn demo(cloister: cloister_ractor::Cloister) {
    /// use std::time::Duration;
    /// for _ in 0..100 {
    ///     if cloister.snapshot().converged {
    ///         break;
    ///     }
    ///     tokio::time::sleep(Duration::from_millis(20)).await;
    /// }
    /// # }
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        self.view.load().snapshot.clone()
    }
}
