//! Routing by key and multicall over real processes: each `cloister-node`
//! runs a key-owner actor in the `key_owner` group and, with the probe
//! flags, asks across the cluster in rounds, printing what it got.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cloister_ractor::testing::{all_of, last_of, LocalCluster, DEFAULT_TIMEOUT};
mod common;
use common::{cluster, ok, serial};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

/// A probe round in which every one of `keys` calls reached the key's owner.
fn all_reached(events: &[Value], keys: u64) -> bool {
    all_of(events, "probe").any(|e| e["reached_owner"] == keys && e["errors"] == 0)
}

fn call_owner_reaches_the_owner_of_every_key(nodes: usize) {
    let _serial = serial();
    let keys = 10_000;
    let cluster = cluster(nodes)
        .consensus(nodes)
        .extra_args(["--probe-keys", &keys.to_string()])
        .start()
        .unwrap();
    let all: Vec<usize> = (0..nodes).collect();
    ok(cluster.wait_ready(&all, DEFAULT_TIMEOUT));
    // Each node asks the owner of every key through `call_owner`; the owner
    // answers with its name, which must be the name the caller's ring gave.
    ok(
        cluster.wait_until("every node reached every owner", DEADLINE, |c| {
            all.iter().all(|&i| all_reached(&c.events(i), keys))
        }),
    );
}

#[test]
fn call_owner_reaches_the_owner_of_10000_keys_on_3_nodes() {
    call_owner_reaches_the_owner_of_every_key(3);
}

#[test]
fn call_owner_reaches_the_owner_of_10000_keys_on_5_nodes() {
    call_owner_reaches_the_owner_of_every_key(5);
}

#[test]
fn multicall_names_a_paused_node_as_failed_and_returns_the_others() {
    let _serial = serial();
    // A long heartbeat timeout keeps the paused node a member: multicall
    // itself has to notice it (its per-call timeout is 500 ms).
    let cluster = cluster(3)
        .consensus(3)
        .extra_args(["--probe-multicall", "--heartbeat-timeout", "20s"])
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    let everyone = |e: &Value| e["replies"].as_array().is_some_and(|r| r.len() == 3);
    ok(cluster.wait_for(0, DEFAULT_TIMEOUT, |events| {
        all_of(events, "multicall").any(everyone)
    }));

    let paused = cluster.node_name(2).to_string();
    let mark = cluster.event_count(0);
    cluster.pause(2).unwrap();
    let others_and_a_failure = |e: &Value| {
        let replies = e["replies"].as_array().map(Vec::len);
        let failed = e["failures"].as_array().is_some_and(|f| {
            f.len() == 1
                && f[0]["node"] == paused.as_str()
                && f[0]["error"]
                    .as_str()
                    .is_some_and(|t| t.contains("did not reply"))
        });
        replies == Some(2) && failed
    };
    let result = cluster.wait_for(0, DEFAULT_TIMEOUT, |events| {
        all_of(&events[mark.min(events.len())..], "multicall").any(others_and_a_failure)
    });
    cluster.resume(2).unwrap();
    ok(result);
}

#[test]
fn call_owner_to_a_paused_owner_is_a_timeout_that_names_it() {
    let _serial = serial();
    // Few keys, so a round with a paused owner (500 ms a call) stays short;
    // a long heartbeat timeout keeps the paused node the owner.
    let keys = 12;
    let cluster = cluster(3)
        .consensus(3)
        .extra_args([
            "--probe-keys",
            &keys.to_string(),
            "--heartbeat-timeout",
            "20s",
        ])
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    ok(cluster.wait_for(0, DEADLINE, |events| all_reached(events, keys)));

    let paused = cluster.node_name(2).to_string();
    let mark = cluster.event_count(0);
    cluster.pause(2).unwrap();
    let timed_out = |probe: &Value| {
        probe["first_error"]
            .as_str()
            .is_some_and(|e| e.contains(&paused) && e.contains("did not reply within 500ms"))
    };
    let result = cluster.wait_for(0, DEFAULT_TIMEOUT, |events| {
        all_of(&events[mark.min(events.len())..], "probe").any(timed_out)
    });
    cluster.resume(2).unwrap();
    ok(result);
    // A paused node's silence is never reported as an actor that dropped
    // the request.
    for probe in all_of(&cluster.events(0)[mark..], "probe") {
        let error = probe["first_error"].as_str().unwrap_or_default();
        assert!(!error.contains("dropped the request"), "{probe}");
    }
}

#[test]
fn call_owner_to_an_actor_that_stops_holding_the_request_says_it_was_dropped() {
    let _serial = serial();
    let cluster = cluster(3)
        .consensus(3)
        .extra_args(["--probe-dropped"])
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    // The first member in ring order asks another member's dropper.
    let probed =
        |c: &LocalCluster| (0..3).find(|&i| last_of(&c.events(i), "dropped_probe").is_some());
    ok(
        cluster.wait_until("a dropped_probe line", DEFAULT_TIMEOUT, |c| {
            probed(c).is_some()
        }),
    );
    let i = probed(&cluster).unwrap();
    let events = cluster.events(i);
    let probe = last_of(&events, "dropped_probe").unwrap();
    let owner = probe["owner"].as_str().unwrap_or_default();
    let error = probe["error"].as_str().unwrap_or_default();
    // Told at once that the request was dropped, naming the node: not a
    // timeout (the call waited up to 5 s), not a gone node.
    assert!(
        error.contains("dropped the request") && error.contains(owner) && !owner.is_empty(),
        "{probe}"
    );
}

#[test]
fn after_a_kill_calls_fail_with_an_error_then_reach_the_new_owner() {
    let _serial = serial();
    let keys = 2_000;
    let mut cluster = cluster(3)
        .consensus(2)
        .extra_args(["--probe-keys", &keys.to_string()])
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    ok(
        cluster.wait_until("every node reached every owner", DEADLINE, |c| {
            (0..3).all(|i| all_reached(&c.events(i), keys))
        }),
    );
    let victim = cluster.node_name(2).to_string();
    let marks: Vec<usize> = (0..3).map(|i| cluster.event_count(i)).collect();
    cluster.kill(2).unwrap();

    // Once the survivors' rings have dropped the dead node, every key is
    // reached at its new owner.
    ok(
        cluster.wait_until("survivors reach every new owner", DEADLINE, |c| {
            [0, 1].iter().all(|&i| {
                let events = c.events(i);
                let after = &events[marks[i].min(events.len())..];
                let dropped = all_of(after, "ring_changed").any(|e| {
                    e["members"]
                        .as_array()
                        .is_some_and(|m| m.len() == 2 && !m.iter().any(|n| n == victim.as_str()))
                });
                dropped && all_reached(after, keys)
            })
        }),
    );
    // In between, a call for a dead node's key failed with an error that
    // names the node; none hung, and none reached a wrong node.
    for i in [0, 1] {
        let events = cluster.events(i);
        for probe in all_of(&events[marks[i]..], "probe") {
            if let Some(error) = probe["first_error"].as_str() {
                assert!(
                    error.contains(&victim) && !error.contains("answered by"),
                    "unexpected probe error on node {i}: {error}"
                );
                // A dead node is gone, not an actor that dropped a request.
                assert!(
                    !error.contains("dropped the request"),
                    "a dead node reported as alive on node {i}: {error}"
                );
            }
        }
    }
}

/// The last `own_ring` line of node `i` (see examples/src/bin/own-ring.rs).
fn own_ring(cluster: &LocalCluster, i: usize) -> Option<serde_json::Value> {
    last_of(&cluster.events(i), "own_ring").cloned()
}

#[test]
fn an_application_keeps_its_own_ring_from_the_events() {
    let _serial = serial();
    let binary = env!("CARGO_BIN_EXE_own-ring");
    let mut cluster = LocalCluster::builder(binary, 3)
        .consensus(2)
        .start()
        .unwrap();
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    // Every node places the sample keys alike, from three members.
    let agree = |c: &LocalCluster, nodes: &[usize], size: usize| {
        let lines: Vec<_> = nodes.iter().map(|&i| own_ring(c, i)).collect();
        lines.iter().all(|line| {
            line.as_ref().is_some_and(|line| {
                line["members"].as_array().map(Vec::len) == Some(size)
                    && line["owners_digest"] == lines[0].as_ref().unwrap()["owners_digest"]
            })
        })
    };
    ok(
        cluster.wait_until("three nodes place keys alike", DEFAULT_TIMEOUT, |c| {
            agree(c, &[0, 1, 2], 3)
        }),
    );
    let three = own_ring(&cluster, 0).unwrap();
    // cloister itself places nothing, and says why when asked to route.
    assert_eq!(three["builtin_owner"], serde_json::Value::Null, "{three}");
    let error = three["route_error"].as_str().unwrap_or_default();
    assert!(error.contains("external"), "{three}");

    // The placement follows the members when one dies.
    cluster.kill(2).unwrap();
    ok(
        cluster.wait_until("two nodes place keys alike", DEFAULT_TIMEOUT, |c| {
            agree(c, &[0, 1], 2)
        }),
    );
    let two = own_ring(&cluster, 0).unwrap();
    assert_ne!(two["owners_digest"], three["owners_digest"], "{two}");
}

/// Under `sessions = "bounded"` most owners are members a node holds no
/// session with: `call_owner` has the Manager dial the owner and waits for
/// the session, so every call still reaches its owner.
#[test]
fn call_owner_reaches_owners_it_holds_no_session_with_under_bounded_sessions() {
    let _serial = serial();
    let (nodes, keys) = (12, 1_000);
    let cluster = cluster(nodes)
        .consensus(nodes)
        .env("CLOISTER_SESSIONS", "bounded")
        .env("CLOISTER_MONITORS", "2")
        .extra_args(["--probe-keys", &keys.to_string()])
        .start()
        .unwrap();
    let all: Vec<usize> = (0..nodes).collect();
    ok(cluster.wait_ready(&all, DEFAULT_TIMEOUT));
    let last_sessions = |c: &LocalCluster, i: usize| {
        let events = c.events(i);
        let last = last_of(&events, "sessions").cloned();
        last.and_then(|e| e["peers"].as_array().map(Vec::len))
    };
    ok(
        cluster.wait_until("every node reached every owner", DEADLINE, |c| {
            all.iter().all(|&i| all_reached(&c.events(i), keys))
        }),
    );
    // With 2 monitors a node's neighbours are at most 7 of the 11 others;
    // routing to every owner opened the sessions it needed.
    ok(
        cluster.wait_until("sessions with every owner", DEADLINE, |c| {
            all.iter().all(|&i| last_sessions(c, i) == Some(nodes - 1))
        }),
    );
}
