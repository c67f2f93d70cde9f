//! `CLOISTER_LOG_FORMAT`: the human log on stderr as JSON lines for a log
//! aggregator, and a plain refusal of any value but `text` and `json`.
//!
//! Each test runs one `cloister-node` by hand on 127.0.0.1 with only the
//! variables it sets (the `CLOISTER_*` ones and `RUST_LOG` of the calling
//! shell are removed), waits for what it expects within a generous deadline,
//! and kills the node if the test fails first.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

mod common;
use common::free_port;
use common::node::Node;

#[test]
fn json_logs_are_one_object_per_line_with_level_and_message() {
    let port = free_port();
    let mut node = Node::start(
        "json-logs",
        &[
            ("CLOISTER_LOG_FORMAT", "json".into()),
            ("CLOISTER_NODE_NAME", "solo".into()),
            ("CLOISTER_SENTRY", format!("solo@127.0.0.1:{port}")),
            ("CLOISTER_LISTEN_PORT", port.to_string()),
            ("CLOISTER_LISTEN_ADDR", "127.0.0.1".into()),
        ],
    );
    // Started, ready on its own, then asked to stop as an orchestrator
    // asks: everything it logs on the way is in the file.
    node.wait_stdout("app_started", |out| out.contains("\"app_started\""));
    let pid = node.pid().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success(), "kill -TERM {pid}");
    node.wait_exit();

    let stderr = node.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "nothing logged:\n{}", node.shown());
    let mut messages = Vec::new();
    let mut named = 0;
    for line in &lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}\n{stderr}"));
        let level = entry["level"].as_str().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "no level in {line}"
        );
        let message = entry["message"].as_str();
        messages.push(
            message
                .unwrap_or_else(|| panic!("no message in {line}"))
                .to_string(),
        );
        assert!(entry["timestamp"].is_string(), "no timestamp in {line}");
        assert!(!line.contains('\u{1b}'), "colour codes in {line}");
        if entry["span"]["node"] == "solo@127.0.0.1" {
            named += 1;
        }
    }
    // What an aggregator filters by: the node's name, in the span the
    // Manager logs in.
    assert!(
        named > 0,
        "no line with span.node = solo@127.0.0.1:\n{stderr}"
    );
    // One of the start-up lines the text log shows too.
    assert!(
        messages.iter().any(|m| m.contains("own `sentry` entry")),
        "no start-up line among {messages:?}"
    );
}

#[test]
fn a_bad_log_format_is_refused_naming_the_variable_the_value_and_the_choices() {
    for value in ["yaml", "JSON", ""] {
        let mut node = Node::start(
            "bad-log-format",
            &[
                ("CLOISTER_LOG_FORMAT", value.into()),
                ("CLOISTER_SENTRY", "solo@127.0.0.1:4000".into()),
            ],
        );
        let status = node.wait_exit();
        let shown = format!("CLOISTER_LOG_FORMAT={value:?}: {status}\n{}", node.shown());
        assert_eq!(status.code(), Some(2), "{shown}");
        let expected = format!(
            "cloister-node: bad configuration: invalid `CLOISTER_LOG_FORMAT` = {value:?}: \
             must be `text` (the default) or `json`"
        );
        assert_eq!(node.stderr().trim_end(), expected, "{shown}");
        assert_eq!(node.stdout(), "", "{shown}");
    }
}
