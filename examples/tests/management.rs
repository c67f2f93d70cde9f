//! The management endpoint over real `cloister-node` processes on
//! 127.0.0.1: probes that follow consensus and quorum, `/members` as the
//! node sees its peers, `/metrics` in the OpenMetrics text format, and
//! `cloister-node health` as a scratch image's health check runs it.
//!
//! With `CLOISTER_METRICS_PARSER=required` (CI sets it, and installs the
//! parser) the metrics are also read by the official Python parser,
//! `prometheus_client.openmetrics.parser`; without it that check is skipped
//! when the module is missing.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use cloister_ractor::testing::DEFAULT_TIMEOUT as DEADLINE;
use serde_json::Value;

mod common;
use common::{cluster, free_addr, get, node_binary, ok, sample, serial};

/// Polls `path` on `addr` until `done` holds for the answer, or fails at
/// the deadline with the last answer.
fn wait_get(addr: SocketAddr, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) -> String {
    let start = Instant::now();
    let mut last = Err("not asked yet".to_string());
    while start.elapsed() < DEADLINE {
        last = get(addr, path);
        if let Ok((status, body)) = &last {
            if done(*status, body) {
                return body.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: http://{addr}{path} after {DEADLINE:?}: {last:?}");
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Reads `text` with the official parser; `None` when it is not installed
/// and not required.
fn official_parse(text: &str) -> Option<Result<String, String>> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
        print(len(list(p(sys.stdin.read()))))";
    let required = std::env::var("CLOISTER_METRICS_PARSER").as_deref() == Ok("required");
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            !required,
            "CLOISTER_METRICS_PARSER=required, but python3 cannot import prometheus_client \
             (pip install prometheus-client)"
        );
        eprintln!("skipping the official OpenMetrics parser: python3 has no prometheus_client");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&output.stderr).to_string();
    Some(if output.status.success() {
        Ok(out)
    } else {
        Err(err)
    })
}

/// Runs `cloister-node health` against `addr`: whether it exited 0.
fn health(addr: SocketAddr) -> bool {
    let output = Command::new(node_binary())
        .args(["health", "--addr", &addr.to_string()])
        .output()
        .unwrap();
    output.status.success()
}

#[test]
fn probes_members_and_metrics_follow_the_cluster_through_consensus_and_quorum() {
    let _serial = serial();
    let mut nodes = cluster(3)
        .consensus(3)
        .env("CLOISTER_QUORUM", "majority")
        .build()
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let start = |nodes: &mut cloister_ractor::testing::LocalCluster, i: usize| {
        let addr = addrs[i].to_string();
        nodes
            .start_node_with(i, &["--management-addr", &addr])
            .unwrap();
    };

    // Alone: alive, not ready, and the probe says what it waits for.
    start(&mut nodes, 0);
    wait_get(addrs[0], "/alive", "alive while assembling", |s, _| {
        s == 200
    });
    let (status, body) = get(addrs[0], "/ready").unwrap();
    let probe = json(&body);
    assert_eq!(
        (status, probe["state"].as_str()),
        (503, Some("assembling")),
        "{body}"
    );
    assert!(probe["why"].as_str().unwrap().contains("1 of 3"), "{body}");
    assert!(!health(addrs[0]), "health passed while assembling");

    // Consensus: ready on every node.
    start(&mut nodes, 1);
    start(&mut nodes, 2);
    for addr in &addrs {
        wait_get(*addr, "/ready", "ready at consensus", |s, _| s == 200);
    }
    assert!(health(addrs[0]), "health failed on a ready node");

    // `/members`: every peer a connected member, shares adding up to one.
    let body = wait_get(addrs[0], "/members", "both peers members", |s, body| {
        s == 200
            && json(body)["peers"].as_array().is_some_and(|peers| {
                peers.len() == 2 && peers.iter().all(|p| p["status"] == "member")
            })
    });
    let members = json(&body);
    assert_eq!(
        members["snapshot"]["members"].as_array().unwrap().len(),
        3,
        "{body}"
    );
    assert!(members["peers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["connected"] == true));
    let shares: f64 = (members["shares"].as_array().unwrap().iter())
        .map(|s| s["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{body}");
    assert!(members["telemetry"]["ready_after"].is_object(), "{body}");

    // `/metrics`: what the view says, in a text Prometheus reads (read once
    // a heartbeat gap has been observed: just after `ready` none may have).
    let gaps = "cloister_heartbeat_gap_seconds_count";
    let text = wait_get(
        addrs[0],
        "/metrics",
        "a heartbeat gap in /metrics",
        |s, t| s == 200 && sample(t, gaps).is_some_and(|count| count > 0.0),
    );
    assert_eq!(sample(&text, "cloister_members"), Some(3.0), "{text}");
    assert_eq!(
        sample(&text, "cloister_state{state=\"ready\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cloister_events_total{kind=\"node_up\"}"),
        Some(2.0),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    if let Some(parsed) = official_parse(&text) {
        let families =
            parsed.unwrap_or_else(|e| panic!("the official parser refused: {e}\n{text}"));
        assert!(
            families.parse::<u32>().unwrap() >= 10,
            "{families} families\n{text}"
        );
    }

    // Two of three frozen: the survivor has no quorum, is not ready, and
    // says why; it is still alive.
    nodes.pause(1).unwrap();
    nodes.pause(2).unwrap();
    // On the way it may answer 503 as `rehashing` (one of the two dropped,
    // the other not yet): wait for the state the two drops lead to.
    let body = wait_get(addrs[0], "/ready", "not ready without quorum", |s, body| {
        s == 503 && json(body)["state"] == "no_quorum"
    });
    let probe = json(&body);
    assert_eq!(probe["state"], "no_quorum", "{body}");
    assert!(
        probe["why"].as_str().unwrap().contains("no quorum"),
        "{body}"
    );
    let (status, _) = get(addrs[0], "/alive").unwrap();
    assert_eq!(status, 200);
    let text = wait_get(addrs[0], "/metrics", "the freeze counted", |_, text| {
        sample(text, "cloister_unresponsive_detection_seconds_count").is_some_and(|n| n >= 1.0)
    });
    assert_eq!(
        sample(&text, "cloister_state{state=\"no_quorum\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "cloister_quorum_held"), Some(0.0), "{text}");

    // Thawed: ready again, without a restart.
    nodes.resume(1).unwrap();
    nodes.resume(2).unwrap();
    wait_get(addrs[0], "/ready", "ready again after the thaw", |s, _| {
        s == 200
    });
    ok(nodes.wait_ready(&[0, 1, 2], DEADLINE));
}

#[test]
fn a_taken_management_port_stops_the_start_and_says_which() {
    let _serial = serial();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut nodes = cluster(1).build().unwrap();
    nodes
        .start_node_with(0, &["--management-addr", &addr])
        .unwrap();
    let status = nodes.wait_exit(0, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}");
    let stderr = std::fs::read_to_string(nodes.stderr_path(0)).unwrap();
    let expected = format!("cannot serve the management endpoint on {addr}");
    assert!(stderr.contains(&expected), "{stderr}");
}
