//! `LocalCluster`: a process harness that runs `cloister-node` processes on
//! 127.0.0.1 and records what each one prints.
//!
//! Every node gets a free TCP port and the same static sentry list of all the
//! nodes (`node1@127.0.0.1:{port}` .. `nodeN@127.0.0.1:{port}`; node `i` is
//! 0-based, so `node_name(0)` is `node1@127.0.0.1`). A thread per process reads
//! its stdout, one JSON object per line, into an append-only event log; the
//! log starts afresh at every (re)start of the node. Stderr goes to a file per
//! node in a temporary directory, which is deleted when the cluster is dropped
//! unless a wait failed or the thread is panicking (its path is printed then).
//! Set `CLOISTER_HARNESS_VERBOSE=1` to see stderr and every event live instead.
//!
//! Everything here is synchronous (std threads and polling), so plain
//! `#[test]`s can drive it. Every wait takes a timeout and, when it runs out,
//! returns an error that shows each node's last events. Dropping the cluster kills (SIGKILL) and
//! reaps every process it started, also while a test unwinds from a panic.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use serde_json::{json, Value};

/// A timeout long enough for anything a healthy cluster does on loopback,
/// even on a loaded two-core machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often waits look again: short next to any timer of `--preset tests`.
const POLL: Duration = Duration::from_millis(10);
const BINARY: &str = "cloister-node";
const HOST: &str = "127.0.0.1";
const VERBOSE_VAR: &str = "CLOISTER_HARNESS_VERBOSE";

/// Builds a [`LocalCluster`]; see [`LocalCluster::builder`].
#[derive(Debug, Clone)]
pub struct LocalClusterBuilder {
    size: usize,
    consensus: usize,
    binary: Option<PathBuf>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl LocalClusterBuilder {
    /// `--consensus` for every node. Default: the cluster size.
    pub fn consensus(mut self, consensus: usize) -> Self {
        self.consensus = consensus;
        self
    }

    /// The `cloister-node` executable. Default: [`LocalCluster::find_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Flags appended to every node's command line (`--key-sample 10000`).
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for every node. Inherited `CLOISTER_*`
    /// variables are removed, so only these reach the nodes.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Picks the ports and the log directory without starting any process:
    /// start nodes one by one with [`LocalCluster::start_node`].
    pub fn build(self) -> io::Result<LocalCluster> {
        let binary = match self.binary.clone() {
            Some(path) => path,
            None => LocalCluster::find_binary().ok_or_else(|| {
                let why = "cloister-node not found near the current executable: \
                           run `cargo build -p cloister-examples --bin cloister-node`";
                io::Error::new(io::ErrorKind::NotFound, why)
            })?,
        };
        let ports = free_ports(self.size)?;
        let sentry = (0..self.size)
            .map(|i| format!("{}:{}", name_of(i), ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let serial = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let log_dir =
            std::env::temp_dir().join(format!("cloister-cluster-{}-{serial}", std::process::id()));
        fs::create_dir_all(&log_dir)?;
        let nodes = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| Node {
                name: name_of(i),
                port,
                args: Vec::new(),
                process: None,
                exit: None,
                log: Arc::default(),
            })
            .collect();
        Ok(LocalCluster {
            setup: LocalClusterBuilder {
                binary: Some(binary),
                ..self
            },
            sentry,
            nodes,
            log_dir,
            verbose: std::env::var_os(VERBOSE_VAR).is_some_and(|v| !v.is_empty()),
            keep_logs: Mutex::new(false),
        })
    }

    /// Builds the cluster and starts every node, back to back.
    pub fn start(self) -> io::Result<LocalCluster> {
        let mut cluster = self.build()?;
        for i in 0..cluster.size() {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }
}

/// `cloister-node` processes on 127.0.0.1 and what they printed.
#[derive(Debug)]
pub struct LocalCluster {
    /// What the cluster was built with, `binary` resolved.
    setup: LocalClusterBuilder,
    /// All the nodes as `name@host:port`, given to each one as `--sentry`.
    sentry: String,
    nodes: Vec<Node>,
    log_dir: PathBuf,
    verbose: bool,
    /// Set by a failed wait: the stderr logs are then kept for a post-mortem.
    keep_logs: Mutex<bool>,
}

#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    /// The per-node flags of the last start, reused by `restart`.
    args: Vec<String>,
    process: Option<Running>,
    /// How the last process ended, when the harness saw it end.
    exit: Option<ExitStatus>,
    /// The events of the current (or last) process: a fresh log per start.
    log: Arc<Mutex<Vec<Value>>>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    reader: Option<JoinHandle<()>>,
}

impl LocalCluster {
    /// A cluster of `size` nodes; see [`LocalClusterBuilder`].
    pub fn builder(size: usize) -> LocalClusterBuilder {
        LocalClusterBuilder {
            size,
            consensus: size,
            binary: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Looks for `cloister-node` next to the current executable and in
    /// `target/{debug,release}` of each directory above it. Tests live in
    /// `target/debug/deps`, examples in `target/debug`: both find the node
    /// built with the same profile.
    pub fn find_binary() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let dirs = exe.ancestors().skip(1);
        let near = dirs.clone().map(|dir| dir.join(BINARY));
        let below = dirs.flat_map(|dir| {
            ["debug", "release"].map(|profile| dir.join("target").join(profile).join(BINARY))
        });
        near.chain(below).find(|path| path.is_file())
    }

    /// Builds `cloister-node` with cargo (`$CARGO`, else `cargo` on the PATH)
    /// in this workspace, with the profile of the running executable, and
    /// returns the path cargo reports for it.
    pub fn build_binary() -> io::Result<PathBuf> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "--message-format=json-render-diagnostics",
            ])
            .args(["-p", "cloister-examples", "--bin", BINARY]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let output = command.stderr(Stdio::inherit()).output()?;
        if !output.status.success() {
            let why = format!("cargo build of {BINARY} failed: {}", output.status);
            return Err(io::Error::other(why));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let executable = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| message["target"]["name"] == BINARY)
            .find_map(|message| message["executable"].as_str().map(PathBuf::from));
        executable.ok_or_else(|| io::Error::other(format!("cargo reported no {BINARY} executable")))
    }

    /// How many nodes the cluster has (started or not).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s ractor_cluster name, `node{i+1}@127.0.0.1`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s listening port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Where the stderr logs go (`node{i+1}.stderr`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The file node `i`'s stderr goes to (unless verbose), every start of
    /// the node appended after a `=== harness` line.
    fn stderr_path(&self, i: usize) -> PathBuf {
        let name = &self.nodes[i].name;
        let node_name = name.split('@').next().unwrap_or(name);
        self.log_dir.join(format!("{node_name}.stderr"))
    }

    /// Starts node `i` with the cluster's flags.
    pub fn start_node(&mut self, i: usize) -> io::Result<()> {
        self.start_node_with(i, &[])
    }

    /// Starts node `i` with the cluster's flags followed by `args` (a later
    /// flag wins, so `--cookie other` overrides); `restart` reuses them.
    pub fn start_node_with(&mut self, i: usize, args: &[&str]) -> io::Result<()> {
        if self.nodes[i].process.is_some() {
            let why = format!("{} is already running", self.nodes[i].name);
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, why));
        }
        self.nodes[i].args = args.iter().map(|arg| arg.to_string()).collect();
        let node = &self.nodes[i];
        let node_name = node.name.split('@').next().unwrap_or(&node.name);
        let setup = &self.setup;
        let mut command = Command::new(setup.binary.as_deref().unwrap_or(Path::new(BINARY)));
        command
            .args(["--node-name", node_name, "--advertised-host", HOST])
            .args(["--listen-port", &node.port.to_string()])
            .args(["--sentry", &self.sentry])
            .args(["--consensus", &setup.consensus.to_string()])
            .args(["--preset", "tests"])
            .args(&setup.extra_args)
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CLOISTER_") {
                command.env_remove(key);
            }
        }
        command.envs(setup.env.iter().map(|(k, v)| (k, v)));
        if self.verbose {
            command.stderr(Stdio::inherit());
        } else {
            let path = self.stderr_path(i);
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(file, "=== harness: starting {} ===", node.name)?;
            command.stderr(file);
        }
        let mut child = command.spawn().map_err(|err| {
            let why = format!("starting {:?}: {err}", command.get_program());
            io::Error::new(err.kind(), why)
        })?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stdout.take().map(|stdout| {
            let (log, echo) = (Arc::clone(&log), self.verbose.then(|| node.name.clone()));
            thread::spawn(move || read_events(stdout, &log, echo))
        });
        let node = &mut self.nodes[i];
        node.log = log;
        node.exit = None;
        node.process = Some(Running { child, reader });
        Ok(())
    }

    /// Kills node `i` with SIGKILL and reaps it. Nothing happens if it is not
    /// running.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        let node = &mut self.nodes[i];
        if let Some(mut running) = node.process.take() {
            running.child.kill()?;
            node.exit = Some(running.child.wait()?);
            running.join();
        }
        Ok(())
    }

    /// Freezes node `i` with SIGSTOP: its sockets stay open but it answers
    /// nothing, like a hung machine.
    pub fn pause(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::STOP)
    }

    /// Thaws node `i` with SIGCONT.
    pub fn resume(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::CONT)
    }

    /// Kills node `i` if it runs, then starts it again on the same port with
    /// the same flags: a new incarnation of the same node.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        let args = self.nodes[i].args.clone();
        self.start_node_with(i, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Asks node `i` to leave with SIGTERM and waits up to `timeout` for it to
    /// exit; past that it is killed and the error says so.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, String> {
        self.signal(i, Signal::TERM)
            .map_err(|err| format!("SIGTERM to {}: {err}", self.nodes[i].name))?;
        self.wait_exit(i, timeout).inspect_err(|_| {
            let _ = self.kill(i);
        })
    }

    /// Waits up to `timeout` for node `i` to exit by itself and returns its
    /// status. Its last lines are all in [`events`](Self::events) afterwards.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        while self.is_running(i) {
            if Instant::now() >= deadline {
                let what = format!("{} to exit", self.nodes[i].name);
                return Err(self.timed_out(&what, timeout));
            }
            thread::sleep(POLL);
        }
        let node = &self.nodes[i];
        let lost = || format!("{} never started or lost its exit status", node.name);
        node.exit.ok_or_else(lost)
    }

    /// Whether node `i` has a process that has not exited (a paused one
    /// runs). A process found dead is reaped, and its output read to the end.
    pub fn is_running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let Some(running) = node.process.as_mut() else {
            return false;
        };
        match running.child.try_wait() {
            Ok(None) => true,
            exited => {
                node.exit = exited.ok().flatten();
                if let Some(running) = node.process.take() {
                    running.join();
                }
                false
            }
        }
    }

    /// Node `i`'s process id, while the harness holds a process for it.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i]
            .process
            .as_ref()
            .map(|running| running.child.id())
    }

    /// The process ids of every node that has one.
    pub fn pids(&self) -> Vec<u32> {
        (0..self.size()).filter_map(|i| self.pid(i)).collect()
    }

    /// A copy of the events node `i`'s current (or last) process printed.
    pub fn events(&self, i: usize) -> Vec<Value> {
        lock(&self.nodes[i].log).clone()
    }

    /// How many events node `i`'s current process printed so far: a mark to
    /// look only at what comes after it (`&events[mark..]`).
    pub fn event_count(&self, i: usize) -> usize {
        lock(&self.nodes[i].log).len()
    }

    /// Node `i`'s last state (`"ready"`, ...), from `snapshot` or `state_changed`.
    pub fn state(&self, i: usize) -> Option<String> {
        last_state(&lock(&self.nodes[i].log))
    }

    /// Node `i`'s members at its last membership change, sorted.
    pub fn members(&self, i: usize) -> Option<Vec<String>> {
        last_members(&lock(&self.nodes[i].log))
    }

    /// Node `i`'s ring digest at its last membership change.
    pub fn digest(&self, i: usize) -> Option<String> {
        last_digest(&lock(&self.nodes[i].log))
    }

    /// Waits up to `timeout` for `condition` to hold on node `i`'s events.
    pub fn wait_for<F>(&self, i: usize, timeout: Duration, mut condition: F) -> Result<(), String>
    where
        F: FnMut(&[Value]) -> bool,
    {
        let what = format!("a condition on {}'s events", self.nodes[i].name);
        self.wait_until(&what, timeout, |cluster| {
            condition(&lock(&cluster.nodes[i].log))
        })
    }

    /// Waits up to `timeout` for `condition` to hold on the whole cluster;
    /// `what` names the condition in the error.
    pub fn wait_until<F>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> Result<(), String>
    where
        F: FnMut(&LocalCluster) -> bool,
    {
        let deadline = Instant::now() + timeout;
        while !condition(self) {
            if Instant::now() >= deadline {
                return Err(self.timed_out(what, timeout));
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    /// Whether the `nodes` all are in `state` right now, with exactly
    /// themselves as members and one ring digest.
    pub fn agree(&self, nodes: &[usize], state: &str) -> bool {
        let expected: BTreeSet<&str> = nodes.iter().map(|&i| self.node_name(i)).collect();
        let digests: BTreeSet<_> = nodes.iter().map(|&i| self.digest(i)).collect();
        digests.len() == 1
            && digests.first().is_some_and(Option::is_some)
            && nodes.iter().all(|&i| {
                let members = self.members(i).unwrap_or_default();
                self.state(i).as_deref() == Some(state)
                    && members.len() == nodes.len()
                    && members.iter().map(String::as_str).collect::<BTreeSet<_>>() == expected
            })
    }

    /// Waits until [`agree`](Self::agree) holds.
    pub fn wait_agree(
        &self,
        nodes: &[usize],
        state: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let names: Vec<&str> = nodes.iter().map(|&i| self.node_name(i)).collect();
        let what = format!("{names:?} all {state} with one ring of exactly themselves");
        self.wait_until(&what, timeout, |cluster| cluster.agree(nodes, state))
    }

    /// [`wait_agree`](Self::wait_agree) on `"ready"`.
    pub fn wait_ready(&self, nodes: &[usize], timeout: Duration) -> Result<(), String> {
        self.wait_agree(nodes, "ready", timeout)
    }

    fn signal(&self, i: usize, signal: Signal) -> io::Result<()> {
        let node = &self.nodes[i];
        let running = node.process.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not running", node.name),
            )
        })?;
        Ok(kill_process(Pid::from_child(&running.child), signal)?)
    }

    /// The error of a wait that ran out: each node's status and last events.
    fn timed_out(&self, what: &str, timeout: Duration) -> String {
        *lock(&self.keep_logs) = true;
        let mut report = format!("timed out after {timeout:?} waiting for {what}");
        for node in &self.nodes {
            let status = match (&node.process, node.exit) {
                (Some(running), _) => format!("pid {}", running.child.id()),
                (None, Some(status)) => format!("exited, {status}"),
                (None, None) => "not running".to_string(),
            };
            report.push_str(&format!("\n  {} ({status}), last events:", node.name));
            let log = lock(&node.log);
            for event in &log[log.len().saturating_sub(6)..] {
                report.push_str(&format!("\n    {}", brief(event)));
            }
        }
        report.push_str(&format!("\n  stderr logs: {}", self.log_dir.display()));
        report
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut running) = node.process.take() {
                let _ = running.child.kill();
                let _ = running.child.wait();
                running.join();
            }
        }
        let failed = thread::panicking() || *lock(&self.keep_logs);
        if failed && !self.verbose {
            eprintln!("cloister-node logs kept in {}", self.log_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

impl Running {
    /// Waits for the reader to reach the end of the dead process's output.
    fn join(self) {
        if let Some(reader) = self.reader {
            let _ = reader.join();
        }
    }
}

/// Whether a process with this id exists (`kill(pid, 0)`); a zombie counts.
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    !matches!(test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

/// The last state in `events`: `to` of `state_changed`, `state` of `snapshot`.
pub fn last_state(events: &[Value]) -> Option<String> {
    events
        .iter()
        .rev()
        .find_map(|event| match event["event"].as_str() {
            Some("state_changed") => event["to"].as_str().map(str::to_string),
            Some("snapshot") => event["state"].as_str().map(str::to_string),
            _ => None,
        })
}

/// The members of the last event that carries them, sorted.
pub fn last_members(events: &[Value]) -> Option<Vec<String>> {
    let members = events
        .iter()
        .rev()
        .find_map(|event| event["members"].as_array())?;
    let mut names: Vec<String> = members
        .iter()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect();
    names.sort();
    Some(names)
}

/// The ring digest of the last event that carries members.
pub fn last_digest(events: &[Value]) -> Option<String> {
    let event = events
        .iter()
        .rev()
        .find(|event| event["members"].is_array())?;
    event["ring_digest"].as_str().map(str::to_string)
}

/// The last event of this kind (`"sessions"`, `"owners_digest"`, ...).
pub fn last_of<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().rev().find(|event| event["event"] == kind)
}

/// The events of this kind, in order.
pub fn all_of<'a>(events: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events.iter().filter(move |event| event["event"] == kind)
}

/// An event on one line without the fields every line has.
fn brief(event: &Value) -> String {
    let mut event = event.clone();
    if let Some(fields) = event.as_object_mut() {
        fields.remove("node");
        fields.remove("ts");
    }
    event.to_string()
}

fn name_of(i: usize) -> String {
    format!("node{}@{HOST}", i + 1)
}

/// Ports the OS calls free right now: all bound at once so they differ, then
/// released for the nodes to take.
fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((HOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

fn read_events(stdout: ChildStdout, log: &Mutex<Vec<Value>>, echo: Option<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(name) = &echo {
            eprintln!("[{name}] {line}");
        }
        let event = serde_json::from_str(&line)
            .unwrap_or_else(|_| json!({ "event": "unparsed", "line": line }));
        lock(log).push(event);
    }
}

/// A poisoned lock only means another thread panicked: the data is still an
/// event log, so go on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
