//! Fifty real `cloister-node` processes on 127.0.0.1, started together with
//! the library's default timers, form one ring and stay formed (issue 11).
//! Formation waits with a generous deadline: nothing here asserts how fast.

#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::Duration;

use cloister_examples::bench::node_config;
use cloister_ractor::testing::all_of;
mod common;
use common::{cluster, ok, serial};

/// Fifty debug processes on two cores form in seconds; this is the bound.
const FORMATION: Duration = Duration::from_secs(240);

#[test]
fn fifty_nodes_started_together_form_one_ring_and_drop_none_while_idle() {
    let _serial = serial();
    let n = 50;
    // The defaults users run with (300 ms heartbeats, each member watched
    // by 5), not the harness's test timers.
    let (env, flags) = node_config(false);
    let mut builder = cluster(n).consensus(n).extra_args(flags);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let cluster = builder.start().unwrap();
    let all: Vec<usize> = (0..n).collect();
    ok(cluster.wait_ready(&all, FORMATION));

    // Idle for several heartbeat timeouts: no process dies, so any
    // `node_down` would be a false drop.
    let marks: Vec<usize> = all.iter().map(|&i| cluster.event_count(i)).collect();
    thread::sleep(Duration::from_secs(6));
    for &i in &all {
        let events = cluster.events(i);
        let downs: Vec<_> = all_of(&events[marks[i].min(events.len())..], "node_down").collect();
        assert!(downs.is_empty(), "{}: {downs:?}", cluster.node_name(i));
    }
    assert!(cluster.agree(&all, "ready"), "the ring changed while idle");
}

/// The peers of node `i`'s last `sessions` line.
fn session_count(cluster: &cloister_ractor::testing::LocalCluster, i: usize) -> Option<usize> {
    let events = cluster.events(i);
    let last = cloister_ractor::testing::last_of(&events, "sessions")?;
    Some(last["peers"].as_array()?.len())
}

#[test]
fn fifty_nodes_over_bounded_sessions_form_one_ring_and_all_drop_a_killed_one() {
    let _serial = serial();
    let n = 50;
    let (env, flags) = node_config(false);
    let mut builder = cluster(n)
        .consensus(n)
        .extra_args(flags)
        .env("CLOISTER_SESSIONS", "bounded");
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let mut cluster = builder.start().unwrap();
    let all: Vec<usize> = (0..n).collect();
    ok(cluster.wait_ready(&all, FORMATION));

    // Every ring holds all fifty, while each node holds sessions with a
    // few: 5 on each side in hash order and two per halving down to 5
    // (at most 18 here), not 49.
    let marks: Vec<usize> = all.iter().map(|&i| cluster.event_count(i)).collect();
    thread::sleep(Duration::from_secs(6));
    for &i in &all {
        let sessions = session_count(&cluster, i);
        assert!(
            sessions.is_some_and(|s| s <= 18),
            "{}: {sessions:?} sessions",
            cluster.node_name(i)
        );
        let events = cluster.events(i);
        let downs: Vec<_> = all_of(&events[marks[i].min(events.len())..], "node_down").collect();
        assert!(downs.is_empty(), "{}: {downs:?}", cluster.node_name(i));
    }
    assert!(cluster.agree(&all, "ready"), "the ring changed while idle");

    // A killed node: most survivors hold no session with it and learn it
    // from their neighbours, all as `crashed`.
    let victim = cluster.node_name(7).to_string();
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != 7).collect();
    let marks: Vec<usize> = all.iter().map(|&i| cluster.event_count(i)).collect();
    cluster.kill(7).unwrap();
    for &i in &survivors {
        ok(cluster.wait_for(i, FORMATION, |events| {
            all_of(&events[marks[i].min(events.len())..], "node_down")
                .any(|e| e["peer"] == victim.as_str() && e["reason"] == "crashed")
        }));
    }
    // One fewer than `consensus`: every survivor rehashes, on one ring.
    ok(cluster.wait_agree(&survivors, "rehashing", FORMATION));

    // Restarted, it is learned back everywhere.
    cluster.restart(7).unwrap();
    ok(cluster.wait_agree(&all, "ready", FORMATION));
}
