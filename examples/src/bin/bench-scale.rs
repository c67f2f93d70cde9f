//! `bench-scale`: a cluster of N real `cloister-node` processes on 127.0.0.1,
//! started together, for each N asked for (issue 11's benchmark).
//!
//! ```text
//! cargo run --release -p cloister-examples --bin bench-scale -- --sizes 10,25,50
//! ```
//!
//! For each size it starts every process back to back with consensus N and
//! the library's default timers (see `cloister_examples::bench::node_config`),
//! and prints one line:
//!
//! - spawning: from the first spawn to the last;
//! - formation: from just before the last spawn to the latest `ready` line,
//!   or how many nodes were ready when `--deadline` ran out;
//! - CPU to form: the user and system CPU every process used from its start
//!   until the cluster formed, summed (in seconds; the machine's cores
//!   bound how fast that much work can be done);
//! - idle: once formed, the CPU each process uses over `--idle` seconds
//!   (median per node, and the sum, in % of one core), its VmRSS and PSS
//!   (see `bench::Memory`), and the `node_down` lines printed meanwhile (no
//!   process dies, so each one is a false drop).
//!
//! - crash: then SIGKILL one node; from the signal to the last survivor's
//!   sign that it is gone (`node_down`, or a ring without it);
//! - freeze: then SIGSTOP another; the same.
//!
//! Every process is killed when its cluster is dropped, also on failure.
//! The floor to compare with, a raw ractor_cluster mesh of the same sizes,
//! is `raw-mesh`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use cloister_examples::bench::{
    cpu_ticks, idle_cost, median, node_binary, node_config, parse_env, ts, unix_ms, wait_dropped,
    Sizes, TICK_SECONDS,
};
use cloister_ractor::testing::{all_of, LocalCluster};

/// Forms clusters of several sizes and measures them idle.
#[derive(Parser, Debug)]
struct Args {
    /// The cloister-node executable (default: build it with this program's profile).
    #[arg(long)]
    binary: Option<PathBuf>,
    #[command(flatten)]
    sizes: Sizes,
    /// `CLOISTER_<FIELD>=value` for every node, after the defaults (for
    /// example `--env CLOISTER_HEARTBEAT_TIMEOUT=5s`); repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    envs: Vec<(String, String)>,
    /// Write, per run, every node's start time and event lines up to the
    /// end of formation into this directory (`<nodes>-<run>/node-<i>.jsonl`,
    /// its first line `{"event":"spawned","ts":..}`, and the nodes' logs), to see where
    /// formation spends its time.
    #[arg(long)]
    formation_log: Option<PathBuf>,
}

/// What one run of one size measured.
struct Run {
    formation_ms: Option<f64>,
    ready: usize,
    /// From the first spawn to the last.
    spawn_ms: f64,
    /// CPU seconds (user and system, every node) up to formation.
    forming_cpu_s: f64,
    cpu: Vec<f64>,
    memory: Vec<cloister_examples::bench::Memory>,
    false_drops: usize,
    /// The last survivor's detection, and the median survivor's.
    crash_ms: Option<(f64, f64)>,
    freeze_ms: Option<(f64, f64)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let binary = node_binary(args.binary.as_deref())?;
    println!("| nodes | run | spawning | formation | CPU to form, all nodes | ready | CPU per node, median | CPU, all nodes | VmRSS per node, median (PSS) | false drops while idle | crash detection, last (median) | freeze detection, last (median) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.sizes.sizes {
        for run in 1..=args.sizes.runs {
            let measured = measure(&binary, n, run, &args)?;
            let formation = measured
                .formation_ms
                .map_or("did not form".to_string(), |ms| format!("{ms:.0} ms"));
            let (cpu, all, rss) = if measured.cpu.is_empty() {
                ("-".to_string(), "-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:.2}%", median(&measured.cpu)),
                    format!("{:.1}%", measured.cpu.iter().sum::<f64>()),
                    cloister_examples::bench::memory_cell(&measured.memory),
                )
            };
            let drops = if measured.cpu.is_empty() {
                "-".to_string()
            } else {
                measured.false_drops.to_string()
            };
            let ms = |v: Option<(f64, f64)>| {
                v.map_or("-".to_string(), |(last, median)| {
                    format!("{last:.0} ms (median {median:.0})")
                })
            };
            println!(
                "| {n} | {run} | {:.0} ms | {formation} | {:.2} s | {}/{n} | {cpu} | {all} | {rss} | {drops} | {} | {} |",
                measured.spawn_ms,
                measured.forming_cpu_s,
                measured.ready,
                ms(measured.crash_ms),
                ms(measured.freeze_ms),
            );
        }
    }
    Ok(())
}

fn measure(binary: &PathBuf, n: usize, run_no: usize, args: &Args) -> Result<Run> {
    let (env, extra_args) = node_config(false);
    // The node's flags win over its environment: a timer set with `--env`
    // replaces the flag that would set it.
    let mut extra_args = extra_args.into_iter();
    let mut flags = Vec::new();
    while let (Some(flag), Some(value)) = (extra_args.next(), extra_args.next()) {
        let field = format!(
            "CLOISTER_{}",
            flag.trim_start_matches("--").replace('-', "_")
        );
        let set = args
            .envs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(&field));
        flags.extend([flag, set.map_or(value, |(_, v)| v.clone())]);
    }
    let mut builder = LocalCluster::builder(binary, n)
        .consensus(n)
        .extra_args(flags);
    for (key, value) in env.into_iter().chain(args.envs.iter().cloned()) {
        builder = builder.env(key, value);
    }
    let mut cluster = builder.build()?;
    let all: Vec<usize> = (0..n).collect();
    let mut spawned = Vec::with_capacity(n);
    for i in 0..n {
        spawned.push(unix_ms());
        cluster.start_node(i)?;
    }
    let last_spawn = spawned[n - 1];
    let deadline = Duration::from_secs(args.sizes.deadline);
    let formed = cluster.wait_ready(&all, deadline).is_ok();
    // The CPU the processes spent from their start to now: what forming cost.
    let ticks: u64 = (cluster.pids().iter())
        .filter_map(|&pid| cpu_ticks(pid).ok())
        .sum();
    let ready_at: Vec<u64> = all
        .iter()
        .filter_map(|&i| {
            let events = cluster.events(i);
            let ready = all_of(&events, "state_changed")
                .find(|e| e["to"] == "ready")
                .and_then(ts);
            ready
        })
        .collect();
    if let Some(dir) = &args.formation_log {
        write_formation_log(&dir.join(format!("{n}-{run_no}")), &cluster, &spawned)?;
    }
    let mut run = Run {
        formation_ms: None,
        ready: ready_at.len(),
        spawn_ms: last_spawn - spawned[0],
        forming_cpu_s: ticks as f64 * TICK_SECONDS,
        cpu: Vec::new(),
        memory: Vec::new(),
        false_drops: 0,
        crash_ms: None,
        freeze_ms: None,
    };
    if !formed {
        return Ok(run);
    }
    run.formation_ms = ready_at.iter().max().map(|&t| t as f64 - last_spawn);

    let marks: Vec<usize> = all.iter().map(|&i| cluster.event_count(i)).collect();
    let pids = cluster.pids();
    (run.cpu, run.memory) = idle_cost(&pids, Duration::from_secs(args.sizes.idle))?;
    run.false_drops = all
        .iter()
        .map(|&i| {
            let events = cluster.events(i);
            all_of(&events[marks[i].min(events.len())..], "node_down").count()
        })
        .sum();

    // Node 1 is killed, then node 2 frozen, each watched by the rest.
    let deadline = Duration::from_secs(30);
    let mut gone = Vec::new();
    for (victim, kill) in [(1, true), (2, false)] {
        if n < 4 {
            break;
        }
        let watchers: Vec<usize> = (0..n)
            .filter(|i| *i != victim && !gone.contains(i))
            .collect();
        let marks: Vec<usize> = watchers.iter().map(|&i| cluster.event_count(i)).collect();
        let name = cluster.node_name(victim).to_string();
        let t = unix_ms();
        if kill {
            cluster.kill(victim)?;
        } else {
            cluster.pause(victim)?;
        }
        let found = wait_dropped(&cluster, &watchers, &marks, &name, deadline);
        let detected = found.ok().filter(|f| !f.is_empty()).map(|found| {
            let after: Vec<f64> = found.iter().map(|(ts, _)| *ts as f64 - t).collect();
            let last = after.iter().copied().fold(f64::MIN, f64::max);
            (last, median(&after))
        });
        if kill {
            run.crash_ms = detected;
        } else {
            run.freeze_ms = detected;
            let _ = cluster.resume(victim);
        }
        gone.push(victim);
    }
    Ok(run)
}

/// Each node's start time and events so far, one file per node.
fn write_formation_log(
    dir: &std::path::Path,
    cluster: &LocalCluster,
    spawned: &[f64],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, at) in spawned.iter().enumerate() {
        let mut lines = vec![serde_json::json!({ "event": "spawned", "ts": *at as u64 })];
        lines.extend(cluster.events(i));
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        std::fs::write(dir.join(format!("node-{i}.jsonl")), text)?;
    }
    // And the nodes' logs (stderr) so far, as the harness keeps them.
    for entry in std::fs::read_dir(cluster.log_dir())? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, dir.join(name))?;
        }
    }
    Ok(())
}
