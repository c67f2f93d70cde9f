//! `--probe-dropped`: what a caller is told when the actor it asks stops
//! while it holds the request. Every node runs a dropper, an actor that
//! stops as soon as it is asked, without answering; the first member (in
//! ring order) asks another member's dropper once, through `call_owner`,
//! and prints a `dropped_probe` line with the error it got.

use std::time::Duration;

use cloister_ractor::{Cloister, Group, Wire};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde_json::json;

use crate::emit;

/// What the dropper takes.
#[derive(RactorClusterMessage)]
pub(crate) enum DropperMsg {
    /// Never answered: the dropper stops holding it.
    #[rpc]
    Ask(RpcReplyPort<Wire<String>>),
}

/// Every node's dropper.
const DROPPER: Group<DropperMsg> = Group::new("dropper");

/// How long the probe's call may wait: far longer than a dropped request
/// takes to be reported, so a timeout cannot be mistaken for it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Stops when asked, holding the request until it is gone.
pub(crate) struct Dropper;

impl Actor for Dropper {
    type Msg = DropperMsg;
    type State = Option<RpcReplyPort<Wire<String>>>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<DropperMsg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        DROPPER.join(&myself);
        Ok(None)
    }

    async fn handle(
        &self,
        myself: ActorRef<DropperMsg>,
        DropperMsg::Ask(reply): DropperMsg,
        held: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Kept in the state, so the request goes only with the actor.
        *held = Some(reply);
        myself.stop(Some("asked to drop a request".into()));
        Ok(())
    }
}

/// Starts this node's dropper and, on the first member, the probe.
pub(crate) async fn run(cloister: Cloister) {
    if let Err(error) = Actor::spawn(None, Dropper, ()).await {
        return emit(
            cloister.me(),
            "dropped_probe",
            json!({ "error": error.to_string() }),
        );
    }
    let me = cloister.me().clone();
    if cloister.members().first() != Some(&me) {
        return;
    }
    let ready = cloister.await_group(DROPPER, Duration::from_secs(30)).await;
    if let Err(error) = ready {
        return emit(&me, "dropped_probe", json!({ "error": error.to_string() }));
    }
    let remote_key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|key| cloister.node_for(key).is_some_and(|owner| owner != me));
    let Some(key) = remote_key else {
        return emit(&me, "dropped_probe", json!({ "error": "no other member" }));
    };
    let owner = cloister.node_for(&key);
    let asked = cloister
        .call_owner(DROPPER, &key, DropperMsg::Ask, CALL_TIMEOUT)
        .await;
    let fields = match asked {
        Ok((node, answer)) => match answer.into_inner() {
            Ok(answer) => json!({ "owner": node, "answer": answer }),
            Err(error) => json!({ "owner": node, "error": error.to_string() }),
        },
        Err(error) => json!({ "owner": owner, "error": error.to_string() }),
    };
    emit(&me, "dropped_probe", fields);
}
