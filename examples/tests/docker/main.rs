//! End-to-end tests with real containers: the compose scenario of
//! `docker/docker-compose.yml` (one service scaled, peers found through the
//! network alias `cloister_test.local`, every node named `cloister_test@<its
//! IP>`), then kill, pause, partition, scale, and a container recreated with a
//! new IP; and with `quorum = "majority"`, faults put into the containers'
//! network namespaces from the host (`nsenter -t PID -n iptables`, see
//! `Nemesis`: clean partitions and random loss), checked against the
//! split-brain invariants.
//!
//! This file is the harness (the image, compose projects, what a container
//! says); the scenarios are in `scenarios.rs` and, with the nemesis and the
//! invariants, `partitions.rs`; the Swarm stacks' in `swarm.rs` (the demo
//! node) and `swarm_kv.rs` (the kv example through a rolling update).
//!
//! The tests skip (with a message on stderr) when no Docker engine answers,
//! and fail instead when `CLOISTER_DOCKER_TESTS=required`. The image is built
//! once per test binary by `docker/build.sh` (debug profile). Every scenario
//! runs its own compose project: the shipped compose file plus a generated
//! override (short timers, the scenario's consensus, an explicit subnet so a
//! container cut off the network can come back with its IP, which is its
//! name). One scenario, a static list of one name on several hosts, runs a
//! generated compose file of its own instead (containers at fixed IPs on
//! `172.29.x.0/24`). Dropping the project runs `docker-compose down` (or
//! `docker compose down`), which also removes its network, also on panic.
//!
//! The nodes' JSON lines are read with `docker logs` (stdout only) and polled
//! until a condition holds or a generous deadline passes; nothing asserts how
//! fast anything happens. The times the scenarios observe are printed as
//! `MEASURE` lines (`cargo test -p cloister-examples --test docker -- --nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

// The process tests' helpers, for `get` and `sample` (they unwrap, as tests do).
#[path = "../common/mod.rs"]
#[allow(clippy::unwrap_used)]
mod common;
mod kv;
mod partitions;
mod scenarios;
mod swarm;
mod swarm_kv;
mod tls;

/// The tag the tests build and run (not `cloister-node:local`, which is the
/// walkthrough's image).
const IMAGE: &str = "cloister-node:tests";
/// The service of `docker/docker-compose.yml` and its network alias.
const SERVICE: &str = "cloister_test";
const ALIAS: &str = "cloister_test.local";
/// How long a wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often the containers' logs are read.
const POLL: Duration = Duration::from_millis(200);
/// How long a held node is watched for starting anyway.
const HOLD: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------
// Docker, the image, and skipping

/// The workspace root (this crate lives in `<root>/tests`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples crate has a parent directory")
        .to_path_buf()
}

/// Whether the tests must run (CI) rather than skip without Docker.
fn required() -> bool {
    std::env::var("CLOISTER_DOCKER_TESTS").is_ok_and(|v| v == "required")
}

/// Why Docker cannot be used here, if it cannot.
fn docker_unavailable() -> Option<String> {
    static ANSWER: OnceLock<Option<String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            if let Err(err) = run("docker", &["info", "--format", "{{.ServerVersion}}"]) {
                return Some(err);
            }
            compose_program().err()
        })
        .clone()
}

/// How to run Compose: `docker-compose` (v1), else the `docker compose`
/// plugin (v2), which takes the same arguments and sets the same labels.
fn compose_program() -> Result<&'static [&'static str], String> {
    static PROGRAM: OnceLock<Result<&'static [&'static str], String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let candidates: [&'static [&'static str]; 2] =
                [&["docker-compose"], &["docker", "compose"]];
            candidates
                .into_iter()
                .find(|program| {
                    let mut args = program[1..].to_vec();
                    args.push("version");
                    run(program[0], &args).is_ok()
                })
                .ok_or_else(|| "neither `docker-compose` nor `docker compose` runs".to_string())
        })
        .clone()
}

/// Builds the image once per test binary; the error is cached too.
fn image_built() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = root().join("docker/build.sh");
            let out = Command::new("bash")
                .arg(&script)
                .env("CLOISTER_PROFILE", "debug")
                .env("CLOISTER_IMAGE", IMAGE)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed ({}):\n{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
}

/// True when the scenario can run: Docker answers and the image is built.
/// Without Docker it prints why and returns false, or panics when Docker
/// tests are required.
fn docker_ready(scenario: &str) -> bool {
    if let Some(why) = docker_unavailable() {
        if required() {
            panic!("CLOISTER_DOCKER_TESTS=required but Docker cannot be used: {why}");
        }
        eprintln!(
            "SKIPPED docker scenario `{scenario}`: {why} \
             (set CLOISTER_DOCKER_TESTS=required to make this a failure)"
        );
        return false;
    }
    if let Err(err) = image_built() {
        panic!("cannot build the image {IMAGE}: {err}");
    }
    true
}

/// Runs a command and returns its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out: Output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `docker <args>` and panics if it fails.
fn docker(args: &[&str]) -> String {
    run("docker", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Unix milliseconds now (the containers' `ts` share the host's clock).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Unix milliseconds of an RFC 3339 UTC time as `docker inspect` prints it
/// (`2026-11-26T15:58:26.512345678Z`).
fn rfc3339_ms(text: &str) -> Option<i64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // days from civil (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis)
}

// ---------------------------------------------------------------------------
// A compose project

/// Held by every compose project while it lives, and taken alone by the
/// Swarm scenarios to leave the swarm: `docker swarm leave --force`
/// disconnects running containers from their bridge networks too (Docker
/// 20.10, seen as `network disconnect` events on another test's project,
/// whose nodes then lost each other and their DNS).
static NETWORKS: RwLock<()> = RwLock::new(());

/// One scenario's compose project; `down` on drop.
struct Project {
    name: String,
    dir: PathBuf,
    /// The first three octets of the project's /24 (`10.x.y`).
    subnet: String,
    /// Whether the project is the generated file alone (no shipped base).
    standalone: bool,
    /// The cookie the generated override gives the service (none for a
    /// standalone project).
    cookie: Option<String>,
    /// Keeps the swarm from being left while the project runs.
    _networks: RwLockReadGuard<'static, ()>,
}

impl Project {
    /// A project named after the scenario and this process, with `consensus`
    /// and subnet number `k` (unique per scenario).
    fn new(scenario: &str, k: u32, consensus: usize) -> Project {
        Project::with_env(scenario, k, consensus, &[])
    }

    /// [`Project::new`] with more `CLOISTER_*` variables for every node.
    fn with_env(scenario: &str, k: u32, consensus: usize, env: &[&str]) -> Project {
        Project::layered(scenario, k, consensus, env, "")
    }

    /// [`Project::with_env`] with more lines for the service (`service`,
    /// each indented by four spaces and ending in a newline).
    fn layered(scenario: &str, k: u32, consensus: usize, env: &[&str], service: &str) -> Project {
        let extra: String = env.iter().map(|var| format!("      - {var}\n")).collect();
        let pid = std::process::id();
        let name = format!("cdock_{scenario}_{pid}");
        let subnet = format!("10.{}.{}", 200 + k, pid % 250);
        let cookie = format!("cdock-{pid}-{k}");
        // Layered over the shipped file: compose merges `environment` by
        // variable and adds the network's ipam.
        let override_file = format!(
            "# generated by examples/tests/docker/main.rs over docker/docker-compose.yml\n\
             version: \"3.8\"\n\
             services:\n  {SERVICE}:\n    image: {IMAGE}\n{service}    environment:\n\
             \x20     - CLOISTER_CONSENSUS={consensus}\n\
             \x20     - CLOISTER_COOKIE={cookie}\n\
             \x20     - CLOISTER_HEARTBEAT_INTERVAL=100ms\n\
             \x20     - CLOISTER_HEARTBEAT_TIMEOUT=600ms\n\
             \x20     - CLOISTER_DISCOVERY_TICK=200ms\n\
             \x20     - CLOISTER_DIAL_TIMEOUT=500ms\n\
             \x20     - CLOISTER_DIAL_BACKOFF_MAX=500ms\n{extra}\
             networks:\n  local:\n    driver: bridge\n    ipam:\n      config:\n        - subnet: {subnet}.0/24\n"
        );
        Project::create(name, subnet, &override_file, Some(cookie))
    }

    /// A project of its own compose file, `compose` (its network must be
    /// `local`, its subnet `{subnet}.0/24`), not layered over the shipped one.
    fn standalone(scenario: &str, subnet: String, compose: &str) -> Project {
        let name = format!("cdock_{scenario}_{}", std::process::id());
        Project::create(name, subnet, compose, None)
    }

    /// Writes `compose` into the project's temp dir and clears leftovers of
    /// an earlier run with the same pid, if any.
    fn create(name: String, subnet: String, compose: &str, cookie: Option<String>) -> Project {
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("cannot create the project's temp dir");
        std::fs::write(dir.join("docker-compose.override.yml"), compose)
            .expect("cannot write the compose file");
        let project = Project {
            name,
            dir,
            subnet,
            standalone: cookie.is_none(),
            cookie,
            _networks: NETWORKS.read().unwrap_or_else(|e| e.into_inner()),
        };
        project.down();
        project
    }

    fn network(&self) -> String {
        format!("{}_local", self.name)
    }

    fn compose_args(&self) -> Vec<String> {
        let base = root().join("docker/docker-compose.yml");
        let over = self.dir.join("docker-compose.override.yml");
        let mut args = Vec::new();
        if !self.standalone {
            args.extend(["-f".to_string(), base.display().to_string()]);
        }
        args.extend(["-f".to_string(), over.display().to_string()]);
        args.extend(["-p".to_string(), self.name.clone()]);
        args
    }

    fn compose(&self, args: &[&str]) -> Result<String, String> {
        let program = compose_program()?;
        let mut all: Vec<String> = program[1..].iter().map(|a| a.to_string()).collect();
        all.extend(self.compose_args());
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run(program[0], &all)
    }

    /// `up -d --scale cloister_test=n`, leaving running containers alone.
    fn scale(&self, n: usize) {
        let scale = format!("{SERVICE}={n}");
        if let Err(err) = self.compose(&["up", "-d", "--no-recreate", "-t", "5", "--scale", &scale])
        {
            panic!("{err}\n{}", self.report(&self.views()));
        }
    }

    fn down(&self) {
        // A paused container cannot be stopped: thaw them first.
        for id in self.ids() {
            let _ = run("docker", &["unpause", &id]);
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "1"]);
        let left = self.ids();
        if !left.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(left.iter().map(String::as_str));
            let _ = run("docker", &args);
        }
        let _ = run("docker", &["network", "rm", &self.network()]);
    }

    /// Every container of the project, stopped ones included.
    fn ids(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        run("docker", &["ps", "-aq", "--no-trunc", "--filter", &filter])
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// What every container is and has printed so far.
    fn views(&self) -> Vec<View> {
        self.views_of(&self.ids())
    }

    /// What the containers `ids` are and have printed so far, their IPs on
    /// the project's network (they need not belong to the project).
    fn views_of(&self, ids: &[String]) -> Vec<View> {
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect"];
        args.extend(ids.iter().map(String::as_str));
        let inspected: Vec<Value> = run("docker", &args)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let network = self.network();
        let mut views: Vec<View> = inspected
            .iter()
            .map(|c| {
                let id = c["Id"].as_str().unwrap_or_default().to_string();
                let (events, stderr) = logs(&id);
                let ip = c["NetworkSettings"]["Networks"][&network]["IPAddress"]
                    .as_str()
                    .filter(|ip| !ip.is_empty())
                    .map(String::from);
                View {
                    container: c["Name"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    service: c["Config"]["Labels"]["com.docker.compose.service"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    exit_code: c["State"]["ExitCode"].as_i64(),
                    number: c["Config"]["Labels"]["com.docker.compose.container-number"]
                        .as_str()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_default(),
                    running: c["State"]["Running"].as_bool().unwrap_or(false),
                    paused: c["State"]["Paused"].as_bool().unwrap_or(false),
                    started_ms: c["State"]["StartedAt"].as_str().and_then(rfc3339_ms),
                    id,
                    ip,
                    events,
                    stderr,
                }
            })
            .collect();
        views.sort_by(|a, b| (a.number, &a.service).cmp(&(b.number, &b.service)));
        views
    }

    /// Polls the containers until `check` returns a value, or panics after
    /// [`DEADLINE`] with `what` and the last lines of every container.
    fn wait<T>(&self, what: &str, mut check: impl FnMut(&[View]) -> Option<T>) -> T {
        let until = Instant::now() + DEADLINE;
        loop {
            let views = self.views();
            if let Some(value) = check(&views) {
                return value;
            }
            if Instant::now() >= until {
                panic!(
                    "[{}] timed out after {DEADLINE:?} waiting for: {what}\n{}",
                    self.name,
                    self.report(&views)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Watches the containers for `spell` and panics as soon as `bad` names
    /// something that must not happen.
    fn never(&self, spell: Duration, what: &str, mut bad: impl FnMut(&[View]) -> Option<String>) {
        let until = Instant::now() + spell;
        while Instant::now() < until {
            let views = self.views();
            if let Some(why) = bad(&views) {
                panic!(
                    "[{}] {what}: {why}\n{}",
                    self.name,
                    self.report(&self.views())
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The last lines of every container, for a failure message.
    fn report(&self, views: &[View]) -> String {
        let mut text = String::new();
        for v in views {
            text.push_str(&format!(
                "--- {} ip={:?} running={} paused={} node={:?} ({} JSON lines)\n",
                v.container,
                v.ip,
                v.running,
                v.paused,
                v.node(),
                v.events.len()
            ));
            for event in &v.events[v.events.len().saturating_sub(12)..] {
                text.push_str(&format!("  {event}\n"));
            }
            for line in &v.stderr[v.stderr.len().saturating_sub(4)..] {
                text.push_str(&format!("  stderr: {line}\n"));
            }
        }
        text
    }

    fn ip(&self, view: &View) -> String {
        view.ip
            .clone()
            .unwrap_or_else(|| panic!("{} has no IP on {}", view.container, self.network()))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A container outside the compose project (`docker run -d`, so no
/// project's view counts it), removed on drop.
struct Loose {
    id: String,
}

impl Loose {
    /// `docker run -d <args>`.
    fn run(args: &[&str]) -> Loose {
        let id = docker(&[&["run", "-d"], args].concat());
        Loose {
            id: id.trim().to_string(),
        }
    }
}

impl Drop for Loose {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.id]);
    }
}

/// A [`Loose`] container that holds an IP address of the project's
/// network, so that a recreated container gets another one. It runs the
/// node binary as another app, listening on another port and waiting for a
/// consensus that never comes: to the project's nodes its address answers
/// like a vanished host's (connection refused on the cluster port).
fn placeholder(project: &Project, ip: &str) -> Loose {
    let network = project.network();
    // Itself and a peer at an address of the project's network that
    // nothing holds: a consensus of 2 that can be met in principle (a
    // list that could never meet it is refused at start), never in fact.
    let sentry = format!(
        "placeholder@{ip}:4999,placeholder@{}.250:4999",
        project.subnet
    );
    Loose::run(&[
        "--network",
        &network,
        "--ip",
        ip,
        IMAGE,
        "--app",
        "placeholder",
        "--sentry",
        &sentry,
        "--listen-port",
        "4999",
        // Holds its address and lets nobody in (nor needs a cookie).
        "--listen-addr",
        "127.0.0.1",
        "--consensus",
        "2",
        "--startup-deadline",
        "300s",
    ])
}

/// `docker logs` of a container: its stdout's JSON lines, and its stderr.
fn logs(id: &str) -> (Vec<Value>, Vec<String>) {
    let Ok(out) = Command::new("docker").args(["logs", id]).output() else {
        return (Vec::new(), Vec::new());
    };
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"].is_string())
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(String::from)
        .collect();
    (events, stderr)
}

// ---------------------------------------------------------------------------
// What a container says

/// One container and the JSON lines it printed (across restarts).
#[derive(Clone, Debug)]
struct View {
    id: String,
    container: String,
    /// The compose service it runs.
    service: String,
    number: u32,
    /// The exit code `docker inspect` gives (0 while it runs).
    exit_code: Option<i64>,
    ip: Option<String>,
    running: bool,
    paused: bool,
    started_ms: Option<i64>,
    events: Vec<Value>,
    stderr: Vec<String>,
}

impl View {
    /// This node's name, as its latest line says.
    fn node(&self) -> Option<&str> {
        self.events.iter().rev().find_map(|e| e["node"].as_str())
    }

    /// The latest state (`snapshot` or `state_changed`).
    fn state(&self) -> Option<&str> {
        self.events
            .iter()
            .rev()
            .find_map(|e| match e["event"].as_str() {
                Some("snapshot") => e["state"].as_str(),
                Some("state_changed") => e["to"].as_str(),
                _ => None,
            })
    }

    /// The latest line that carries the ring's members.
    fn ring(&self) -> Option<&Value> {
        self.events.iter().rev().find(|e| e["members"].is_array())
    }

    fn members(&self) -> BTreeSet<String> {
        self.ring()
            .and_then(|e| e["members"].as_array())
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| m.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn digest(&self) -> Option<&str> {
        self.ring().and_then(|e| e["ring_digest"].as_str())
    }

    fn is_ready(&self) -> bool {
        self.state() == Some("ready")
    }

    /// The sentry its latest line names (`state_changed` and
    /// `sentry_changed` carry it): `Some(None)` when it names none.
    fn sentry(&self) -> Option<Option<&str>> {
        let carrier = self
            .events
            .iter()
            .rev()
            .find(|e| e.get("sentry").is_some())?;
        Some(carrier["sentry"].as_str())
    }

    /// Lines of kind `event` after the first `mark` lines.
    fn after<'a>(&'a self, mark: usize, event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events[mark.min(self.events.len())..]
            .iter()
            .filter(move |e| e["event"] == event)
    }

    /// The `ts` of the first `node_down` about `peer` with `reason` after `mark`.
    fn saw_down(&self, mark: usize, peer: &str, reason: &str) -> Option<i64> {
        self.after(mark, "node_down")
            .find(|e| e["peer"] == peer && e["reason"] == reason)
            .and_then(|e| e["ts"].as_i64())
    }

    /// The `ts` of the first line after `mark` whose ring has `member`.
    fn ring_with(&self, mark: usize, member: &str) -> Option<i64> {
        self.events[mark.min(self.events.len())..]
            .iter()
            .find(|e| {
                e["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|n| n == member))
            })
            .and_then(|e| e["ts"].as_i64())
    }

    /// The `ts` of the first `state_changed` to `to` after `mark`.
    fn became(&self, mark: usize, to: &str) -> Option<i64> {
        self.after(mark, "state_changed")
            .find(|e| e["to"] == to)
            .and_then(|e| e["ts"].as_i64())
    }
}

fn name_of(ip: &str) -> String {
    format!("{SERVICE}@{ip}")
}

/// The running, unpaused containers among `views`.
fn live(views: &[View]) -> Vec<&View> {
    views.iter().filter(|v| v.running && !v.paused).collect()
}

/// `Some(digest)` when every one of `nodes` is ready with exactly `members`
/// and one ring digest.
fn agreed(nodes: &[&View], members: &BTreeSet<String>) -> Option<String> {
    let first = nodes.first()?.digest()?.to_string();
    nodes
        .iter()
        .all(|v| v.is_ready() && &v.members() == members && v.digest() == Some(first.as_str()))
        .then_some(first)
}

/// Waits until exactly `n` containers run, and every one of them is ready
/// with a ring of all of them (named after their IPs) and one digest.
fn wait_all_agree(project: &Project, n: usize, what: &str) -> Vec<View> {
    wait_agree_and(project, n, what, |_| true)
}

/// [`wait_all_agree`], and every one of them has printed `app_started`.
/// The node prints it after `ready`, from another actor, so a view taken
/// at agreement may not hold it yet.
fn wait_all_started(project: &Project, n: usize, what: &str) -> Vec<View> {
    wait_agree_and(project, n, what, |v| {
        v.after(0, "app_started").next().is_some()
    })
}

fn wait_agree_and(
    project: &Project,
    n: usize,
    what: &str,
    also: impl Fn(&View) -> bool,
) -> Vec<View> {
    project.wait(what, |views| {
        let nodes = live(views);
        if nodes.len() != n || nodes.iter().any(|v| v.ip.is_none() || !also(v)) {
            return None;
        }
        let names: BTreeSet<String> = nodes
            .iter()
            .map(|v| name_of(v.ip.as_deref().unwrap_or_default()))
            .collect();
        agreed(&nodes, &names).map(|_| views.to_vec())
    })
}

/// The containers' line counts, to look only at what they print next.
fn marks(views: &[View]) -> BTreeMap<String, usize> {
    views
        .iter()
        .map(|v| (v.id.clone(), v.events.len()))
        .collect()
}

fn mark_of(marks: &BTreeMap<String, usize>, view: &View) -> usize {
    marks.get(&view.id).copied().unwrap_or(0)
}

fn measure(what: &str, ms: i64) {
    println!("MEASURE {what}: {ms} ms");
}
