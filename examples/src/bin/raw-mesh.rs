//! `raw-mesh`: the floor under cloister's formation and idle cost. N plain
//! ractor_cluster nodes on 127.0.0.1 that dial each other, with no cloister
//! on top (no heartbeats, no ring, no herald), started together.
//!
//! ```text
//! cargo run --release -p cloister-examples --bin raw-mesh -- --sizes 10,25,50,100
//! ```
//!
//! For each size it spawns N copies of itself in `node` mode, back to back.
//! Each runs a `NodeServer` (isolated mode, as cloister does) and dials
//! every other node's port, retrying a refused dial after 25 ms doubling to
//! 2 s (cloister's default backoff), until ractor_cluster reports N - 1
//! authenticated sessions; then it prints the time and idles. One line per
//! run: formation (last spawn to the last node's full mesh), then, over
//! `--idle` seconds, the CPU per node (median) and in all, and VmRSS and PSS
//! per node (see `bench::Memory`). Every process is killed at the end of its run, also on failure.
//!
//! `--degree K` measures a mesh that is not full, the floor of a transport
//! with a bounded number of sessions per node: node `i` (in port order)
//! dials only the next `K` nodes around the circle, so each node ends with
//! `2K` sessions (K dialed, K accepted) instead of N - 1.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use cloister_examples::bench::{idle_cost, median, unix_ms, Sizes};
use ractor::Actor;
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};

#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    sizes: Sizes,
    /// Sessions each node dials: the next K nodes in port order (each then
    /// has 2K sessions). Default: every other node, a full mesh.
    #[arg(long)]
    degree: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// One node of a mesh (spawned by the benchmark).
    Node {
        /// This node's port.
        #[arg(long)]
        port: u16,
        /// The ports this node dials, comma-separated.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<u16>,
        /// Sessions (dialed and accepted) that make this node meshed.
        #[arg(long)]
        expect: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Mode::Node {
        port,
        peers,
        expect,
    }) = args.mode
    {
        return node(port, peers, expect);
    }
    println!("| nodes | run | formation | meshed | CPU per node, median | CPU, all nodes | VmRSS per node, median (PSS) |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.sizes.sizes {
        for run in 1..=args.sizes.runs {
            let m = measure(n, &args)?;
            let formation = m
                .formation_ms
                .map_or("did not form".to_string(), |ms| format!("{ms:.0} ms"));
            let (cpu, all, rss) = match m.cpu.is_empty() {
                true => ("-".into(), "-".into(), "-".into()),
                false => (
                    format!("{:.2}%", median(&m.cpu)),
                    format!("{:.1}%", m.cpu.iter().sum::<f64>()),
                    cloister_examples::bench::memory_cell(&m.memory),
                ),
            };
            println!(
                "| {n} | {run} | {formation} | {}/{n} | {cpu} | {all} | {rss} |",
                m.meshed
            );
        }
    }
    Ok(())
}

/// One mesh node: listen, dial its peers until it has `expect` sessions,
/// say so.
fn node(port: u16, peers: Vec<u16>, expect: usize) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = NodeServer::new(
            port,
            "raw-mesh".into(),
            format!("raw{port}"),
            "127.0.0.1".into(),
            None,
            Some(NodeConnectionMode::Isolated),
        );
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| anyhow!("listening on {port}: {e}"))?;
        let mut backoff: Vec<(u16, Duration, Instant)> = peers
            .iter()
            .map(|&p| (p, Duration::from_millis(25), Instant::now()))
            .collect();
        loop {
            let sessions = ractor::call_t!(server, NodeServerMessage::GetSessions, 5_000)
                .map_err(|e| anyhow!("asking for sessions: {e}"))?;
            // Named `raw{port}` (below): whoever dialed, the name says who.
            let connected: BTreeSet<u16> = sessions
                .values()
                .filter_map(|s| {
                    let name = &s.peer_name.as_ref()?.name;
                    let port = name.strip_prefix("raw")?.split('@').next()?;
                    port.parse().ok()
                })
                .collect();
            if sessions.len() >= expect {
                println!("meshed {}", unix_ms());
                break;
            }
            for (peer, wait, at) in &mut backoff {
                if connected.contains(peer) || *at > Instant::now() {
                    continue;
                }
                let addr = format!("127.0.0.1:{peer}");
                if ractor_cluster::client_connect(&server, addr.as_str())
                    .await
                    .is_err()
                {
                    *at = Instant::now() + *wait;
                    *wait = (*wait * 2).min(Duration::from_secs(2));
                } else {
                    // A dial that connected: give its handshake time.
                    *at = Instant::now() + Duration::from_secs(1);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Idle: the mesh stays up until the benchmark kills this process.
        std::future::pending::<()>().await;
        Ok(())
    })
}

struct Run {
    formation_ms: Option<f64>,
    meshed: usize,
    cpu: Vec<f64>,
    memory: Vec<cloister_examples::bench::Memory>,
}

/// Kills every process of a run when dropped, also on failure.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn measure(n: usize, args: &Args) -> Result<Run> {
    let ports = free_ports(n)?;
    let me = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel::<f64>();
    let mut processes = Processes(Vec::new());
    let mut last_spawn = 0.0;
    // A full mesh unless --degree is smaller: node i dials the next K.
    let degree = args.degree.unwrap_or(n).min(n - 1);
    let expect = if 2 * degree >= n - 1 {
        n - 1
    } else {
        2 * degree
    };
    for (i, &port) in ports.iter().enumerate() {
        let peers: Vec<String> = match args.degree {
            None => ports
                .iter()
                .filter(|&&p| p != port)
                .map(u16::to_string)
                .collect(),
            Some(_) => (1..=degree)
                .map(|d| ports[(i + d) % n].to_string())
                .collect(),
        };
        last_spawn = unix_ms();
        let mut child = Command::new(&me)
            .args([
                "node",
                "--port",
                &port.to_string(),
                "--peers",
                &peers.join(","),
                "--expect",
                &expect.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning mesh node {i}"))?;
        let stdout = child.stdout.take().context("a child without stdout")?;
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(ts) = line.strip_prefix("meshed ").and_then(|t| t.parse().ok()) {
                    let _ = tx.send(ts);
                }
            }
        });
        processes.0.push(child);
    }
    let end = Instant::now() + Duration::from_secs(args.sizes.deadline);
    let mut meshed = Vec::new();
    while meshed.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ts) => meshed.push(ts),
            Err(_) => break,
        }
    }
    let mut run = Run {
        formation_ms: None,
        meshed: meshed.len(),
        cpu: Vec::new(),
        memory: Vec::new(),
    };
    if meshed.len() < n {
        return Ok(run);
    }
    run.formation_ms = meshed
        .iter()
        .copied()
        .reduce(f64::max)
        .map(|t| t - last_spawn);
    let pids: Vec<u32> = processes.0.iter().map(Child::id).collect();
    (run.cpu, run.memory) = idle_cost(&pids, Duration::from_secs(args.sizes.idle))?;
    Ok(run)
}

/// `n` ports free on 127.0.0.1 below the ephemeral range (dials take their
/// local ports from that range, and could hold one of ours).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let ports: Vec<u16> = (21_000..30_000)
        .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .take(n)
        .collect();
    match ports.len() == n {
        true => Ok(ports),
        false => Err(anyhow!(
            "found {} free ports of {n} in 21000..30000",
            ports.len()
        )),
    }
}
