//! The herald: the one actor of this node that other nodes' Managers talk to.
//!
//! The Manager's own message type carries reply ports and closures, so it
//! cannot cross the network. The herald's can: it joins the app's `pg` group
//! under a name that says which node it speaks for, receives peers'
//! heartbeats and hands them to its Manager. ractor_cluster syncs `pg` groups
//! to a peer before it reports the session ready, so by the time the Manager
//! learns of a session, the peer's herald can be found.

use std::time::Instant;

use cloister_core::tally::Tally;
use cloister_core::{Heartbeat, NodeName};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;

use crate::manager::{CloisterMessage, Internal};

/// What heralds send each other. Variants are matched by name on the wire:
/// add new ones, never rename.
#[derive(RactorClusterMessage, Debug)]
pub enum HeraldMessage {
    /// A serialized [`Heartbeat`] (JSON). Kept as bytes so a garbled or
    /// foreign payload is logged and dropped, never a panic.
    Heartbeat(Vec<u8>),
}

/// The herald actor.
pub struct Herald;

/// The herald's Manager, and a count of payloads that did not parse (anyone
/// with the cookie can send them: one line per interval, not one each).
pub struct HeraldState {
    manager: ActorRef<CloisterMessage>,
    garbled: Tally,
    epoch: Instant,
}

/// The `pg` group of an app's heralds.
pub(crate) fn group(app: &str) -> String {
    format!("cloister:{app}")
}

/// The registered name of the herald speaking for `node`.
pub(crate) fn name(app: &str, node: &NodeName) -> String {
    format!("cloister:{app}:{node}")
}

/// Encodes a heartbeat for the wire.
pub(crate) fn encode(heartbeat: &Heartbeat) -> HeraldMessage {
    // Serializing plain data into a Vec cannot fail.
    HeraldMessage::Heartbeat(serde_json::to_vec(heartbeat).unwrap_or_default())
}

impl Actor for Herald {
    type Msg = HeraldMessage;
    type State = HeraldState;
    type Arguments = ActorRef<CloisterMessage>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        manager: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(HeraldState {
            manager,
            garbled: Tally::new(),
            epoch: Instant::now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HeraldMessage::Heartbeat(bytes) => match serde_json::from_slice::<Heartbeat>(&bytes) {
                Ok(heartbeat) => {
                    let heartbeat = CloisterMessage::Internal(Internal::Heartbeat(heartbeat));
                    let _ = state.manager.cast(heartbeat);
                }
                Err(error) => {
                    if let Some(count) = state.garbled.note(state.epoch.elapsed()) {
                        tracing::warn!(
                            %error, count,
                            "dropped {count} heartbeat(s) that do not parse; counted, logged at \
                             most every {:?}", cloister_core::tally::REPORT_EVERY
                        );
                    }
                }
            },
        }
        Ok(())
    }
}
