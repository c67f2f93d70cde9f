//! [`LocalCluster`]: N processes of a binary on 127.0.0.1, and what they print.
//!
//! Every node gets a free TCP port and the same static sentry list of all the
//! nodes (`node1@127.0.0.1:{port}` .. `nodeN@127.0.0.1:{port}`; node `i` is
//! 0-based, so `node_name(0)` is `node1@127.0.0.1`), passed with the rest of
//! its configuration as `CLOISTER_*` variables. A thread per process reads
//! its stdout, one JSON object per line, into an append-only event log; the
//! log starts afresh at every (re)start of the node. Stderr goes to a file per
//! node in a temporary directory, which is deleted when the cluster is dropped
//! unless a wait failed or the thread is panicking (its path is printed then).
//! Set `CLOISTER_HARNESS_VERBOSE=1` to see stderr and every event live instead.
//!
//! Everything here is synchronous (std threads and polling), so plain
//! `#[test]`s can drive it. Every wait takes a timeout and, when it runs out,
//! returns an error that shows each node's last events. Dropping the cluster
//! kills (SIGKILL) and reaps every process it started, also while a test
//! unwinds from a panic; a node that calls
//! [`exit_with_harness`](crate::harness::exit_with_harness) also exits when the test
//! process dies without unwinding, because its stdin closes.

use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use serde_json::{json, Value};

use crate::harness::lossy_lines;

mod builder;
mod observe;

use builder::harness_env;
pub use builder::{timer_env, LocalClusterBuilder};

/// A timeout long enough for anything a healthy cluster does on loopback
/// with the harness's timers, even on a loaded two-core machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often waits look again: short next to any timer of `Config::for_tests`.
const POLL: Duration = Duration::from_millis(10);
const HOST: &str = "127.0.0.1";
const VERBOSE_VAR: &str = "CLOISTER_HARNESS_VERBOSE";

/// Processes of one binary on 127.0.0.1, each a cluster node, and what
/// they printed. See [`crate::harness`] for what the binary must do.
///
/// ```no_run
/// use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
/// # // `CARGO_BIN_EXE_*` is set for integration tests only, not for this doctest.
/// # macro_rules! env { ($name:literal) => { "target/debug/my-node" } }
///
/// // In an integration test of the package that builds `my-node`.
/// let mut cluster = LocalCluster::builder(env!("CARGO_BIN_EXE_my-node"), 3).consensus(2).start()?;
/// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
/// cluster.kill(2)?;
/// cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LocalCluster {
    /// What the cluster was built with.
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
    /// Held open while the process runs: a node watching it exits when it
    /// closes (see `exit_with_harness`).
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
}

impl LocalCluster {
    /// A cluster of `size` nodes running `binary`; see [`LocalClusterBuilder`].
    /// In an integration test, `env!("CARGO_BIN_EXE_<name>")` names a binary
    /// of the same package, built by cargo before the test runs.
    ///
    /// # Examples
    ///
    /// In an integration test of the package that builds `my-node`, three of them, ready with any two.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # // `CARGO_BIN_EXE_*` is set for integration tests only, not for this doctest.
    /// # macro_rules! env { ($name:literal) => { "target/debug/my-node" } }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let builder = LocalCluster::builder(env!("CARGO_BIN_EXE_my-node"), 3);
    /// let cluster = builder.consensus(2).start()?;
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn builder(binary: impl Into<PathBuf>, size: usize) -> LocalClusterBuilder {
        LocalClusterBuilder {
            size,
            consensus: size,
            binary: binary.into(),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// How many nodes the cluster has (started or not).
    ///
    /// # Examples
    ///
    /// Wait until every node of the cluster, whatever its size, is ready.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let all: Vec<usize> = (0..cluster.size()).collect();
    /// cluster.wait_ready(&all, DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s ractor_cluster name, `node{i+1}@127.0.0.1`.
    ///
    /// # Examples
    ///
    /// Wait until node1 has seen node2 come up.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{all_of, LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let node2 = cluster.node_name(1);
    /// cluster.wait_for(0, DEFAULT_TIMEOUT, |events| {
    ///     all_of(events, "node_up").any(|up| up["peer"] == node2)
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s listening port.
    ///
    /// # Examples
    ///
    /// Open a raw TCP connection to node1's port, e.g. to send it garbage.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::Write;
    /// let mut stream = std::net::TcpStream::connect(("127.0.0.1", cluster.port(0)))?;
    /// stream.write_all(b"not a handshake")?;
    /// # Ok(()) }
    /// ```
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Where the stderr logs go (`node{i+1}.stderr`).
    ///
    /// # Examples
    ///
    /// Read what node1 wrote on stderr so far, and fail if it panicked.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let stderr = std::fs::read_to_string(cluster.log_dir().join("node1.stderr"))?;
    /// assert!(!stderr.contains("panicked"), "node1 panicked:\n{stderr}");
    /// # Ok(()) }
    /// ```
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The file node `i`'s stderr goes to (unless verbose), every start of
    /// the node appended after a `=== harness` line; in [`LocalCluster::log_dir`].
    pub fn stderr_path(&self, i: usize) -> PathBuf {
        let name = &self.nodes[i].name;
        let node_name = name.split('@').next().unwrap_or(name);
        self.log_dir.join(format!("{node_name}.stderr"))
    }

    /// Starts node `i` with the cluster's flags.
    ///
    /// # Examples
    ///
    /// In a built, not started, cluster of three: start two nodes, and the third once they met.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{last_of, LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.start_node(0)?;
    /// cluster.start_node(1)?;
    /// cluster.wait_for(0, DEFAULT_TIMEOUT, |events| last_of(events, "node_up").is_some())?;
    /// cluster.start_node(2)?;
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn start_node(&mut self, i: usize) -> io::Result<()> {
        self.start_node_with(i, &[])
    }

    /// Starts node `i` with the cluster's flags followed by `args` (a later
    /// flag wins, so `--cookie other` overrides); `restart` reuses them.
    ///
    /// # Examples
    ///
    /// Start three nodes, then a fourth with another cookie than the cluster's (a later flag wins).
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// for i in 0..3 {
    ///     cluster.start_node(i)?;
    /// }
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// cluster.start_node_with(3, &["--cookie", "not-the-cluster-cookie"])?;
    /// # Ok(()) }
    /// ```
    pub fn start_node_with(&mut self, i: usize, args: &[&str]) -> io::Result<()> {
        if self.nodes[i].process.is_some() {
            let why = format!("{} is already running", self.nodes[i].name);
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, why));
        }
        self.nodes[i].args = args.iter().map(|arg| arg.to_string()).collect();
        let node = &self.nodes[i];
        let node_name = node.name.split('@').next().unwrap_or(&node.name);
        let setup = &self.setup;
        let mut command = Command::new(&setup.binary);
        command
            .args(&setup.extra_args)
            .args(&node.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CLOISTER_") {
                command.env_remove(key);
            }
        }
        command.envs(harness_env(
            node_name,
            node.port,
            &self.sentry,
            setup.consensus,
        ));
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
        let stdin = child.stdin.take();
        node.process = Some(Running {
            child,
            stdin,
            reader,
        });
        Ok(())
    }

    /// Writes `line` (a newline is added) to node `i`'s stdin, where the
    /// node reads it from [`control_lines`](crate::harness::control_lines).
    ///
    /// # Examples
    ///
    /// Send node1 a command of the binary's own.
    ///
    /// ```no_run
    /// # let cluster: cloister_ractor::testing::LocalCluster = todo!();
    /// cluster.send_line(0, "put user:42 alice")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send_line(&self, i: usize, line: &str) -> io::Result<()> {
        let running = self.running(i)?;
        let mut stdin = running.stdin.as_ref().ok_or_else(|| self.not_running(i))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Kills node `i` with SIGKILL and reaps it. Nothing happens if it is not
    /// running.
    ///
    /// # Examples
    ///
    /// In a cluster with consensus 2, kill node3: the other two stay a ready cluster.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.kill(2)?;
    /// assert!(!cluster.is_running(2));
    /// cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// # Examples
    ///
    /// Freeze node1: the others report it unresponsive once its heartbeats stop.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{all_of, LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let node1 = cluster.node_name(0);
    /// cluster.pause(0)?;
    /// cluster.wait_for(1, DEFAULT_TIMEOUT, |events| {
    ///     all_of(events, "node_down").any(|down| down["peer"] == node1 && down["reason"] == "unresponsive")
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn pause(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::STOP)
    }

    /// Thaws node `i` with SIGCONT.
    ///
    /// # Examples
    ///
    /// Keep node2 frozen past the heartbeat timeout, then thaw it and wait for it to rejoin.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.pause(1)?;
    /// std::thread::sleep(std::time::Duration::from_secs(2));
    /// cluster.resume(1)?;
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn resume(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::CONT)
    }

    /// Kills node `i` if it runs, then starts it again on the same port with
    /// the same flags: a new incarnation of the same node.
    ///
    /// # Examples
    ///
    /// Restart node1 as a new incarnation and wait until all three agree again.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.restart(0)?;
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        let args = self.nodes[i].args.clone();
        self.start_node_with(i, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Asks node `i` to leave with SIGTERM and waits up to `timeout` for it to
    /// exit; past that it is killed and the error says so.
    ///
    /// # Examples
    ///
    /// Ask node3 to leave gracefully and check that it exited with status 0.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = cluster.terminate(2, DEFAULT_TIMEOUT)?;
    /// assert!(status.success(), "node3 exited with {status}");
    /// # Ok(()) }
    /// ```
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, String> {
        self.signal(i, Signal::TERM)
            .map_err(|err| format!("SIGTERM to {}: {err}", self.nodes[i].name))?;
        self.wait_exit(i, timeout).inspect_err(|_| {
            let _ = self.kill(i);
        })
    }

    /// Waits up to `timeout` for node `i` to exit by itself and returns its
    /// status. Its last lines are all in [`events`](Self::events) afterwards.
    ///
    /// # Examples
    ///
    /// With consensus 3 and `CLOISTER_STARTUP_DEADLINE=2s`, a lone node1 gives up and exits.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.start_node(0)?;
    /// let status = cluster.wait_exit(0, DEFAULT_TIMEOUT)?;
    /// assert!(!status.success(), "{status}; events: {:?}", cluster.events(0));
    /// # Ok(()) }
    /// ```
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
    ///
    /// # Examples
    ///
    /// Check that no node has exited while the test hammered the cluster.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// for i in 0..cluster.size() {
    ///     assert!(cluster.is_running(i), "{} exited", cluster.node_name(i));
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// # Examples
    ///
    /// Look node1's process up outside the harness, e.g. its memory use in /proc.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let pid = cluster.pid(0).expect("node1 runs");
    /// let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    /// # Ok(()) }
    /// ```
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i]
            .process
            .as_ref()
            .map(|running| running.child.id())
    }

    /// The process ids of every node that has one.
    ///
    /// # Examples
    ///
    /// Once the cluster is dropped, none of its processes is left.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{process_exists, LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let pids = cluster.pids();
    /// drop(cluster);
    /// assert!(pids.iter().all(|&pid| !process_exists(pid)));
    /// # Ok(()) }
    /// ```
    pub fn pids(&self) -> Vec<u32> {
        (0..self.size()).filter_map(|i| self.pid(i)).collect()
    }

    fn signal(&self, i: usize, signal: Signal) -> io::Result<()> {
        let running = self.running(i)?;
        Ok(kill_process(Pid::from_child(&running.child), signal)?)
    }

    /// Node `i`'s process, or the error that it has none.
    fn running(&self, i: usize) -> io::Result<&Running> {
        self.nodes[i]
            .process
            .as_ref()
            .ok_or_else(|| self.not_running(i))
    }

    fn not_running(&self, i: usize) -> io::Error {
        let why = format!("{} is not running", self.nodes[i].name);
        io::Error::new(io::ErrorKind::NotFound, why)
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
///
/// # Examples
///
/// Once node1 is killed, its old process id is gone.
///
/// ```no_run
/// # use cloister_ractor::testing::{process_exists, LocalCluster};
/// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
/// let pid = cluster.pid(0).expect("node1 runs");
/// cluster.kill(0)?;
/// assert!(!process_exists(pid));
/// # Ok(()) }
/// ```
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    !matches!(test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

/// Reads lines to the end of the output (see `lossy_lines`: a reader that
/// stopped early would close the pipe, and the node's next line would fail).
fn read_events(stdout: ChildStdout, log: &Mutex<Vec<Value>>, echo: Option<String>) {
    for line in lossy_lines(BufReader::new(stdout)) {
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
