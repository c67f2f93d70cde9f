//! Subscribing to topology events: actors through ractor's `OutputPort`,
//! callbacks through [`Listener`].

use std::sync::Arc;

use cloister_core::{NodeState, Snapshot, TopologyEvent};
use ractor::{ActorRef, Message, OutputPort};

use crate::error::CloisterError;
use crate::manager::CloisterMessage;

/// A callback listener, cloister's `on_state_change`. Called inside the
/// Manager, in event order, before subscribers are sent the event and before
/// anyone waiting for consensus is released: keep it quick and never block.
/// Its first `on_event` is a [`TopologyEvent::Snapshot`] of the view when it
/// was added. Add one with [`add_listener`], or from the start with
/// [`StartOptions::listeners`](crate::StartOptions::listeners).
pub trait Listener: Send + 'static {
    /// The node state changed from `from` to `to`; `snapshot` is the view
    /// right after.
    ///
    /// # Examples
    ///
    /// Log every state change:
    ///
    /// ```no_run
    /// use cloister_core::{NodeState, Snapshot};
    ///
    /// struct LogStates;
    /// impl cloister_ractor::Listener for LogStates {
    ///     fn on_state_change(&self, from: NodeState, to: NodeState, snapshot: &Snapshot) {
    ///         println!("{}: {from} -> {to}", snapshot.node);
    ///     }
    /// }
    /// ```
    fn on_state_change(&self, from: NodeState, to: NodeState, snapshot: &Snapshot);

    /// Any topology event, state changes included. Does nothing by default.
    ///
    /// # Examples
    ///
    /// Log why members leave, besides the state changes:
    ///
    /// ```no_run
    /// use cloister_core::{NodeState, Snapshot, TopologyEvent};
    ///
    /// struct LogDowns;
    /// impl cloister_ractor::Listener for LogDowns {
    ///     fn on_state_change(&self, _: NodeState, _: NodeState, _: &Snapshot) {}
    ///     fn on_event(&self, event: &TopologyEvent) {
    ///         if let TopologyEvent::NodeDown { node, reason, .. } = event {
    ///             eprintln!("{node} left the ring: {reason}");
    ///         }
    ///     }
    /// }
    /// ```
    fn on_event(&self, _event: &TopologyEvent) {}
}

/// What the Manager's output port carries. A local wrapper because, with the
/// `cluster` feature, an `OutputPort`'s type must implement ractor's
/// `Message`, which cloister-core (free of ractor) cannot.
#[derive(Clone, Debug)]
pub(crate) struct Published(pub(crate) TopologyEvent);

impl Message for Published {}

/// The Manager's topology output port.
pub(crate) type EventPort = OutputPort<Published>;

/// Hands the first event to a subscriber, then subscribes it to the port.
type Attach = Box<dyn FnOnce(&EventPort, TopologyEvent) + Send>;

/// A pending subscription: the converter and the receiver, erased. Only
/// [`subscribe`] makes one (and sends it to the Manager itself); it is public
/// because [`CloisterMessage::Subscribe`] carries it.
pub struct Subscriber(Attach);

impl Subscriber {
    /// Sends `first` to the subscriber, then subscribes it to the port, so
    /// nothing published after `first` can arrive before it.
    pub(crate) fn attach(self, port: &EventPort, first: TopologyEvent) {
        (self.0)(port, first);
    }
}

/// Subscribes `receiver` to `manager`'s topology events, converted into the
/// receiver's own message type by `convert` (return `None` to skip one).
/// The first event is always [`TopologyEvent::Snapshot`] with the current
/// view, then every change in order.
///
/// # Examples
///
/// Send an actor the initial view and every ring change, skipping the rest:
///
/// ```no_run
/// use cloister_core::TopologyEvent;
/// # use ractor::ActorRef;
///
/// enum AppMsg { Topology(TopologyEvent) }
/// impl ractor::Message for AppMsg {}
///
/// # fn demo(manager: &ActorRef<cloister_ractor::CloisterMessage>, app: ActorRef<AppMsg>) -> Result<(), cloister_ractor::CloisterError> {
/// cloister_ractor::subscribe(manager, app, |event| match event {
///     TopologyEvent::Snapshot { .. } | TopologyEvent::RingChanged { .. } => Some(AppMsg::Topology(event)),
///     _ => None,
/// })?;
/// # Ok(()) }
/// ```
pub fn subscribe<M, F>(
    manager: &ActorRef<CloisterMessage>,
    receiver: ActorRef<M>,
    convert: F,
) -> Result<(), CloisterError>
where
    M: Message,
    F: Fn(TopologyEvent) -> Option<M> + Send + Sync + 'static,
{
    let convert = Arc::new(convert);
    let attach = move |port: &EventPort, first: TopologyEvent| {
        if let Some(message) = convert(first) {
            let _ = receiver.send_message(message);
        }
        port.subscribe(receiver, move |Published(event)| convert(event));
    };
    manager
        .cast(CloisterMessage::Subscribe(Subscriber(Box::new(attach))))
        .map_err(|e| CloisterError::ManagerGone(e.to_string()))
}

/// Adds a callback [`Listener`] to `manager`. Its first event is a snapshot
/// of the view at that moment.
///
/// # Examples
///
/// Warn when the cluster falls below `consensus`:
///
/// ```no_run
/// use cloister_core::{NodeState, Snapshot};
///
/// struct BelowConsensus;
/// impl cloister_ractor::Listener for BelowConsensus {
///     fn on_state_change(&self, _: NodeState, to: NodeState, view: &Snapshot) {
///         if to == NodeState::Rehashing {
///             eprintln!("only {} of {} members", view.members.len(), view.consensus);
///         }
///     }
/// }
/// # fn demo(manager: &ractor::ActorRef<cloister_ractor::CloisterMessage>) -> Result<(), cloister_ractor::CloisterError> {
/// cloister_ractor::add_listener(manager, BelowConsensus)?;
/// # Ok(()) }
/// ```
pub fn add_listener(
    manager: &ActorRef<CloisterMessage>,
    listener: impl Listener,
) -> Result<(), CloisterError> {
    manager
        .cast(CloisterMessage::AddListener(Box::new(listener)))
        .map_err(|e| CloisterError::ManagerGone(e.to_string()))
}

/// Waits until `manager`'s node is `Ready` (answers at once if it is); fails
/// with [`CloisterError::ConsensusTimeout`] and the assembly report if it is
/// not `Ready` within `startup_deadline` of this call.
///
/// # Examples
///
/// After [`CloisterManager::spawn_unheld`](crate::CloisterManager::spawn_unheld),
/// hold the rest of the boot until the cluster has assembled:
///
/// ```no_run
/// # async fn example(manager: ractor::ActorRef<cloister_ractor::CloisterMessage>) -> Result<(), Box<dyn std::error::Error>> {
/// let view = cloister_ractor::await_consensus(&manager).await?;
/// println!("ready with {:?}", view.members);
/// # Ok(()) }
/// ```
pub async fn await_consensus(
    manager: &ActorRef<CloisterMessage>,
) -> Result<Snapshot, CloisterError> {
    match ractor::call!(manager, CloisterMessage::AwaitConsensus) {
        Ok(Ok(snapshot)) => Ok(snapshot),
        Ok(Err(report)) => Err(CloisterError::ConsensusTimeout(report)),
        Err(error) => Err(CloisterError::ManagerGone(error.to_string())),
    }
}
