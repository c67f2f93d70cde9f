//! `CloisterManager`: the actor that drives one node's membership machine.
//!
//! It owns the ractor_cluster `NodeServer` and the herald as linked children,
//! feeds the core every session event, heartbeat, dial failure and timer, and
//! carries out the effects the core answers with. It decides nothing itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cloister_core::membership::AssemblyReport;
use cloister_core::{
    Config, Effect, Heartbeat, Host, Incarnation, Input, Membership, NodeAddr, NodeName, NodeState,
    SentryNode, SessionId, Snapshot, TopologyEvent,
};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, OutputPort, RpcReplyPort, SupervisionEvent,
};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage, NodeSessionMessage};
use tokio::task::JoinHandle;

use crate::discovery::Discovery;
use crate::error::CloisterError;
use crate::handle::{Cloister, View};
use crate::herald::{self, Herald};
use crate::sessions::{Forwarder, SessionEvent};
use crate::subscribe::{EventPort, Listener, Published, Subscriber};

/// The Manager actor. Spawn it with [`CloisterManager::spawn_linked`] from your
/// supervisor's `pre_start`: it returns once `consensus` members are connected.
pub struct CloisterManager;

/// Messages to the Manager. Queries carry a reply port.
pub enum CloisterMessage {
    /// Replies once this node is `Ready` (at once if it is), or with the
    /// assembly report when `startup_deadline` passes first.
    AwaitConsensus(RpcReplyPort<Assembled>),
    /// Replies with a [`Cloister`] handle for lock-free ring reads.
    Handle(RpcReplyPort<Cloister>),
    /// Replies with the current view.
    Snapshot(RpcReplyPort<Snapshot>),
    /// Replies with what assembly waits for.
    Report(RpcReplyPort<AssemblyReport>),
    /// Replies with the owner of a key, for callers inside actors.
    NodeFor(String, RpcReplyPort<Option<NodeName>>),
    /// Replies with the peers that have a live ractor_cluster session.
    Sessions(RpcReplyPort<Vec<NodeName>>),
    /// Subscribes an actor to topology events; build it with
    /// [`crate::subscribe`].
    Subscribe(Subscriber),
    /// Adds a callback listener.
    AddListener(Box<dyn Listener>),
    /// Leaves the cluster: peers are told, then the Manager stops.
    Leave,
    /// Runtime plumbing; not for users.
    #[doc(hidden)]
    Internal(Internal),
}

impl ractor::Message for CloisterMessage {}

/// The answer to [`CloisterMessage::AwaitConsensus`]: the view once ready, or
/// what assembly still waited for at the deadline.
pub type Assembled = Result<Snapshot, Box<AssemblyReport>>;

/// Runtime plumbing between the Manager and its helpers.
#[doc(hidden)]
#[derive(Debug)]
pub enum Internal {
    /// A timer came due.
    Tick,
    /// A NodeServer session event.
    #[allow(private_interfaces)]
    Session(SessionEvent),
    /// A peer's heartbeat, from the herald.
    Heartbeat(Heartbeat),
    /// A dial failed before a session was ready.
    DialFailed(NodeName, String),
    /// The DNS service answered.
    Discovered(Result<Vec<SentryNode>, String>),
    /// The goodbyes have had time to go out.
    LeaveDone,
}

/// The Manager's state, built in `pre_start`.
pub struct ManagerState {
    config: Config,
    machine: Membership,
    /// Origin of the core's clock.
    epoch: Instant,
    node_server: ActorRef<NodeServerMessage>,
    view: Arc<ArcSwap<View>>,
    events: EventPort,
    listeners: Vec<Box<dyn Listener>>,
    waiters: Vec<(Instant, RpcReplyPort<Assembled>)>,
    /// The earliest Tick already on its way, so timers are not duplicated.
    timer_at: Option<Instant>,
    /// Sessions still in their handshake, closed if it does not finish.
    handshakes: BTreeMap<u64, (Instant, ActorRef<NodeSessionMessage>)>,
    /// Ready sessions by id: what `Sessions` reports.
    sessions: BTreeMap<u64, NodeName>,
    discovery: Option<Discovery>,
    /// The last progress line logged while assembling, to log changes only.
    last_progress: String,
}

impl CloisterManager {
    /// Spawns the Manager linked to `supervisor` and returns once `consensus`
    /// members, this node included, are connected: a supervisor that calls it
    /// in `pre_start` starts its later children only in an assembled cluster.
    /// At `startup_deadline` it stops what it started and fails with
    /// [`CloisterError::ConsensusTimeout`], which says whom it had and whom
    /// it could not reach, and why.
    pub async fn spawn_linked(
        name: Option<String>,
        config: Config,
        supervisor: ActorCell,
    ) -> Result<(ActorRef<CloisterMessage>, Cloister, JoinHandle<()>), CloisterError> {
        Self::start(name, config, Some(supervisor), true).await
    }

    /// [`CloisterManager::spawn_linked`] without a supervisor.
    pub async fn spawn(
        name: Option<String>,
        config: Config,
    ) -> Result<(ActorRef<CloisterMessage>, Cloister, JoinHandle<()>), CloisterError> {
        Self::start(name, config, None, true).await
    }

    /// Spawns the Manager and returns at once, before consensus. Send
    /// [`CloisterMessage::AwaitConsensus`] (or use [`crate::await_consensus`])
    /// to wait for it later.
    pub async fn spawn_unheld(
        name: Option<String>,
        config: Config,
        supervisor: Option<ActorCell>,
    ) -> Result<(ActorRef<CloisterMessage>, Cloister, JoinHandle<()>), CloisterError> {
        Self::start(name, config, supervisor, false).await
    }

    async fn start(
        name: Option<String>,
        config: Config,
        supervisor: Option<ActorCell>,
        hold: bool,
    ) -> Result<(ActorRef<CloisterMessage>, Cloister, JoinHandle<()>), CloisterError> {
        config.validate()?;
        let port = config.listen_port;
        let spawned = match supervisor {
            Some(supervisor) => {
                Actor::spawn_linked(name, CloisterManager, config, supervisor).await
            }
            None => Actor::spawn(name, CloisterManager, config).await,
        };
        let (actor, join) = spawned.map_err(|e| CloisterError::Spawn {
            port,
            reason: e.to_string(),
        })?;
        let gone = |e: &dyn std::fmt::Display| CloisterError::ManagerGone(e.to_string());
        let cloister = ractor::call!(actor, CloisterMessage::Handle).map_err(|e| gone(&e))?;
        if hold {
            match crate::await_consensus(&actor).await {
                Ok(_) => {}
                Err(error) => {
                    actor.stop(Some("consensus not reached".into()));
                    let _ = join.await;
                    return Err(error);
                }
            }
        }
        Ok((actor, cloister, join))
    }
}

impl Actor for CloisterManager {
    type Msg = CloisterMessage;
    type State = ManagerState;
    type Arguments = Config;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        config: Config,
    ) -> Result<Self::State, ActorProcessingErr> {
        config.validate()?;
        let discovery = Discovery::new(&config)?;
        let host = match &config.advertised_host {
            Some(host) => host.clone(),
            None => discovery.find_own_host(&config).await?,
        };
        let me = config.node_name_for(&host)?;

        let server = NodeServer::new(
            config.listen_port,
            config.cookie.clone(),
            config.effective_node_name().to_string(),
            host.to_string(),
            None,
            Some(NodeConnectionMode::Isolated),
        );
        let (node_server, _) = Actor::spawn_linked(None, server, (), myself.get_cell())
            .await
            .map_err(|e| format!("cannot listen on port {}: {e}", config.listen_port))?;
        node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: "cloister".into(),
            subscription: Box::new(Forwarder(myself.clone())),
        })?;
        // A call after the cast: once it answers, the subscription is in place.
        ractor::call_t!(node_server, NodeServerMessage::GetSessions, 5_000)?;

        let herald_name = herald::name(&config.app, &me);
        let (herald, _) =
            Actor::spawn_linked(Some(herald_name), Herald, myself.clone(), myself.get_cell())
                .await?;
        ractor::pg::join(herald::group(&config.app), vec![herald.get_cell()]);

        let incarnation = Incarnation::from_unix_nanos(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        let seed = incarnation.0 ^ u64::from(std::process::id());
        let machine = Membership::new(config.clone(), me.clone(), incarnation, seed);
        let view = Arc::new(ArcSwap::from_pointee(View {
            ring: machine.shared_ring(),
            snapshot: machine.snapshot(),
        }));
        tracing::info!(
            %incarnation, port = config.listen_port, consensus = config.consensus,
            "cloister node {me} starting"
        );
        let mut state = ManagerState {
            machine,
            epoch: Instant::now(),
            node_server,
            view,
            events: OutputPort::default(),
            listeners: Vec::new(),
            waiters: Vec::new(),
            timer_at: None,
            handshakes: BTreeMap::new(),
            sessions: BTreeMap::new(),
            discovery: discovery.for_service(),
            last_progress: String::new(),
            config,
        };
        state.feed(&myself, Input::Start);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = tracing::info_span!("cloister", node = %state.machine.name());
        let _in_span = span.enter();
        match message {
            CloisterMessage::AwaitConsensus(reply) => {
                if state.machine.state() == NodeState::Ready {
                    let _ = reply.send(Ok(state.machine.snapshot()));
                } else {
                    let deadline = Instant::now() + state.config.startup_deadline;
                    state.waiters.push((deadline, reply));
                }
            }
            CloisterMessage::Handle(reply) => {
                let handle = Cloister::new(Arc::clone(&state.view), state.machine.name().clone());
                let _ = reply.send(handle);
            }
            CloisterMessage::Snapshot(reply) => {
                let _ = reply.send(state.machine.snapshot());
            }
            CloisterMessage::Report(reply) => {
                let _ = reply.send(state.machine.report());
            }
            CloisterMessage::NodeFor(key, reply) => {
                let _ = reply.send(state.machine.ring().node_for(key).cloned());
            }
            CloisterMessage::Sessions(reply) => {
                let mut peers: Vec<NodeName> = state.sessions.values().cloned().collect();
                peers.sort();
                peers.dedup();
                let _ = reply.send(peers);
            }
            CloisterMessage::Subscribe(subscriber) => {
                let snapshot = state.machine.snapshot();
                subscriber.attach(&state.events, TopologyEvent::Snapshot { snapshot });
            }
            CloisterMessage::AddListener(listener) => {
                let snapshot = state.machine.snapshot();
                listener.on_event(&TopologyEvent::Snapshot { snapshot });
                state.listeners.push(listener);
            }
            CloisterMessage::Leave => {
                state.feed(&myself, Input::Leave);
                // Give the goodbyes a moment to leave the socket buffers.
                myself.send_after(Duration::from_millis(50), || {
                    CloisterMessage::Internal(Internal::LeaveDone)
                });
            }
            CloisterMessage::Internal(internal) => state.internal(&myself, internal),
        }
        state.arm_timer(&myself);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The NodeServer and the herald are what this node is: without either
        // it cannot be a member, so stop and let the user's supervisor decide.
        match event {
            SupervisionEvent::ActorFailed(child, error) => {
                tracing::error!(child = ?child.get_name(), %error, "a cloister child failed");
                myself.stop(Some(format!("child failed: {error}")));
            }
            SupervisionEvent::ActorTerminated(child, _, reason) => {
                tracing::warn!(child = ?child.get_name(), ?reason, "a cloister child stopped");
                myself.stop(Some("child stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

impl ManagerState {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Feeds one input to the machine and carries out what it answers.
    fn feed(&mut self, myself: &ActorRef<CloisterMessage>, input: Input) {
        let now = self.now();
        self.machine.handle(now, input);
        self.apply(myself);
    }

    fn internal(&mut self, myself: &ActorRef<CloisterMessage>, message: Internal) {
        match message {
            Internal::Tick => {
                self.timer_at = None;
                let now = self.now();
                self.machine.handle_timeout(now);
                self.apply(myself);
                self.expire_waiters();
                self.expire_handshakes();
            }
            Internal::Session(event) => self.session_event(myself, event),
            Internal::Heartbeat(heartbeat) => self.feed(myself, Input::Heartbeat(heartbeat)),
            Internal::DialFailed(peer, error) => {
                self.feed(myself, Input::DialFailed { peer, error });
            }
            Internal::Discovered(Ok(peers)) => self.feed(myself, Input::Discovered(peers)),
            Internal::Discovered(Err(error)) => {
                self.feed(myself, Input::DiscoveryFailed(error));
            }
            Internal::LeaveDone => {
                self.feed(myself, Input::LeaveComplete);
                myself.stop(Some("left the cluster".into()));
            }
        }
    }

    fn session_event(&mut self, myself: &ActorRef<CloisterMessage>, event: SessionEvent) {
        match event {
            SessionEvent::Opened { id, actor } => {
                let deadline =
                    Instant::now() + self.config.dial_timeout.max(Duration::from_secs(1));
                self.handshakes.insert(id, (deadline, actor));
            }
            SessionEvent::Authenticated { id } => {
                self.handshakes.remove(&id);
            }
            SessionEvent::Ready { id, peer } => {
                self.handshakes.remove(&id);
                let Ok(peer) = peer.parse::<NodeName>() else {
                    tracing::debug!(%peer, "a session with a peer whose name is not name@host");
                    return;
                };
                self.sessions.insert(id, peer.clone());
                let session = SessionId(id);
                self.feed(myself, Input::SessionUp { peer, session });
            }
            SessionEvent::Closed { id, peer } => {
                self.handshakes.remove(&id);
                self.sessions.remove(&id);
                let Some(peer) = peer.and_then(|p| p.parse::<NodeName>().ok()) else {
                    return;
                };
                let session = SessionId(id);
                self.feed(myself, Input::SessionDown { peer, session });
            }
        }
    }

    /// Carries out every effect the machine has queued.
    fn apply(&mut self, myself: &ActorRef<CloisterMessage>) {
        while let Some(effect) = self.machine.poll() {
            match effect {
                Effect::Dial { peer, addr } => self.dial(myself, peer, addr),
                Effect::Disconnect { peer, session } => self.disconnect(peer, session),
                Effect::Resolve => {
                    if let Some(discovery) = &self.discovery {
                        discovery.resolve_into(myself.clone());
                    }
                }
                Effect::SendHeartbeat { to, heartbeat } => {
                    match herald::find(&self.config.app, &to) {
                        Some(herald) => {
                            let _ = herald.cast(herald::encode(&heartbeat));
                        }
                        None => tracing::trace!(peer = %to, "no cloister herald on this peer yet"),
                    }
                }
                Effect::Publish(event) => self.publish(event),
            }
        }
    }

    fn dial(&self, myself: &ActorRef<CloisterMessage>, peer: NodeName, addr: NodeAddr) {
        let node_server = self.node_server.clone();
        let myself = myself.clone();
        let timeout = self.config.dial_timeout;
        tokio::spawn(async move {
            // Dialing a peer that already has a session can tear it down
            // (ractor_cluster's duplicate election): look first.
            if let Ok(sessions) =
                ractor::call_t!(node_server, NodeServerMessage::GetSessions, 1_000)
            {
                let connected = sessions.values().any(|s| {
                    s.peer_name
                        .as_ref()
                        .is_some_and(|p| p.name == peer.as_str())
                });
                if connected {
                    return;
                }
            }
            let target = match addr.host() {
                Host::Ip(ip) => std::net::SocketAddr::new(*ip, addr.port()).to_string(),
                Host::Dns(_) => addr.to_string(),
            };
            let result = tokio::time::timeout(
                timeout,
                ractor_cluster::client_connect(&node_server, target.as_str()),
            )
            .await;
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(ractor_cluster::ClientConnectErr::Socket(error))) => {
                    format!("dial {addr} failed: {error}")
                }
                Ok(Err(error)) => format!("dial {addr} failed: {error:?}"),
                Err(_) => format!("dial {addr} timed out after {timeout:?}"),
            };
            let _ = myself.cast(CloisterMessage::Internal(Internal::DialFailed(peer, error)));
        });
    }

    fn disconnect(&self, peer: NodeName, session: SessionId) {
        let node_server = self.node_server.clone();
        tokio::spawn(async move {
            let Ok(sessions) = ractor::call_t!(node_server, NodeServerMessage::GetSessions, 1_000)
            else {
                return;
            };
            if let Some(ses) = sessions.get(&session.0) {
                tracing::info!(%peer, "closing the session of an unresponsive peer");
                ses.actor.stop(Some("cloister: peer unresponsive".into()));
            }
        });
    }

    /// Tells everyone about `event`: the log, the handle, the listeners and
    /// the subscribers, and only then the waiters, so an application released
    /// by `Ready` starts after its listeners have seen why.
    fn publish(&mut self, event: TopologyEvent) {
        match &event {
            TopologyEvent::StateChanged { from, to, snapshot } => {
                tracing::info!(
                    members = snapshot.members.len(),
                    consensus = snapshot.consensus,
                    "state {from} -> {to}"
                );
            }
            TopologyEvent::NodeUp { node, incarnation } => {
                tracing::info!(peer = %node, %incarnation, "node up");
            }
            TopologyEvent::NodeDown { node, reason, .. } => {
                tracing::warn!(peer = %node, %reason, "node down");
            }
            TopologyEvent::RingChanged { members, digest } => {
                tracing::info!(%digest, members = members.len(), "ring changed");
            }
            TopologyEvent::Snapshot { .. } => {}
        }
        self.view.store(Arc::new(View {
            ring: self.machine.shared_ring(),
            snapshot: self.machine.snapshot(),
        }));
        for listener in &self.listeners {
            if let TopologyEvent::StateChanged { from, to, snapshot } = &event {
                listener.on_state_change(*from, *to, snapshot);
            }
            listener.on_event(&event);
        }
        let ready = match &event {
            TopologyEvent::StateChanged {
                to: NodeState::Ready,
                snapshot,
                ..
            } => Some(snapshot.clone()),
            _ => None,
        };
        self.events.send(Published(event));
        if let Some(snapshot) = ready {
            for (_, reply) in self.waiters.drain(..) {
                let _ = reply.send(Ok(snapshot.clone()));
            }
        }
    }

    /// Answers waiters whose deadline passed, and logs what assembly waits for.
    fn expire_waiters(&mut self) {
        if self.machine.state() == NodeState::Assembling {
            let report = self.machine.report();
            let progress = progress_line(&report);
            if progress != self.last_progress {
                tracing::info!("{progress}");
                self.last_progress = progress;
            }
        }
        let now = Instant::now();
        if self.waiters.iter().any(|(deadline, _)| *deadline <= now) {
            let report = Box::new(self.machine.report());
            let (expired, waiting) = self.waiters.drain(..).partition(|(d, _)| *d <= now);
            self.waiters = waiting;
            for (_, reply) in expired {
                let _ = reply.send(Err(report.clone()));
            }
        }
    }

    /// Closes sessions that opened but never passed the handshake: garbage on
    /// the port, a wrong cookie, or a half-finished handshake.
    fn expire_handshakes(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, actor)) = self.handshakes.remove(&id) {
                tracing::debug!(
                    session = id,
                    "closing a session that never finished its handshake"
                );
                actor.stop(Some("cloister: handshake timed out".into()));
            }
        }
    }

    /// Makes sure a Tick arrives by the earliest deadline of the machine, the
    /// waiters and the handshakes.
    fn arm_timer(&mut self, myself: &ActorRef<CloisterMessage>) {
        let machine = self.machine.poll_timeout().map(|at| self.epoch + at);
        let next = [
            machine,
            self.waiters.iter().map(|(d, _)| *d).min(),
            self.handshakes.values().map(|(d, _)| *d).min(),
            // While assembling, wake up now and then to log progress.
            (self.machine.state() == NodeState::Assembling)
                .then(|| Instant::now() + Duration::from_secs(2)),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return };
        if self.timer_at.is_some_and(|armed| armed <= next) {
            return;
        }
        self.timer_at = Some(next);
        let delay = next.saturating_duration_since(Instant::now());
        myself.send_after(delay, || CloisterMessage::Internal(Internal::Tick));
    }
}

fn progress_line(report: &AssemblyReport) -> String {
    let missing: Vec<String> = report
        .missing
        .iter()
        .map(|m| format!("{} ({})", m.name, m.why))
        .collect();
    format!(
        "waiting for consensus: {} of {} member(s){}{}",
        report.members.len(),
        report.wanted,
        if missing.is_empty() {
            String::new()
        } else {
            format!("; not yet: {}", missing.join(", "))
        },
        report
            .discovery_error
            .as_ref()
            .map(|e| format!("; discovery: {e}"))
            .unwrap_or_default(),
    )
}
