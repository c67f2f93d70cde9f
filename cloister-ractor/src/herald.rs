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

/// The app of a herald that runs on the node behind session `session` for
/// an app other than `app`, if one does. Nodes of different apps never
/// exchange heartbeats (each sends to its own app's group), so this is how
/// a node learns why a connected peer never joins.
pub(crate) fn other_app_on(session: u64, app: &str) -> Option<String> {
    ractor::pg::which_groups().into_iter().find_map(|group| {
        // Heralds' groups only: an app name holds no `:`, typed groups do.
        let other = group.strip_prefix("cloister:")?;
        if other == app || other.contains(':') {
            return None;
        }
        let there = ractor::pg::get_members(&group).iter().any(|cell| {
            let id = cell.get_id();
            !id.is_local() && id.node() == session
        });
        there.then(|| other.to_string())
    })
}

/// The registered name of the herald speaking for `node`.
pub(crate) fn name(app: &str, node: &NodeName) -> String {
    format!("cloister:{app}:{node}")
}

/// Decodes a peer's [`HeraldMessage::Heartbeat`] payload: any bytes, an
/// error for those that are not a JSON [`Heartbeat`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Heartbeat, serde_json::Error> {
    serde_json::from_slice(bytes)
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
            HeraldMessage::Heartbeat(bytes) => match decode(&bytes) {
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

#[cfg(test)]
mod tests {
    //! Any peer holding the cookie can cast any bytes to the herald: what
    //! ractor_cluster hands over is a variant name and packed arguments, and
    //! every step from there to a [`Heartbeat`] must refuse, never panic.
    #![allow(clippy::unwrap_used)]

    use cloister_core::{Digest, Incarnation};
    use proptest::prelude::*;
    use ractor::message::SerializedMessage;
    use ractor::Message;

    use super::*;
    use crate::wire::frames::{cast, packed};

    /// What the herald does with a message from a peer, short of its
    /// Manager: the derive's decoding, then [`decode`].
    fn receive(message: SerializedMessage) -> Option<Result<Heartbeat, serde_json::Error>> {
        match HeraldMessage::deserialize(message).ok()? {
            HeraldMessage::Heartbeat(bytes) => Some(decode(&bytes)),
        }
    }

    fn heartbeat() -> Heartbeat {
        let from: NodeName = "cloister@10.0.0.1".parse().unwrap();
        Heartbeat {
            digest: Digest::of([&from]),
            from,
            app: "cloister".into(),
            incarnation: Incarnation(7),
            ring_vnodes: 256,
            leaving: false,
            token: 0xA1,
            echo: 0xB1,
            watching: true,
            admitted: true,
            unresponsive: Vec::new(),
            observations: Vec::new().into(),
            downed: None,
            life: 0,
            news: Vec::new().into(),
            table: 0,
        }
    }

    #[test]
    fn what_a_node_sends_is_what_its_peer_decodes() {
        let sent = heartbeat();
        let wire = encode(&sent).serialize().unwrap();
        assert_eq!(receive(wire).unwrap().unwrap(), sent);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any variant name and any arguments: a heartbeat, an error, or
        /// nothing (the derive refused it), never a panic.
        #[test]
        fn arbitrary_casts_never_panic(
            variant in prop_oneof![Just("Heartbeat".to_string()), ".{0,12}"],
            args in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = receive(cast(&variant, args));
        }

        /// A well-framed payload always reaches [`decode`]: the field's type
        /// (`Vec<u8>`) cannot fail to decode, so no peer's bytes are turned
        /// away, or panic, before cloister's own parse sees them.
        #[test]
        fn any_payload_reaches_the_parse(payload in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(receive(cast("Heartbeat", packed(&[payload]))).is_some());
        }

        /// A real heartbeat, cut short or with bytes changed: the parse
        /// answers, whatever it answers.
        #[test]
        fn damaged_heartbeats_never_panic(
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let mut json = serde_json::to_vec(&heartbeat()).unwrap();
            for (at, byte) in flips {
                let at = at.index(json.len());
                json[at] = byte;
            }
            json.truncate(cut.index(json.len() + 1));
            let _ = receive(cast("Heartbeat", packed(&[json])));
        }
    }
}
