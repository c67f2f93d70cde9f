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
use cloister_examples::garbled::Garbled;
use cloister_ractor::harness::{control_lines, print_line, EventLines};
use cloister_ractor::{Cloister, CloisterManager, DrainHold, Group, StartOptions, Wire};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};
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
/// How many keys a leaving node's drain puts at once.
const DRAIN_IN_FLIGHT: usize = 32;
/// Why a drain did not try a key.
const OUT_OF_TIME: &str = "not tried: out of time";
/// Spare time between the end of a drain and the node's drain timeout, for
/// the `drained` line to be printed before the node stops.
const DRAIN_MARGIN: Duration = Duration::from_millis(200);

/// What stores send each other; also what the local node sends its store.
/// Fields and replies are [`Wire`]s: a peer can send any bytes, which the
/// store checks instead of ractor's decoders panicking on them.
#[derive(RactorClusterMessage)]
enum KvMsg {
    /// Keep the entry unless a newer version of its key is already there.
    Put(Wire<Entry>),
    /// [`KvMsg::Put`], answered once kept: what a client's put sends.
    #[rpc]
    Store(Wire<Entry>, RpcReplyPort<Wire<bool>>),
    /// Replies with `{"value": .., "node": ..}` (`value` null when absent).
    #[rpc]
    Get(Wire<String>, RpcReplyPort<Wire<String>>),
    /// Replies with how many keys this store holds.
    #[rpc]
    Count(RpcReplyPort<Wire<u64>>),
    /// The ring changed or a node came up: put every key where it belongs
    /// now. Sent by this node only.
    Rebalance,
    /// The scheduled retry of a handoff that could not reach every node.
    /// Sent by this node only.
    Retry,
    /// This node is leaving: hand every key to the nodes that hold it
    /// after this one, acknowledged, within the drain timeout, then
    /// release the drain hold. Sent by this node only.
    Drain,
}

/// A key's value and version, as stores send them to each other.
#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    value: String,
    version: u64,
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
    /// How long the drain may take: the node's `drain_timeout`.
    drain_timeout: Duration,
    /// Messages from peers dropped because their fields did not parse.
    garbled: Garbled,
}

impl Actor for Store {
    type Msg = KvMsg;
    type State = Shard;
    /// The handle, and the node's `drain_timeout`.
    type Arguments = (Cloister, Duration);

    async fn pre_start(
        &self,
        myself: ActorRef<KvMsg>,
        (cloister, drain_timeout): (Cloister, Duration),
    ) -> Result<Shard, ActorProcessingErr> {
        KV.join(&myself);
        print_line(cloister.me(), "kv_started", json!({}));
        Ok(Shard {
            hold: Some(cloister.hold_drain("kv store handoff")),
            cloister,
            data: HashMap::new(),
            retrying: false,
            drain_timeout,
            garbled: Garbled::new("kv store"),
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
                let _ = reply.send(Wire::new(false));
            }
            KvMsg::Store(entry, reply) => {
                let kept = shard.put(&myself, entry);
                let _ = reply.send(Wire::new(kept));
            }
            KvMsg::Put(entry) => {
                shard.put(&myself, entry);
            }
            KvMsg::Get(key, reply) => match key.into_inner() {
                Ok(key) => {
                    let value = shard.data.get(&key).map(|(_, value)| value);
                    let answer = json!({ "value": value, "node": shard.cloister.me() });
                    let _ = reply.send(Wire::new(answer.to_string()));
                }
                // No answer: the caller's call fails, as for a stopped store.
                Err(error) => shard.garbled.note(&error),
            },
            KvMsg::Count(reply) => {
                let _ = reply.send(Wire::new(shard.data.len() as u64));
            }
            // Leaving: the drain hands off, acknowledged; a cast now
            // would drop keys on a send that proves nothing.
            KvMsg::Rebalance | KvMsg::Retry if shard.cloister.state() == NodeState::Stopping => {}
            KvMsg::Rebalance => shard.rebalance(&myself),
            KvMsg::Retry => {
                shard.retrying = false;
                shard.rebalance(&myself);
            }
            // Sent by this node's own subscription once it leaves (the
            // state is `Stopping` before the event goes out); a peer's
            // would release the drain hold early, so a later leave would
            // not wait for the hand-off.
            KvMsg::Drain if shard.cloister.state() != NodeState::Stopping => {}
            KvMsg::Drain => {
                // Done, and said, before the node's own drain timeout
                // (counted from a moment ago) stops it: the last puts may
                // take a `PUT_TIMEOUT` past the deadline.
                let margin = PUT_TIMEOUT + DRAIN_MARGIN;
                let deadline = tokio::time::Instant::now()
                    + shard.drain_timeout.saturating_sub(margin).max(PUT_TIMEOUT);
                let (handed, failed) = shard.drain(deadline).await;
                // The holders that failed say more than the keys not tried.
                let (tried, untried): (Vec<_>, Vec<_>) =
                    failed.iter().partition(|(_, error)| error != OUT_OF_TIME);
                let first: Vec<String> = (tried.iter().chain(&untried).take(3))
                    .map(|(key, error)| format!("{key}: {error}"))
                    .collect();
                let fields = json!({
                    "handed_off": handed,
                    "not_handed_off": failed.len(),
                    "first_errors": first,
                });
                print_line(shard.cloister.me(), "drained", fields);
                shard.hold.take();
            }
        }
        Ok(())
    }
}

impl Shard {
    /// Keeps the entry unless a newer version of its key is already there.
    /// Returns false if its fields did not parse (nothing was kept).
    fn put(&mut self, myself: &ActorRef<KvMsg>, entry: Wire<Entry>) -> bool {
        let Entry {
            key,
            value,
            version,
        } = match entry.into_inner() {
            Ok(entry) => entry,
            Err(error) => {
                self.garbled.note(&error);
                return false;
            }
        };
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
        true
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
                let put = KvMsg::Put(Wire::new(Entry {
                    key: key.clone(),
                    value: value.clone(),
                    version: *version,
                }));
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
    /// until `deadline`. The keys go [`DRAIN_IN_FLIGHT`] at a time: a holder
    /// that answers slowly costs a round one `PUT_TIMEOUT`, not one per key.
    /// Returns how many keys were handed off, and the keys that were not
    /// with the last error of each.
    async fn drain(&mut self, deadline: tokio::time::Instant) -> (usize, Vec<(String, String)>) {
        let mut pending: Vec<String> = self.data.keys().cloned().collect();
        let total = pending.len();
        let mut failed: Vec<(String, String)> = Vec::new();
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            let puts = std::mem::take(&mut pending).into_iter().filter_map(|key| {
                let (version, value) = self.data.get(&key)?.clone();
                let cloister = self.cloister.clone();
                Some(async move {
                    if tokio::time::Instant::now() >= deadline {
                        return (key, vec![OUT_OF_TIME.to_string()]);
                    }
                    let (_, errors) = store_on_holders(&cloister, &key, &value, version).await;
                    (key, errors)
                })
            });
            let mut done = futures::stream::iter(puts).buffer_unordered(DRAIN_IN_FLIGHT);
            failed.clear();
            while let Some((key, errors)) = done.next().await {
                if !errors.is_empty() {
                    failed.push((key, errors.join("; ")));
                }
            }
            pending = failed.iter().map(|(key, _)| key.clone()).collect();
            if !pending.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(RETRY.min(left)).await;
            }
        }
        (total - failed.len(), failed)
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
                    |reply| {
                        let entry = Entry {
                            key: key.into(),
                            value: value.into(),
                            version,
                        };
                        KvMsg::Store(Wire::new(entry), reply)
                    },
                    Some(PUT_TIMEOUT),
                )
                .await
                .map_err(|error| error.to_string())
                .and_then(|r| r.success_or(()).map_err(|()| "no answer".into()))
                .and_then(|kept| kept.into_inner().map_err(|error| error.to_string())),
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
                Ok(store) => ractor::call_t!(store, KvMsg::Count, 1_000)
                    .ok()
                    .and_then(|count| count.into_inner().ok()),
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
                .call(
                    |reply| KvMsg::Get(Wire::new(key.into()), reply),
                    Some(GET_TIMEOUT),
                )
                .await
                .map_err(|error| error.to_string())
                .and_then(|result| result.success_or(()).map_err(|()| "no reply".into()))
                .and_then(|answer| answer.into_inner().map_err(|error| error.to_string())),
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
    let (store, _) = Actor::spawn(None, Store, (cloister.clone(), config_drain)).await?;
    // Snapshot first, then every ring change, and every node that comes up:
    // a node restarted between two heartbeats is back under its old name,
    // so the ring does not change, but its store is empty.
    cloister_ractor::subscribe(&manager, store, |event| match event {
        TopologyEvent::Snapshot { .. }
        | TopologyEvent::RingChanged { .. }
        | TopologyEvent::NodeUp { .. } => Some(KvMsg::Rebalance),
        TopologyEvent::Leaving { .. } => Some(KvMsg::Drain),
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

#[cfg(test)]
mod tests {
    //! Any peer with the cookie can send the store any variant of
    //! [`KvMsg`] with any bytes: every field must decode (the store then
    //! checks it), never panic in ractor's decoders.

    use cloister_ractor::wire::frames::{call, cast, decodes, packed, reply_arrives};
    use proptest::prelude::*;

    use super::{Entry, KvMsg, Wire};

    /// The variants, whether each is a call, and how many fields it has
    /// besides its reply port.
    const VARIANTS: [(&str, bool, usize); 7] = [
        ("Put", false, 1),
        ("Store", true, 1),
        ("Get", true, 1),
        ("Count", true, 0),
        ("Rebalance", false, 0),
        ("Retry", false, 0),
        ("Drain", false, 0),
    ];

    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..48)
    }

    /// The first failures the properties found, when the fields were
    /// `String`s and `u64`s: a key that is not UTF-8, an empty version.
    #[test]
    fn a_put_with_a_key_that_is_not_utf8_decodes() {
        assert!(decodes::<KvMsg>(cast("Put", packed(&[[0x80]]))));
        assert!(decodes::<KvMsg>(call("Get", packed(&[[0x80]]))));
        assert!(reply_arrives(KvMsg::Count, Vec::new()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_fields_from_a_peer_decode(
            which in 0..VARIANTS.len(),
            fields in prop::collection::vec(field(), 1),
        ) {
            let (variant, is_call, count) = VARIANTS[which];
            let args = packed(&fields[..count]);
            let message = if is_call { call(variant, args) } else { cast(variant, args) };
            prop_assert!(decodes::<KvMsg>(message), "{} refused {:?}", variant, &fields[..count]);
        }

        #[test]
        fn any_reply_from_a_peer_reaches_the_caller(which in 0..3usize, bytes in field()) {
            let arrived = match which {
                0 => {
                    let entry = Entry { key: "k".into(), value: "v".into(), version: 1 };
                    reply_arrives(|r| KvMsg::Store(Wire::new(entry), r), bytes)
                }
                1 => reply_arrives(|r| KvMsg::Get(Wire::new("k".into()), r), bytes),
                _ => reply_arrives(KvMsg::Count, bytes),
            };
            prop_assert!(arrived);
        }
    }
}
