//! `bench-soak`: a cluster left up for a long time while its members fail
//! one at a time, to see what a long uptime does to it: memory and idle CPU
//! drift, false drops, and how long each fault takes to heal.
//!
//! ```text
//! cargo run --release -p cloister-examples --bin bench-soak -- --nodes 100 --minutes 20 --env CLOISTER_SESSIONS=bounded
//! ```
//!
//! It starts `--nodes` processes together on 127.0.0.1 (consensus 1, the
//! default timers) and waits until all agree. Then, every `--every`
//! seconds, one node other than the first, chosen at random, meets the next
//! fault in turn:
//! - `kill`: SIGKILL, then started again at once (a new incarnation);
//! - `freeze`: SIGSTOP for three heartbeat timeouts, then SIGCONT (it is
//!   dropped as unresponsive and comes back at its next life);
//! - `hiccup`: SIGSTOP for half a heartbeat timeout, then SIGCONT (nobody
//!   may drop it).
//!
//! After each fault it waits until every node is ready with every member on
//! one ring digest again, and prints a JSON line: the fault, the time to
//! heal from the restart or the thaw (for a kill, until every other node
//! dropped the old process and all agree again), and the `node_down` lines the fault should not have caused (any at
//! all for a hiccup; for the others, any about another node in the rings of
//! the nodes it did not hit). Every minute a
//! `sample` line gives the nodes' VmRSS (median and largest) and their CPU
//! over the minute. A cluster that does not heal within `--deadline`
//! seconds ends the run with an error; every process is killed when it ends.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use clap::Parser;
use cloister_core::Config;
use cloister_examples::bench::{
    cpu_ticks, median, node_binary, node_config, parse_env, status_kib, wait_dropped, TICK_SECONDS,
};
use cloister_ractor::testing::{all_of, LocalCluster};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "A cluster up for a long time while its members fail one at a time")]
struct Args {
    /// The cloister-node executable (default: build it with this program's profile).
    #[arg(long)]
    binary: Option<std::path::PathBuf>,
    /// Cluster size.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// How long the cluster runs once formed.
    #[arg(long, default_value_t = 20)]
    minutes: u64,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 20)]
    every: u64,
    /// Seconds the cluster may take to form or to heal a fault.
    #[arg(long, default_value_t = 60)]
    deadline: u64,
    /// `CLOISTER_<FIELD>=value` for every node (repeatable); not the
    /// heartbeat timers, which the faults are timed by.
    #[arg(long = "env", value_parser = parse_env)]
    envs: Vec<(String, String)>,
    /// Copy the nodes' logs into this directory when a fault caused a false
    /// drop or did not heal.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
    /// Seed of the choice of nodes.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const FAULTS: [&str; 3] = ["kill", "freeze", "hiccup"];

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.nodes;
    if n < 3 {
        return Err(anyhow!("--nodes must be at least 3, not {n}"));
    }
    if let Some((key, _)) =
        (args.envs.iter()).find(|(key, _)| key.starts_with("CLOISTER_HEARTBEAT_"))
    {
        return Err(anyhow!(
            "--env {key}: bench-soak runs the default heartbeat timers, which its freezes and \
             pauses are timed by; leave the heartbeat settings out"
        ));
    }
    let binary = node_binary(args.binary.as_deref())?;
    let (env, flags) = node_config(false);
    let mut builder = LocalCluster::builder(&binary, n)
        .consensus(1)
        .extra_args(flags);
    for (key, value) in env.into_iter().chain(args.envs.iter().cloned()) {
        builder = builder.env(key, value);
    }
    let mut cluster = builder.build()?;
    for i in 0..n {
        cluster.start_node(i)?;
    }
    let deadline = Duration::from_secs(args.deadline);
    let all: Vec<usize> = (0..n).collect();
    let started = Instant::now();
    cluster
        .wait_agree(&all, "ready", deadline)
        .map_err(|e| anyhow!(e))?;
    println!(
        "{}",
        json!({"event": "formed", "ms": started.elapsed().as_millis() as u64})
    );

    let timeout = Config::default().heartbeat_timeout;
    let mut rng = args.seed;
    let end = Instant::now() + Duration::from_secs(args.minutes * 60);
    let soak_start = Instant::now();
    let mut next_sample = soak_start + Duration::from_secs(60);
    let mut ticks = all_ticks(&cluster);
    let mut sampled_at = Instant::now();
    let mut round = 0;
    while Instant::now() < end {
        if Instant::now() >= next_sample {
            let now_ticks = all_ticks(&cluster);
            let cpu = now_ticks.saturating_sub(ticks) as f64 * TICK_SECONDS
                / sampled_at.elapsed().as_secs_f64()
                * 100.0;
            let rss = rss_mib(&cluster);
            println!(
                "{}",
                json!({
                    "event": "sample",
                    "minute": soak_start.elapsed().as_secs() / 60,
                    "rss_median_mib": median(&rss),
                    "rss_max_mib": rss.iter().copied().fold(0.0, f64::max),
                    "cpu_all_percent": cpu,
                    "cpu_per_node_percent": cpu / n as f64,
                })
            );
            (ticks, sampled_at) = (now_ticks, Instant::now());
            next_sample += Duration::from_secs(60);
        }
        // A linear congruential step (Knuth's MMIX constants): enough to
        // spread the faults, and the same nodes for the same seed.
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let victim = 1 + (rng >> 33) as usize % (n - 1);
        let fault = FAULTS[round % FAULTS.len()];
        round += 1;
        let marks: Vec<usize> = all.iter().map(|&i| cluster.event_count(i)).collect();
        let name = cluster.node_name(victim).to_string();
        let began = Instant::now();
        match fault {
            "kill" => cluster.restart(victim)?,
            "freeze" => {
                cluster.pause(victim)?;
                thread::sleep(timeout * 3);
                cluster.resume(victim)?;
            }
            _ => {
                cluster.pause(victim)?;
                thread::sleep(timeout / 2);
                cluster.resume(victim)?;
            }
        }
        // Healing counts from the restart or the thaw.
        let at = Instant::now();
        // A restarted node's new process may agree with the others before
        // they saw its old one go: first every other node drops it.
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
        let other_marks: Vec<usize> = others.iter().map(|&i| marks[i]).collect();
        let healed = match fault {
            "hiccup" => Ok(()),
            _ => wait_dropped(&cluster, &others, &other_marks, &name, deadline).map(drop),
        }
        .and_then(|()| {
            cluster
                .wait_agree(&all, "ready", deadline)
                .map_err(|e| anyhow!(e))
        });
        let took = at.elapsed().as_millis() as u64;
        let mut wrong = Vec::new();
        // A frozen node lets the peers that closed its sessions go from its
        // own ring when it wakes (and a restarted one starts afresh): only
        // the others' rings count, and for a hiccup every ring.
        let judged = all.iter().filter(|&&i| fault == "hiccup" || i != victim);
        for &i in judged {
            let events = cluster.events(i);
            for down in all_of(&events[marks[i].min(events.len())..], "node_down") {
                let about_victim = down["peer"] == name.as_str();
                if fault == "hiccup" || !about_victim {
                    wrong.push(format!(
                        "{} dropped {} ({})",
                        cluster.node_name(i),
                        down["peer"],
                        down["reason"]
                    ));
                }
            }
        }
        println!(
            "{}",
            json!({"event": "fault", "fault": fault, "node": name, "healed_ms": took, "false_drops": wrong.len(), "which": wrong})
        );
        if let (Some(dir), true) = (&args.logs, !wrong.is_empty() || healed.is_err()) {
            copy_logs(&cluster, &dir.join(format!("{round}-{fault}")))?;
        }
        healed?;
        thread::sleep(Duration::from_secs(args.every).saturating_sub(began.elapsed()));
    }
    Ok(())
}

fn copy_logs(cluster: &LocalCluster, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(cluster.log_dir())? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn all_ticks(cluster: &LocalCluster) -> u64 {
    cluster
        .pids()
        .iter()
        .filter_map(|&p| cpu_ticks(p).ok())
        .sum()
}

fn rss_mib(cluster: &LocalCluster) -> Vec<f64> {
    (cluster.pids().iter())
        .filter_map(|&p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| status_kib(&s, "VmRSS:").ok())
        .map(|kib| kib as f64 / 1024.0)
        .collect()
}
