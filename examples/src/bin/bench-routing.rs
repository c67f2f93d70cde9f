//! Times routing across real processes on 127.0.0.1: `call_owner` against a
//! raw ractor_cluster remote call to the same actor, one-way `route` against
//! raw casts to it (counted where they land), and `multicall`.
//!
//! ```text
//! cargo run --release -p cloister-examples --bin bench-routing
//! ```
//!
//! It starts 3, then 10 `cloister-node` processes (defaults' timers are not
//! involved: nothing fails), asks node 0 to run `--bench-routing 20000` once
//! all are ready, and prints what node 0 measured as two markdown tables:
//! round trips, then one-way throughput.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cloister_ractor::testing::{all_of, LocalCluster};
use serde_json::Value;

fn main() -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with `cargo run --release` for real figures");
    }
    let binary =
        cloister_examples::build_node_binary("cloister-node").context("building cloister-node")?;
    let mut lines = Vec::new();
    for n in [3, 10] {
        eprintln!("bench-routing: {n} members…");
        let mut cluster = LocalCluster::builder(&binary, n).consensus(n).build()?;
        for i in 1..n {
            cluster.start_node(i)?;
        }
        cluster.start_node_with(0, &["--bench-routing", "20000"])?;
        let all: Vec<usize> = (0..n).collect();
        cluster
            .wait_ready(&all, Duration::from_secs(30))
            .map_err(|e| anyhow!(e))?;
        cluster
            .wait_for(0, Duration::from_secs(180), |events| {
                all_of(events, "bench_routing").next().is_some()
            })
            .map_err(|e| anyhow!(e))?;
        let events = cluster.events(0);
        let line = all_of(&events, "bench_routing")
            .next()
            .cloned()
            .unwrap_or_default();
        if let Some(error) = line.get("error").or(line.get("cast_error")) {
            if !error.is_null() {
                eprintln!("bench-routing: {n} members: {error}");
            }
        }
        eprintln!(
            "bench-routing: {n} members: casts/s by round: raw {}, route {}",
            line["raw_cast_rounds"], line["route_rounds"]
        );
        lines.push((n, line));
    }
    let get = |line: &Value, field: &str| line[field].as_f64().unwrap_or(f64::NAN);
    println!("| members | raw remote call | call_owner | ratio | multicall |");
    println!("|---|---|---|---|---|");
    for (n, line) in &lines {
        let us = |field: &str| get(line, field);
        println!(
            "| {n} | {:.0} us | {:.0} us | {:.2} | {:.0} us |",
            us("raw_call_us"),
            us("call_owner_us"),
            us("call_owner_us") / us("raw_call_us"),
            us("multicall_us"),
        );
    }
    println!();
    println!(
        "| members | raw cast | route | route / raw | paired | send: raw cast | send: route | node_for | owner_of |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, line) in &lines {
        let f = |field: &str| get(line, field);
        println!(
            "| {n} | {:.0}k/s | {:.0}k/s | {:.2} | {:.2} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns |",
            f("raw_cast_per_s") / 1e3,
            f("route_per_s") / 1e3,
            f("route_per_s") / f("raw_cast_per_s"),
            f("route_over_raw_paired"),
            f("raw_cast_send_ns"),
            f("route_send_ns"),
            f("node_for_ns"),
            f("owner_of_ns"),
        );
    }
    Ok(())
}
