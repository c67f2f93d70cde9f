//! The test harness (feature `testing`, for dev-dependencies):
//! [`LocalCluster`] runs N copies of a clustered binary on 127.0.0.1, the
//! counterpart of the Elixir original's `test_cluster_task`, and the
//! functions below read the JSON lines its nodes print.
//!
//! The binary under test needs none of this: what it uses to be driven
//! ([`EventLines`], [`control_lines`], [`exit_with_harness`], ...) is in
//! [`crate::harness`], which needs no feature. See there for what the
//! binary must do, and for the lines it prints.
//!
//! ```toml
//! [dependencies]
//! cloister-ractor = "0.1"                                  # the binary: cloister_ractor::harness
//!
//! [dev-dependencies]
//! cloister-ractor = { version = "0.1", features = ["testing"] }  # the tests: LocalCluster
//! ```
//!
//! The items of [`crate::harness`] are re-exported here too, for tests and
//! for code written before the split; a binary names them from
//! [`crate::harness`], so that it builds without this feature.

mod cluster;

use serde_json::Value;

#[doc(no_inline)]
pub use crate::harness::{
    control_lines, exit_with_harness, print_line, under_harness, EventLines, HARNESS_VAR,
};
pub use cluster::{process_exists, timer_env, LocalCluster, LocalClusterBuilder, DEFAULT_TIMEOUT};

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
