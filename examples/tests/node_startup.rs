//! How `cloister-node` refuses to start: a plain message on stderr and exit
//! status 2 when the node cannot work as configured (a bad value, a port
//! already taken), never a panic or ractor's "panicked during startup".
//!
//! Each test runs one node by hand on 127.0.0.1 with only the variables it
//! sets (the `CLOISTER_*` ones of the calling shell are removed, as
//! `LocalCluster` does), waits for it to exit within a generous deadline and
//! kills it if the test fails first.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::ExitStatus;

mod common;
use common::free_port;
use common::node::Node;

/// What a node printed before it exited.
struct Exit {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cloister-node` with `vars` as its only `CLOISTER_*` variables until
/// it exits.
fn run_node(test: &str, vars: &[(&str, String)]) -> Exit {
    let mut node = Node::start(test, vars);
    let status = node.wait_exit();
    Exit {
        status,
        stdout: node.stdout(),
        stderr: node.stderr(),
    }
}

/// The variables of a lone node `name` on `port`, waiting for `consensus`.
fn lone_node(name: &str, port: u16, consensus: usize) -> Vec<(&'static str, String)> {
    let peer = free_port();
    vec![
        ("CLOISTER_NODE_NAME", name.to_string()),
        ("CLOISTER_ADVERTISED_HOST", "127.0.0.1".to_string()),
        ("CLOISTER_LISTEN_ADDR", "127.0.0.1".to_string()),
        ("CLOISTER_LISTEN_PORT", port.to_string()),
        (
            "CLOISTER_SENTRY",
            format!("{name}@127.0.0.1:{port},absent@127.0.0.1:{peer}"),
        ),
        ("CLOISTER_CONSENSUS", consensus.to_string()),
    ]
}

fn assert_refused_plainly(exit: &Exit, expected: &str) {
    let Exit {
        status,
        stdout,
        stderr,
    } = exit;
    let shown = format!("status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(2), "{shown}");
    assert!(stderr.contains(expected), "`{expected}` missing:\n{shown}");
    for output in [stdout, stderr] {
        assert!(!output.contains("panicked"), "{shown}");
    }
}

#[test]
fn a_taken_port_exits_2_with_a_plain_message() {
    // Held for the whole test: the node must find its port taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let exit = run_node("taken-port", &lone_node("second", port, 1));
    let expected = format!("cloister-node: cannot listen on 127.0.0.1:{port}: address in use");
    assert_refused_plainly(&exit, &expected);
    drop(taken);
}

#[test]
fn a_startup_deadline_past_any_clock_exits_2_without_a_panic() {
    // 300 billion years overflow `Instant + Duration`: once, the node took
    // the value and panicked when it began waiting for its missing peer.
    let mut vars = lone_node("patient", free_port(), 2);
    vars.push(("CLOISTER_STARTUP_DEADLINE", "300000000000y".into()));
    let exit = run_node("huge-deadline", &vars);
    assert_refused_plainly(&exit, "invalid `startup_deadline`");
}
