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
