//! `own-ring`: a node that keeps its own ring (`ring = "external"`).
//!
//! cloister still assembles the cluster, detects failures and publishes the
//! members, but builds no hash ring: `node_for` answers `None` and routing by
//! key refuses with `RouteError::ExternalRing`. The application places keys
//! itself, here by rendezvous hashing (each key goes to the member with the
//! highest hash of member and key), rebuilt from the members of every
//! `Snapshot` and `RingChanged` event. Every node computes the same
//! placement from the same members, so the members' digest, which cloister
//! still reports, tells whether two nodes agree.
//!
//! It prints, after every change, an `own_ring` line: the members, and a
//! digest of the owners of `key-0`..`key-999` under its own placement. Run
//! three with `LocalCluster` (examples/tests/routing.rs does), or by hand:
//!
//! ```text
//! CLOISTER_APP=own CLOISTER_SENTRY=own@127.0.0.1:4000 CLOISTER_LISTEN_ADDR=127.0.0.1 cargo run -p cloister-examples --bin own-ring
//! ```

use std::hash::Hasher;

use cloister_core::config::RingMode;
use cloister_core::{Config, NodeName, TopologyEvent};
use cloister_ractor::harness::{exit_with_harness, print_line, EventLines};
use cloister_ractor::{Cloister, CloisterManager, Group, StartOptions};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use siphasher::sip::SipHasher13;

/// Keys sampled for the `own_ring` line.
const SAMPLE: u32 = 1000;

/// Rendezvous placement over the current members.
struct Rendezvous {
    members: Vec<NodeName>,
}

impl Rendezvous {
    /// The member with the highest score for `key`; `None` without members.
    fn node_for(&self, key: &str) -> Option<&NodeName> {
        self.members
            .iter()
            .max_by_key(|node| (score(node, key), node.as_str()))
    }
}

/// A hash of member and key with fixed keys, the same in every process.
fn score(node: &NodeName, key: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x636c_6f69, 0x7374_6572);
    hasher.write(node.as_str().as_bytes());
    hasher.write_u8(0);
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// Keeps the placement from the topology events.
struct Placement;

#[derive(ractor_cluster::RactorMessage)]
enum PlacementMsg {
    Members(Vec<NodeName>),
}

/// Every node's placement actor: reach one with `cloister.actor_on(PLACEMENT,
/// &node)` once your own ring named the node.
const PLACEMENT: Group<PlacementMsg> = Group::new("placement");

impl Actor for Placement {
    type Msg = PlacementMsg;
    type State = (Cloister, Rendezvous);
    type Arguments = Cloister;

    async fn pre_start(
        &self,
        myself: ActorRef<PlacementMsg>,
        cloister: Cloister,
    ) -> Result<Self::State, ActorProcessingErr> {
        PLACEMENT.join(&myself);
        let members = Vec::new();
        Ok((cloister, Rendezvous { members }))
    }

    async fn handle(
        &self,
        _: ActorRef<PlacementMsg>,
        PlacementMsg::Members(members): PlacementMsg,
        (cloister, ring): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ring.members = members;
        // One hash over the owner of every sampled key, in key order.
        let mut owners = SipHasher13::new();
        for i in 0..SAMPLE {
            let owner = ring.node_for(&format!("key-{i}"));
            owners.write(owner.map_or("", |node| node.as_str()).as_bytes());
            owners.write_u8(0);
        }
        // What cloister's own lookups say under `ring = "external"`.
        let builtin = cloister.node_for("key-0");
        let routed = cloister.route(PLACEMENT, "key-0", PlacementMsg::Members(Vec::new()));
        print_line(
            cloister.me(),
            "own_ring",
            json!({
                "members": ring.members,
                "owners_digest": format!("{:016x}", owners.finish()),
                "builtin_owner": builtin,
                "route_error": routed.err().map(|error| error.to_string()),
            }),
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    cloister_examples::init_logs();
    exit_with_harness();
    if let Err(error) = run().await {
        eprintln!("own-ring: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        ring: RingMode::External,
        ..Config::from_env()?
    };
    let options = StartOptions {
        hold: true,
        listeners: vec![Box::new(EventLines::default())],
        ..StartOptions::default()
    };
    let (manager, done, cloister) = CloisterManager::start(config, options).await?;
    let (placement, _) = Actor::spawn(None, Placement, cloister).await?;
    cloister_ractor::subscribe(&manager, placement, |event| match event {
        TopologyEvent::Snapshot { snapshot } => Some(PlacementMsg::Members(snapshot.members)),
        TopologyEvent::RingChanged { members, .. } => Some(PlacementMsg::Members(members)),
        _ => None,
    })?;
    done.await?;
    Ok(())
}
