//! End-to-end tests with real containers: the compose scenario of
//! `docker/docker-compose.yml` (one service scaled, peers found through the
//! network alias `cloister_test.local`, every node named `cloister_test@<its
//! IP>`), then kill, pause, partition, scale, and a container recreated with a
//! new IP; and with `quorum = "majority"`, faults put into the containers'
//! network namespaces from the host (`nsenter -t PID -n iptables`, see
//! `Nemesis`: clean partitions and random loss), checked against the
//! split-brain invariants.
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
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

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

/// One scenario's compose project; `down` on drop.
struct Project {
    name: String,
    dir: PathBuf,
    /// The first three octets of the project's /24 (`10.x.y`).
    subnet: String,
    /// Whether the project is the generated file alone (no shipped base).
    standalone: bool,
}

impl Project {
    /// A project named after the scenario and this process, with `consensus`
    /// and subnet number `k` (unique per scenario).
    fn new(scenario: &str, k: u32, consensus: usize) -> Project {
        Project::with_env(scenario, k, consensus, &[])
    }

    /// [`Project::new`] with more `CLOISTER_*` variables for every node.
    fn with_env(scenario: &str, k: u32, consensus: usize, env: &[&str]) -> Project {
        let extra: String = env.iter().map(|var| format!("      - {var}\n")).collect();
        let pid = std::process::id();
        let name = format!("cdock_{scenario}_{pid}");
        let subnet = format!("10.{}.{}", 200 + k, pid % 250);
        // Layered over the shipped file: compose merges `environment` by
        // variable and adds the network's ipam.
        let override_file = format!(
            "# generated by examples/tests/docker.rs over docker/docker-compose.yml\n\
             version: \"3.8\"\n\
             services:\n  {SERVICE}:\n    image: {IMAGE}\n    environment:\n\
             \x20     - CLOISTER_CONSENSUS={consensus}\n\
             \x20     - CLOISTER_HEARTBEAT_INTERVAL=100ms\n\
             \x20     - CLOISTER_HEARTBEAT_TIMEOUT=600ms\n\
             \x20     - CLOISTER_DISCOVERY_TICK=200ms\n\
             \x20     - CLOISTER_DIAL_TIMEOUT=500ms\n\
             \x20     - CLOISTER_DIAL_BACKOFF_MAX=500ms\n{extra}\
             networks:\n  local:\n    driver: bridge\n    ipam:\n      config:\n        - subnet: {subnet}.0/24\n"
        );
        Project::create(name, subnet, &override_file, false)
    }

    /// A project of its own compose file, `compose` (its network must be
    /// `local`, its subnet `{subnet}.0/24`), not layered over the shipped one.
    fn standalone(scenario: &str, subnet: String, compose: &str) -> Project {
        let name = format!("cdock_{scenario}_{}", std::process::id());
        Project::create(name, subnet, compose, true)
    }

    /// Writes `compose` into the project's temp dir and clears leftovers of
    /// an earlier run with the same pid, if any.
    fn create(name: String, subnet: String, compose: &str, standalone: bool) -> Project {
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("cannot create the project's temp dir");
        std::fs::write(dir.join("docker-compose.override.yml"), compose)
            .expect("cannot write the compose file");
        let project = Project {
            name,
            dir,
            subnet,
            standalone,
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
        let ids = self.ids();
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

/// A container outside the compose project that holds an IP address of its
/// network, so that a recreated container gets another one. It runs the
/// node binary as another app, listening on another port and waiting for a
/// consensus that never comes: to the project's nodes its address answers
/// like a vanished host's (connection refused on the cluster port).
struct Placeholder {
    id: String,
}

impl Placeholder {
    fn hold(project: &Project, ip: &str) -> Placeholder {
        let network = project.network();
        // Itself and a peer at an address of the project's network that
        // nothing holds: a consensus of 2 that can be met in principle (a
        // list that could never meet it is refused at start), never in fact.
        let sentry = format!(
            "placeholder@{ip}:4999,placeholder@{}.250:4999",
            project.subnet
        );
        let id = docker(&[
            "run",
            "-d",
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
            "--consensus",
            "2",
            "--startup-deadline",
            "300s",
        ]);
        Placeholder {
            id: id.trim().to_string(),
        }
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.id]);
    }
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
    project.wait(what, |views| {
        let nodes = live(views);
        if nodes.len() != n || nodes.iter().any(|v| v.ip.is_none()) {
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

// ---------------------------------------------------------------------------
// The nemesis: faults put into containers' network namespaces from the host

/// Firewall rules in containers' network namespaces (`nsenter -t PID -n
/// iptables`), each removed by [`Nemesis::heal`] and on drop, also when a
/// test panics. A container that is gone takes its rules with it.
struct Nemesis {
    /// (the container's PID, the rule as `iptables -I` takes it).
    rules: Vec<(String, Vec<String>)>,
}

impl Nemesis {
    fn new() -> Nemesis {
        Nemesis { rules: Vec::new() }
    }

    fn pid(view: &View) -> String {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &view.id]);
        let pid = pid.trim().to_string();
        assert!(pid != "0", "{} is not running", view.container);
        pid
    }

    fn iptables(pid: &str, action: &str, rule: &[String]) -> Result<String, String> {
        let mut args = vec!["-t", pid, "-n", "iptables", action];
        args.extend(rule.iter().map(String::as_str));
        run("nsenter", &args)
    }

    /// Adds `rule` in `view`'s namespace.
    fn add(&mut self, view: &View, rule: &[&str]) {
        let pid = Nemesis::pid(view);
        let rule: Vec<String> = rule.iter().map(|r| r.to_string()).collect();
        if let Err(err) = Nemesis::iptables(&pid, "-I", &rule) {
            panic!("cannot add a rule to {}: {err}", view.container);
        }
        self.rules.push((pid, rule));
    }

    /// `view` hears nothing from `ip` (a one-way cut: what it sends still
    /// arrives, but over TCP nothing gets through for long).
    fn deafen(&mut self, view: &View, ip: &str) {
        self.add(view, &["INPUT", "-s", ip, "-j", "DROP"]);
    }

    /// Nothing passes between `view` and `ip`, either way.
    fn cut(&mut self, view: &View, ip: &str) {
        self.deafen(view, ip);
        self.add(view, &["OUTPUT", "-d", ip, "-j", "DROP"]);
    }

    /// Every node of `a` is cut from every node of `b`.
    fn partition(&mut self, project: &Project, a: &[&View], b: &[&View]) {
        for x in a {
            for y in b {
                self.cut(x, &project.ip(y));
            }
        }
    }

    /// `view` loses `percent` of the packets it receives, at random.
    fn lossy(&mut self, view: &View, percent: u32) {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let rule = [
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ];
        self.add(view, &rule);
    }

    /// Packets the random-loss rules in `view`'s namespace dropped so far.
    fn lost(&self, view: &View) -> u64 {
        let pid = Nemesis::pid(view);
        let listing = ["INPUT", "-v", "-x", "-n"].map(String::from);
        let listed = Nemesis::iptables(&pid, "-L", &listing).unwrap_or_else(|e| panic!("{e}"));
        listed
            .lines()
            .filter(|line| line.contains("DROP") && line.contains("statistic"))
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Removes every rule.
    fn heal(&mut self) {
        for (pid, rule) in self.rules.drain(..).rev() {
            // A container that died took its namespace, and the rule, along.
            let _ = Nemesis::iptables(&pid, "-D", &rule);
        }
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        self.heal();
    }
}

/// Whether `nsenter` and `iptables` can reach a container's network
/// namespace from here (root on the Docker host).
fn nemesis_available() -> Result<(), String> {
    run("nsenter", &["--version"])?;
    run("iptables", &["--version"])?;
    Ok(())
}

/// What must hold at every moment, with `quorum` members needed: no node is
/// ready, or names a sentry, while its own ring is below quorum.
fn below_quorum_serves(views: &[View], quorum: usize) -> Option<String> {
    live(views).iter().find_map(|v| {
        let members = v.members().len();
        if members >= quorum {
            None
        } else if v.is_ready() {
            Some(format!("{} is ready with {members} member(s)", v.container))
        } else if v.sentry().flatten().is_some() {
            Some(format!(
                "{} names a sentry with {members} member(s)",
                v.container
            ))
        } else {
            None
        }
    })
}

/// What must hold once a fault or a heal has settled: the above, and the
/// ready nodes name one sentry. (While views change, a node that has not
/// noticed the fault yet may still name the old one.)
fn split_brain(views: &[View], quorum: usize) -> Option<String> {
    below_quorum_serves(views, quorum).or_else(|| {
        let nodes = live(views);
        let ready = nodes.iter().filter(|v| v.is_ready());
        let sentries: BTreeSet<&str> = ready.filter_map(|v| v.sentry().flatten()).collect();
        (sentries.len() > 1).then(|| format!("the ready nodes name {sentries:?}"))
    })
}

// ---------------------------------------------------------------------------
// Scenarios

/// (a) The seed's scenario: `--scale cloister_test=3` assembles one cluster.
#[test]
fn three_containers_assemble() {
    if !docker_ready("assemble") {
        return;
    }
    let project = Project::new("assemble", 0, 3);
    project.scale(3);
    let views = wait_all_agree(&project, 3, "three containers ready on one ring");

    for v in &views {
        let ip = project.ip(v);
        assert!(
            ip.starts_with(&project.subnet),
            "{} has IP {ip}, outside the project's subnet",
            v.container
        );
        assert_eq!(v.node(), Some(name_of(&ip).as_str()), "{}", v.container);
        assert_eq!(v.members().len(), 3);
        let ready = v.became(0, "ready").expect("ready was seen");
        let started = v
            .after(0, "app_started")
            .next()
            .and_then(|e| e["ts"].as_i64());
        assert!(
            started.is_some_and(|s| s >= ready),
            "{}: app_started ({started:?}) must follow ready ({ready})",
            v.container
        );
    }
    let last_start = views.iter().filter_map(|v| v.started_ms).max();
    let all_ready = views.iter().filter_map(|v| v.became(0, "ready")).max();
    if let (Some(start), Some(ready)) = (last_start, all_ready) {
        measure(
            "3 containers: last container start -> all ready",
            ready - start,
        );
    }
}

/// (b) Scaling to 5 adds members everywhere; back to 3 removes them.
#[test]
fn scale_up_and_down() {
    if !docker_ready("scale") {
        return;
    }
    let project = Project::new("scale", 1, 3);
    project.scale(3);
    let three = wait_all_agree(&project, 3, "three containers ready on one ring");

    project.scale(5);
    let five = wait_all_agree(&project, 5, "five containers ready on one ring");
    let old: BTreeSet<&str> = three.iter().map(|v| v.id.as_str()).collect();
    for v in five.iter().filter(|v| old.contains(v.id.as_str())) {
        assert!(
            v.after(0, "state_changed").all(|e| e["to"] != "rehashing"),
            "{} left ready while the cluster grew",
            v.container
        );
    }

    project.scale(3);
    let after = wait_all_agree(&project, 3, "three containers left, on one ring of three");
    let kept: BTreeSet<&str> = after.iter().map(|v| v.id.as_str()).collect();
    let removed: Vec<String> = five
        .iter()
        .filter(|v| !kept.contains(v.id.as_str()))
        .map(|v| name_of(&project.ip(v)))
        .collect();
    assert_eq!(removed.len(), 2, "two containers were removed");
    for v in &after {
        for gone in &removed {
            assert!(
                !v.members().contains(gone),
                "{gone} still in {}'s ring",
                v.container
            );
        }
    }
}

/// (c) A killed container is seen as crashed; a paused one as unresponsive,
/// and it rejoins once unpaused.
#[test]
fn kill_then_pause() {
    if !docker_ready("kill") {
        return;
    }
    let project = Project::new("kill", 2, 2);
    project.scale(3);
    let views = wait_all_agree(&project, 3, "three containers ready on one ring");

    // kill
    let victim = views[0].clone();
    let victim_name = name_of(&project.ip(&victim));
    let mark = marks(&views);
    docker(&["kill", &victim.id]);
    project.wait(&format!("the others see {victim_name} crash"), |views| {
        let others: Vec<&View> = views.iter().filter(|v| v.id != victim.id).collect();
        others
            .iter()
            .all(|v| {
                v.saw_down(mark_of(&mark, v), &victim_name, "crashed")
                    .is_some()
            })
            .then_some(())
    });
    project.wait("the two survivors ready on a ring of two", |views| {
        let nodes = live(views);
        let names = nodes
            .iter()
            .filter_map(|v| v.ip.as_deref())
            .map(name_of)
            .collect();
        (nodes.len() == 2).then(|| agreed(&nodes, &names)).flatten()
    });

    // bring it back (a new process, maybe a new IP)
    docker(&["start", &victim.id]);
    let views = wait_all_agree(&project, 3, "the killed container back on a ring of three");

    // pause
    let frozen = views[1].clone();
    let frozen_name = name_of(&project.ip(&frozen));
    let mark = marks(&views);
    let paused_at = now_ms();
    docker(&["pause", &frozen.id]);
    let detected = project.wait(
        &format!("the others see {frozen_name} unresponsive"),
        |views| {
            let others: Vec<&View> = views.iter().filter(|v| v.id != frozen.id).collect();
            others
                .iter()
                .map(|v| v.saw_down(mark_of(&mark, v), &frozen_name, "unresponsive"))
                .collect::<Option<Vec<i64>>>()
        },
    );
    if let Some(last) = detected.iter().max() {
        measure(
            "docker pause -> node_down unresponsive on every other node",
            last - paused_at,
        );
    }

    docker(&["unpause", &frozen.id]);
    let rejoined = wait_all_agree(&project, 3, "the unpaused container rejoins, three agree");
    assert!(rejoined
        .iter()
        .any(|v| v.node() == Some(frozen_name.as_str())));
}

/// (d) Two of five cut off the network: the majority stays ready, the two
/// fall to rehashing; reconnected, all five converge.
#[test]
fn partition_heals() {
    if !docker_ready("partition") {
        return;
    }
    let project = Project::new("partition", 3, 3);
    project.scale(5);
    let views = wait_all_agree(&project, 5, "five containers ready on one ring");
    let network = project.network();
    let cut: Vec<(View, String)> = views[3..]
        .iter()
        .map(|v| (v.clone(), project.ip(v)))
        .collect();
    let cut_ids: BTreeSet<&str> = cut.iter().map(|(v, _)| v.id.as_str()).collect();
    let majority: BTreeSet<String> = views[..3].iter().map(|v| name_of(&project.ip(v))).collect();
    let mark = marks(&views);

    for (v, _) in &cut {
        docker(&["network", "disconnect", &network, &v.id]);
    }
    project.wait(
        "three ready on a ring of three, the two cut off rehashing",
        |views| {
            let (cut_off, kept): (Vec<&View>, Vec<&View>) =
                views.iter().partition(|v| cut_ids.contains(v.id.as_str()));
            let majority_ok = agreed(&kept, &majority).is_some();
            let minority_ok = cut_off
                .iter()
                .all(|v| v.became(mark_of(&mark, v), "rehashing").is_some() && !v.is_ready());
            (majority_ok && minority_ok).then_some(())
        },
    );

    for (v, ip) in &cut {
        docker(&[
            "network", "connect", "--ip", ip, "--alias", ALIAS, &network, &v.id,
        ]);
    }
    let healed = wait_all_agree(&project, 5, "all five converge on one ring again");
    for (v, ip) in &cut {
        let now = healed
            .iter()
            .find(|h| h.id == v.id)
            .expect("the cut containers are still there");
        assert_eq!(
            now.ip.as_deref(),
            Some(ip.as_str()),
            "{} came back with its IP",
            v.container
        );
    }
}

/// (e) A container removed and recreated comes back under a new name (its new
/// IP); the old name leaves every ring.
#[test]
fn recreated_with_new_ip() {
    if !docker_ready("recreate") {
        return;
    }
    let project = Project::new("recreate", 4, 3);
    project.scale(3);
    let views = wait_all_agree(&project, 3, "three containers ready on one ring");
    let victim = views[0].clone();
    let old_name = name_of(&project.ip(&victim));
    let mark = marks(&views);

    docker(&["rm", "-f", &victim.id]);
    // Docker hands out the lowest free address, so the old one would come
    // back: hold it (as a new pod's IP differs from the old one's).
    let holder = Placeholder::hold(&project, &project.ip(&victim));
    project.scale(3);
    let views = wait_all_agree(&project, 3, "the recreated container on a ring of three");
    let fresh = views
        .iter()
        .find(|v| !mark.contains_key(&v.id))
        .expect("a new container was created");
    let new_name = name_of(&project.ip(fresh));
    drop(holder);
    assert_ne!(
        new_name, old_name,
        "the recreated container got the old IP back: this scenario needs a new one"
    );
    for v in &views {
        assert!(
            !v.members().contains(&old_name),
            "{old_name} still in {}'s ring",
            v.container
        );
        assert!(v.members().contains(&new_name));
    }
    let joined = views
        .iter()
        .filter(|v| v.id != fresh.id)
        .map(|v| v.ring_with(mark_of(&mark, v), &new_name))
        .collect::<Option<Vec<i64>>>();
    if let (Some(start), Some(joined)) = (fresh.started_ms, joined) {
        let ready = fresh.became(0, "ready").unwrap_or(start);
        let everywhere = joined.into_iter().chain([ready]).max().unwrap_or(start);
        measure(
            "recreated container start -> in every ring and ready",
            everywhere - start,
        );
    }
}

/// (f) With consensus 3, two containers hold their application until a third
/// one starts.
#[test]
fn consensus_holds_two() {
    if !docker_ready("consensus") {
        return;
    }
    let project = Project::new("consensus", 5, 3);
    project.scale(2);
    project.wait("two containers see each other", |views| {
        let nodes = live(views);
        (nodes.len() == 2 && nodes.iter().all(|v| v.members().len() == 2)).then_some(())
    });
    project.never(HOLD, "a node started below consensus", |views| {
        views.iter().find_map(|v| {
            if v.is_ready() {
                Some(format!("{} is ready", v.container))
            } else if v.after(0, "app_started").next().is_some() {
                Some(format!("{} printed app_started", v.container))
            } else {
                None
            }
        })
    });

    project.scale(3);
    let views = wait_all_agree(&project, 3, "three containers ready once the third starts");
    for v in &views {
        assert!(
            v.after(0, "app_started").next().is_some(),
            "{} never started its application",
            v.container
        );
    }
}

/// (g) The Elixir original's usual static list: one name on several hosts
/// (`shop@IP1:4000,shop@IP2:4000,shop@IP3:4000`), the same environment in
/// every container and no node name. Each of the three containers at those
/// fixed IPs must find its own entry by its own address and the three form
/// one ring. A fourth container, at an IP the list does not name, must
/// refuse to start (exit 2) and say which entries it saw and what to set.
/// A fifth, not listed either but with `CLOISTER_ADVERTISED_HOST` set to
/// its IP, joins the listed nodes as a seed list.
#[test]
fn one_name_on_several_hosts() {
    if !docker_ready("one_name") {
        return;
    }
    let subnet = format!("172.29.{}", std::process::id() % 250);
    let ip = |host: u8| format!("{subnet}.{host}");
    let listed = [ip(11), ip(12), ip(13)];
    let sentry = listed
        .iter()
        .map(|ip| format!("shop@{ip}:4000"))
        .collect::<Vec<_>>()
        .join(",");
    let service = |name: &str, ip: &str, extra: &str| {
        format!(
            "  {name}:\n    image: {IMAGE}\n    networks:\n      local:\n        ipv4_address: {ip}\n\
             \x20   environment:\n\
             \x20     - CLOISTER_APP=shop\n\
             \x20     - CLOISTER_SENTRY={sentry}\n\
             \x20     - CLOISTER_CONSENSUS=3\n\
             \x20     - CLOISTER_HEARTBEAT_INTERVAL=100ms\n\
             \x20     - CLOISTER_HEARTBEAT_TIMEOUT=600ms\n\
             \x20     - CLOISTER_DIAL_TIMEOUT=500ms\n\
             \x20     - CLOISTER_DIAL_BACKOFF_MAX=500ms\n\
             {extra}"
        )
    };
    let seed_ip = ip(21);
    let seed_env = format!("      - CLOISTER_ADVERTISED_HOST={seed_ip}\n");
    let compose = format!(
        "# generated by examples/tests/docker.rs: one name on several hosts\n\
         version: \"3.8\"\n\
         services:\n{}{}{}{}{}\
         networks:\n  local:\n    driver: bridge\n    ipam:\n      config:\n        - subnet: {subnet}.0/24\n",
        service("n1", &listed[0], ""),
        service("n2", &listed[1], ""),
        service("n3", &listed[2], ""),
        service("stray", &ip(20), ""),
        service("seed", &seed_ip, &seed_env),
    );
    let project = Project::standalone("one_name", subnet.clone(), &compose);
    if let Err(err) = project.compose(&["up", "-d", "n1", "n2", "n3", "stray"]) {
        panic!("{err}\n{}", project.report(&project.views()));
    }

    // The three listed containers: each named after its own entry, one ring.
    let three: BTreeSet<String> = listed.iter().map(|ip| format!("shop@{ip}")).collect();
    let views = project.wait("the three listed containers ready on one ring", |views| {
        let nodes: Vec<&View> = views
            .iter()
            .filter(|v| v.service.starts_with('n') && v.running)
            .collect();
        (nodes.len() == 3 && agreed(&nodes, &three).is_some()).then(|| views.to_vec())
    });
    for v in views.iter().filter(|v| v.service.starts_with('n')) {
        let ip = project.ip(v);
        assert_eq!(
            v.node(),
            Some(format!("shop@{ip}").as_str()),
            "{}",
            v.container
        );
    }

    // The stray container: refused at start, with the entries and the fix.
    let stray = project.wait("the stray container exits", |views| {
        views
            .iter()
            .find(|v| v.service == "stray" && !v.running && v.exit_code.is_some())
            .cloned()
    });
    let said = stray.stderr.join("\n");
    assert_eq!(
        stray.exit_code,
        Some(2),
        "stray's exit code; it said:\n{said}"
    );
    for entry in sentry.split(',') {
        assert!(said.contains(entry), "stray does not name {entry}:\n{said}");
    }
    assert!(
        said.contains("CLOISTER_ADVERTISED_HOST"),
        "stray does not say what to set:\n{said}"
    );
    assert!(
        !stray.events.iter().any(|e| e["node"].is_string()),
        "stray started a node: {:?}",
        stray.events
    );

    // The seed container: not listed, its host set, it joins the three.
    if let Err(err) = project.compose(&["up", "-d", "--no-recreate", "seed"]) {
        panic!("{err}\n{}", project.report(&project.views()));
    }
    let mut four = three.clone();
    four.insert(format!("shop@{seed_ip}"));
    project.wait("the seed joins the three on one ring of four", |views| {
        let nodes: Vec<&View> = views
            .iter()
            .filter(|v| v.service != "stray" && v.running)
            .collect();
        (nodes.len() == 4 && agreed(&nodes, &four).is_some()).then_some(())
    });
}

/// (h) With `quorum = "majority"`, faults injected with iptables into the
/// containers' network namespaces: a 3|2 split, then 1|4, then a node that
/// hears nobody (a one-way cut), then 30% packet loss on one node. After each fault has settled, the minority is not
/// ready and names no sentry while the majority keeps one ring and one
/// sentry; after each heal all five agree on one ring and one sentry. The
/// invariants are checked on every poll, not only at the end.
#[test]
fn quorum_under_partitions() {
    if !docker_ready("quorum") {
        return;
    }
    if let Err(why) = nemesis_available() {
        assert!(!required(), "the nemesis needs nsenter and iptables: {why}");
        eprintln!("SKIPPED docker scenario `quorum`: {why}");
        return;
    }
    const QUORUM: usize = 3;
    let project = Project::with_env("quorum", 6, 1, &["CLOISTER_QUORUM=majority"]);
    project.scale(5);
    let views = wait_all_agree(&project, 5, "five containers ready on one ring");
    let mut nemesis = Nemesis::new();
    let always = |views: &[View]| below_quorum_serves(views, QUORUM);
    let settled = |views: &[View]| split_brain(views, QUORUM);

    for minority in [&[3usize, 4][..], &[0][..]] {
        let cut: Vec<&View> = minority.iter().map(|&i| &views[i]).collect();
        let kept: Vec<&View> = (0..views.len())
            .filter(|i| !minority.contains(i))
            .map(|i| &views[i])
            .collect();
        let cut_ids: BTreeSet<&str> = cut.iter().map(|v| v.id.as_str()).collect();
        let majority: BTreeSet<String> = kept.iter().map(|v| name_of(&project.ip(v))).collect();
        let mark = marks(&project.views());
        let cut_at = now_ms();
        nemesis.partition(&project, &cut, &kept);
        let what = format!(
            "{} cut off: the rest ready with one sentry, the cut-off not ready",
            cut.len()
        );
        let split: Vec<View> = project.wait(&what, |views| {
            if let Some(broken) = always(views) {
                panic!("{broken}\n{}", project.report(views));
            }
            let (off, on): (Vec<&View>, Vec<&View>) = live(views)
                .into_iter()
                .partition(|v| cut_ids.contains(v.id.as_str()));
            let majority_ok = agreed(&on, &majority).is_some()
                && on
                    .iter()
                    .all(|v| v.sentry().flatten().is_some_and(|s| majority.contains(s)));
            let minority_ok = off
                .iter()
                .all(|v| v.state() == Some("no_quorum") && v.sentry() == Some(None));
            (majority_ok && minority_ok).then_some(off.iter().map(|v| (*v).clone()).collect())
        });
        let left_ready = split
            .iter()
            .filter_map(|v: &View| v.became(mark_of(&mark, v), "no_quorum"))
            .max();
        let n = cut.len();
        measure(
            &format!("{n} of 5 cut off -> the last of them no_quorum"),
            left_ready.unwrap_or(cut_at) - cut_at,
        );
        project.never(
            Duration::from_secs(2),
            "split brain during the partition",
            settled,
        );
        let heal_at = now_ms();
        nemesis.heal();
        let healed = wait_all_agree(&project, 5, "all five on one ring after healing");
        let last_ring = healed.iter().filter_map(|v| v.ring()?["ts"].as_i64()).max();
        measure(
            &format!("heal of {n} cut off -> one ring on all five"),
            last_ring.unwrap_or(heal_at) - heal_at,
        );
        project.never(Duration::from_secs(1), "split brain after healing", settled);
    }

    // One node hears nobody: every packet into it is dropped, a one-way cut.
    // It leaves every ring and goes no_quorum, and nobody else is evicted.
    // (Over TCP the cut soon blocks its sends too: its segments go
    // unacknowledged and only retransmissions leave. So its reports of
    // everyone as silent rarely arrive; the simulator, whose one-way cuts
    // stay one-way, is where that path is tested.)
    let views = project.views();
    let nodes = live(&views);
    let (deaf, others) = (nodes[4].clone(), &nodes[..4]);
    let deaf_name = name_of(&project.ip(&deaf));
    let mark = marks(&views);
    for other in others {
        nemesis.deafen(&deaf, &project.ip(other));
    }
    let rest: BTreeSet<String> = others.iter().map(|v| name_of(&project.ip(v))).collect();
    project.wait("the deaf node out of every ring and no_quorum", |views| {
        if let Some(broken) = always(views) {
            panic!("{broken}\n{}", project.report(views));
        }
        let on: Vec<&View> = live(views)
            .into_iter()
            .filter(|v| v.id != deaf.id)
            .collect();
        let off = views.iter().find(|v| v.id == deaf.id)?;
        (agreed(&on, &rest).is_some() && off.state() == Some("no_quorum")).then_some(())
    });
    for v in project.views().iter().filter(|v| v.id != deaf.id) {
        let evicted: Vec<&Value> = v
            .after(mark_of(&mark, v), "node_down")
            .filter(|e| e["peer"] != deaf_name.as_str())
            .collect();
        assert!(evicted.is_empty(), "{} dropped {evicted:?}", v.container);
    }
    nemesis.heal();
    wait_all_agree(
        &project,
        5,
        "all five on one ring after the deaf node hears again",
    );

    // 30% of what one node receives is lost: it may flap, but nothing
    // below quorum serves.
    let views = project.views();
    let lossy = live(&views)[2].clone();
    nemesis.lossy(&lossy, 30);
    project.never(
        Duration::from_secs(8),
        "a node below quorum serves under loss",
        always,
    );
    let lost = nemesis.lost(&lossy);
    assert!(
        lost > 0,
        "the loss rule on {} dropped nothing",
        lossy.container
    );
    println!("MEASURE packets lost by {} in 8 s: {lost}", lossy.container);
    nemesis.heal();
    let healed = wait_all_agree(&project, 5, "all five on one ring after the loss ends");
    let sentries: BTreeSet<Option<&str>> = healed.iter().map(|v| v.sentry().flatten()).collect();
    assert_eq!(sentries.len(), 1, "{sentries:?}");
}
