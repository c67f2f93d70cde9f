//! `bench-idle`: a lone node's idle cost at start and after 1,000 peer
//! session events, for two `cloister-node` builds side by side (issue 10).
//!
//! ```text
//! cargo run --release -p cloister-examples --bin bench-idle -- --old OLD --new NEW
//! ```
//!
//! Each round starts one node of each binary (consensus 1, a sentry list of
//! only itself, the default timers) and, once both print `ready`, measures
//! both over the same window: CPU time as a percentage of one core, from
//! utime + stime in `/proc/PID/stat` (10 ms ticks) and from the nanosecond
//! run time in `/proc/PID/task/*/schedstat`, and wake-ups per second, the sum
//! of `voluntary_ctxt_switches` over `/proc/PID/task/*/status` (the same for
//! any implementation). Then this program, a plain ractor_cluster node with
//! the nodes' cookie, opens and closes `--sessions` sessions with each node in
//! turn (four session events each: opened, authenticated, ready, closed),
//! `--gap` ms apart, waits `--settle` s and measures both again. Which node is
//! churned first alternates by round. Every measurement is a JSON line on
//! stdout; a markdown table of medians follows.
//!
//! Nodes are killed and reaped when a round ends or fails (`Node::drop`), and,
//! started under the harness variable with a piped stdin, exit by themselves
//! if this program dies.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Compares two cloister-node builds' idle CPU and wake-ups before and after session churn.
#[derive(Parser, Debug)]
struct Args {
    /// The cloister-node executable built at the old tree.
    #[arg(long)]
    old: PathBuf,
    /// The cloister-node executable built at the new tree.
    #[arg(long)]
    new: PathBuf,
    /// Rounds; each starts a fresh node of each binary.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each measurement window.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Sessions opened and closed with each node between the two windows.
    #[arg(long, default_value_t = 250)]
    sessions: u32,
    /// Milliseconds from one session's close to the next dial. A session
    /// coming up makes a node introduce itself again 37.5 ms later (a
    /// heartbeat interval / 8), so sessions closer together than that share
    /// one such wake-up; 0 dials back to back.
    #[arg(long, default_value_t = 50)]
    gap: u64,
    /// Seconds from the last session's close to the second window.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

const COOKIE: &str = "bench-cookie";
/// How long a node may take to be ready, or a session to open or close.
const DEADLINE: Duration = Duration::from_secs(30);
/// USER_HZ, the unit of utime and stime: 100 on Linux.
const TICKS_PER_S: f64 = 100.0;
const PHASES: [&str; 2] = ["start", "after churn"];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with `cargo run --release` for real figures");
    }
    let (port, host) = (free_port()?, "127.0.0.1".to_string());
    let churner = NodeServer::new(port, COOKIE.into(), "churner".into(), host, None, None);
    let (server, _) = Actor::spawn(None, churner, ()).await?;
    let (forward, mut seen) = unbounded_channel();
    server.cast(NodeServerMessage::SubscribeToEvents {
        id: "bench-idle".into(),
        subscription: Box::new(Forward(forward)),
    })?;
    let mut all = Vec::new();
    for round in 0..args.rounds {
        let mut nodes = Vec::new();
        for (label, binary) in [("old", &args.old), ("new", &args.new)] {
            nodes.push(Node::start(label, binary)?);
        }
        for node in &nodes {
            node.wait_ready().await?;
        }
        all.extend(measure(&nodes, round, PHASES[0], args.window).await?);
        for k in 0..nodes.len() {
            let node = &nodes[(k + round) % nodes.len()];
            let start = Instant::now();
            let refused = churn(&server, &mut seen, node.port, args.sessions, args.gap).await?;
            let took = start.elapsed().as_secs_f64();
            eprintln!(
                "round {round}: {} sessions with {} in {took:.1} s ({refused} dials refused)",
                args.sessions, node.label
            );
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        all.extend(measure(&nodes, round, PHASES[1], args.window).await?);
        for node in &nodes {
            let state = node.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if state != "ready" {
                bail!("the {} node left ready: it is {state}", node.label);
            }
        }
    }
    server.stop(None);
    print_summary(&all, &args);
    Ok(())
}

/// One node over one window: (binary, phase, CPU % by ticks, CPU % by
/// schedstat, wake-ups per second).
type Measurement = (&'static str, &'static str, f64, f64, f64);

/// Samples every node, sleeps `window` s, samples again; prints a JSON line
/// per node.
async fn measure(
    nodes: &[Node],
    round: usize,
    phase: &'static str,
    window: u64,
) -> Result<Vec<Measurement>> {
    let before = nodes.iter().map(Node::sample).collect::<Result<Vec<_>>>()?;
    tokio::time::sleep(Duration::from_secs(window)).await;
    let after = nodes.iter().map(Node::sample).collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for ((node, b), a) in nodes.iter().zip(&before).zip(&after) {
        let secs = (a.at - b.at).as_secs_f64();
        // Per thread, so a thread that started in the window counts from 0
        // (one that ended in it is lost; the nodes keep theirs).
        let switches: u64 = (a.switches.iter())
            .map(|(tid, n)| n.saturating_sub(b.switches.get(tid).copied().unwrap_or(0)))
            .sum();
        let ticks_pct = (a.ticks - b.ticks) as f64 / TICKS_PER_S / secs * 100.0;
        let ns_pct = (a.run_ns - b.run_ns) as f64 / 1e9 / secs * 100.0;
        let wakeups = switches as f64 / secs;
        let line = json!({
            "event": "idle", "binary": node.label, "round": round, "phase": phase,
            "window_s": secs, "cpu_ticks_pct": ticks_pct, "cpu_ns_pct": ns_pct,
            "wakeups_per_s": wakeups, "threads": a.switches.len(),
        });
        println!("{line}");
        out.push((node.label, phase, ticks_pct, ns_pct, wakeups));
    }
    Ok(out)
}

/// What the churner's NodeServer saw of its own sessions.
enum Seen {
    Authenticated(NodeServerSessionInformation),
    Closed,
}

/// Forwards the churner's session events to `churn`.
struct Forward(UnboundedSender<Seen>);

impl NodeEventSubscription for Forward {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(Seen::Authenticated(ses));
    }
    fn node_session_disconnected(&self, _: NodeServerSessionInformation) {
        let _ = self.0.send(Seen::Closed);
    }
}

/// Opens and closes `sessions` sessions with the node on `port`, one after
/// another; returns how many dials the node refused. (A dial that reaches
/// the node before it has seen the previous session close fails
/// authentication there, as a duplicate of that session; it is dialled again.)
async fn churn(
    server: &ActorRef<NodeServerMessage>,
    seen: &mut UnboundedReceiver<Seen>,
    port: u16,
    sessions: u32,
    gap_ms: u64,
) -> Result<u32> {
    let target = format!("127.0.0.1:{port}");
    let mut refused = 0;
    for i in 0..sessions {
        let session = loop {
            ractor_cluster::client_connect(server, target.as_str())
                .await
                .with_context(|| format!("dialling {target}"))?;
            match next(seen).await.with_context(|| format!("session {i}"))? {
                Seen::Authenticated(session) => break session,
                Seen::Closed => refused += 1,
            }
        };
        // Long enough for the node to see it ready before it closes.
        tokio::time::sleep(Duration::from_millis(5)).await;
        session.actor.stop(None);
        while let Seen::Authenticated(_) = next(seen).await.context("closing a session")? {}
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    Ok(refused)
}

/// The churner's next session event, within `DEADLINE`.
async fn next(seen: &mut UnboundedReceiver<Seen>) -> Result<Seen> {
    match tokio::time::timeout(DEADLINE, seen.recv()).await {
        Ok(Some(seen)) => Ok(seen),
        _ => Err(anyhow!(
            "no session event from the churner within {DEADLINE:?}"
        )),
    }
}

/// A running cloister-node, killed and reaped when dropped.
struct Node {
    label: &'static str,
    port: u16,
    child: Child,
    /// The `to` of its last `state_changed` line.
    state: Arc<Mutex<String>>,
}

impl Node {
    fn start(label: &'static str, binary: &Path) -> Result<Node> {
        let port = free_port()?;
        // No inherited environment: no CLOISTER_* variable, the same for both.
        let mut child = Command::new(binary)
            .env_clear()
            .args(["--app", "idle", "--consensus", "1", "--cookie", COOKIE])
            .args([
                "--advertised-host",
                "127.0.0.1",
                "--listen-port",
                &port.to_string(),
            ])
            .args(["--sentry", &format!("idle@127.0.0.1:{port}")])
            .env(cloister_ractor::harness::HARNESS_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let state = Arc::new(Mutex::new(String::from("started")));
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let seen = Arc::clone(&state);
        // Drains stdout (so the node never blocks on it) and keeps its state.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line).unwrap_or_default();
                if let ("state_changed", Some(to)) = (
                    event["event"].as_str().unwrap_or_default(),
                    event["to"].as_str(),
                ) {
                    *seen.lock().unwrap_or_else(|e| e.into_inner()) = to.to_string();
                }
            }
        });
        Ok(Node {
            label,
            port,
            child,
            state,
        })
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        while *self.state.lock().unwrap_or_else(|e| e.into_inner()) != "ready" {
            if Instant::now() > deadline {
                bail!("the {} node is not ready after {DEADLINE:?}", self.label);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn sample(&self) -> Result<Sample> {
        let pid = self.child.id();
        let at = Instant::now();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name may hold spaces: count fields after its `)`;
        // utime and stime (fields 14 and 15) are then at 11 and 12.
        let fields: Vec<u64> = (stat.rsplit_once(')').map_or("", |(_, rest)| rest))
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = match fields.get(11..13) {
            Some([utime, stime]) => utime + stime,
            _ => bail!("odd /proc/{pid}/stat: {stat}"),
        };
        let (mut switches, mut run_ns) = (BTreeMap::new(), 0);
        for task in fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?.path();
            // A thread may end between the listing and the reads: skip it.
            let (Some(tid), Ok(status), Ok(sched)) = (
                task.file_name()
                    .and_then(|n| n.to_str()?.parse::<u32>().ok()),
                fs::read_to_string(task.join("status")),
                fs::read_to_string(task.join("schedstat")),
            ) else {
                continue;
            };
            let voluntary = (status.lines())
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(|| anyhow!("no voluntary_ctxt_switches in {}", task.display()))?;
            switches.insert(tid, voluntary);
            run_ns += sched
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(Sample {
            at,
            ticks,
            run_ns,
            switches,
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's counters at one instant.
struct Sample {
    at: Instant,
    /// utime + stime of the whole process, in USER_HZ ticks.
    ticks: u64,
    /// Time on a CPU summed over its live threads, in nanoseconds.
    run_ns: u64,
    /// voluntary_ctxt_switches by thread id.
    switches: BTreeMap<u32, u64>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn print_summary(all: &[Measurement], args: &Args) {
    println!();
    println!("| binary | phase | runs | CPU, ticks | CPU, schedstat | wake-ups/s | min-max |");
    println!("|---|---|---|---|---|---|---|");
    for label in ["old", "new"] {
        for phase in PHASES {
            let ms: Vec<_> = all
                .iter()
                .filter(|m| m.0 == label && m.1 == phase)
                .collect();
            let wakeups: Vec<f64> = ms.iter().map(|m| m.4).collect();
            let lo = wakeups.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = wakeups.iter().copied().fold(0.0, f64::max);
            let phase = match phase {
                "start" => "at start".to_string(),
                _ => format!(
                    "after {} session events ({} ms apart)",
                    args.sessions * 4,
                    args.gap
                ),
            };
            println!(
                "| {label} | {phase} | {} | {:.2}% | {:.2}% | {:.1} | {lo:.1}-{hi:.1} |",
                ms.len(),
                median(ms.iter().map(|m| m.2).collect()),
                median(ms.iter().map(|m| m.3).collect()),
                median(wakeups),
            );
        }
    }
}
