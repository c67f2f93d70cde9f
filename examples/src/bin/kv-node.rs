//! `kv-node`: a clustered key-value store in one small file.
//!
//! Every key lives on the two nodes `nodes_for(key, 2)` gives: its owner and
//! the next node on the ring. Each node's store is a `kv` group actor. When
//! the ring changes or a node comes up, every store hands each key it holds
//! to the nodes that should hold it now, and drops the keys it should no
//! longer keep. So a key
//! survives the loss of any one node, and a node that restarts empty is
//! filled again by re-puts from the others. With a `quorum` set
//! (`CLOISTER_QUORUM=majority`), a put on a side of the cluster without
//! quorum stores nothing and answers an error: it is never acknowledged
//! where the side with quorum would not see it. A put is acknowledged
//! (`"acknowledged": true`) only when both holders answered that they keep
//! it: a cast into a session that a fresh partition broke is lost without
//! an error, so a sent message alone acknowledges nothing.
//!
//! Commands, one per line on stdin (sent by a test with
//! `LocalCluster::send_line`, or typed): `put KEY VALUE`, `get KEY` (asks the
//! owner, then the other replica) and `count` (the keys this node holds).
//! Each answer is a JSON line on stdout, next to the topology lines of
//! `cloister_ractor::harness::EventLines`. Configured by `CLOISTER_*`
//! variables, like any node `LocalCluster` runs.
//!
//! What a real store would add: sending only the keys whose placement
//! changed (this re-puts all of them on every ring change), and versions
//! that do not trust wall clocks (a write's version is its put time in
//! microseconds, and the newer version wins).
//!
//! ```text
//! CLOISTER_APP=kv CLOISTER_SENTRY=kv@127.0.0.1:4000 CLOISTER_LISTEN_ADDR=127.0.0.1 \
//!     cargo run -p cloister-examples --bin kv-node
//! put user:42 Ada
//! get user:42
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloister_core::{Config, NodeName, NodeState, TopologyEvent};
use cloister_ractor::harness::{control_lines, print_line, EventLines};
use cloister_ractor::{Cloister, CloisterManager, DrainHold, Group, StartOptions};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// How many nodes keep each key.
const REPLICAS: usize = 2;
/// The group every node's store joins.
const KV: Group<KvMsg> = Group::new("kv");
/// How long a `get` waits for one replica.
const GET_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a put waits for each holder to answer that it keeps the key.
const PUT_TIMEOUT: Duration = Duration::from_millis(500);
/// How soon a handoff that could not reach a node is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// What stores send each other; also what the local node sends its store.
#[derive(RactorClusterMessage)]
enum KvMsg {
    /// Keep `value` under `key` unless a newer version is already there.
    Put(String, String, u64),
    /// [`KvMsg::Put`], answered once kept: what a client's put sends.
    #[rpc]
    Store(String, String, u64, RpcReplyPort<bool>),
    /// Replies with `{"value": .., "node": ..}` (`value` null when absent).
    #[rpc]
    Get(String, RpcReplyPort<String>),
    /// Replies with how many keys this store holds.
    #[rpc]
    Count(RpcReplyPort<u64>),
    /// The ring changed or a node came up: put every key where it belongs
    /// now. Sent by this node only.
    Rebalance,
    /// The scheduled retry of a handoff that could not reach every node.
    /// Sent by this node only.
    Retry,
    /// This node is leaving: hand every key to the nodes that hold it
    /// after this one, acknowledged, within the drain timeout, then
    /// release the drain hold. The drain timeout in milliseconds. Sent by
    /// this node only.
    Drain(u64),
}

struct Store;

struct Shard {
    cloister: Cloister,
    data: HashMap<String, (u64, String)>,
    /// A retry is already scheduled.
    retrying: bool,
    /// Keeps this node from stopping on leave until its keys are handed
    /// off (released by `KvMsg::Drain`, or dropped with the store).
    hold: Option<DrainHold>,
}

impl Actor for Store {
    type Msg = KvMsg;
    type State = Shard;
    type Arguments = Cloister;

    async fn pre_start(
        &self,
        myself: ActorRef<KvMsg>,
        cloister: Cloister,
    ) -> Result<Shard, ActorProcessingErr> {
        KV.join(&myself);
        print_line(cloister.me(), "kv_started", json!({}));
        Ok(Shard {
            hold: Some(cloister.hold_drain("kv store handoff")),
            cloister,
            data: HashMap::new(),
            retrying: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<KvMsg>,
        message: KvMsg,
        shard: &mut Shard,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            // A leaving store keeps nothing new: it would leave with it.
            // The caller hears `false` and puts the key elsewhere.
            KvMsg::Store(.., reply) if shard.cloister.state() == NodeState::Stopping => {
                let _ = reply.send(false);
            }
            KvMsg::Store(key, value, version, reply) => {
                shard.put(&myself, key, value, version);
                let _ = reply.send(true);
            }
            KvMsg::Put(key, value, version) => shard.put(&myself, key, value, version),
            KvMsg::Get(key, reply) => {
                let value = shard.data.get(&key).map(|(_, value)| value);
                let answer = json!({ "value": value, "node": shard.cloister.me() });
                let _ = reply.send(answer.to_string());
            }
            KvMsg::Count(reply) => {
                let _ = reply.send(shard.data.len() as u64);
            }
            // Leaving: the drain hands off, acknowledged; a cast now
            // would drop keys on a send that proves nothing.
            KvMsg::Rebalance | KvMsg::Retry if shard.cloister.state() == NodeState::Stopping => {}
            KvMsg::Rebalance => shard.rebalance(&myself),
            KvMsg::Retry => {
                shard.retrying = false;
                shard.rebalance(&myself);
            }
            KvMsg::Drain(within_ms) => {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(within_ms);
                let (handed, left) = shard.drain(deadline).await;
                let fields = json!({ "handed_off": handed, "not_handed_off": left });
                print_line(shard.cloister.me(), "drained", fields);
                shard.hold.take();
            }
        }
        Ok(())
    }
}

impl Shard {
    /// Keeps `value` under `key` unless a newer version is already there.
    fn put(&mut self, myself: &ActorRef<KvMsg>, key: String, value: String, version: u64) {
        let me = self.cloister.me().clone();
        let stray = !self.cloister.nodes_for(&key, REPLICAS).contains(&me);
        let newer = self.data.get(&key).is_none_or(|(old, _)| version > *old);
        if newer {
            self.data.insert(key, (version, value));
        }
        if stray {
            // Sent on a ring older than this node's (a rebalance that
            // crossed a change): kept, and handed on and dropped by the
            // next rebalance, so no third copy stays.
            self.rebalance_later(myself);
        }
    }

    /// Hands off, and schedules a retry if some node could not be reached:
    /// one retry chain at most, however many events come meanwhile.
    fn rebalance(&mut self, myself: &ActorRef<KvMsg>) {
        if !self.hand_off() {
            self.rebalance_later(myself);
        }
    }

    /// Schedules a rebalance after `RETRY`, unless one is already scheduled.
    fn rebalance_later(&mut self, myself: &ActorRef<KvMsg>) {
        if !self.retrying {
            self.retrying = true;
            myself.send_after(RETRY, || KvMsg::Retry);
        }
    }

    /// Puts every key on the other nodes that should hold it, and drops the
    /// ones this node should no longer keep once they are handed over.
    /// Returns false if some node could not be reached (try again later).
    fn hand_off(&mut self) -> bool {
        let me = self.cloister.me().clone();
        let mut complete = true;
        let cloister = &self.cloister;
        self.data.retain(|key, (version, value)| {
            let holders = cloister.nodes_for(key, REPLICAS);
            let mut handed = true;
            for node in holders.iter().filter(|node| **node != me) {
                let put = KvMsg::Put(key.clone(), value.clone(), *version);
                let sent = cloister.actor_on(KV, node).map(|a| a.cast(put));
                if !matches!(sent, Ok(Ok(()))) {
                    handed = false;
                }
            }
            complete &= handed;
            holders.contains(&me) || !handed
        });
        complete
    }
}

impl Shard {
    /// Hands every key to the nodes that hold it now (this leaving node is
    /// out of its own ring), each put acknowledged, retrying what failed
    /// until `deadline`. Returns how many keys were handed off and how
    /// many were not.
    async fn drain(&mut self, deadline: tokio::time::Instant) -> (usize, usize) {
        let mut pending: Vec<String> = self.data.keys().cloned().collect();
        let total = pending.len();
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            let mut failed = Vec::new();
            for key in pending {
                if tokio::time::Instant::now() >= deadline {
                    failed.push(key); // out of time: counted as not handed off
                    continue;
                }
                let Some((version, value)) = self.data.get(&key).cloned() else {
                    continue;
                };
                if !store_on_holders(&self.cloister, &key, &value, version)
                    .await
                    .1
                    .is_empty()
                {
                    failed.push(key);
                }
            }
            pending = failed;
            if !pending.is_empty() {
                tokio::time::sleep(RETRY).await;
            }
        }
        (total - pending.len(), pending.len())
    }
}

/// Puts `key` on each of its holders with an acknowledgement: the holders
/// that keep it, and one error per holder that did not answer so.
async fn store_on_holders(
    cloister: &Cloister,
    key: &str,
    value: &str,
    version: u64,
) -> (Vec<NodeName>, Vec<String>) {
    let mut stored_on = Vec::new();
    let mut errors = Vec::new();
    for node in cloister.nodes_for(key, REPLICAS) {
        let stored = match cloister.actor_on(KV, &node) {
            Ok(store) => store
                .call(
                    |reply| KvMsg::Store(key.into(), value.into(), version, reply),
                    Some(PUT_TIMEOUT),
                )
                .await
                .map_err(|error| error.to_string())
                .and_then(|r| r.success_or(()).map_err(|()| "no answer".into())),
            Err(error) => Err(error.to_string()),
        };
        match stored {
            Ok(true) => stored_on.push(node),
            Ok(false) => errors.push(format!("{node}: leaving, kept nothing")),
            Err(error) => errors.push(format!("{node}: {error}")),
        }
    }
    (stored_on, errors)
}

/// Runs one command line and prints its answer.
async fn run(cloister: &Cloister, line: &str) {
    let me = cloister.me();
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("put"), Some(key), Some(value)) => {
            let version = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let mut stored_on = Vec::new();
            let mut errors = Vec::new();
            // Without quorum this side may not be where the key lives for
            // the side that has it: nothing is stored, nothing acknowledged.
            let holders = if cloister.holds_quorum() {
                cloister.nodes_for(key, REPLICAS)
            } else {
                let seen = cloister.members().len();
                errors.push(format!(
                    "no quorum: this side sees {seen} member(s); nothing stored"
                ));
                Vec::new()
            };
            let wanted = holders.len();
            if wanted > 0 {
                let (on, failed) = store_on_holders(cloister, key, value, version).await;
                stored_on = on;
                errors.extend(failed);
            }
            let acknowledged = wanted > 0 && stored_on.len() == wanted;
            let fields = json!({
                "key": key, "stored_on": stored_on, "errors": errors, "acknowledged": acknowledged,
            });
            print_line(me, "put", fields);
        }
        (Some("get"), Some(key), None) => print_line(me, "get", get(cloister, key).await),
        (Some("count"), None, None) => {
            let count = match cloister.actor_on(KV, me) {
                Ok(store) => ractor::call_t!(store, KvMsg::Count, 1_000).ok(),
                Err(_) => None,
            };
            print_line(me, "count", json!({ "keys": count }));
        }
        _ => print_line(
            me,
            "bad_command",
            json!({ "line": line, "expected": "put KEY VALUE | get KEY | count" }),
        ),
    }
}

/// Asks the key's holders in ring order for its value: the owner first, then
/// the replica (the owner may have just restarted and not been re-put yet).
async fn get(cloister: &Cloister, key: &str) -> Value {
    let mut errors = Vec::new();
    for node in cloister.nodes_for(key, REPLICAS) {
        let asked = match cloister.actor_on(KV, &node) {
            Ok(store) => store
                .call(|reply| KvMsg::Get(key.into(), reply), Some(GET_TIMEOUT))
                .await
                .map_err(|error| error.to_string())
                .and_then(|result| result.success_or(()).map_err(|()| "no reply".into())),
            Err(error) => Err(error.to_string()),
        };
        match asked.map(|answer| serde_json::from_str::<Value>(&answer)) {
            Ok(Ok(answer)) if !answer["value"].is_null() => {
                return json!({ "key": key, "value": answer["value"], "from": node });
            }
            Ok(_) => errors.push(format!("{node}: not there")),
            Err(error) => errors.push(format!("{node}: {error}")),
        }
    }
    json!({ "key": key, "value": null, "errors": errors })
}

/// The harness's command lines, or stdin's when run by hand.
fn commands() -> UnboundedReceiver<String> {
    if let Some(lines) = control_lines() {
        return lines;
    }
    let (sender, receiver) = unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = sender.send(line);
        }
    });
    receiver
}

#[tokio::main]
async fn main() {
    cloister_examples::init_logs();
    if let Err(error) = serve().await {
        eprintln!("kv-node: {error}");
        std::process::exit(1);
    }
    // Left (or stdin closed): exit now. The runtime's shutdown would wait
    // for the blocking read of an open stdin (`docker attach`, Swarm's
    // `stdin_open`) until the orchestrator's SIGKILL.
    std::process::exit(0);
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let mut commands = commands();
    let config = Config::from_env()?;
    let config_drain = config.drain_timeout;
    let options = StartOptions {
        name: Some("cloister".into()),
        hold: true,
        listeners: vec![Box::new(EventLines::default())],
        ..StartOptions::default()
    };
    let (manager, _, cloister) = CloisterManager::start(config, options).await?;
    let (store, _) = Actor::spawn(None, Store, cloister.clone()).await?;
    // Snapshot first, then every ring change, and every node that comes up:
    // a node restarted between two heartbeats is back under its old name,
    // so the ring does not change, but its store is empty.
    cloister_ractor::subscribe(&manager, store, |event| match event {
        TopologyEvent::Snapshot { .. }
        | TopologyEvent::RingChanged { .. }
        | TopologyEvent::NodeUp { .. } => Some(KvMsg::Rebalance),
        TopologyEvent::Leaving { drain_timeout } => {
            Some(KvMsg::Drain(drain_timeout.as_millis() as u64))
        }
        _ => None,
    })?;
    // SIGTERM or Ctrl-C: leave, hand the keys off, then stop. One future for
    // the whole loop: one made per turn would be dropped by the next command
    // line, mid-leave or with the signal taken, and wait for another.
    let leave_within = config_drain + Duration::from_secs(5);
    let left = cloister_ractor::leave_on_signal(&manager, leave_within);
    tokio::pin!(left);
    loop {
        tokio::select! {
            line = commands.recv() => match line {
                Some(line) if !line.trim().is_empty() => run(&cloister, line.trim()).await,
                Some(_) => {}
                None => break,
            },
            left = &mut left => {
                let outcome = match left {
                    Ok(outcome) => format!("{outcome:?}"),
                    Err(error) => error.to_string(),
                };
                print_line(cloister.me(), "left", json!({ "outcome": outcome }));
                break;
            }
        }
    }
    Ok(())
}
