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
//!    other within one round trip.
//! 4. Members count towards `consensus` (this node included): enough makes the
//!    node `Ready`; falling short later makes it `Rehashing`.
//! 5. A member leaves the ring when its current session closes (`Crashed`), when
//!    it sends no heartbeat for `heartbeat_timeout` (`Unresponsive`, and its
//!    session is dropped), when it says goodbye (`Left`), or when it comes back
//!    with a newer incarnation (`Restarted`, immediately followed by `NodeUp`).
//!
//! Events and effects never depend on a HashMap's order: peers live in a
//! BTreeMap, so two nodes with the same inputs emit the same outputs.

mod peer;
mod protocol;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, RingMode, Sentry};
use crate::events::{DownReason, NodeState, Snapshot, TopologyEvent};
use crate::names::{Incarnation, NodeName, SentryNode};
use crate::ring::Ring;

use peer::{backoff, earliest, Dial, Member, Peer};
pub use protocol::{AssemblyReport, Effect, Heartbeat, Input, MissingPeer, SessionId};

/// One node's membership state machine. See the module docs for the protocol.
#[derive(Debug)]
pub struct Membership {
    config: Config,
    me: NodeName,
    incarnation: Incarnation,
    state: NodeState,
    peers: BTreeMap<NodeName, Peer>,
    ring: Arc<Ring>,
    /// The member up longest: see [`Membership::sentry`].
    sentry: NodeName,
    rng: fastrand::Rng,
    effects: VecDeque<Effect>,
    next_resolve: Option<Duration>,
    next_heartbeat: Option<Duration>,
    /// When to resend heartbeats to connected peers not yet admitted.
    next_introduce: Option<Duration>,
    /// A lower bound of the earliest per-peer timer; recomputed on timeouts.
    next_peer_timer: Option<Duration>,
    discovery_error: Option<String>,
}

impl Membership {
    /// A node named `me`, in state `Down`. `seed` drives the dial jitter, so a
    /// simulation replays exactly; the runtime passes a random seed.
    pub fn new(config: Config, me: NodeName, incarnation: Incarnation, seed: u64) -> Self {
        let ring = Arc::new(build_ring(&config, [me.clone()]));
        Membership {
            config,
            sentry: me.clone(),
            me,
            incarnation,
            state: NodeState::Down,
            peers: BTreeMap::new(),
            ring,
            rng: fastrand::Rng::with_seed(seed),
            effects: VecDeque::new(),
            next_resolve: None,
            next_heartbeat: None,
            next_introduce: None,
            next_peer_timer: None,
            discovery_error: None,
        }
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

    /// The current ring: this node and every member.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The sentry: the member up longest (smallest incarnation), ties broken
    /// by name. Derived from the membership, so every member that agrees on
    /// the membership agrees on it, with no extra message.
    pub fn sentry(&self) -> &NodeName {
        &self.sentry
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

    /// True when every other member's last heartbeat carried this node's ring
    /// digest: as far as this node can tell, the members agree on the ring.
    pub fn converged(&self) -> bool {
        let digest = self.ring.digest();
        self.peers
            .values()
            .filter_map(|p| p.member.as_ref())
            .all(|m| m.digest == digest)
    }

    /// The view of the cluster right now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            node: self.me.clone(),
            incarnation: self.incarnation,
            state: self.state,
            consensus: self.config.consensus,
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
            .filter(|(_, p)| p.member.is_none() && (p.wanted || p.session.is_some()))
            .map(|(name, p)| MissingPeer {
                name: name.clone(),
                addr: p.addr.clone(),
                failed_dials: p.failed_dials,
                why: match (&p.session, &p.last_error) {
                    (Some(_), _) => "connected, but no cloister heartbeat from it yet".into(),
                    (None, Some(error)) => error.clone(),
                    (None, None) => "not connected yet".into(),
                },
            })
            .collect();
        AssemblyReport {
            wanted: self.config.consensus,
            members: self.ring.members().to_vec(),
            missing,
            discovery_error: self.discovery_error.clone(),
        }
    }

    /// The next effect to carry out, in order; `None` when there is none.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Membership::handle_timeout`] should be called next. It may come
    /// early (nothing is due then); it never comes late.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if !self.is_running() {
            return None;
        }
        [
            self.next_resolve,
            self.next_heartbeat,
            self.next_introduce,
            self.next_peer_timer,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feeds one input at time `now` (monotonic, from any fixed origin).
    pub fn handle(&mut self, now: Duration, input: Input) {
        // Before Start and from Leave on, only the inputs that move the state
        // count: a leaving node neither redials nor re-arms timers.
        if !self.is_running() && !matches!(input, Input::Start | Input::LeaveComplete) {
            return;
        }
        match input {
            Input::Start => self.start(now),
            Input::Discovered(peers) => self.discovered(now, peers),
            Input::DiscoveryFailed(error) => self.discovery_error = Some(error),
            Input::DialFailed { peer, error } => self.dial_failed(now, &peer, error),
            Input::SessionUp { peer, session } => self.session_up(now, peer, session),
            Input::SessionDown { peer, session } => self.session_down(now, &peer, session),
            Input::Heartbeat(heartbeat) => self.heartbeat(now, heartbeat),
            Input::Leave => self.leave(),
            Input::LeaveComplete => self.leave_complete(),
        }
    }

    /// Runs every timer due at `now`: discovery, heartbeats, heartbeat
    /// deadlines, dial deadlines and redials.
    pub fn handle_timeout(&mut self, now: Duration) {
        if !self.is_running() {
            return;
        }
        if self.next_resolve.is_some_and(|at| at <= now) {
            self.effects.push_back(Effect::Resolve);
            self.next_resolve = Some(now + self.config.discovery_tick);
        }
        if self.next_introduce.is_some_and(|at| at <= now) {
            self.introduce(now);
        }
        if self.next_heartbeat.is_some_and(|at| at <= now) {
            self.heartbeat_all(false);
            self.next_heartbeat = Some(now + self.config.heartbeat_interval);
        }
        self.expire_graces(now);
        self.expire_silent_members(now);
        self.run_dials(now);
    }

    fn is_running(&self) -> bool {
        matches!(
            self.state,
            NodeState::Assembling | NodeState::Ready | NodeState::Rehashing
        )
    }

    fn start(&mut self, now: Duration) {
        if self.state != NodeState::Down {
            return;
        }
        self.set_state(NodeState::Assembling);
        self.next_heartbeat = Some(now + self.config.heartbeat_interval);
        match self.config.sentry.clone() {
            Sentry::Nodes(nodes) => self.discovered(now, nodes),
            Sentry::Service(_) => {
                self.effects.push_back(Effect::Resolve);
                self.next_resolve = Some(now + self.config.discovery_tick);
            }
        }
        self.evaluate();
    }

    fn discovered(&mut self, now: Duration, found: Vec<SentryNode>) {
        self.discovery_error = None;
        if !self.is_running() {
            return;
        }
        for peer in self.peers.values_mut() {
            peer.wanted = false;
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
            peer.wanted = true;
        }
        // A peer gone from the answer is forgotten unless it is still connected.
        self.peers
            .retain(|_, p| p.wanted || p.session.is_some() || p.member.is_some());
        self.run_dials(now);
    }

    /// Dials every wanted peer without a session whose time has come, and
    /// counts overdue dials as failed.
    fn run_dials(&mut self, now: Duration) {
        let mut next: Option<Duration> = None;
        let timeout = self.config.heartbeat_timeout;
        for (name, peer) in &mut self.peers {
            if let Some(member) = &peer.member {
                next = earliest(next, member.last_heard + timeout);
            }
            if let Some(until) = peer.grace_until {
                next = earliest(next, until);
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
                    "dialed, but no ready session within {:?} (wrong cookie, not a cloister node, or frozen)",
                    self.config.dial_timeout
                ));
                let delay = backoff(&self.config, &mut self.rng, peer.failed_dials);
                peer.failed_dials = peer.failed_dials.saturating_add(1);
                peer.dial = Dial::Idle { at: now + delay };
            }
            match peer.dial {
                Dial::Idle { at } if at <= now => {
                    let deadline = now + self.config.dial_timeout;
                    peer.dial = Dial::Pending { deadline };
                    next = earliest(next, deadline);
                    self.effects.push_back(Effect::Dial {
                        peer: name.clone(),
                        addr,
                    });
                }
                Dial::Idle { at } | Dial::Pending { deadline: at } => next = earliest(next, at),
            }
        }
        self.next_peer_timer = next;
    }

    fn dial_failed(&mut self, now: Duration, name: &NodeName, error: String) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.session.is_some() || !matches!(peer.dial, Dial::Pending { .. }) {
            return;
        }
        let delay = backoff(&self.config, &mut self.rng, peer.failed_dials);
        peer.failed_dials = peer.failed_dials.saturating_add(1);
        peer.last_error = Some(error);
        peer.dial = Dial::Idle { at: now + delay };
        self.next_peer_timer = earliest(self.next_peer_timer, now + delay);
    }

    fn session_up(&mut self, now: Duration, name: NodeName, session: SessionId) {
        if name == self.me || !self.is_running() {
            return;
        }
        let peer = self
            .peers
            .entry(name.clone())
            .or_insert_with(|| Peer::new(None, now));
        peer.session = Some(session);
        peer.grace_until = None;
        peer.introduce_until = Some(now + self.config.heartbeat_interval);
        peer.failed_dials = 0;
        peer.last_error = None;
        peer.dial = Dial::Idle { at: now };
        let early = peer.early.take();
        self.send_heartbeat(&name, false);
        self.next_introduce = earliest(self.next_introduce, now + self.introduce_every());
        if let Some(heartbeat) = early {
            self.heartbeat(now, heartbeat);
        }
    }

    fn session_down(&mut self, now: Duration, name: &NodeName, session: SessionId) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.session != Some(session) {
            return; // a session that was already replaced or dropped
        }
        peer.session = None;
        peer.dial = Dial::Idle { at: now };
        if peer.member.is_some() {
            if self.config.session_grace.is_zero() {
                self.remove_member(name, DownReason::Crashed);
            } else {
                peer.grace_until = Some(now + self.config.session_grace);
            }
        }
        self.run_dials(now);
    }

    /// Members whose session closed and whose grace ran out crashed.
    fn expire_graces(&mut self, now: Duration) {
        let expired: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.grace_until.is_some_and(|until| until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            if let Some(peer) = self.peers.get_mut(&name) {
                peer.grace_until = None;
                peer.dial = Dial::Idle { at: now };
            }
            self.remove_member(&name, DownReason::Crashed);
        }
    }

    fn heartbeat(&mut self, now: Duration, heartbeat: Heartbeat) {
        if heartbeat.from == self.me || heartbeat.app != self.config.app || !self.is_running() {
            return;
        }
        let name = heartbeat.from.clone();
        let Some(peer) = self.peers.get_mut(&name) else {
            // No session yet: keep it until the ready event arrives.
            let mut peer = Peer::new(None, now);
            peer.early = Some(heartbeat);
            self.peers.insert(name, peer);
            return;
        };
        if peer.session.is_none() {
            peer.early = Some(heartbeat);
            return;
        }
        if peer.left.is_some_and(|left| heartbeat.incarnation <= left) {
            return;
        }
        if heartbeat.leaving {
            peer.left = Some(heartbeat.incarnation);
            if peer.member.is_some() {
                self.remove_member(&name, DownReason::Left);
            }
            return;
        }
        match &mut peer.member {
            Some(member) if member.incarnation == heartbeat.incarnation => {
                member.last_heard = now;
                member.digest = heartbeat.digest;
            }
            Some(member) if member.incarnation > heartbeat.incarnation => {} // stale
            Some(member) => {
                let old = member.incarnation;
                *member = Member {
                    incarnation: heartbeat.incarnation,
                    last_heard: now,
                    digest: heartbeat.digest,
                };
                self.publish(TopologyEvent::NodeDown {
                    node: name.clone(),
                    incarnation: old,
                    reason: DownReason::Restarted,
                });
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: heartbeat.incarnation,
                });
                self.elect_sentry(); // a restarted sentry is the newest now
                self.send_heartbeat(&name, false);
            }
            None => {
                peer.member = Some(Member {
                    incarnation: heartbeat.incarnation,
                    last_heard: now,
                    digest: heartbeat.digest,
                });
                let deadline = now + self.config.heartbeat_timeout;
                self.next_peer_timer = earliest(self.next_peer_timer, deadline);
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: heartbeat.incarnation,
                });
                self.rebuild_ring();
                self.send_heartbeat(&name, false);
                self.evaluate();
                if !self
                    .peers
                    .values()
                    .any(|p| p.session.is_some() && p.member.is_none())
                {
                    self.next_introduce = None; // everyone connected has answered
                }
            }
        }
    }

    /// Drops every member silent for `heartbeat_timeout`, and its session.
    fn expire_silent_members(&mut self, now: Duration) {
        let timeout = self.config.heartbeat_timeout;
        let silent: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.member
                    .as_ref()
                    .is_some_and(|m| m.last_heard + timeout <= now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in silent {
            let Some(peer) = self.peers.get_mut(&name) else {
                continue;
            };
            peer.grace_until = None;
            if let Some(session) = peer.session.take() {
                self.effects.push_back(Effect::Disconnect {
                    peer: name.clone(),
                    session,
                });
            }
            // Give a frozen peer a backoff before the first redial.
            let delay = backoff(&self.config, &mut self.rng, 0);
            peer.dial = Dial::Idle { at: now + delay };
            peer.last_error = Some(format!("no heartbeat for {timeout:?}"));
            self.remove_member(&name, DownReason::Unresponsive);
        }
    }

    fn remove_member(&mut self, name: &NodeName, reason: DownReason) {
        let Some(member) = self.peers.get_mut(name).and_then(|p| p.member.take()) else {
            return;
        };
        self.publish(TopologyEvent::NodeDown {
            node: name.clone(),
            incarnation: member.incarnation,
            reason,
        });
        self.rebuild_ring();
        self.evaluate();
    }

    fn rebuild_ring(&mut self) {
        let members = std::iter::once(self.me.clone()).chain(
            self.peers
                .iter()
                .filter(|(_, p)| p.member.is_some())
                .map(|(n, _)| n.clone()),
        );
        self.ring = Arc::new(build_ring(&self.config, members));
        self.publish(TopologyEvent::RingChanged {
            members: self.ring.members().to_vec(),
            digest: self.ring.digest(),
        });
        self.elect_sentry();
    }

    /// Moves the sentry to the member up longest, telling subscribers.
    fn elect_sentry(&mut self) {
        let mine = (self.incarnation, &self.me);
        let members = self
            .peers
            .iter()
            .filter_map(|(name, p)| p.member.as_ref().map(|m| (m.incarnation, name)));
        let (_, oldest) = members.fold(mine, |a, b| a.min(b));
        if *oldest != self.sentry {
            self.sentry = oldest.clone();
            let sentry = self.sentry.clone();
            self.publish(TopologyEvent::SentryChanged { sentry });
        }
    }

    /// Applies the consensus rule to the current membership.
    fn evaluate(&mut self) {
        let enough = self.ring.len() >= self.config.consensus;
        let next = match (self.state, enough) {
            (NodeState::Assembling | NodeState::Rehashing, true) => NodeState::Ready,
            (NodeState::Ready, false) => NodeState::Rehashing,
            (state, _) => state,
        };
        self.set_state(next);
    }

    fn set_state(&mut self, to: NodeState) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        let snapshot = self.snapshot();
        self.publish(TopologyEvent::StateChanged { from, to, snapshot });
    }

    fn leave(&mut self) {
        if !self.is_running() {
            return;
        }
        self.heartbeat_all(true);
        self.next_resolve = None;
        self.next_heartbeat = None;
        self.next_introduce = None;
        self.next_peer_timer = None;
        self.set_state(NodeState::Stopping);
    }

    fn leave_complete(&mut self) {
        if self.state == NodeState::Stopping {
            self.set_state(NodeState::Stopped);
        }
    }

    /// How often a connected peer that is not a member yet hears from us
    /// while we wait for its first heartbeat: an eighth of the interval.
    fn introduce_every(&self) -> Duration {
        (self.config.heartbeat_interval / 8).max(Duration::from_millis(1))
    }

    /// Resends our heartbeat to connected peers that have not answered yet,
    /// for one `heartbeat_interval` after their session came up.
    fn introduce(&mut self, now: Duration) {
        let waiting: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some() && p.member.is_none())
            .filter(|(_, p)| p.introduce_until.is_some_and(|until| until > now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &waiting {
            self.send_heartbeat(name, false);
        }
        self.next_introduce = (!waiting.is_empty()).then(|| now + self.introduce_every());
    }

    fn heartbeat_all(&mut self, leaving: bool) {
        let connected = self.connected();
        for name in &connected {
            self.send_heartbeat(name, leaving);
        }
    }

    fn send_heartbeat(&mut self, to: &NodeName, leaving: bool) {
        let heartbeat = Heartbeat {
            from: self.me.clone(),
            app: self.config.app.clone(),
            incarnation: self.incarnation,
            digest: self.ring.digest(),
            leaving,
        };
        self.effects.push_back(Effect::SendHeartbeat {
            to: to.clone(),
            heartbeat,
        });
    }

    fn publish(&mut self, event: TopologyEvent) {
        self.effects.push_back(Effect::Publish(event));
    }
}

/// The ring of `members` that `config.ring` asks for.
fn build_ring(config: &Config, members: impl IntoIterator<Item = NodeName>) -> Ring {
    match config.ring {
        RingMode::Builtin => Ring::new(members, config.ring_vnodes),
        RingMode::External => Ring::members_only(members),
    }
}
