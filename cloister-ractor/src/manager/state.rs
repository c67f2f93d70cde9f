//! The Manager's state and how it carries out the membership machine's
//! effects: dialing, closing sessions, heartbeats, publishing, timers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_core::timer::Arm;

use arc_swap::ArcSwap;
use cloister_core::membership::AssemblyReport;
use cloister_core::{
    Config, DropReason, Effect, Host, Input, Membership, NodeAddr, NodeName, NodeState, SessionId,
    Timer, TopologyEvent,
};
use ractor::{ActorCell, ActorRef, RpcReplyPort};
use ractor_cluster::NodeServerMessage;

use crate::discovery::{Answer, Discovery};
use crate::drain::DrainHolds;
use crate::handle::View;
use crate::herald;
use crate::inspect::{millis, Recent};
use crate::members::{is_closing, member_on};
use crate::sessions::SessionEvent;
use crate::stats::Counters;
use crate::subscribe::{Listener, Subscribers};
use crate::{Inspection, LeaveOutcome, Share};

use super::{Assembled, CloisterMessage, Internal, Management};

/// The Manager's state, built in `pre_start`.
pub struct ManagerState {
    pub(super) config: Config,
    pub(super) machine: Membership,
    /// Origin of the core's clock.
    pub(super) epoch: Instant,
    pub(super) node_server: ActorRef<NodeServerMessage>,
    /// With TLS on, what dials go through (this node's certificate, peers'
    /// verified against `tls_ca`); plain TCP without.
    pub(super) tls: Option<tokio_rustls::TlsConnector>,
    pub(super) view: Arc<ArcSwap<View>>,
    pub(super) subscribers: Subscribers,
    pub(super) listeners: Vec<Box<dyn Listener>>,
    /// Who waits for `Ready`, each until its deadline (on the core's clock).
    pub(super) waiters: Vec<(Duration, RpcReplyPort<Assembled>)>,
    /// The one live wake-up, under the rule the simulator follows too.
    pub(super) timer: Timer,
    /// When to log assembly progress next, while assembling.
    pub(super) next_progress: Duration,
    pub(super) counters: Arc<Counters>,
    /// Why the Manager stops, once it knows; what handles say afterwards.
    pub(super) stop_cause: Option<String>,
    /// Ready sessions by id: what `Sessions` reports.
    pub(super) sessions: BTreeMap<u64, NodeName>,
    /// Every open session's actor by id: to tell the handles whether a
    /// session is closing before its close is reported, and to close one
    /// the core gives up on.
    pub(super) links: BTreeMap<u64, ActorCell>,
    pub(super) discovery: Option<Discovery>,
    /// The last progress line logged while assembling, to log changes only.
    pub(super) last_progress: String,
    /// The last discovery error logged, to log changes only.
    pub(super) discovery_error: Option<String>,
    /// The last topology events, for [`crate::Inspection`].
    pub(super) recent: Recent,
    /// The management endpoint, while it serves; stops with the Manager.
    pub(super) management: Option<Management>,
    /// The drain holds the application took through its handles.
    pub(super) holds: Arc<DrainHolds>,
    /// Who waits for the leave to end.
    pub(super) leave_waiters: Vec<RpcReplyPort<LeaveOutcome>>,
    /// When the leave began (core clock).
    pub(super) leave_started: Option<Duration>,
}

impl ManagerState {
    pub(super) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Feeds one input to the machine and carries out what it answers.
    pub(super) fn feed(&mut self, myself: &ActorRef<CloisterMessage>, input: Input) {
        let now = self.now();
        self.machine.handle(now, input);
        self.apply(myself);
    }

    pub(super) fn internal(&mut self, myself: &ActorRef<CloisterMessage>, message: Internal) {
        match message {
            Internal::Tick(token) => {
                let fired = self.timer.fire(token);
                self.counters.timer(self.timer.counts());
                if !fired {
                    return; // replaced by an earlier wake-up: nothing is due
                }
                let now = self.now();
                self.machine.handle_timeout(now);
                self.apply(myself);
                self.log_progress(now);
                self.expire_waiters(now);
            }
            Internal::Session(event) => self.session_event(myself, event),
            Internal::Heartbeat(heartbeat) => self.feed(myself, Input::Heartbeat(heartbeat)),
            Internal::DialFailed(peer, error) => {
                self.feed(myself, Input::DialFailed { peer, error });
            }
            Internal::Discovered(Ok(Answer { peers, unresolved })) => {
                // A partial answer is used, and said once while it lasts.
                match unresolved {
                    Some(problem) => self.discovery_problem(problem),
                    None => {
                        if self.discovery_error.take().is_some() {
                            tracing::info!(peers = peers.len(), "the service resolves again");
                        }
                    }
                }
                self.feed(myself, Input::Discovered(peers));
            }
            Internal::Discovered(Err(error)) => {
                self.discovery_problem(error.clone());
                self.feed(myself, Input::DiscoveryFailed(error));
            }
            Internal::Drained => self.feed(myself, Input::Drained),
        }
    }

    /// Logs a discovery problem when it changes, not on every tick.
    fn discovery_problem(&mut self, problem: String) {
        if self.discovery_error.as_ref() != Some(&problem) {
            tracing::warn!("{problem}; retrying every discovery tick");
            self.discovery_error = Some(problem);
        }
    }

    pub(super) fn session_event(
        &mut self,
        myself: &ActorRef<CloisterMessage>,
        event: SessionEvent,
    ) {
        match event {
            SessionEvent::Opened { id, actor, inbound } => {
                self.links.insert(id, actor.get_cell());
                let session = SessionId(id);
                self.feed(myself, Input::SessionOpened { session, inbound });
            }
            SessionEvent::Authenticated { id, peer } => {
                let session = SessionId(id);
                let peer = peer.and_then(|p| p.parse::<NodeName>().ok());
                self.feed(myself, Input::SessionAuthenticated { session, peer });
            }
            SessionEvent::Adopted { id, peer, actor } => {
                // Cast from the dial task, so unordered with the NodeServer's
                // own events: a session that closed meanwhile, or a peer
                // that has a ready session by now, is left alone.
                let closing = is_closing(&actor);
                let known = self.sessions.values().any(|p| p.as_str() == peer);
                if closing || known {
                    return;
                }
                tracing::debug!(%peer, id, "adopting a session never reported ready");
                self.links.insert(id, actor);
                self.session_event(myself, SessionEvent::Ready { id, peer });
            }
            SessionEvent::Ready { id, peer } => {
                let Ok(peer) = peer.parse::<NodeName>() else {
                    tracing::debug!(%peer, "a session with a peer whose name is not name@host");
                    return;
                };
                self.sessions.insert(id, peer.clone());
                self.store_view();
                let session = SessionId(id);
                self.feed(myself, Input::SessionUp { peer, session });
            }
            SessionEvent::Closed { id, peer } => {
                self.links.remove(&id);
                if self.sessions.remove(&id).is_some() {
                    self.store_view();
                }
                let session = SessionId(id);
                match peer.and_then(|p| p.parse::<NodeName>().ok()) {
                    Some(peer) => self.feed(myself, Input::SessionDown { peer, session }),
                    None => self.feed(myself, Input::ConnectionClosed { session }),
                }
            }
        }
    }

    /// Publishes the current ring, view and sessions to the handles.
    pub(super) fn store_view(&self) {
        let links = self
            .sessions
            .keys()
            .filter_map(|id| Some((*id, self.links.get(id)?.clone())))
            .collect();
        self.view.store(Arc::new(View::new(
            self.machine.shared_ring(),
            self.machine.snapshot(),
            Arc::new(self.sessions.clone()),
            Arc::new(links),
        )));
    }

    /// Carries out every effect the machine has queued.
    pub(super) fn apply(&mut self, myself: &ActorRef<CloisterMessage>) {
        self.carry_out(myself);
        // Convergence changes with heartbeats, without an event: the
        // handles' snapshot must still say so.
        if self.view.load().snapshot.converged != self.machine.converged() {
            self.store_view();
        }
    }

    fn carry_out(&mut self, myself: &ActorRef<CloisterMessage>) {
        while let Some(effect) = self.machine.poll() {
            match effect {
                Effect::Dial {
                    peer,
                    addr,
                    timeout,
                } => self.dial(myself, peer, addr, timeout),
                Effect::Disconnect { peer, session } => self.disconnect(peer, session),
                Effect::Resolve => {
                    if let Some(discovery) = &self.discovery {
                        discovery.resolve_into(myself.clone());
                    }
                }
                Effect::SendHeartbeat { to, heartbeat } => {
                    // The newest ready session with this peer (ids only grow).
                    let group = herald::group(&self.config.app);
                    let me = self.machine.name();
                    match member_on(&group, &to, me, &self.sessions).map(ActorRef::from) {
                        Some(herald) => {
                            let herald: ActorRef<herald::HeraldMessage> = herald;
                            let _ = herald.cast(herald::encode(&heartbeat));
                        }
                        None => tracing::trace!(peer = %to, "no cloister herald on this peer yet"),
                    }
                }
                Effect::Adopt { peer, session } => {
                    if let Some(link) = self.links.get(&session.0) {
                        let adopted = SessionEvent::Adopted {
                            id: session.0,
                            peer: peer.to_string(),
                            actor: link.clone(),
                        };
                        let _ = myself.cast(CloisterMessage::Internal(Internal::Session(adopted)));
                    }
                }
                Effect::Publish(event) => self.publish(event),
                Effect::Left { drained } => self.left(myself, drained),
                Effect::Refused { peer, why } => tracing::warn!(%peer, "{why}"),
                Effect::CloseSession { session } => {
                    if let Some(link) = self.links.get(&session.0) {
                        tracing::debug!(
                            session = session.0,
                            "closing a connection that never authenticated"
                        );
                        link.stop(Some("cloister: handshake timed out".into()));
                    }
                }
                // Long enough to have dropped its peers without the excuse:
                // the operator should know the machine starves it.
                Effect::Stalled { late } if late >= self.config.heartbeat_timeout => {
                    tracing::warn!(
                        late_ms = late.as_millis() as u64,
                        "this node did not run for {late:?} (an overloaded machine or a paused \
                         process): its peers' silence meanwhile is not held against them"
                    );
                }
                Effect::Stalled { late } => tracing::info!(
                    late_ms = late.as_millis() as u64,
                    "this node ran {late:?} late: its peers' silence meanwhile is not held \
                     against them"
                ),
                Effect::Downing { downed, records } => {
                    let names: Vec<String> = downed.iter().map(ToString::to_string).collect();
                    let cuts: Vec<String> = (records.iter())
                        .map(|(observer, subject)| format!("{observer} cannot hear {subject}"))
                        .collect();
                    if names.is_empty() {
                        tracing::info!("partial partition over: nobody is out of the ring any more")
                    } else {
                        tracing::warn!(
                            "partial partition, held for stable_after: out of every ring now [{}] \
                             (contested records: {})",
                            names.join(", "),
                            cuts.join("; ")
                        )
                    }
                }
                Effect::Slow {
                    dial_timeout,
                    handshake_timeout,
                } => tracing::info!(
                    ?dial_timeout,
                    ?handshake_timeout,
                    "dials or handshakes are slower than their timeouts, or fast again: the \
                     timeouts are now {dial_timeout:?} and {handshake_timeout:?}"
                ),
                Effect::Strangers { count } => {
                    self.counters.strangers(count);
                    tracing::warn!(
                        count,
                        "{count} connection(s) closed without authenticating (a wrong cookie, not a \
                         cloister node, or garbage on the port); counted, logged at most every {:?}",
                        cloister_core::tally::REPORT_EVERY
                    );
                }
                Effect::Dropped { claimed, why } => match why {
                    DropReason::NotEchoed => tracing::warn!(peer = %claimed, "{why}"),
                    // A peer's hello can beat the ready event of a session
                    // this node has not heard of: not worth a warning.
                    DropReason::NoSession => tracing::debug!(peer = %claimed, "{why}"),
                },
            }
        }
    }

    pub(super) fn dial(
        &self,
        myself: &ActorRef<CloisterMessage>,
        peer: NodeName,
        addr: NodeAddr,
        timeout: Duration,
    ) {
        let node_server = self.node_server.clone();
        let tls = self.tls.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            // Dialing a peer that already has a session can tear it down
            // (ractor_cluster's duplicate election): look first. The core
            // dials only peers it knows no ready session with, so a session
            // listed here was never reported ready: usually one still
            // syncing (its Ready follows), but ractor_cluster reports
            // readiness only if the session is elected at that moment and
            // says nothing when it wins later, so without adoption such a
            // peer stayed unreachable while its session was fine. Adopted
            // early, a session may not show the peer's herald yet: the
            // core's hello resend covers that.
            if let Ok(sessions) =
                ractor::call_t!(node_server, NodeServerMessage::GetSessions, 1_000)
            {
                // The newest, if several: ids only grow.
                let existing = sessions
                    .values()
                    .filter(|s| {
                        s.peer_name
                            .as_ref()
                            .is_some_and(|p| p.name == peer.as_str())
                    })
                    .max_by_key(|s| s.node_id);
                if let Some(session) = existing {
                    let adopted = SessionEvent::Adopted {
                        id: session.node_id,
                        peer: peer.to_string(),
                        actor: session.actor.get_cell(),
                    };
                    let _ = myself.cast(CloisterMessage::Internal(Internal::Session(adopted)));
                    return;
                }
            }
            let target = match addr.host() {
                Host::Ip(ip) => std::net::SocketAddr::new(*ip, addr.port()).to_string(),
                Host::Dns(_) => addr.to_string(),
            };
            let connect = async {
                match tls {
                    Some(connector) => {
                        let name = crate::tls::server_name(addr.host());
                        ractor_cluster::client_connect_enc(
                            &node_server,
                            target.as_str(),
                            connector,
                            name,
                        )
                        .await
                    }
                    None => ractor_cluster::client_connect(&node_server, target.as_str()).await,
                }
            };
            let result = tokio::time::timeout(timeout, connect).await;
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(ractor_cluster::ClientConnectErr::Socket(error))) => {
                    format!("dial {addr} failed: {error}")
                }
                Ok(Err(ractor_cluster::ClientConnectErr::Encryption(error))) => {
                    format!("dial {addr} failed in its TLS handshake: {error}")
                }
                Ok(Err(error)) => format!("dial {addr} failed: {error:?}"),
                Err(_) => format!("dial {addr} timed out after {timeout:?}"),
            };
            let _ = myself.cast(CloisterMessage::Internal(Internal::DialFailed(peer, error)));
        });
    }

    pub(super) fn disconnect(&self, peer: NodeName, session: SessionId) {
        let node_server = self.node_server.clone();
        tokio::spawn(async move {
            let Ok(sessions) = ractor::call_t!(node_server, NodeServerMessage::GetSessions, 1_000)
            else {
                return;
            };
            if let Some(ses) = sessions.get(&session.0) {
                tracing::info!(%peer, "closing the session of a peer still silent a heartbeat_timeout after it was dropped as unresponsive");
                ses.actor.stop(Some("cloister: peer unresponsive".into()));
            }
        });
    }

    /// Tells everyone about `event`: the log, the handle, the listeners and
    /// the subscribers, and only then the waiters, so an application released
    /// by `Ready` starts after its listeners have seen why.
    pub(super) fn publish(&mut self, event: TopologyEvent) {
        match &event {
            TopologyEvent::StateChanged { from, to, snapshot } => {
                if *to == NodeState::NoQuorum {
                    tracing::warn!(
                        members = snapshot.members.len(),
                        quorum = snapshot.quorum,
                        "state {from} -> {to}: fewer members than the quorum; routing by key is refused until enough are back"
                    );
                } else {
                    tracing::info!(
                        members = snapshot.members.len(),
                        consensus = snapshot.consensus,
                        "state {from} -> {to}"
                    );
                }
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
            TopologyEvent::SentryChanged {
                sentry: Some(sentry),
            } => {
                tracing::info!(%sentry, "sentry moved");
            }
            TopologyEvent::SentryChanged { sentry: None }
                if self.machine.state() == NodeState::Stopping =>
            {
                tracing::info!("no sentry: this node is leaving and has no other member");
            }
            TopologyEvent::SentryChanged { sentry: None } => {
                tracing::warn!("no sentry: the members do not hold quorum");
            }
            TopologyEvent::Snapshot { .. } | TopologyEvent::Leaving { .. } => {}
        }
        self.store_view();
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
        self.counters.event();
        self.recent.push(self.now(), &event);
        self.subscribers.send(&event);
        if let Some(snapshot) = ready {
            for (_, reply) in self.waiters.drain(..) {
                let _ = reply.send(Ok(snapshot.clone()));
            }
        }
    }

    /// What this node can tell an operator now.
    pub(super) fn inspection(&self) -> Inspection {
        let now = self.now();
        let shares = self.machine.ring().shares().into_iter();
        Inspection {
            snapshot: self.machine.snapshot(),
            peers: self.machine.peer_statuses(now),
            shares: shares.map(|(node, share)| Share { node, share }).collect(),
            telemetry: self.machine.telemetry().clone(),
            stats: self.counters.read(),
            uptime_ms: millis(now),
            recent_events: self.recent.to_vec(),
        }
    }

    /// Logs what assembly waits for, when that changed.
    pub(super) fn log_progress(&mut self, now: Duration) {
        if self.machine.state() == NodeState::Assembling && self.next_progress <= now {
            self.next_progress = now + PROGRESS_EVERY;
            let report = self.machine.report();
            let progress = progress_line(&report);
            if progress != self.last_progress {
                tracing::info!("{progress}");
                self.last_progress = progress;
            }
        }
    }

    /// Answers waiters whose deadline passed with what assembly waited for.
    pub(super) fn expire_waiters(&mut self, now: Duration) {
        if self.waiters.iter().any(|(deadline, _)| *deadline <= now) {
            let report = Box::new(self.machine.report());
            let (expired, waiting) = self.waiters.drain(..).partition(|(d, _)| *d <= now);
            self.waiters = waiting;
            for (_, reply) in expired {
                let _ = reply.send(Err(report.clone()));
            }
        }
    }

    /// Makes sure a wake-up comes by the earliest deadline of the machine,
    /// the waiters and the progress log, under the one timer rule
    /// ([`Timer`]): a new wake-up only when the armed one comes too late.
    pub(super) fn arm_timer(&mut self, myself: &ActorRef<CloisterMessage>) {
        let now = self.now();
        let due = [
            self.machine.poll_timeout(),
            self.waiters.iter().map(|(d, _)| *d).min(),
            (self.machine.state() == NodeState::Assembling).then_some(self.next_progress),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(Arm { token, at }) = self.timer.arm(now, due) {
            let tick = move || CloisterMessage::Internal(Internal::Tick(token));
            let delay = at.saturating_sub(now);
            if delay <= Timer::MIN_DELAY {
                // Due now (the ring after a change of members): queued
                // behind the messages already waiting, so a burst of joins
                // is handled first and shares one rebuild. A timer would
                // round up to tokio's millisecond.
                let _ = myself.cast(tick());
            } else {
                myself.send_after(delay, tick);
            }
        }
    }

    /// Begins a leave (or waits for the one under way): the core says
    /// goodbye and publishes `Leaving`; the holds are watched from here.
    pub(super) fn leave(
        &mut self,
        myself: &ActorRef<CloisterMessage>,
        reply: Option<RpcReplyPort<LeaveOutcome>>,
    ) {
        self.leave_waiters.extend(reply);
        if self.leave_started.is_some() {
            return;
        }
        self.leave_started = Some(self.now());
        let held = self.holds.held();
        tracing::info!(
            drain_timeout = ?self.config.drain_timeout,
            "leaving the cluster: not ready, goodbyes sent; {}",
            if held.is_empty() {
                "no drain hold taken, stopping once the goodbyes are out".to_string()
            } else {
                format!("waiting for the drain holds: {}", held.join(", "))
            }
        );
        self.feed(myself, Input::Leave);
        let holds = Arc::clone(&self.holds);
        let myself = myself.clone();
        tokio::spawn(async move {
            holds.released().await;
            let _ = myself.cast(CloisterMessage::Internal(Internal::Drained));
        });
    }

    /// The leave is over: answer who waits, and stop.
    fn left(&mut self, myself: &ActorRef<CloisterMessage>, drained: bool) {
        let took = self
            .now()
            .saturating_sub(self.leave_started.unwrap_or_default());
        let outcome = if drained {
            tracing::info!(
                took_ms = took.as_millis() as u64,
                "left the cluster, drained"
            );
            LeaveOutcome::Drained { took }
        } else {
            let still_held = self.holds.held();
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "left the cluster at drain_timeout ({:?}) with drain holds still taken: {}",
                self.config.drain_timeout,
                still_held.join(", ")
            );
            LeaveOutcome::DrainTimedOut { took, still_held }
        };
        for reply in self.leave_waiters.drain(..) {
            let _ = reply.send(outcome.clone());
        }
        self.stop_cause = Some("it left the cluster".into());
        myself.stop(Some("left the cluster".into()));
    }

    /// Publishes the view handles keep once the Manager is gone.
    pub(super) fn store_stopped_view(&self) {
        let cause = self.stop_cause.clone().unwrap_or_else(|| {
            "it stopped (panicked, or was killed or stopped by its supervisor)".into()
        });
        let ring = Arc::new(cloister_core::Ring::new(
            std::iter::empty::<NodeName>(),
            self.config.ring_vnodes,
        ));
        self.view.store(Arc::new(View::stopped(
            self.machine.snapshot(),
            ring,
            cause,
        )));
    }
}

impl Drop for ManagerState {
    /// However the Manager ends (a leave, a failed child, a panic, a kill),
    /// its state is dropped: from then on, every handle says so.
    fn drop(&mut self) {
        self.store_stopped_view();
    }
}

/// How often assembly progress is logged while assembling.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn progress_line(report: &AssemblyReport) -> String {
    let missing: Vec<String> = report
        .missing
        .iter()
        .map(|m| format!("{} ({})", m.name, m.why))
        .collect();
    format!(
        "waiting for consensus (and quorum, if set): {} of {} member(s){}{}",
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
