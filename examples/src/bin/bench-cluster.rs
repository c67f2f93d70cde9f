//! `bench-cluster`: times real `cloister-node` processes on 127.0.0.1, for
//! BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p cloister-examples --bin bench-cluster
//! ```
//!
//! It builds `cloister-node` with the profile it runs in (so `--release`
//! times the release node; `--binary PATH` uses another), then measures:
//!
//! 1. Formation: N processes with consensus N. The clock starts just before
//!    the last process is spawned (unix ms) and stops at the latest `ts` of the
//!    `state_changed ... to: ready` lines of all nodes. Two shapes: `together`
//!    starts every process back to back (a whole cluster booting), `last
//!    joiner` first waits until the other N-1 are up and connected to each
//!    other (they have been dialling the missing node, backing off), then
//!    starts the last.
//! 2. Crash detection: 3 ready nodes, SIGKILL one at t; the latest over the
//!    survivors of the first `node_down` for it (or `ring_changed` without it),
//!    minus t. The fault comes 500 ms after ready plus i/runs of 300 ms, so
//!    the runs sample the whole heartbeat cycle.
//! 3. Freeze detection: the same with SIGSTOP (a hung process whose sockets
//!    stay open).
//! 4. Memory: 10 ready nodes idle for 5 s; VmRSS and VmHWM of each from
//!    `/proc/<pid>/status`, and the CPU each used while idle.
//!
//! Configuration: `LocalCluster` sets the test timers as `CLOISTER_*` variables; this program
//! overrides every timer back to `Config::default()` with `CLOISTER_*`
//! variables (a builder's own variables come last and win) and passes
//! `--heartbeat-interval`/`--heartbeat-timeout` explicitly, so the figures are
//! those of the library defaults. `--tests-preset` keeps the test timers.
//!
//! `--tls` gives every node its own certificate from a throwaway CA (mutual
//! TLS between nodes); `--tls both` alternates plain and TLS clusters run by
//! run (the order swapping every round) and prints a row for each.
//! `--tls-crypto ring` runs the TLS nodes on rustls's ring provider instead
//! of aws-lc-rs (see `cloister_ractor`'s TLS docs: aws-lc seeds its random
//! generator from CPU jitter once per process, at the first handshake).
//!
//! Every wait has a deadline; a run that misses one is reported as failed and
//! skipped. All processes are killed when each cluster is dropped.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use cloister_core::Config;
use cloister_examples::bench::{
    cpu_ticks, node_binary, node_config, status_kib, ts, unix_ms, wait_dropped, TICK_SECONDS,
};
use cloister_examples::certs::{ClusterCerts, Crypto, Tls};
use cloister_ractor::testing::{all_of, LocalCluster};

/// Times formation, failure detection and memory of real cloister-node processes.
#[derive(Parser, Debug)]
struct Args {
    /// The cloister-node executable (default: build it with this program's profile).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Keep the harness's test timers instead of the defaults.
    #[arg(long)]
    tests_preset: bool,
    /// Repeats of the 3-node formation.
    #[arg(long, default_value_t = 10)]
    formation3: usize,
    /// Repeats of the 10-node formation.
    #[arg(long, default_value_t = 5)]
    formation10: usize,
    /// Repeats of each `last joiner` formation (3 and 10 nodes).
    #[arg(long, default_value_t = 5)]
    joiner: usize,
    /// Repeats of the crash detection.
    #[arg(long, default_value_t = 10)]
    crash: usize,
    /// Repeats of the freeze detection.
    #[arg(long, default_value_t = 5)]
    freeze: usize,
    /// Seconds the 10-node cluster idles before memory is read.
    #[arg(long, default_value_t = 5)]
    idle: u64,
    /// Only these parts, comma-separated: formation,joiner,crash,freeze,memory.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Mutual TLS between nodes: `on` (also `--tls` alone), or `both` to
    /// alternate plain and TLS runs.
    #[arg(long, value_enum, default_value_t = Tls::Off, num_args = 0..=1, default_missing_value = "on")]
    tls: Tls,
    /// The cryptography of the TLS runs: `aws-lc-rs` (the default) or `ring`.
    #[arg(long, value_enum, default_value_t = Crypto::AwsLcRs)]
    tls_crypto: Crypto,
}

/// Run `i` of `runs` spreads its fault over one default heartbeat interval
/// (300 ms), so that the runs sample every time since the victim's last
/// heartbeat rather than always the same one.
fn spread(i: usize, runs: usize) -> Duration {
    Duration::from_millis((i * 300 / runs.max(1)) as u64)
}

/// How long any one wait may take before the run counts as failed.
const DEADLINE: Duration = Duration::from_secs(30);
/// Quiet time after `ready` before a failure is injected.
const SETTLE: Duration = Duration::from_millis(500);

fn main() -> Result<()> {
    let args = Args::parse();
    let binary = node_binary(args.binary.as_deref())?;
    let certs = match args.tls {
        Tls::Off => None,
        _ => Some(ClusterCerts::new("bench-cluster")?),
    };
    let bench = Bench::new(binary, args.tests_preset, certs, args.tls_crypto);
    eprintln!("cloister-node: {}", bench.binary.display());
    eprintln!("node config: {}", bench.describe());
    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);

    let mut rows = Vec::new();
    if wanted("formation") {
        for (n, repeats) in [(3, args.formation3), (10, args.formation10)] {
            let mut from_first = [Vec::new(), Vec::new()];
            let runs = bench.repeat(args.tls, repeats, |_, tls| {
                let (last, first) = bench.formation(n, false, tls)?;
                from_first[usize::from(tls)].push(first);
                Ok(last)
            });
            let goal = if n == 3 {
                "<= 100 ms median"
            } else {
                "<= 500 ms median"
            };
            for (tls, runs) in runs {
                rows.push(Row::ms(
                    args.tls
                        .label(&format!("formation, {n} nodes started together"), tls),
                    runs,
                    goal,
                ));
                let runs = Runs {
                    values: std::mem::take(&mut from_first[usize::from(tls)]),
                    failed: 0,
                };
                rows.push(Row::ms(
                    format!("(same runs, from the first spawn; {n} spawns back to back)"),
                    runs,
                    "-",
                ));
            }
        }
    }
    if wanted("joiner") {
        for n in [3, 10] {
            let runs = bench.repeat(args.tls, args.joiner, |_, tls| {
                Ok(bench.formation(n, true, tls)?.0)
            });
            for (tls, runs) in runs {
                let what = format!(
                    "formation, node {n} joins {} waiting (consensus {n})",
                    n - 1
                );
                rows.push(Row::ms(args.tls.label(&what, tls), runs, "-"));
            }
        }
    }
    let detections = [
        (
            "crash",
            Fault::Kill,
            args.crash,
            "crash detection (SIGKILL), 3 nodes",
            "<= 50 ms median",
        ),
        (
            "freeze",
            Fault::Stop,
            args.freeze,
            "freeze detection (SIGSTOP), 3 nodes",
            "<= 2 s",
        ),
    ];
    for (part, fault, repeats, what, goal) in detections {
        if !wanted(part) {
            continue;
        }
        let runs = bench.repeat(args.tls, repeats, |i, tls| {
            bench.detection(fault, spread(i, repeats), tls)
        });
        for (tls, runs) in runs {
            rows.push(Row::ms(args.tls.label(what, tls), runs, goal));
        }
    }
    let mut memory = Vec::new();
    if wanted("memory") {
        for tls in args.tls.round(0) {
            match bench.memory(10, Duration::from_secs(args.idle), tls) {
                Ok(m) => memory.push((args.tls.label("", tls), m)),
                Err(error) => eprintln!("memory: failed: {error:#}"),
            }
        }
    }

    print_report(&bench, &rows, &memory, args.idle);
    Ok(())
}

/// How a node is made to fail.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Stop,
}

struct Bench {
    binary: PathBuf,
    env: Vec<(String, String)>,
    extra_args: Vec<String>,
    tests_preset: bool,
    /// The certificates of `--tls`.
    certs: Option<ClusterCerts>,
    /// The cryptography of the TLS runs.
    crypto: Crypto,
}

impl Bench {
    fn new(
        binary: PathBuf,
        tests_preset: bool,
        certs: Option<ClusterCerts>,
        crypto: Crypto,
    ) -> Bench {
        let (env, extra_args) = node_config(tests_preset);
        Bench {
            binary,
            env,
            extra_args,
            tests_preset,
            certs,
            crypto,
        }
    }

    /// Starts node `i`, with its certificate when `tls`.
    fn start(&self, cluster: &mut LocalCluster, i: usize, tls: bool) -> Result<()> {
        if !tls {
            return Ok(cluster.start_node(i)?);
        }
        let certs = self
            .certs
            .as_ref()
            .ok_or_else(|| anyhow!("a TLS run without certificates"))?;
        let mut flags = certs.flags(cluster.node_name(i))?;
        flags.extend(self.crypto.flags());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Ok(cluster.start_node_with(i, &flags)?)
    }

    fn describe(&self) -> String {
        let config = if self.tests_preset {
            Config::for_tests()
        } else {
            Config::default()
        };
        let ms = |d: Duration| d.as_millis();
        format!(
            "{}: discovery_tick {}ms, dial_backoff {}..{}ms (jitter {}), dial_timeout {}ms, \
             session_grace {}ms, heartbeat {}ms / timeout {}ms, vnodes {}",
            if self.tests_preset {
                "Config::for_tests()"
            } else {
                "Config::default()"
            },
            ms(config.discovery_tick),
            ms(config.dial_backoff_min),
            ms(config.dial_backoff_max),
            config.dial_backoff_jitter,
            ms(config.dial_timeout),
            ms(config.session_grace),
            ms(config.heartbeat_interval),
            ms(config.heartbeat_timeout),
            config.ring_vnodes,
        )
    }

    fn cluster(&self, n: usize) -> Result<LocalCluster> {
        let mut builder = LocalCluster::builder(&self.binary, n)
            .consensus(n)
            .extra_args(self.extra_args.iter().cloned());
        for (key, value) in &self.env {
            builder = builder.env(key, value);
        }
        Ok(builder.build()?)
    }

    /// Runs `run(i, tls)` `repeats` times for each transport of `mode`,
    /// interleaved round by round; failures are printed and left out.
    /// Returns the runs of each transport, plain first.
    fn repeat(
        &self,
        mode: Tls,
        repeats: usize,
        mut run: impl FnMut(usize, bool) -> Result<f64>,
    ) -> Vec<(bool, Runs)> {
        let mut plain = Runs::default();
        let mut tls_runs = Runs::default();
        for i in 0..repeats {
            for tls in mode.round(i) {
                let runs = if tls { &mut tls_runs } else { &mut plain };
                match run(i, tls) {
                    Ok(value) => runs.values.push(value),
                    Err(error) => {
                        eprintln!("run {i} (tls {tls}) failed: {error:#}");
                        runs.failed += 1;
                    }
                }
            }
        }
        match mode {
            Tls::Off => vec![(false, plain)],
            Tls::On => vec![(true, tls_runs)],
            Tls::Both => vec![(false, plain), (true, tls_runs)],
        }
    }

    /// Milliseconds from the last spawn to the last node's `ready`, and from
    /// the first spawn.
    fn formation(&self, n: usize, wait_for_others: bool, tls: bool) -> Result<(f64, f64)> {
        let mut cluster = self.cluster(n)?;
        let all: Vec<usize> = (0..n).collect();
        let t0 = unix_ms();
        for i in 0..n - 1 {
            self.start(&mut cluster, i, tls)?;
        }
        if wait_for_others {
            // Up and connected to each other, still assembling.
            cluster
                .wait_until("the first nodes connected to each other", DEADLINE, |c| {
                    (0..n - 1).all(|i| {
                        let events = c.events(i);
                        all_of(&events, "sessions")
                            .last()
                            .and_then(|e| e["peers"].as_array())
                            .is_some_and(|peers| peers.len() >= n - 2)
                    })
                })
                .map_err(|e| anyhow!(e))?;
        }
        let t = unix_ms();
        self.start(&mut cluster, n - 1, tls)?;
        cluster.wait_ready(&all, DEADLINE).map_err(|e| anyhow!(e))?;
        let mut latest = 0;
        for i in all {
            let events = cluster.events(i);
            let ready = all_of(&events, "state_changed")
                .find(|e| e["to"] == "ready")
                .and_then(ts)
                .ok_or_else(|| anyhow!("{} printed no ready line", cluster.node_name(i)))?;
            latest = latest.max(ready);
        }
        let shape = if wait_for_others {
            "joiner"
        } else {
            "together"
        };
        eprintln!(
            "  formation {n} {shape} (tls {tls}): {:.0} ms after the last spawn",
            latest as f64 - t
        );
        Ok((latest as f64 - t, latest as f64 - t0))
    }

    /// Milliseconds from the fault to the last survivor's `node_down`; the
    /// fault comes `SETTLE + phase` after the cluster is ready.
    fn detection(&self, fault: Fault, phase: Duration, tls: bool) -> Result<f64> {
        let mut cluster = self.cluster(3)?;
        for i in 0..3 {
            self.start(&mut cluster, i, tls)?;
        }
        cluster
            .wait_ready(&[0, 1, 2], DEADLINE)
            .map_err(|e| anyhow!(e))?;
        thread::sleep(SETTLE + phase);
        let victim = 2;
        let name = cluster.node_name(victim).to_string();
        let survivors = [0, 1];
        let marks: Vec<usize> = survivors.iter().map(|&i| cluster.event_count(i)).collect();
        let t = unix_ms();
        match fault {
            Fault::Kill => cluster.kill(victim)?,
            Fault::Stop => cluster.pause(victim)?,
        }
        // The first sign on each survivor that the victim is gone.
        let found = wait_dropped(&cluster, &survivors, &marks, &name, DEADLINE)?;
        let latest = found.iter().map(|(ts, _)| *ts).max().unwrap_or_default();
        let reasons: Vec<&str> = found.iter().map(|(_, why)| why.as_str()).collect();
        eprintln!(
            "  {fault:?} (tls {tls}): detected after {:.0} ms ({})",
            latest as f64 - t,
            reasons.join(", ")
        );
        if let Fault::Stop = fault {
            let _ = cluster.resume(victim);
        }
        Ok(latest as f64 - t)
    }

    fn memory(&self, n: usize, idle: Duration, tls: bool) -> Result<Memory> {
        let mut cluster = self.cluster(n)?;
        for i in 0..n {
            self.start(&mut cluster, i, tls)?;
        }
        let all: Vec<usize> = (0..n).collect();
        cluster.wait_ready(&all, DEADLINE).map_err(|e| anyhow!(e))?;
        let pids = cluster.pids();
        if pids.len() != n {
            bail!("only {} of {n} processes run", pids.len());
        }
        let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?;
        let start = Instant::now();
        thread::sleep(idle);
        let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?;
        let elapsed = start.elapsed().as_secs_f64();
        if !cluster.agree(&all, "ready") {
            bail!("the cluster did not stay ready while idle");
        }
        let mut memory = Memory::default();
        for &pid in &pids {
            let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
            memory
                .rss
                .push(status_kib(&status, "VmRSS:")? as f64 / 1024.0);
            memory
                .hwm
                .push(status_kib(&status, "VmHWM:")? as f64 / 1024.0);
        }
        memory.cpu = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) as f64 * TICK_SECONDS / elapsed * 100.0)
            .collect();
        Ok(memory)
    }
}

#[derive(Default)]
struct Runs {
    values: Vec<f64>,
    failed: usize,
}

struct Row {
    what: String,
    runs: Runs,
    goal: &'static str,
}

impl Row {
    fn ms(what: impl Into<String>, runs: Runs, goal: &'static str) -> Row {
        Row {
            what: what.into(),
            runs,
            goal,
        }
    }
}

#[derive(Default)]
struct Memory {
    rss: Vec<f64>,
    hwm: Vec<f64>,
    /// Percent of one core, per process.
    cpu: Vec<f64>,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().max_by(f64::total_cmp)
}

fn min(values: &[f64]) -> Option<f64> {
    values.iter().copied().min_by(f64::total_cmp)
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn print_report(bench: &Bench, rows: &[Row], memories: &[(String, Memory)], idle: u64) {
    println!("node config: {}", bench.describe());
    println!();
    println!("| measurement | runs | median | min | max | goal |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let values = &row.runs.values;
        let runs = match row.runs.failed {
            0 => values.len().to_string(),
            failed => format!("{} ({failed} failed)", values.len()),
        };
        println!(
            "| {} | {runs} | {} ms | {} ms | {} ms | {} |",
            row.what,
            fmt(median(values), 0),
            fmt(min(values), 0),
            fmt(max(values), 0),
            row.goal
        );
    }
    for (transport, memory) in memories {
        let n = memory.rss.len();
        println!(
            "| VmRSS per process, {n} nodes idle {idle} s{transport} | {n} | {} MiB | {} MiB | {} MiB | - |",
            fmt(median(&memory.rss), 1),
            fmt(min(&memory.rss), 1),
            fmt(max(&memory.rss), 1)
        );
        println!(
            "| VmHWM per process, {n} nodes idle {idle} s{transport} | {n} | {} MiB | {} MiB | {} MiB | - |",
            fmt(median(&memory.hwm), 1),
            fmt(min(&memory.hwm), 1),
            fmt(max(&memory.hwm), 1)
        );
        println!(
            "| CPU per process while idle, {n} nodes{transport} | {n} | {}% | {}% | {}% | - |",
            fmt(median(&memory.cpu), 2),
            fmt(min(&memory.cpu), 2),
            fmt(max(&memory.cpu), 2)
        );
    }
    println!();
    println!(
        "Anchors. Formation: Elixir cloister polls every 5 s and retries boot every 2 s; \
         libcluster polls every 5 s; Akka Cluster Bootstrap waits a 5 s stable margin. \
         Freeze detection: Akka ~5.5 s, memberlist ~5.5 s at 10 nodes, Erlang net_ticktime \
         45-75 s, ractor_cluster alone never (its pings have no timeout)."
    );
}
