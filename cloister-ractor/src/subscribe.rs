//! Subscribing to topology events: actors through a lossless fan-out into
//! their mailboxes, callbacks through [`Listener`].

use cloister_core::{NodeState, Snapshot, TopologyEvent};
use ractor::{ActorRef, ActorStatus, Message};

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

/// Every subscribed actor, each behind its converter. Events go straight
/// into each actor's mailbox, which ractor never bounds: every subscriber
/// gets every event, in order, however far behind it is. (ractor's
/// `OutputPort` is a broadcast channel of 10 that skips on lag; a subscriber
/// that keeps state from events cannot afford that.) A subscriber that
/// stopped is dropped at the next event.
#[derive(Default)]
pub(crate) struct Subscribers(Vec<Deliver>);

/// Delivers one event to one subscriber; false once the subscriber is gone.
type Deliver = Box<dyn Fn(&TopologyEvent) -> bool + Send>;

impl Subscribers {
    /// Delivers `event` to every live subscriber, forgetting the stopped ones.
    pub(crate) fn send(&mut self, event: &TopologyEvent) {
        self.0.retain(|deliver| deliver(event));
    }
}

/// Hands the first event to a subscriber, then returns its delivery.
type Attach = Box<dyn FnOnce(TopologyEvent) -> Deliver + Send>;

/// A pending subscription: the converter and the receiver, erased. Only
/// [`subscribe`] makes one (and sends it to the Manager itself); it is public
/// because [`CloisterMessage::Subscribe`] carries it.
pub struct Subscriber(Attach);

impl Subscriber {
    /// Sends `first` to the subscriber, then adds it to `subscribers`, so
    /// nothing published after `first` can arrive before it.
    pub(crate) fn attach(self, subscribers: &mut Subscribers, first: TopologyEvent) {
        subscribers.0.push((self.0)(first));
    }
}

/// Subscribes `receiver` to `manager`'s topology events, converted into the
/// receiver's own message type by `convert` (return `None` to skip one).
/// The first event is always [`TopologyEvent::Snapshot`] with the current
/// view, then every change in order.
///
/// To unsubscribe, stop the receiver: the subscription ends with it (the
/// Manager drops a subscriber whose actor has stopped, at its next event).
/// To stop listening while the actor runs, subscribe a small child actor
/// that forwards to it, and stop the child:
///
/// ```no_run
/// use cloister_core::TopologyEvent;
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
///
/// /// Forwards topology events to the actor that wants them.
/// struct Forwarder;
/// #[derive(ractor_cluster::RactorMessage)]
/// struct Event(TopologyEvent);
///
/// impl Actor for Forwarder {
///     type Msg = Event;
///     type State = ActorRef<Event>;
///     type Arguments = ActorRef<Event>;
///     async fn pre_start(&self, _: ActorRef<Event>, to: ActorRef<Event>) -> Result<ActorRef<Event>, ActorProcessingErr> {
///         Ok(to)
///     }
///     async fn handle(&self, _: ActorRef<Event>, event: Event, to: &mut ActorRef<Event>) -> Result<(), ActorProcessingErr> {
///         Ok(to.send_message(event)?)
///     }
/// }
///
/// # async fn demo(manager: ActorRef<cloister_ractor::CloisterMessage>, me: ActorRef<Event>) -> Result<(), Box<dyn std::error::Error>> {
/// let (forwarder, _) = Actor::spawn_linked(None, Forwarder, me.clone(), me.get_cell()).await?;
/// cloister_ractor::subscribe(&manager, forwarder.clone(), |event| Some(Event(event)))?;
/// // ... later, to unsubscribe:
/// forwarder.stop(None);
/// # Ok(()) }
/// ```
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
    manager
        .cast(CloisterMessage::Subscribe(subscriber(receiver, convert)))
        .map_err(|e| CloisterError::ManagerGone(e.to_string()))
}

/// The subscription [`subscribe`] sends the Manager.
fn subscriber<M, F>(receiver: ActorRef<M>, convert: F) -> Subscriber
where
    M: Message,
    F: Fn(TopologyEvent) -> Option<M> + Send + Sync + 'static,
{
    let attach = move |first: TopologyEvent| -> Deliver {
        let deliver = move |event: &TopologyEvent| match convert(event.clone()) {
            Some(message) => receiver.send_message(message).is_ok(),
            None => !matches!(
                receiver.get_status(),
                ActorStatus::Stopping | ActorStatus::Stopped
            ),
        };
        deliver(&first);
        Box::new(deliver)
    };
    Subscriber(Box::new(attach))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use cloister_core::{Digest, NodeName, TopologyEvent};
    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::*;

    /// Takes 2 ms over each event, far slower than the Manager publishes.
    struct Slow;

    struct Seen(TopologyEvent);
    impl Message for Seen {}

    impl Actor for Slow {
        type Msg = Seen;
        type State = Arc<Mutex<Vec<TopologyEvent>>>;
        type Arguments = Arc<Mutex<Vec<TopologyEvent>>>;

        async fn pre_start(
            &self,
            _: ActorRef<Seen>,
            seen: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(seen)
        }

        async fn handle(
            &self,
            _: ActorRef<Seen>,
            Seen(event): Seen,
            seen: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen.lock().map_err(|e| e.to_string())?.push(event);
            Ok(())
        }
    }

    fn ring_event(i: u64) -> TopologyEvent {
        let name: NodeName = format!("n{i}@127.0.0.1").parse().expect("a valid name");
        TopologyEvent::RingChanged {
            digest: Digest::of(std::slice::from_ref(&name)),
            members: vec![name],
        }
    }

    /// A node resumed after a long pause drops all its peers in one tick: a
    /// burst of events, published in one go. A slow subscriber gets every
    /// one of them, in order (ractor's `OutputPort`, used before, skipped
    /// all but the last 10 or so).
    #[tokio::test]
    async fn a_slow_subscriber_gets_every_event_of_a_burst_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (slow, handle) = Actor::spawn(None, Slow, Arc::clone(&seen))
            .await
            .expect("spawn");
        let mut subscribers = Subscribers::default();
        subscriber(slow.clone(), |event| Some(Seen(event))).attach(&mut subscribers, ring_event(0));
        let burst: Vec<TopologyEvent> = (1..=500).map(ring_event).collect();
        for event in &burst {
            subscribers.send(event);
        }
        let mut expected = vec![ring_event(0)];
        expected.extend(burst);
        for _ in 0..1_000 {
            if seen.lock().expect("lock").len() >= expected.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*seen.lock().expect("lock"), expected);
        slow.stop(None);
        handle.await.expect("the subscriber stops");
        // A stopped subscriber is dropped at the next event.
        subscribers.send(&ring_event(501));
        assert!(subscribers.0.is_empty());
    }
}
