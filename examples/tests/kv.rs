//! The clustered key-value example (`kv-node`) on `LocalCluster`: keys put
//! through one node survive the restart of another and the loss of a third.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cloister_ractor::testing::{
    all_of, last_of, LocalCluster, LocalClusterBuilder, DEFAULT_TIMEOUT,
};
mod common;
use common::{ok, serial};
use serde_json::Value;

const KEYS: usize = 300;

fn kv_node() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kv-node"))
}

fn started(cluster: &LocalCluster, i: usize) -> bool {
    last_of(&cluster.events(i), "kv_started").is_some()
}

/// Sends `count` to node `i` and returns the number it answers.
fn count(cluster: &LocalCluster, i: usize) -> u64 {
    let mark = cluster.event_count(i);
    cluster.send_line(i, "count").unwrap();
    ok(cluster.wait_for(i, DEFAULT_TIMEOUT, |events| {
        all_of(&events[mark..], "count").next().is_some()
    }));
    let events = cluster.events(i);
    let answer = all_of(&events[mark..], "count").next().unwrap();
    answer["keys"].as_u64().unwrap()
}

/// Asks node `i` for every key, again until each one has its value or the
/// deadline passes; returns what was missing or wrong in the last round.
fn read_all(cluster: &LocalCluster, i: usize, expected: &BTreeMap<String, String>) -> Vec<Value> {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let mark = cluster.event_count(i);
        for key in expected.keys() {
            cluster.send_line(i, &format!("get {key}")).unwrap();
        }
        ok(cluster.wait_for(i, DEFAULT_TIMEOUT, |events| {
            all_of(&events[mark..], "get").count() == expected.len()
        }));
        let events = cluster.events(i);
        let wrong: Vec<Value> = all_of(&events[mark..], "get")
            .filter(|get| {
                let key = get["key"].as_str().unwrap_or_default();
                get["value"].as_str() != expected.get(key).map(String::as_str)
            })
            .cloned()
            .collect();
        if wrong.is_empty() || Instant::now() >= deadline {
            return wrong;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keys_survive_a_restart_and_a_kill_by_being_re_put() {
    let _serial = serial();
    let mut cluster = LocalCluster::builder(kv_node(), 3)
        .consensus(2)
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    ok(
        cluster.wait_until("every store started", DEFAULT_TIMEOUT, |c| {
            (0..3).all(|i| started(c, i))
        }),
    );

    let expected: BTreeMap<String, String> = (0..KEYS)
        .map(|k| (format!("key-{k}"), format!("value-{k}")))
        .collect();
    // A store prints `kv_started` when it joins its group; the join reaches
    // the other nodes a moment later. Put one key until node1 reaches both
    // of its holders, so the puts below meet every store.
    let first = expected.iter().next().unwrap();
    ok(
        cluster.wait_until("node1 reaches the stores", DEFAULT_TIMEOUT, |c| {
            let mark = c.event_count(0);
            c.send_line(0, &format!("put {} {}", first.0, first.1))
                .unwrap();
            let answered = c.wait_for(0, DEFAULT_TIMEOUT, |events| {
                all_of(&events[mark..], "put").next().is_some()
            });
            let events = c.events(0);
            answered.is_ok()
                && all_of(&events[mark..], "put").all(|put| put["errors"] == serde_json::json!([]))
        }),
    );
    let warmup = cluster.event_count(0);
    for (key, value) in &expected {
        cluster.send_line(0, &format!("put {key} {value}")).unwrap();
    }
    ok(cluster.wait_for(0, DEFAULT_TIMEOUT, |events| {
        all_of(&events[warmup..], "put").count() == KEYS
    }));
    let events = cluster.events(0);
    for put in all_of(&events[warmup..], "put") {
        assert_eq!(put["stored_on"].as_array().unwrap().len(), 2, "{put}");
        assert_eq!(put["errors"], serde_json::json!([]), "{put}");
        assert_eq!(put["acknowledged"], true, "{put}");
    }
    // Two copies of every key across three nodes.
    ok(
        cluster.wait_until("two copies of every key", DEFAULT_TIMEOUT, |c| {
            (0..3).map(|i| count(c, i)).sum::<u64>() == 2 * KEYS as u64
        }),
    );

    // node2 comes back empty; the others re-put its share into it.
    cluster.restart(1).unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    ok(
        cluster.wait_until("node2 holds its share again", DEFAULT_TIMEOUT, |c| {
            count(c, 1) > 0 && (0..3).map(|i| count(c, i)).sum::<u64>() == 2 * KEYS as u64
        }),
    );

    // node3 dies for good: with two nodes left, both hold every key, and the
    // restarted node2 answers for all of them.
    cluster.kill(2).unwrap();
    ok(cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT));
    ok(
        cluster.wait_until("both survivors hold every key", DEFAULT_TIMEOUT, |c| {
            count(c, 0) == KEYS as u64 && count(c, 1) == KEYS as u64
        }),
    );
    let wrong = read_all(&cluster, 1, &expected);
    assert!(
        wrong.is_empty(),
        "{} keys wrong or missing: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn a_rolling_restart_by_sigterm_loses_no_acknowledged_key() {
    let _serial = serial();
    let n = 3;
    let (mut cluster, acknowledged) = ready_with_keys(n);
    let all: Vec<usize> = (0..n).collect();

    // Each node in turn gets SIGTERM, hands its keys off and exits 0, and
    // starts again empty; the next one goes as soon as the cluster is
    // ready again, before the restarted node was refilled: only the
    // drain keeps the keys whose other copy is on the empty node.
    for i in 0..n {
        let status = cluster.terminate(i, DEFAULT_TIMEOUT).unwrap();
        assert!(status.success(), "node {i} exited with {status}");
        let events = cluster.events(i);
        let drained = last_of(&events, "drained").expect("no `drained` line");
        assert_eq!(drained["not_handed_off"], 0, "{drained}");
        for j in all.iter().filter(|&&j| j != i) {
            let left =
                all_of(&cluster.events(*j), "node_down").any(|down| down["reason"] == "left");
            assert!(left, "node {j} did not report a node `left`");
        }
        cluster.start_node(i).unwrap();
        ok(cluster.wait_ready(&all, DEFAULT_TIMEOUT));
        ok(
            cluster.wait_until("the restarted store started", DEFAULT_TIMEOUT, |c| {
                started(c, i)
            }),
        );
    }
    let wrong = read_all(&cluster, 1, &acknowledged);
    assert!(
        wrong.is_empty(),
        "{} acknowledged keys wrong or missing after the rolling restart: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn two_nodes_leaving_together_hand_their_keys_to_the_rest_and_lose_none() {
    let _serial = serial();
    let (mut cluster, acknowledged) = ready_with_keys(4);

    // SIGTERM to two nodes at once: each drains while the other leaves, so
    // neither may hand a key to the other.
    let pids: Vec<String> = [2, 3]
        .iter()
        .map(|&i| cluster.pid(i).unwrap().to_string())
        .collect();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .args(&pids)
        .status()
        .unwrap();
    assert!(status.success());
    for i in [2, 3] {
        let status = cluster.wait_exit(i, DEFAULT_TIMEOUT).unwrap();
        assert!(status.success(), "node {i} exited with {status}");
        let events = cluster.events(i);
        let drained = last_of(&events, "drained").expect("no `drained` line");
        assert_eq!(drained["not_handed_off"], 0, "node {i}: {drained}");
    }
    ok(cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT));
    let wrong = read_all(&cluster, 1, &acknowledged);
    assert!(
        wrong.is_empty(),
        "{} acknowledged keys wrong or missing after two left together: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// `n` kv nodes (consensus 2), every store started, and `KEYS` keys put
/// through node 1 until each was acknowledged; returns the cluster and them.
#[test]
fn a_drain_that_runs_out_of_time_says_what_it_could_not_hand_off() {
    let _serial = serial();
    // A 1 s drain against a 10 s heartbeat timeout: a frozen holder stays
    // in the ring, its puts unanswered, for the whole drain.
    let builder = LocalCluster::builder(kv_node(), 3)
        .consensus(2)
        .env("CLOISTER_HEARTBEAT_TIMEOUT", "10s")
        .env("CLOISTER_DRAIN_TIMEOUT", "1s");
    let (mut cluster, _) = ready_with_keys_from(builder, 3);
    cluster.pause(1).unwrap();
    let status = cluster.terminate(2, DEFAULT_TIMEOUT);
    cluster.resume(1).unwrap();
    assert!(status.unwrap().success(), "node 2 did not exit 0");
    let events = cluster.events(2);
    let drained = last_of(&events, "drained")
        .expect("no `drained` line: the node stopped before its drain said what it kept");
    assert!(
        drained["not_handed_off"].as_u64().unwrap() > 0,
        "every put to a frozen holder answered? {drained}"
    );
    let first = drained["first_errors"].as_array().unwrap();
    let frozen = cluster.node_name(1).to_string();
    assert!(
        !first.is_empty() && first.iter().all(|e| e.as_str().unwrap().contains(&frozen)),
        "the errors do not name the frozen holder {frozen}: {drained}"
    );
}

fn ready_with_keys(n: usize) -> (LocalCluster, BTreeMap<String, String>) {
    ready_with_keys_from(LocalCluster::builder(kv_node(), n).consensus(2), n)
}

/// [`ready_with_keys`] on a cluster of `n` built by `builder`.
fn ready_with_keys_from(
    builder: LocalClusterBuilder,
    n: usize,
) -> (LocalCluster, BTreeMap<String, String>) {
    let cluster = builder.start().unwrap();
    let all: Vec<usize> = (0..n).collect();
    ok(cluster.wait_ready(&all, DEFAULT_TIMEOUT));
    ok(
        cluster.wait_until("every store started", DEFAULT_TIMEOUT, |c| {
            all.iter().all(|&i| started(c, i))
        }),
    );
    let expected: BTreeMap<String, String> = (0..KEYS)
        .map(|k| (format!("key-{k}"), format!("value-{k}")))
        .collect();
    let acknowledged = put_until_acknowledged(&cluster, 0, &expected);
    (cluster, acknowledged)
}

/// Puts every key through node `i`, again until each put is acknowledged
/// (both holders answered) or the deadline passes; returns the keys
/// acknowledged.
fn put_until_acknowledged(
    cluster: &LocalCluster,
    i: usize,
    keys: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    let mut acknowledged = BTreeMap::new();
    while acknowledged.len() < keys.len() && Instant::now() < deadline {
        let mark = cluster.event_count(i);
        let pending: Vec<_> = keys
            .iter()
            .filter(|(k, _)| !acknowledged.contains_key(*k))
            .collect();
        for (key, value) in &pending {
            cluster.send_line(i, &format!("put {key} {value}")).unwrap();
        }
        ok(cluster.wait_for(i, DEFAULT_TIMEOUT, |events| {
            all_of(&events[mark..], "put").count() == pending.len()
        }));
        for put in all_of(&cluster.events(i)[mark..], "put") {
            if put["acknowledged"] == true {
                let key = put["key"].as_str().unwrap_or_default().to_string();
                let value = keys[&key].clone();
                acknowledged.insert(key, value);
            }
        }
    }
    assert_eq!(
        acknowledged.len(),
        keys.len(),
        "puts not acknowledged in time"
    );
    acknowledged
}

#[test]
fn without_quorum_a_put_is_refused_and_stores_nothing() {
    let _serial = serial();
    let mut cluster = LocalCluster::builder(kv_node(), 3)
        .consensus(1)
        .env("CLOISTER_QUORUM", "majority")
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    cluster.kill(1).unwrap();
    cluster.kill(2).unwrap();
    ok(cluster.wait_agree(&[0], "no_quorum", DEFAULT_TIMEOUT));

    let mark = cluster.event_count(0);
    cluster.send_line(0, "put lonely value").unwrap();
    ok(cluster.wait_for(0, DEFAULT_TIMEOUT, |events| {
        all_of(&events[mark..], "put").next().is_some()
    }));
    let events = cluster.events(0);
    let put = all_of(&events[mark..], "put").next().unwrap();
    assert_eq!(put["stored_on"], serde_json::json!([]), "{put}");
    assert_eq!(put["acknowledged"], false, "{put}");
    assert!(
        put["errors"][0].as_str().unwrap().contains("no quorum"),
        "{put}"
    );
    assert_eq!(count(&cluster, 0), 0);
}
