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
//!
//! `--tls` gives every node its own certificate from a throwaway CA (mutual
//! TLS between nodes); `--tls both --rounds R` runs each size plain and with
//! TLS, alternating (the order swapping every round), R times, a row each.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use cloister_examples::certs::{ClusterCerts, Tls};
use cloister_ractor::testing::{all_of, LocalCluster};
use serde_json::Value;

/// Times routing across real cloister-node processes.
#[derive(Parser, Debug)]
struct Args {
    /// Mutual TLS between nodes: `on` (also `--tls` alone), or `both` to
    /// alternate plain and TLS runs.
    #[arg(long, value_enum, default_value_t = Tls::Off, num_args = 0..=1, default_missing_value = "on")]
    tls: Tls,
    /// Runs of each cluster size (and transport).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with `cargo run --release` for real figures");
    }
    let binary =
        cloister_examples::build_node_binary("cloister-node").context("building cloister-node")?;
    let certs = match args.tls {
        Tls::Off => None,
        _ => Some(ClusterCerts::new("bench-routing")?),
    };
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for n in [3, 10] {
            for tls in args.tls.round(round) {
                let label = args.tls.label(&n.to_string(), tls);
                let certs = if tls { certs.as_ref() } else { None };
                runs.push((label, run(&binary, n, certs)?));
            }
        }
    }
    // Plain first, then TLS, each by size (round 0 lists each transport once).
    let lines: Vec<_> = args
        .tls
        .round(0)
        .into_iter()
        .flat_map(|tls| [3, 10].map(|n| args.tls.label(&n.to_string(), tls)))
        .flat_map(|label| runs.iter().filter(move |(l, _)| *l == label))
        .cloned()
        .collect();
    print_tables(&lines);
    Ok(())
}

/// One cluster of `n`, with TLS when `certs` are given: what node 0 measured.
fn run(binary: &std::path::Path, n: usize, certs: Option<&ClusterCerts>) -> Result<Value> {
    let tls = certs.is_some();
    eprintln!("bench-routing: {n} members (tls {tls})…");
    let mut cluster = LocalCluster::builder(binary, n).consensus(n).build()?;
    let flags = |cluster: &LocalCluster, i: usize| -> Result<Vec<String>> {
        Ok(match certs {
            Some(certs) => certs.flags(cluster.node_name(i))?,
            None => Vec::new(),
        })
    };
    for i in 1..n {
        let flags = flags(&cluster, i)?;
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        cluster.start_node_with(i, &flags)?;
    }
    let mut flags = flags(&cluster, 0)?;
    flags.extend(["--bench-routing".to_string(), "20000".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.start_node_with(0, &flags)?;
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
    Ok(line)
}

/// The two markdown tables, a row per run.
fn print_tables(lines: &[(String, Value)]) {
    let get = |line: &Value, field: &str| line[field].as_f64().unwrap_or(f64::NAN);
    println!("| members | raw remote call | call_owner | ratio | multicall |");
    println!("|---|---|---|---|---|");
    for (n, line) in lines {
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
    for (n, line) in lines {
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
}
