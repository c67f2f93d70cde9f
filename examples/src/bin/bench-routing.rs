//! Times routing across real processes on 127.0.0.1: `call_owner` against a
//! raw ractor_cluster remote call to the same actor, and `multicall`.
//!
//! ```text
//! cargo run --release -p cloister-examples --bin bench-routing
//! ```
//!
//! It starts 3, then 10 `cloister-node` processes (defaults' timers are not
//! involved: nothing fails), asks node 1 to run `--bench-routing 20000` once
//! all are ready, and prints what node 1 measured.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cloister_ractor::testing::{all_of, LocalCluster};

fn main() -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with `cargo run --release` for real figures");
    }
    let binary =
        cloister_examples::build_node_binary("cloister-node").context("building cloister-node")?;
    println!("| members | raw remote call | call_owner | ratio | multicall |");
    println!("|---|---|---|---|---|");
    for n in [3, 10] {
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
        let us = |field: &str| line[field].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {n} | {:.0} us | {:.0} us | {:.2} | {:.0} us |",
            us("raw_call_us"),
            us("call_owner_us"),
            us("call_owner_us") / us("raw_call_us"),
            us("multicall_us"),
        );
    }
    Ok(())
}
