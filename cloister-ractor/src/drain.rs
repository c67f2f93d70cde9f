//! Leaving gracefully: [`leave`], [`leave_on_signal`], and the drain holds
//! an application takes so the node waits for its handoff.
//!
//! A leave, step by step (the decisions are cloister-core's, see its
//! `membership::leave`):
//! 1. The node goes `stopping`: `/ready` answers 503, so an orchestrator
//!    stops sending it work.
//! 2. It says goodbye: every peer reports it `left` (not `crashed` or
//!    `unresponsive`) and takes it out of its ring at once.
//! 3. Its own ring drops it too, so `node_for` on this node names the
//!    owner of each key after it, and subscribers get
//!    [`TopologyEvent::Leaving`](cloister_core::TopologyEvent::Leaving).
//! 4. The sessions stay open while the application hands off; the node
//!    stops once every [`DrainHold`] is released, or at `drain_timeout`.
//!
//! An application that owns nothing takes no hold, and its node stops as
//! soon as the goodbyes are out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::watch;

use crate::{CloisterError, CloisterMessage};

/// How a leave ended: what [`leave`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// Every drain hold was released (or none was taken): the application
    /// handed off what it owned within `drain_timeout`.
    Drained {
        /// From the leave to the stop.
        took: Duration,
    },
    /// `drain_timeout` passed with holds still taken: the node stopped
    /// anyway, and what those holders owned was not handed off.
    DrainTimedOut {
        /// From the leave to the stop: `drain_timeout`.
        took: Duration,
        /// What each hold still taken said it was for.
        still_held: Vec<String>,
    },
}

/// The drain holds taken on one node, shared by its handles and Manager.
#[derive(Debug)]
pub(crate) struct DrainHolds {
    taken: Mutex<BTreeMap<u64, String>>,
    next: std::sync::atomic::AtomicU64,
    /// How many holds are taken, for whoever waits for none.
    count: watch::Sender<usize>,
}

impl Default for DrainHolds {
    fn default() -> Self {
        DrainHolds {
            taken: Mutex::default(),
            next: std::sync::atomic::AtomicU64::new(0),
            count: watch::Sender::new(0),
        }
    }
}

impl DrainHolds {
    pub(crate) fn take(self: &Arc<Self>, what: String) -> DrainHold {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken.insert(id, what);
        self.count.send_replace(taken.len());
        DrainHold {
            holds: Arc::clone(self),
            id,
        }
    }

    fn release(&self, id: u64) {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken.remove(&id);
        self.count.send_replace(taken.len());
    }

    /// What the holds still taken are for.
    pub(crate) fn held(&self) -> Vec<String> {
        let taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken.values().cloned().collect()
    }

    /// Resolves once no hold is taken (at once if none is).
    pub(crate) async fn released(&self) {
        let mut count = self.count.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = count.wait_for(|n| *n == 0).await;
    }
}

/// Keeps a leaving node running until it is dropped (or released), or
/// until `drain_timeout`: take one with
/// [`Cloister::hold_drain`](crate::Cloister::hold_drain) for each thing that
/// must be handed off on leave, before the leave comes.
///
/// Dropping it is releasing it, so an actor that keeps its hold in its
/// state releases it when it stops, also when it fails.
#[derive(Debug)]
#[must_use = "a hold is released when dropped"]
pub struct DrainHold {
    holds: Arc<DrainHolds>,
    id: u64,
}

impl DrainHold {
    /// Releases the hold: this holder has handed off what it owned.
    pub fn release(self) {}
}

impl Drop for DrainHold {
    fn drop(&mut self) {
        self.holds.release(self.id);
    }
}

/// Leaves the cluster gracefully and answers how the leave ended, waiting
/// at most `timeout` (the leave goes on if the wait runs out). See the
/// module docs for the steps; a second call while a leave is under way
/// waits for the same end.
///
/// Fails with [`CloisterError::ManagerGone`] when the Manager has already
/// stopped, and with [`CloisterError::LeaveTimeout`] when `timeout` passes
/// first (then the node still stops, at `drain_timeout` at the latest).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(manager: ractor::ActorRef<cloister_ractor::CloisterMessage>) {
/// use std::time::Duration;
/// use cloister_ractor::LeaveOutcome;
///
/// match cloister_ractor::leave(&manager, Duration::from_secs(10)).await {
///     Ok(LeaveOutcome::Drained { took }) => println!("left after {took:?}"),
///     Ok(LeaveOutcome::DrainTimedOut { still_held, .. }) => {
///         eprintln!("left without handing off: {still_held:?}")
///     }
///     Err(error) => eprintln!("{error}"),
/// }
/// # }
/// ```
///
/// From your supervisor's `post_stop`, so stopping the supervisor is a
/// leave (ractor kills a stopping supervisor's children, the Manager
/// among them, right after its `post_stop`):
///
/// ```no_run
/// use std::time::Duration;
/// use cloister_ractor::CloisterMessage;
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
///
/// struct Root;
/// impl Actor for Root {
///     type Msg = ();
///     type State = ActorRef<CloisterMessage>; // the Manager
///     type Arguments = ();
/// #   async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<Self::State, ActorProcessingErr> { unimplemented!() }
///     async fn post_stop(&self, _: ActorRef<()>, manager: &mut Self::State) -> Result<(), ActorProcessingErr> {
///         let _ = cloister_ractor::leave(manager, Duration::from_secs(10)).await;
///         Ok(())
///     }
/// }
/// ```
pub async fn leave(
    manager: &ActorRef<CloisterMessage>,
    timeout: Duration,
) -> Result<LeaveOutcome, CloisterError> {
    let gone = |e: &dyn std::fmt::Display| CloisterError::ManagerGone(e.to_string());
    let (reply, answer) = ractor::concurrency::oneshot();
    manager
        .cast(CloisterMessage::Leave(Some(reply.into())))
        .map_err(|e| gone(&e))?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(_)) => Err(gone(&"it stopped before it answered")),
        Err(_) => Err(CloisterError::LeaveTimeout { waited: timeout }),
    }
}

/// Waits for SIGTERM or SIGINT (what an orchestrator or Ctrl-C sends),
/// then [`leave`]s: the helper for a node's `main`, so that stopping a
/// container is a graceful leave. `timeout` bounds the leave as in
/// [`leave`]; keep it above `drain_timeout`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(manager: ractor::ActorRef<cloister_ractor::CloisterMessage>,
/// #               join: tokio::task::JoinHandle<()>) {
/// use std::time::Duration;
///
/// tokio::select! {
///     _ = join => {} // the Manager stopped on its own
///     left = cloister_ractor::leave_on_signal(&manager, Duration::from_secs(10)) => {
///         if let Err(error) = left {
///             eprintln!("{error}");
///         }
///     }
/// }
/// # }
/// ```
pub async fn leave_on_signal(
    manager: &ActorRef<CloisterMessage>,
    timeout: Duration,
) -> Result<LeaveOutcome, CloisterError> {
    use tokio::signal::unix::{signal, SignalKind};
    let signal_error = |e: std::io::Error| CloisterError::Signals(e.to_string());
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name}: leaving the cluster");
    let outcome = leave(manager, timeout).await;
    if let Err(error) = &outcome {
        tracing::error!("{error}");
    }
    outcome
}
