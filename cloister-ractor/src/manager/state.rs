//! The Manager's state: inputs fed to the membership machine, the view the
//! handles read, timers, waiters and the leave. Its effects are carried out
//! in `effects`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloister_core::timer::{grid_phase, Arm};

use arc_swap::ArcSwap;
use cloister_core::config::Sessions;
use cloister_core::membership::AssemblyReport;
use cloister_core::{Config, Input, Membership, NodeName, NodeState, SessionId, Timer};
use ractor::{ActorCell, ActorRef, RpcReplyPort};
use ractor_cluster::NodeServerMessage;

use crate::discovery::{Answer, Discovery};
use crate::drain::DrainHolds;
use crate::handle::View;
use crate::inspect::{millis, Recent};
use crate::members::is_closing;
use crate::sessions::{Authenticated, SessionEvent};
use crate::stats::Counters;
use crate::subscribe::{Listener, Subscribers};
use crate::tls::names::{NameCheck, KEEP_UNCLAIMED};
use crate::{Inspection, LeaveOutcome, Share};

use super::{Assembled, CloisterMessage, Internal, Management};

/// The Manager's state, built in `pre_start`.
pub struct ManagerState {
    pub(super) config: Config,
    pub(super) machine: Membership,
    /// Origin of the core's clock.
    pub(super) epoch: Instant,
    /// The node's span, entered for each message: made once, since making
    /// one formats its fields (2 % of an idle node's CPU when every
    /// message made its own).
    pub(super) span: tracing::Span,
    pub(super) node_server: ActorRef<NodeServerMessage>,
    /// With TLS on, the settings dials go through (this node's
    /// certificate, peers' verified against `tls_ca`), kept fresh from the
    /// files; plain TCP without.
    pub(super) tls: Option<crate::tls::reload::Watched>,
    /// With `tls_check_names`, accepted peers' certificate names and the
    /// sessions refused for them.
    pub(super) names: Option<NameCheck>,
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
    /// The sessions the NodeServer said authenticated, ahead of this
    /// mailbox (see [`Authenticated`]).
    pub(super) authenticated: Arc<Authenticated>,
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

/// The origin of a Manager's clock: the last moment before now that wall
/// time was a multiple of `heartbeat_interval`, so this node's heartbeat
/// rounds fall when every other node's do (see `cloister_core::timer`).
pub(super) fn clock_origin(heartbeat_interval: Duration) -> Instant {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.checked_sub(grid_phase(wall, heartbeat_interval))
        .unwrap_or(now)
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
                if let Some(names) = &mut self.names {
                    names.flush(now);
                }
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
            Internal::Connect(peer) => self.feed(myself, Input::Connect { peer }),
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
            Internal::Certified { addr, names } => {
                let (now, keep) = (self.now(), self.config.handshake_timeout() * KEEP_UNCLAIMED);
                if let Some(check) = &mut self.names {
                    check.certified(now, addr, names, keep);
                }
            }
            Internal::Misnamed(why) => {
                let now = self.now();
                if let Some(check) = &mut self.names {
                    check.refused(now, why);
                }
            }
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
            SessionEvent::Opened {
                id,
                actor,
                inbound,
                addr,
            } => {
                let from = addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
                if let Some(names) = &mut self.names {
                    names.opened(id, addr, inbound);
                }
                self.links.insert(id, actor.get_cell());
                let session = SessionId(id);
                let opened = Input::SessionOpened {
                    session,
                    inbound,
                    from,
                };
                self.feed(myself, opened);
            }
            SessionEvent::Authenticated { id, peer } => {
                if let Some(Err(why)) =
                    (self.names.as_mut()).map(|n| n.authenticated(id, peer.as_deref()))
                {
                    self.refuse_misnamed(id, why);
                    return;
                }
                let session = SessionId(id);
                let peer = peer.and_then(|p| p.parse::<NodeName>().ok());
                self.feed(myself, Input::SessionAuthenticated { session, peer });
            }
            SessionEvent::Adopted { id, .. } | SessionEvent::Ready { id, .. }
                if self.names.as_ref().is_some_and(|n| n.is_refused(id)) => {}
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
                // A session refused for its name closes as a stranger.
                let refused = self.names.as_mut().is_some_and(|n| n.closed(id));
                let peer = peer.filter(|_| !refused);
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

    /// Closes session `id`, whose certificate does not name the node it
    /// claims: before the core hears of its name, so it is never admitted.
    fn refuse_misnamed(&mut self, id: u64, why: String) {
        if let Some(link) = self.links.get(&id) {
            link.stop(Some("cloister: certificate does not name the node".into()));
        }
        let now = self.now();
        if let Some(names) = &mut self.names {
            names.refused(now, why);
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
            self.config.sessions == Sessions::Bounded,
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
    pub(super) fn left(&mut self, myself: &ActorRef<CloisterMessage>, drained: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_on_the_wall_clock_heartbeat_grid() {
        let every = Duration::from_millis(300);
        let origin = clock_origin(every);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Where the origin sits in wall time, against the grid: at a
        // multiple of the interval, give or take the microseconds between
        // the two readings of the clocks.
        let phase = grid_phase(wall.saturating_sub(origin.elapsed()), every);
        let off = phase.min(every - phase);
        assert!(
            off < Duration::from_millis(5),
            "the origin is {phase:?} past a multiple of {every:?}"
        );
    }
}
