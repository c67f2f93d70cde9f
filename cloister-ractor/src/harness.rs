//! What a production binary needs to be driven by the test harness: the
//! [`EventLines`] listener, [`print_line`] for a binary's own lines, and the
//! control channel ([`exit_with_harness`], [`control_lines`]). Always
//! compiled, with no feature and no dependency beyond the crate's own: the
//! harness itself, `testing::LocalCluster`, is the `testing` feature, for
//! dev-dependencies only.
//!
//! | in your crate's | cloister-ractor features | you use |
//! |---|---|---|
//! | `[dependencies]` | none needed | `harness::{EventLines, print_line, exit_with_harness, control_lines}` in the binary |
//! | `[dev-dependencies]` | `testing` | `testing::{LocalCluster, DEFAULT_TIMEOUT, last_of, ...}` in the tests |
//!
//! # Making a binary drivable
//!
//! The harness configures each node through `CLOISTER_*` variables (node
//! name, port, the static sentry list of every node, consensus and short
//! timers), sets [`HARNESS_VAR`], and reads what the node prints on stdout,
//! one JSON object per line. A binary is ready for it when it
//!
//! 1. loads its [`Config`](cloister_core::Config) from the environment
//!    ([`Config::from_env`](cloister_core::Config::from_env) or
//!    [`Config::load`](cloister_core::Config::load));
//! 2. gives the Manager an [`EventLines`] listener, which prints every
//!    topology event as a line; and
//! 3. calls [`exit_with_harness`] if it takes no commands, or
//!    [`control_lines`] if it does: either way the node exits when the
//!    harness goes away, even when the test process was killed, so no node
//!    outlives its test.
//!
//! Under the harness the node's stdin belongs to the harness: it carries the
//! test's commands (`LocalCluster::send_line`),
//! and its end means the test is gone. So a binary that reads commands reads
//! them from [`control_lines`], never from stdin directly, and reads stdin
//! itself only when [`control_lines`] answers `None` (run by hand).
//!
//! ```no_run
//! use cloister_core::Config;
//! use cloister_ractor::harness::{exit_with_harness, EventLines};
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
//! nothing (no thread, no read of stdin), and the lines are just a JSON log
//! of the topology on stdout.
//!
//! # The lines
//!
//! Every line has `event`, `node` and `ts` (Unix milliseconds). The topology
//! lines are `snapshot` (`state`, `members`, `ring_digest`, `incarnation`,
//! `sentry`), `state_changed` (`from`, `to`, `members`, `ring_digest`,
//! `sentry`), `node_up` (`peer`, `incarnation`), `node_down` (`peer`,
//! `reason`), `sentry_changed` (`sentry`), `ring_changed` (`members`,
//! `ring_digest`) and `leaving` (`drain_timeout_ms`). A binary adds its own
//! with [`print_line`]; the harness keeps every line, and a line that is not
//! JSON as `{"event": "unparsed"}`.

use std::io::BufRead;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cloister_core::{NodeName, NodeState, Snapshot, TopologyEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::Listener;

/// Set to `1` by the harness in every node's environment.
pub const HARNESS_VAR: &str = "CLOISTER_UNDER_HARNESS";

/// Whether this process was started by the harness ([`HARNESS_VAR`] is `1`).
///
/// ```no_run
/// // Print a line only the harness needs when there is one to read it.
/// if cloister_ractor::harness::under_harness() {
///     println!("{{\"event\": \"store_opened\"}}");
/// }
/// ```
pub fn under_harness() -> bool {
    std::env::var_os(HARNESS_VAR).is_some_and(|value| value == "1")
}

/// Under the harness, exits the process (status 0) as soon as its stdin
/// closes, which happens when the harness's cluster is dropped or the test
/// process dies in any way. Does nothing otherwise, and nothing the second
/// time. For a binary that takes no commands; one that does calls
/// [`control_lines`] instead, which starts this same watch. Lines the
/// harness writes meanwhile are kept for [`control_lines`].
///
/// ```no_run
/// cloister_ractor::harness::exit_with_harness();
/// ```
pub fn exit_with_harness() {
    let _ = stdin_watch();
}

/// The lines the test sends this node with
/// `testing::LocalCluster::send_line`, in order; under the harness only, and
/// to the first caller (`None` after, and outside the harness). Starts the watch of [`exit_with_harness`]: the
/// node exits when the harness goes away. Under the harness, read commands
/// from here and not from stdin, which this watch reads.
///
/// ```no_run
/// # async fn example() {
/// use tokio::io::AsyncBufReadExt;
///
/// match cloister_ractor::harness::control_lines() {
///     // Driven by a test.
///     Some(mut commands) => {
///         while let Some(line) = commands.recv().await {
///             println!("{{\"event\": \"echo\", \"line\": {line:?}}}");
///         }
///     }
///     // Run by hand: stdin is ours.
///     None => {
///         let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
///         while let Ok(Some(line)) = lines.next_line().await {
///             println!("{line}");
///         }
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
/// cloister_ractor::harness::print_line(&me, "stored", serde_json::json!({ "key": "user:42" }));
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
/// use cloister_ractor::{harness::EventLines, StartOptions};
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
