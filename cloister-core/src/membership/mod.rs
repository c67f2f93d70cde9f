//! The membership state machine: who is in the cluster, when to dial, when to
//! give up on a peer, and which state this node is in.
//!
//! It is sans-I/O in the style of quinn-proto: the runtime calls
//! [`Membership::handle`] with what happened and [`Membership::handle_timeout`]
//! when [`Membership::poll_timeout`] comes due, always passing the time as a
//! value, then drains [`Membership::poll`] and carries out each [`Effect`].
//!
//! The protocol, step by step:
//! 1. `Start` moves `Down -> Assembling`. A static sentry list is known at once;
//!    a DNS service is asked for with [`Effect::Resolve`], again every
//!    `discovery_tick`, and its answer comes back as [`Input::Discovered`].
//! 2. Every known peer without a session is dialed ([`Effect::Dial`]). A dial
//!    that fails, or that gives no ready session within `dial_timeout` (a wrong
//!    cookie, a frozen peer), is retried after an exponential backoff with jitter.
//! 3. A ready session is not yet membership: a peer is a member once its
//!    Manager's [`Heartbeat`] arrives over that session (a ractor_cluster peer
//!    without a cloister Manager for the same app never joins the ring). On a
//!    new session, each side sends a heartbeat at once, and answers a first
//!    heartbeat from a new member with one of its own, so both sides admit each
//!    other within a round trip and a half.
//!
//!    A heartbeat names its sender, but the runtime cannot tell which session
//!    it came over, and any peer with the cookie can reach any herald. So
//!    each side draws a random token per session and puts it in every
//!    heartbeat it sends over that session; the other side echoes it. Only a
//!    heartbeat that echoes the token this node gave the named peer on their
//!    current session counts; anything else is dropped, creates no state, and
//!    is reported ([`Effect::Dropped`]). A first hello (echo 0) only teaches
//!    its token, which this node echoes at once.
//! 4. Members count towards `consensus` (this node included): enough makes the
//!    node `Ready`; falling short later makes it `Rehashing`.
//! 5. A member leaves the ring when its current session closes (`Crashed`), when
//!    it sends no heartbeat for `heartbeat_timeout` (`Unresponsive`, and its
//!    session is dropped), when it says goodbye (`Left`: late heartbeats of
//!    that session are ignored, a new session is heard again), or when it
//!    comes back as another incarnation over a new session (`Restarted`,
//!    immediately followed by `NodeUp`), whichever way the wall clocks of the
//!    two processes compare.
//!
//! Events and effects never depend on a HashMap's order: peers live in a
//! BTreeMap, so two nodes with the same inputs emit the same outputs.

mod bounded;
mod downing;
mod gossip;
mod handshakes;
mod leave;
mod links;
mod members;
mod monitors;
mod peer;
mod probes;
mod protocol;
mod quorum;
mod reachability;
mod sending;
mod telemetry;
mod topology;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, RingMode, Sentry, Sessions};
use crate::events::{DownReason, NodeState, Snapshot, TopologyEvent};
use crate::names::{Incarnation, NodeName, SentryNode};
use crate::ring::Ring;
use crate::tally::Tally;
use crate::timer::next_round;

pub use downing::{downed, Who};
use gossip::Facts;
pub use gossip::{Fact, TOMBSTONE_INTERVALS};
pub use handshakes::{name_stranger, STRANGERS_NAMED};
use leave::Leaving;
pub use leave::GOODBYE_LINGER;
pub use monitors::{monitors, neighbours};
use peer::{backoff, earliest, Dial, Grace, Member, Peer, TokenSource};
pub use protocol::{
    AssemblyReport, DropReason, Effect, Heartbeat, Input, MissingPeer, Observation, SessionId,
    Suspect,
};
use reachability::Reachability;
pub use telemetry::{Histogram, PeerStatus, Telemetry, BUCKETS};

/// One node's membership state machine. See the module docs for the protocol.
#[derive(Debug)]
pub struct Membership {
    config: Config,
    me: NodeName,
    incarnation: Incarnation,
    state: NodeState,
    peers: BTreeMap<NodeName, Peer>,
    ring: Arc<Ring>,
    /// The member up longest, if the members hold quorum: see
    /// [`Membership::sentry`].
    sentry: Option<NodeName>,
    /// The last sentry named while the members held quorum: the tie
    /// breaker `oldest` keeps the half that holds it.
    quorum_sentry: Option<NodeName>,
    /// The most members this node has seen at once, less those that left
    /// gracefully since: the cluster's size for a majority in service mode.
    largest: usize,
    rng: fastrand::Rng,
    /// Session tokens: unpredictable to peers, unlike `rng`.
    token_source: TokenSource,
    effects: VecDeque<Effect>,
    next_resolve: Option<Duration>,
    next_heartbeat: Option<Duration>,
    /// When to resend heartbeats to connected peers not yet admitted.
    next_introduce: Option<Duration>,
    /// When to rebuild the ring: the members changed (see
    /// `membership_changed`).
    ring_due: Option<Duration>,
    /// When the ring was last rebuilt.
    last_rebuild: Option<Duration>,
    /// Members admitted since the last rebuild, answered right after it.
    answer_after_rebuild: BTreeSet<NodeName>,
    /// A lower bound of the earliest per-peer timer; recomputed on timeouts.
    next_peer_timer: Option<Duration>,
    discovery_error: Option<String>,
    /// Connections still in their handshake.
    handshakes: BTreeMap<SessionId, handshakes::Handshake>,
    /// How many times the dial and handshake timeouts are doubled now:
    /// see `handshakes`.
    stretch: u32,
    /// Every member in its grace (see `Grace`), and maybe some whose grace
    /// ended meanwhile: `end_graces` looks at these only, not every peer.
    in_grace: BTreeSet<NodeName>,
    /// Sessions of known peers that authenticated and are not up yet.
    authenticated: BTreeMap<SessionId, NodeName>,
    /// Connections that closed without authenticating, for the log.
    strangers: handshakes::Strangers,
    /// Names without a session whose heartbeats were dropped and reported,
    /// at most [`MAX_REPORTED_STRANGERS`]: each is reported once.
    unknown_names: BTreeSet<NodeName>,
    /// Who cannot reach whom, and who is downed for it: see `reachability`.
    reach: Reachability,
    /// What this node counted about itself, for operators.
    telemetry: Telemetry,
    /// When `Input::Start` came, for `Telemetry::ready_after`.
    started_at: Option<Duration>,
    /// The leave under way, once `Input::Leave` came.
    leaving: Option<Leaving>,
    /// When this node last found that it had not run for a while (see
    /// `notice_stall`).
    woke_at: Option<Duration>,
    /// Under `sessions = "bounded"`: what this node knows of every member
    /// (see `gossip`); empty under a full mesh.
    facts: Facts,
    /// Facts new to this node, to pass on to its neighbours at `news_due`.
    outbox: Vec<Fact>,
    /// When to send the outbox.
    news_due: Option<Duration>,
    /// When the outbox was last sent.
    last_news: Option<Duration>,
    /// This node's life (see [`Fact::life`]): bumped when it learns that it
    /// was said down while alive.
    life: u32,
    /// Its neighbours under bounded sessions.
    plan: bounded::Plan,
    /// How many peers are members: kept as they change, since counting
    /// them costs a pass over every peer, per change (O(n²) while a
    /// cluster forms).
    members: usize,
}

/// How many unknown names' dropped heartbeats are reported, at most: the
/// memory kept for names nobody connected as stays bounded.
const MAX_REPORTED_STRANGERS: usize = 32;

impl Membership {
    /// A node named `me`, in state `Down`. `seed` drives the dial jitter, so a
    /// simulation replays exactly; the runtime passes a random seed.
    pub fn new(config: Config, me: NodeName, incarnation: Incarnation, seed: u64) -> Self {
        let ring = Arc::new(build_ring(&config, [me.clone()]));
        let mut m = Membership {
            config,
            sentry: None,
            quorum_sentry: None,
            largest: 1,
            me,
            incarnation,
            state: NodeState::Down,
            peers: BTreeMap::new(),
            ring,
            rng: fastrand::Rng::with_seed(seed),
            token_source: TokenSource::new(seeded_key(seed)),
            effects: VecDeque::new(),
            next_resolve: None,
            next_heartbeat: None,
            next_introduce: None,
            ring_due: None,
            last_rebuild: None,
            answer_after_rebuild: BTreeSet::new(),
            next_peer_timer: None,
            discovery_error: None,
            handshakes: BTreeMap::new(),
            stretch: 0,
            in_grace: BTreeSet::new(),
            authenticated: BTreeMap::new(),
            strangers: Default::default(),
            unknown_names: BTreeSet::new(),
            reach: Reachability::default(),
            telemetry: Telemetry::default(),
            started_at: None,
            leaving: None,
            woke_at: None,
            facts: Facts::default(),
            outbox: Vec::new(),
            news_due: None,
            last_news: None,
            life: 0,
            plan: bounded::Plan::default(),
            members: 0,
        };
        m.sentry = m.elected_sentry();
        m
    }

    /// The secret key session tokens are drawn under (see
    /// [`Heartbeat::token`]). Without it they come from a key derived from
    /// the seed, which replays in a simulation but is as guessable as the
    /// seed: a runtime passes 16 bytes from the operating system's
    /// randomness, before [`Input::Start`].
    pub fn with_token_key(mut self, key: [u8; 16]) -> Self {
        self.token_source = TokenSource::new(key);
        self
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.me
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// This node's state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The current ring: this node and every member, as of the last
    /// rebuild. A change of members is built into it at the next timeout,
    /// which is due at once ([`Membership::poll_timeout`]), so that changes
    /// arriving together share one rebuild.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The sentry: the member up longest (smallest incarnation), ties broken
    /// by name. Derived from the membership, so every member that agrees on
    /// the membership agrees on it, with no extra message. `None` while a
    /// `quorum` is configured and the members do not hold it: the minority
    /// side of a partition names no sentry.
    pub fn sentry(&self) -> Option<&NodeName> {
        self.sentry.as_ref()
    }

    /// The current ring, shared: the runtime publishes it to lock-free readers.
    pub fn shared_ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring)
    }

    /// The peers with a ready session, members or not, sorted.
    pub fn connected(&self) -> Vec<NodeName> {
        self.peers
            .iter()
            .filter(|(_, p)| p.session.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The incarnation of member `node` as this node knows it; `None` when
    /// `node` is not a member (this node is, with its own incarnation).
    pub fn incarnation_of(&self, node: &NodeName) -> Option<Incarnation> {
        if *node == self.me {
            return Some(self.incarnation);
        }
        Some(self.peers.get(node)?.member.as_ref()?.incarnation)
    }

    /// True when the last heartbeat of every member this node watches
    /// carried this node's ring digest. Watching links every member to
    /// every other (each watches the next ones in one order, around a
    /// circle), so when every member says converged, all rings agree.
    pub fn converged(&self) -> bool {
        let digest = self.ring.digest();
        self.peers
            .values()
            .filter(|p| p.watching)
            .filter_map(|p| p.member.as_ref())
            .all(|m| m.digest == digest)
    }

    /// The members this node watches, sorted (see [`monitors`]).
    pub fn watched(&self) -> Vec<NodeName> {
        let watched = self.peers.iter().filter(|(_, p)| p.watching);
        watched.map(|(n, _)| n.clone()).collect()
    }

    /// The peers that watch this node, sorted: those it sends a heartbeat
    /// every interval.
    pub fn watchers(&self) -> Vec<NodeName> {
        let watchers = self.peers.iter().filter(|(_, p)| p.watches_me);
        watchers.map(|(n, _)| n.clone()).collect()
    }

    /// The view of the cluster right now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            node: self.me.clone(),
            incarnation: self.incarnation,
            state: self.state,
            consensus: self.config.consensus,
            quorum: self.quorum_needed(),
            members: self.ring.members().to_vec(),
            digest: self.ring.digest(),
            converged: self.converged(),
            sentry: self.sentry.clone(),
        }
    }

    /// What assembly waits for: members so far and known peers that are not.
    pub fn report(&self) -> AssemblyReport {
        let missing = self
            .peers
            .iter()
            .filter(|(_, p)| p.member.is_none() && (p.listed || p.session.is_some()))
            .map(|(name, p)| MissingPeer {
                name: name.clone(),
                addr: p.addr.clone(),
                failed_dials: p.failed_dials,
                why: match (&p.session, &p.last_error) {
                    _ if p.refused.is_some() => p.refused.clone().unwrap_or_default(),
                    (Some(_), _) => "connected, but no cloister heartbeat from it yet".into(),
                    (None, Some(error)) => error.clone(),
                    (None, None) => "not connected yet".into(),
                },
            })
            .collect();
        AssemblyReport {
            wanted: self.config.consensus.max(self.quorum_needed().unwrap_or(0)),
            members: self.ring.members().to_vec(),
            missing,
            discovery_error: self.discovery_error.clone(),
        }
    }

    /// What this node counted since it started: dials, events, heartbeat
    /// gaps, detections, the time to `Ready`.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The next effect to carry out, in order; `None` when there is none.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Membership::handle_timeout`] should be called next. It may come
    /// early (nothing is due then); it never comes late.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if !self.is_running() {
            return self.leave_due();
        }
        [
            self.next_resolve,
            self.next_heartbeat,
            self.next_introduce,
            self.ring_due,
            self.next_peer_timer,
            self.handshakes.values().map(|h| h.deadline).min(),
            self.strangers.due(),
            self.reachability_timeout(),
            self.news_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feeds one input at time `now` (monotonic, from any fixed origin).
    pub fn handle(&mut self, now: Duration, input: Input) {
        // A leaving node neither redials nor heartbeats: it hears only
        // goodbyes and its own drain.
        if self.state == NodeState::Stopping {
            match input {
                Input::Heartbeat(heartbeat) => self.heard_while_leaving(now, heartbeat),
                Input::Drained => self.drained(now),
                _ => {}
            }
            return;
        }
        // Before Start and once stopped, only Start counts.
        if !self.is_running() && !matches!(input, Input::Start) {
            return;
        }
        self.notice_stall(now);
        match input {
            Input::Start => self.start(now),
            Input::Discovered(peers) => self.discovered(now, peers),
            Input::DiscoveryFailed(error) => self.discovery_error = Some(error),
            Input::DialFailed { peer, error } => self.dial_failed(now, &peer, error),
            Input::SessionOpened {
                session,
                inbound,
                from,
            } => {
                self.session_opened(now, session, inbound, from);
            }
            Input::SessionAuthenticated { session, peer } => {
                self.authenticated(now, session, peer);
                self.end_graces(now, false);
            }
            Input::ConnectionClosed { session } => {
                self.connection_closed(now, session, None);
                self.end_graces(now, false);
            }
            Input::SessionUp { peer, session } => self.session_up(now, peer, session),
            Input::SessionDown { peer, session } => {
                self.connection_closed(now, session, Some(&peer));
                self.session_down(now, &peer, session);
                self.end_graces(now, false);
            }
            Input::Heartbeat(heartbeat) => self.heartbeat(now, heartbeat),
            Input::Leave => self.leave(now),
            Input::Drained => self.drained(now),
            Input::Connect { peer } => self.connect_on_demand(now, &peer),
            Input::OtherApp { peer, app } => {
                if self.peers.get(&peer).is_some_and(|p| p.session.is_some()) {
                    let why = self.other_app(&app);
                    self.refuse(&peer, Some(why));
                }
            }
        }
    }

    /// Runs every timer due at `now`: discovery, heartbeats, heartbeat
    /// deadlines, dial deadlines and redials.
    pub fn handle_timeout(&mut self, now: Duration) {
        if !self.is_running() {
            self.leave_timeout(now);
            return;
        }
        self.notice_stall(now);
        if self.next_resolve.is_some_and(|at| at <= now) {
            self.effects.push_back(Effect::Resolve);
            self.next_resolve = Some(now + self.config.discovery_tick);
        }
        if self.next_introduce.is_some_and(|at| at <= now) {
            self.introduce(now);
        }
        if let Some(round) = self.next_heartbeat.filter(|at| *at <= now) {
            self.heartbeat_round(now, round);
            self.next_heartbeat = Some(next_round(now, self.config.heartbeat_interval));
        }
        self.expire_handshakes(now);
        self.end_graces(now, true);
        self.expire_silent_members(now);
        self.expire_suspicions(now);
        self.reachability_timers(now);
        self.rebuild_ring_if_due(now);
        self.send_news_if_due(now);
        self.run_dials(now);
    }

    pub(super) fn is_running(&self) -> bool {
        matches!(
            self.state,
            NodeState::Assembling | NodeState::Ready | NodeState::Rehashing | NodeState::NoQuorum
        )
    }

    pub(super) fn publish(&mut self, event: TopologyEvent) {
        self.telemetry.event(&event);
        self.effects.push_back(Effect::Publish(event));
    }
}

impl Membership {
    /// Virtual nodes per member in this node's ring; 0 under
    /// `ring = "external"`. Peers must match it to be admitted.
    pub(super) fn ring_vnodes(&self) -> u32 {
        match self.config.ring {
            RingMode::Builtin => self.config.ring_vnodes,
            RingMode::External => 0,
        }
    }
}

/// A token key from a seed, for simulations and tests that replay.
fn seeded_key(seed: u64) -> [u8; 16] {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x746f_6b65_6e73); // "tokens"
    let mut key = [0; 16];
    rng.fill(&mut key);
    key
}

/// The ring of `members` that `config.ring` asks for.
fn build_ring(config: &Config, members: impl IntoIterator<Item = NodeName>) -> Ring {
    match config.ring {
        RingMode::Builtin => Ring::new(members, config.ring_vnodes),
        RingMode::External => Ring::members_only(members),
    }
}
