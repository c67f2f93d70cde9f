//! The key owner: answers for the keys the ring gives its node, from this
//! node or any other (`--show-keys`, the probes, `--bench-routing`).

use cloister_examples::garbled::Garbled;
use cloister_ractor::{Cloister, Group, Wire};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde_json::json;

use crate::emit;

/// Answers for the keys the ring gives its node; started only in an
/// assembled cluster, and reachable from every node through the
/// `key_owner` group.
pub(crate) struct KeyOwner;

/// The group of the key owners, one per node.
pub(crate) const KEY_OWNER: Group<KeyOwnerMsg> = Group::new("key_owner");

/// What the key owner answers, from this node or any other. Fields and
/// replies are [`Wire`]s: a peer can send any bytes, which the key owner
/// checks instead of ractor's decoders panicking on them.
#[derive(RactorClusterMessage)]
pub(crate) enum KeyOwnerMsg {
    /// Replies with the owner of the key (empty if there is none).
    #[rpc]
    Owner(Wire<String>, RpcReplyPort<Wire<String>>),
    /// Replies with this node's name.
    #[rpc]
    WhoAmI(RpcReplyPort<Wire<String>>),
    /// Counted, nothing else: the one-way message of `--bench-routing`
    /// (its number is not read).
    Tick(Wire<u64>),
    /// Replies with the number of `Tick`s received so far.
    #[rpc]
    Ticks(RpcReplyPort<Wire<u64>>),
}

/// The key owner's state: the handle, the `Tick`s counted, and the
/// messages dropped because their fields did not parse.
pub(crate) struct KeyOwnerState {
    cloister: Cloister,
    ticks: u64,
    garbled: Garbled,
}

impl Actor for KeyOwner {
    type Msg = KeyOwnerMsg;
    type State = KeyOwnerState;
    type Arguments = Cloister;

    async fn pre_start(
        &self,
        myself: ActorRef<KeyOwnerMsg>,
        cloister: Cloister,
    ) -> Result<KeyOwnerState, ActorProcessingErr> {
        KEY_OWNER.join(&myself);
        emit(cloister.me(), "app_started", json!({}));
        Ok(KeyOwnerState {
            cloister,
            ticks: 0,
            garbled: Garbled::new("key owner"),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<KeyOwnerMsg>,
        message: KeyOwnerMsg,
        state: &mut KeyOwnerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            KeyOwnerMsg::Owner(key, reply) => match key.into_inner() {
                Ok(key) => {
                    let owner = state.cloister.node_for(key).map(|n| n.to_string());
                    let _ = reply.send(Wire::new(owner.unwrap_or_default()));
                }
                // No answer: the caller's call fails, as for a stopped actor.
                Err(error) => state.garbled.note(&error),
            },
            KeyOwnerMsg::WhoAmI(reply) => {
                let _ = reply.send(Wire::new(state.cloister.me().to_string()));
            }
            KeyOwnerMsg::Tick(_) => state.ticks += 1,
            KeyOwnerMsg::Ticks(reply) => {
                let _ = reply.send(Wire::new(state.ticks));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Any peer with the cookie can send the key owner and the dropper any
    //! variant with any bytes, and answer their calls with any bytes: every
    //! field and reply must decode (the actor then checks it), never panic
    //! in ractor's decoders.

    use cloister_ractor::wire::frames::{call, cast, decodes, packed, reply_arrives};
    use proptest::prelude::*;

    use super::KeyOwnerMsg;
    use crate::dropped::DropperMsg;
    use cloister_ractor::Wire;

    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..48)
    }

    /// The first failures the properties found, when `Tick` took a `u64`
    /// and `Ticks` answered one: no bytes at all.
    #[test]
    fn an_empty_tick_and_an_empty_count_decode() {
        assert!(decodes::<KeyOwnerMsg>(cast("Tick", packed(&[[0u8; 0]]))));
        assert!(reply_arrives(KeyOwnerMsg::Ticks, Vec::new()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_fields_from_a_peer_decode(key in field(), tick in field()) {
            prop_assert!(decodes::<KeyOwnerMsg>(call("Owner", packed(&[key]))));
            prop_assert!(decodes::<KeyOwnerMsg>(cast("Tick", packed(&[tick]))));
            prop_assert!(decodes::<KeyOwnerMsg>(call("WhoAmI", Vec::new())));
            prop_assert!(decodes::<KeyOwnerMsg>(call("Ticks", Vec::new())));
            prop_assert!(decodes::<DropperMsg>(call("Ask", Vec::new())));
        }

        #[test]
        fn any_reply_from_a_peer_reaches_the_caller(bytes in field()) {
            prop_assert!(reply_arrives(|r| KeyOwnerMsg::Owner(Wire::new("k".into()), r), bytes.clone()));
            prop_assert!(reply_arrives(KeyOwnerMsg::WhoAmI, bytes.clone()));
            prop_assert!(reply_arrives(KeyOwnerMsg::Ticks, bytes.clone()));
            prop_assert!(reply_arrives(DropperMsg::Ask, bytes));
        }
    }
}
