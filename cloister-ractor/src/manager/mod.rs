//! `CloisterManager`: the actor that drives one node's membership machine.
//!
//! It owns the ractor_cluster `NodeServer` and the herald as linked children,
//! feeds the core every session event, heartbeat, dial failure and timer, and
//! carries out the effects the core answers with. The decisions are the
//! core's (when to dial, whom to drop, when a handshake has taken too long,
//! when to wake up: [`Timer`] is the rule the simulator follows too), with
//! one exception kept here because it is a workaround for ractor_cluster's
//! event order, not a membership decision: session adoption in
//! `ManagerState::dial` (ractor_cluster reports a session ready only if it
//! wins its duplicate election at that moment, so a session that wins later
//! is found by listing the NodeServer's sessions before dialing).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cloister_core::config::Sessions;
use cloister_core::membership::AssemblyReport;
use cloister_core::{
    Config, Heartbeat, Incarnation, Input, Membership, NodeName, NodeState, Snapshot, Timer,
    TimerToken, TopologyEvent,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::NodeServerMessage;
use tokio::task::JoinHandle;

use crate::accept::gate::Gates;
use crate::accept::{AcceptLoop, Acceptor, Upgrade};
use crate::discovery::{Answer, Discovery};
use crate::error::CloisterError;
use crate::handle::{Cloister, View};
use crate::herald::{self, Herald};
use crate::sessions::{Authenticated, Forwarder, SessionEvent};
use crate::stats::Counters;
use crate::subscribe::{Listener, Subscriber, Subscribers};

mod effects;
mod spawn;
mod state;

pub use spawn::StartOptions;
pub use state::ManagerState;

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
    /// Subscribes an actor to topology events; sent by [`crate::subscribe`],
    /// the only way to make a [`Subscriber`].
    Subscribe(Subscriber),
    /// Adds a callback listener.
    AddListener(Box<dyn Listener>),
    /// Replies with what this node can tell an operator: see
    /// [`inspect`](crate::inspect).
    Inspect(RpcReplyPort<crate::Inspection>),
    /// Leaves the cluster: see [`crate::leave`], which sends it. The
    /// Manager stops once drained or at `drain_timeout`, and answers then.
    Leave(Option<RpcReplyPort<crate::LeaveOutcome>>),
    /// Runtime plumbing; not for users.
    #[doc(hidden)]
    Internal(Internal),
}

impl ractor::Message for CloisterMessage {}

/// What the spawn functions return: what ractor's `Actor::spawn_linked`
/// returns (the Manager and its join handle), plus the [`Cloister`] handle.
pub type Spawned = (ActorRef<CloisterMessage>, JoinHandle<()>, Cloister);

/// The answer to [`CloisterMessage::AwaitConsensus`]: the view once ready, or
/// what assembly still waited for at the deadline.
pub type Assembled = Result<Snapshot, Box<AssemblyReport>>;

/// Runtime plumbing between the Manager and its helpers. Public only as
/// the payload of a hidden variant: it cannot be named outside this crate,
/// so no other code can inject heartbeats or session events.
#[derive(Debug)]
pub enum Internal {
    /// A wake-up came due; dropped when another replaced it.
    Tick(TimerToken),
    /// A NodeServer session event.
    #[allow(private_interfaces)]
    Session(SessionEvent),
    /// A peer's heartbeat, from the herald.
    Heartbeat(Heartbeat),
    /// A dial failed before a session was ready.
    DialFailed(NodeName, String),
    /// The DNS service answered.
    #[allow(private_interfaces)]
    Discovered(Result<Answer, String>),
    /// Every drain hold is released.
    Drained,
    /// An accepted peer's certificate names, by its address
    /// (`tls_check_names`, [`crate::tls::names`]).
    Certified { addr: String, names: Vec<String> },
    /// A peer refused for the name its certificate lacks, in the words of
    /// the log.
    Misnamed(String),
    /// Routing needs a session with this member (`sessions = "bounded"`).
    Connect(NodeName),
}

impl Actor for CloisterManager {
    type Msg = CloisterMessage;
    type State = ManagerState;
    type Arguments = (Config, Vec<Box<dyn Listener>>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (config, listeners): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        config.validate()?;
        // Bound first: a taken management port leaves nothing running.
        let management = match config.management_addr {
            Some(addr) => Some(bind_management(addr).await?),
            None => None,
        };
        let discovery = Discovery::new(&config)?;
        let host = discovery.own_host(&config).await?;
        let me = config.node_name_for(&host)?;

        // The node's span for the tasks it spawns (the accept loop, reloads).
        let span = tracing::info_span!(parent: None, "cloister", node = %me);
        let tls = crate::tls::reload::Watched::start(&config, span.clone())?;
        let at_start = tls.as_ref().map(|tls| tls.current.load_full());
        let (listener, node_server) = crate::accept::open(
            &config,
            &host.to_string(),
            at_start.as_deref(),
            myself.get_cell(),
        )
        .await?;
        let gates = Arc::new(Gates::default());
        let authenticated = Arc::new(Authenticated::default());
        node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: "cloister".into(),
            subscription: Box::new(Forwarder {
                manager: myself.clone(),
                gates: Arc::clone(&gates),
                authenticated: Arc::clone(&authenticated),
            }),
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
        let mut token_key = [0; 16];
        getrandom::fill(&mut token_key).map_err(|e| {
            format!("no randomness from the operating system for session tokens: {e}")
        })?;
        let machine = Membership::new(config.clone(), me.clone(), incarnation, seed)
            .with_token_key(token_key);
        let view = Arc::new(ArcSwap::from_pointee(View::new(
            machine.shared_ring(),
            machine.snapshot(),
            Arc::default(),
            Arc::default(),
            config.sessions == Sessions::Bounded,
        )));
        tracing::info!(
            %incarnation, port = config.listen_port, consensus = config.consensus,
            transport = %crate::tls::transport(&config),
            "cloister node {me} starting"
        );
        let upgrade = Upgrade::new(tls.as_ref(), config.tls_check_names.then(|| myself.clone()));
        let mut state = ManagerState {
            machine,
            epoch: state::clock_origin(config.heartbeat_interval),
            span: span.clone(),
            node_server,
            names: config.tls_check_names.then(Default::default),
            tls,
            view,
            subscribers: Subscribers::default(),
            listeners: Vec::new(),
            waiters: Vec::new(),
            timer: Timer::new(),
            next_progress: Duration::ZERO,
            counters: Arc::new(Counters::default()),
            stop_cause: None,
            sessions: BTreeMap::new(),
            links: BTreeMap::new(),
            authenticated,
            discovery: discovery.for_service(),
            last_progress: String::new(),
            discovery_error: None,
            recent: crate::inspect::Recent::default(),
            management: None,
            holds: Arc::default(),
            leave_waiters: Vec::new(),
            leave_started: None,
            config,
        };
        if let Some(listener) = management {
            let handle = Cloister::new(
                Arc::clone(&state.view),
                state.machine.name().clone(),
                Arc::clone(&state.counters),
                Arc::clone(&state.holds),
                myself.clone(),
            );
            state.management = Some(serve_management(listener, handle, myself.clone()));
        }
        for listener in listeners {
            let snapshot = state.machine.snapshot();
            listener.on_event(&TopologyEvent::Snapshot { snapshot });
            state.listeners.push(listener);
        }
        let accept = AcceptLoop {
            listener,
            node_server: state.node_server.clone(),
            upgrade,
            deadline: state.config.handshake_timeout(),
            longest: state.config.longest_handshake(),
            gates,
            counters: Arc::clone(&state.counters),
            span,
        };
        Actor::spawn_linked(None, Acceptor, accept, myself.get_cell()).await?;
        state.feed(&myself, Input::Start);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A root span: ractor runs a handler inside the span its message was
        // sent from, and the Manager sends itself messages from inside this
        // one, which nested it once per hop.
        let span = state.span.clone();
        let _in_span = span.enter();
        match message {
            CloisterMessage::AwaitConsensus(reply) => {
                if state.machine.state() == NodeState::Ready {
                    let _ = reply.send(Ok(state.machine.snapshot()));
                } else {
                    let deadline = state.now().saturating_add(state.config.startup_deadline);
                    state.waiters.push((deadline, reply));
                }
            }
            CloisterMessage::Handle(reply) => {
                let handle = Cloister::new(
                    Arc::clone(&state.view),
                    state.machine.name().clone(),
                    Arc::clone(&state.counters),
                    Arc::clone(&state.holds),
                    myself.clone(),
                );
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
            CloisterMessage::Subscribe(subscriber) => {
                let snapshot = state.machine.snapshot();
                subscriber.attach(&mut state.subscribers, TopologyEvent::Snapshot { snapshot });
            }
            CloisterMessage::AddListener(listener) => {
                let snapshot = state.machine.snapshot();
                listener.on_event(&TopologyEvent::Snapshot { snapshot });
                state.listeners.push(listener);
            }
            CloisterMessage::Inspect(reply) => {
                let _ = reply.send(state.inspection());
            }
            CloisterMessage::Leave(reply) => state.leave(&myself, reply),
            CloisterMessage::Internal(internal) => state.internal(&myself, internal),
        }
        state.arm_timer(&myself);
        Ok(())
    }

    /// A Manager stopped without a leave (`manager.stop(..)`) still says
    /// goodbye, so its peers report it `left`, not `crashed`; there is no
    /// drain. (A Manager killed with its supervisor gets no such chance:
    /// ractor kills the children of a stopping supervisor, so call
    /// [`crate::leave`] from the supervisor's `post_stop`.)
    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let running = matches!(
            state.machine.state(),
            NodeState::Assembling | NodeState::Ready | NodeState::Rehashing | NodeState::NoQuorum
        );
        if running {
            tracing::info!(
                "the cloister manager stops without a leave: goodbyes to its peers, no drain"
            );
            state.feed(&myself, Input::Leave);
            tokio::time::sleep(cloister_core::membership::GOODBYE_LINGER).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The NodeServer and the herald are what this node is: without either
        // it cannot be a member, so stop and let the user's supervisor decide.
        match event {
            SupervisionEvent::ActorFailed(child, error) => {
                tracing::error!(child = ?child.get_name(), %error, "a cloister child failed");
                state.stop_cause =
                    Some(format!("its child {} failed: {error}", child_name(&child)));
                myself.stop(Some(format!("child failed: {error}")));
            }
            SupervisionEvent::ActorTerminated(child, _, reason) => {
                tracing::warn!(child = ?child.get_name(), ?reason, "a cloister child stopped");
                let why = reason.unwrap_or_else(|| "no reason given".into());
                state.stop_cause = Some(format!("its child {} stopped: {why}", child_name(&child)));
                myself.stop(Some("child stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(feature = "management")]
pub(crate) use crate::management::Endpoint as Management;
#[cfg(feature = "management")]
use crate::management::{bind as bind_management, serve as serve_management};

/// Without the `management` feature there is no endpoint to keep.
#[cfg(not(feature = "management"))]
pub(crate) type Management = std::convert::Infallible;

#[cfg(not(feature = "management"))]
async fn bind_management(
    addr: std::net::SocketAddr,
) -> Result<std::convert::Infallible, CloisterError> {
    Err(CloisterError::Management {
        addr,
        reason: "`management_addr` is set, but this build of cloister-ractor has no \
                 `management` feature: enable it (`features = [\"management\"]`) or unset \
                 `management_addr`"
            .into(),
    })
}

#[cfg(not(feature = "management"))]
fn serve_management(
    never: std::convert::Infallible,
    _: Cloister,
    _: ActorRef<CloisterMessage>,
) -> Management {
    match never {}
}

/// A child's registered name, or its id.
fn child_name(child: &ActorCell) -> String {
    child
        .get_name()
        .unwrap_or_else(|| format!("actor {}", child.get_id()))
}
