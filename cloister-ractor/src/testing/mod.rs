//! Testing a clustered binary: [`LocalCluster`] runs N copies of it on
//! 127.0.0.1, the counterpart of the Elixir original's `test_cluster_task`
//! (feature `testing`).
//!
//! # Making a binary drivable
//!
//! The harness configures each node through `CLOISTER_*` variables (node
//! name, port, the static sentry list of every node, consensus and short
//! timers) and reads what the node prints on stdout, one JSON object per
//! line. A binary is ready for it when it
//!
//! 1. loads its [`Config`](cloister_core::Config) from the environment
//!    ([`Config::from_env`](cloister_core::Config::from_env) or
//!    [`Config::load`](cloister_core::Config::load));
//! 2. gives the Manager an [`EventLines`] listener, which prints every
//!    topology event as a line; and
//! 3. calls [`exit_with_harness`] (or [`control_lines`], to take commands
//!    from the test): the node then exits when the harness goes away, even
//!    when the test process was killed, so no node outlives its test.
//!
//! ```no_run
//! use cloister_core::Config;
//! use cloister_ractor::testing::{exit_with_harness, EventLines};
//! use cloister_ractor::{CloisterManager, StartOptions};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     exit_with_harness();
//!     let options = StartOptions {
//!         listeners: vec![Box::new(EventLines::default())],
//!         ..StartOptions::default()
//!     };
//!     let (_manager, done, _cloister) = CloisterManager::start(Config::from_env()?, options).await?;
//!     done.await?;
//!     Ok(())
//! }
//! ```
//!
//! Outside the harness ([`under_harness`] is false) the two functions do
//! nothing, and the lines are just a JSON log of the topology.
//!
//! # The lines
//!
//! Every line has `event`, `node` and `ts` (Unix milliseconds). The topology
//! lines are `snapshot` (`state`, `members`, `ring_digest`, `incarnation`,
//! `sentry`), `state_changed` (`from`, `to`, `members`, `ring_digest`,
//! `sentry`), `node_up` (`peer`, `incarnation`), `node_down` (`peer`,
//! `reason`), `sentry_changed` (`sentry`) and `ring_changed` (`members`,
//! `ring_digest`). A binary adds its own with [`print_line`]; the harness
//! keeps every line, and a line that is not JSON as `{"event": "unparsed"}`.

mod cluster;

use std::io::BufRead;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cloister_core::{NodeName, NodeState, Snapshot, TopologyEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::Listener;

pub use cluster::{process_exists, timer_env, LocalCluster, LocalClusterBuilder, DEFAULT_TIMEOUT};

/// Set by [`LocalCluster`] in every node's environment.
pub const HARNESS_VAR: &str = "CLOISTER_UNDER_HARNESS";

/// Whether this process was started by a [`LocalCluster`].
///
/// ```no_run
/// // Print a line only the harness needs when there is one to read it.
/// if cloister_ractor::testing::under_harness() {
///     println!("{{\"event\": \"store_opened\"}}");
/// }
/// ```
pub fn under_harness() -> bool {
    std::env::var_os(HARNESS_VAR).is_some_and(|value| value == "1")
}

/// Under the harness, exits the process (status 0) as soon as its stdin
/// closes, which happens when the [`LocalCluster`] is dropped or the test
/// process dies in any way. Does nothing otherwise, and nothing the second
/// time. Lines the harness writes meanwhile are kept for [`control_lines`].
///
/// ```no_run
/// cloister_ractor::testing::exit_with_harness();
/// ```
pub fn exit_with_harness() {
    let _ = stdin_watch();
}

/// The lines the test sends this node with [`LocalCluster::send_line`], in
/// order; under the harness only, and to the first caller (`None` after,
/// and outside the harness). Starts [`exit_with_harness`].
///
/// ```no_run
/// # async fn example() {
/// if let Some(mut commands) = cloister_ractor::testing::control_lines() {
///     while let Some(line) = commands.recv().await {
///         println!("{{\"event\": \"echo\", \"line\": {line:?}}}");
///     }
/// }
/// # }
/// ```
pub fn control_lines() -> Option<UnboundedReceiver<String>> {
    let receiver = stdin_watch()?;
    receiver.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Starts the stdin reader once, under the harness only.
fn stdin_watch() -> Option<&'static Mutex<Option<UnboundedReceiver<String>>>> {
    static WATCH: OnceLock<Option<Mutex<Option<UnboundedReceiver<String>>>>> = OnceLock::new();
    WATCH
        .get_or_init(|| {
            if !under_harness() {
                return None;
            }
            let (sender, receiver) = unbounded_channel();
            let reader = move || {
                for line in lossy_lines(std::io::stdin().lock()) {
                    let _ = sender.send(line);
                }
                tracing::info!("the test harness is gone (stdin closed): exiting");
                std::process::exit(0);
            };
            let spawned = std::thread::Builder::new()
                .name("cloister-harness-stdin".into())
                .spawn(reader);
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot watch stdin: this node will outlive its harness");
            }
            Some(Mutex::new(Some(receiver)))
        })
        .as_ref()
}

/// The lines of `reader` to its end, without their line endings. A line
/// that is not UTF-8 is kept lossily instead of ending the read: both ends
/// of the harness's pipes read this way.
pub(crate) fn lossy_lines(mut reader: impl BufRead) -> impl Iterator<Item = String> {
    let mut bytes = Vec::new();
    std::iter::from_fn(move || {
        bytes.clear();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let line = String::from_utf8_lossy(&bytes);
                Some(line.trim_end_matches(['\n', '\r']).to_string())
            }
        }
    })
}

/// Writes one JSON line to stdout: `fields` (an object) with `event`, `node`
/// and `ts` added.
///
/// ```
/// # use cloister_core::NodeName;
/// let me: NodeName = "node1@127.0.0.1".parse().unwrap();
/// cloister_ractor::testing::print_line(&me, "stored", serde_json::json!({ "key": "user:42" }));
/// ```
pub fn print_line(node: &NodeName, event: &str, fields: Value) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut fields = match fields {
        Value::Object(map) => map,
        other => [("value".to_string(), other)].into_iter().collect(),
    };
    fields.insert("event".into(), json!(event));
    fields.insert("node".into(), json!(node.to_string()));
    fields.insert("ts".into(), json!(ts));
    println!("{}", Value::Object(fields));
}

/// A [`Listener`] that prints every topology event as a JSON line (see the
/// module docs), synchronously and in order, so every line is out before
/// the application is released at consensus.
///
/// ```no_run
/// use cloister_ractor::{testing::EventLines, StartOptions};
/// let options = StartOptions {
///     listeners: vec![Box::new(EventLines::default())],
///     ..StartOptions::default()
/// };
/// ```
#[derive(Default)]
pub struct EventLines(OnceLock<NodeName>);

impl Listener for EventLines {
    fn on_state_change(&self, _: NodeState, _: NodeState, _: &Snapshot) {}

    fn on_event(&self, event: &TopologyEvent) {
        // The node's name comes with the first event, a snapshot.
        if let TopologyEvent::Snapshot { snapshot } = event {
            let _ = self.0.set(snapshot.node.clone());
        }
        if let Some(me) = self.0.get() {
            print_line(me, event.name(), event_fields(event));
        }
    }
}

/// The fields of a topology event's line.
fn event_fields(event: &TopologyEvent) -> Value {
    match event {
        TopologyEvent::Snapshot { snapshot } => json!({
            "state": snapshot.state, "members": snapshot.members,
            "ring_digest": snapshot.digest, "incarnation": snapshot.incarnation.to_string(),
            "sentry": snapshot.sentry,
        }),
        TopologyEvent::StateChanged { from, to, snapshot } => json!({
            "from": from, "to": to, "members": snapshot.members,
            "ring_digest": snapshot.digest, "sentry": snapshot.sentry,
        }),
        TopologyEvent::NodeUp { node, incarnation } => {
            json!({ "peer": node, "incarnation": incarnation.to_string() })
        }
        TopologyEvent::NodeDown { node, reason, .. } => json!({ "peer": node, "reason": reason }),
        TopologyEvent::SentryChanged { sentry } => json!({ "sentry": sentry }),
        TopologyEvent::RingChanged { members, digest } => {
            json!({ "members": members, "ring_digest": digest })
        }
        TopologyEvent::Leaving { drain_timeout } => {
            json!({ "drain_timeout_ms": drain_timeout.as_millis() as u64 })
        }
    }
}

/// The last state in `events`: `to` of `state_changed`, `state` of `snapshot`.
///
/// ```
/// use serde_json::json;
/// let events = [json!({"event": "snapshot", "state": "assembling"}),
///               json!({"event": "state_changed", "to": "ready"})];
/// assert_eq!(cloister_ractor::testing::last_state(&events).as_deref(), Some("ready"));
/// ```
pub fn last_state(events: &[Value]) -> Option<String> {
    events
        .iter()
        .rev()
        .find_map(|event| match event["event"].as_str() {
            Some("state_changed") => event["to"].as_str().map(str::to_string),
            Some("snapshot") => event["state"].as_str().map(str::to_string),
            _ => None,
        })
}

/// The lines that carry the members and the ring digest.
const MEMBERSHIP_LINES: [&str; 3] = ["snapshot", "state_changed", "ring_changed"];

/// The last topology line that carries the members (`snapshot`,
/// `state_changed`, `ring_changed`; a binary's own lines never count).
fn last_membership(events: &[Value]) -> Option<&Value> {
    events.iter().rev().find(|event| {
        MEMBERSHIP_LINES.iter().any(|kind| event["event"] == *kind) && event["members"].is_array()
    })
}

/// The members of the last topology line that carries them, sorted.
///
/// ```
/// use serde_json::json;
/// let events = [json!({"event": "ring_changed", "members": ["b@h", "a@h"]})];
/// assert_eq!(cloister_ractor::testing::last_members(&events), Some(vec!["a@h".into(), "b@h".into()]));
/// ```
pub fn last_members(events: &[Value]) -> Option<Vec<String>> {
    let members = last_membership(events)?["members"].as_array()?;
    let mut names: Vec<String> = members
        .iter()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect();
    names.sort();
    Some(names)
}

/// The ring digest of the last topology line that carries the members.
///
/// ```
/// use serde_json::json;
/// let events = [json!({"event": "ring_changed", "members": ["a@h"], "ring_digest": "0f"})];
/// assert_eq!(cloister_ractor::testing::last_digest(&events).as_deref(), Some("0f"));
/// ```
pub fn last_digest(events: &[Value]) -> Option<String> {
    last_membership(events)?["ring_digest"]
        .as_str()
        .map(str::to_string)
}

/// The last event of this kind (`"node_down"`, or a binary's own).
///
/// ```
/// use serde_json::json;
/// let events = [json!({"event": "stored", "key": "a"}), json!({"event": "stored", "key": "b"})];
/// assert_eq!(cloister_ractor::testing::last_of(&events, "stored").unwrap()["key"], "b");
/// ```
pub fn last_of<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().rev().find(|event| event["event"] == kind)
}

/// The events of this kind, in order.
///
/// ```
/// use serde_json::json;
/// let events = [json!({"event": "node_up"}), json!({"event": "node_down"}), json!({"event": "node_up"})];
/// assert_eq!(cloister_ractor::testing::all_of(&events, "node_up").count(), 2);
/// ```
pub fn all_of<'a>(events: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events.iter().filter(move |event| event["event"] == kind)
}
