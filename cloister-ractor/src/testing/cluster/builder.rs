//! Building a cluster: ports, the sentry list, and each node's environment.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_core::Config;

use super::{LocalCluster, Node, HOST, VERBOSE_VAR};
use crate::harness::HARNESS_VAR;

/// Builds a [`LocalCluster`]; see [`LocalCluster::builder`].
#[derive(Debug, Clone)]
pub struct LocalClusterBuilder {
    pub(super) size: usize,
    pub(super) consensus: usize,
    pub(super) binary: PathBuf,
    pub(super) extra_args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
}

impl LocalClusterBuilder {
    /// `--consensus` for every node. Default: the cluster size.
    ///
    /// # Examples
    ///
    /// Five nodes that are ready as soon as any three of them are connected.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(binary: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cluster = LocalCluster::builder(binary, 5).consensus(3).build()?;
    /// for i in 0..3 {
    ///     cluster.start_node(i)?;
    /// }
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn consensus(mut self, consensus: usize) -> Self {
        self.consensus = consensus;
        self
    }

    /// Flags appended to every node's command line (`--key-sample 10000`).
    ///
    /// # Examples
    ///
    /// Every node's command line ends with `--key-sample 10000`, a flag of the binary.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(binary: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder(binary, 3)
    ///     .extra_args(["--key-sample", "10000"])
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for every node, set after the harness's own
    /// (so `CLOISTER_HEARTBEAT_TIMEOUT` here wins). Inherited `CLOISTER_*`
    /// variables are removed, so only the harness's and these reach the nodes.
    ///
    /// # Examples
    ///
    /// Every node gets a 2 s heartbeat timeout instead of the harness's 500 ms, and debug logs.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(binary: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder(binary, 3)
    ///     .env("CLOISTER_HEARTBEAT_TIMEOUT", "2s")
    ///     .env("RUST_LOG", "debug")
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Picks the ports and the log directory without starting any process:
    /// start nodes one by one with [`LocalCluster::start_node`].
    ///
    /// # Examples
    ///
    /// Build a cluster with no process running yet, then start its nodes one by one.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(binary: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut cluster = LocalCluster::builder(binary, 3).build()?;
    /// assert!(cluster.pids().is_empty());
    /// for i in 0..cluster.size() {
    ///     cluster.start_node(i)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> io::Result<LocalCluster> {
        if !self.binary.is_file() {
            let why = format!("no executable at {}", self.binary.display());
            return Err(io::Error::new(io::ErrorKind::NotFound, why));
        }
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
            setup: self,
            sentry,
            nodes,
            log_dir,
            verbose: std::env::var_os(VERBOSE_VAR).is_some_and(|v| !v.is_empty()),
            keep_logs: Mutex::new(false),
        })
    }

    /// Builds the cluster and starts every node, back to back.
    ///
    /// # Examples
    ///
    /// Start three nodes at once and wait until they form one ready cluster.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(binary: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder(binary, 3).start()?;
    /// cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn start(self) -> io::Result<LocalCluster> {
        let mut cluster = self.build()?;
        for i in 0..cluster.size() {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }
}

/// The environment that makes a binary node `node_name` of the cluster:
/// its name, its port on 127.0.0.1 only, the sentry list, consensus, and the short timers of
/// [`Config::for_tests`] (100 ms heartbeats, a 500 ms timeout).
pub(super) fn harness_env(
    node_name: &str,
    port: u16,
    sentry: &str,
    consensus: usize,
) -> Vec<(String, String)> {
    let node = [
        (HARNESS_VAR, "1".to_string()),
        ("CLOISTER_NODE_NAME", node_name.to_string()),
        ("CLOISTER_ADVERTISED_HOST", HOST.to_string()),
        // Loopback only: the built-in cookie is allowed there.
        ("CLOISTER_LISTEN_ADDR", HOST.to_string()),
        ("CLOISTER_LISTEN_PORT", port.to_string()),
        ("CLOISTER_SENTRY", sentry.to_string()),
        ("CLOISTER_CONSENSUS", consensus.to_string()),
    ];
    let node = node
        .into_iter()
        .map(|(key, value)| (key.to_string(), value));
    node.chain(timer_env(&Config::for_tests())).collect()
}

/// `config`'s timers as the `CLOISTER_*` variables the harness sets: the
/// discovery tick, dial backoff bounds and timeout, heartbeat interval and
/// timeout, and the startup deadline. Give a builder these over
/// [`LocalClusterBuilder::env`] to run nodes with other timers.
///
/// # Examples
///
/// Run the nodes with the library's default timers instead of the short
/// test ones:
///
/// ```no_run
/// # use cloister_ractor::testing::{timer_env, LocalCluster};
/// # use cloister_core::Config;
/// let mut builder = LocalCluster::builder("target/debug/my-node", 3);
/// for (key, value) in timer_env(&Config::default()) {
///     builder = builder.env(key, value);
/// }
/// ```
pub fn timer_env(config: &Config) -> Vec<(String, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    [
        ("CLOISTER_DISCOVERY_TICK", ms(config.discovery_tick)),
        ("CLOISTER_DIAL_BACKOFF_MIN", ms(config.dial_backoff_min)),
        ("CLOISTER_DIAL_BACKOFF_MAX", ms(config.dial_backoff_max)),
        ("CLOISTER_DIAL_TIMEOUT", ms(config.dial_timeout)),
        ("CLOISTER_HEARTBEAT_INTERVAL", ms(config.heartbeat_interval)),
        ("CLOISTER_HEARTBEAT_TIMEOUT", ms(config.heartbeat_timeout)),
        ("CLOISTER_STARTUP_DEADLINE", ms(config.startup_deadline)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect()
}

fn name_of(i: usize) -> String {
    format!("node{}@{HOST}", i + 1)
}

/// The lowest port tried for a node.
const PORTS_FROM: u16 = 20_000;

/// Ports free right now, below the kernel's ephemeral range: all bound at
/// once so they differ, then released for the nodes to take.
///
/// Not ports the OS hands out for port 0: those come from the ephemeral
/// range, which the nodes' own dials take their local ports from, so a peer's
/// outgoing connection could take a node's port before that node binds it
/// (it then exits with "address in use"). With 25 nodes on 127.0.0.1, 600
/// connections made that happen in most runs.
fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let below = ephemeral_range_start().unwrap_or(32_768);
    let span = u64::from(below.saturating_sub(PORTS_FROM));
    if span < 4 * count as u64 {
        // An unusual range: fall back to what the OS picks.
        let listeners = (0..count)
            .map(|_| TcpListener::bind((HOST, 0)))
            .collect::<io::Result<Vec<_>>>()?;
        return listeners
            .iter()
            .map(|listener| Ok(listener.local_addr()?.port()))
            .collect();
    }
    // A different start each time, so harnesses running at once (and
    // clusters built one after another) rarely try the same ports.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or_default();
    let offset = (nanos ^ u64::from(std::process::id()).wrapping_mul(7_919)) % span;
    let mut listeners = Vec::with_capacity(count);
    for k in 0..span {
        // `span` fits below a u16 port, so the sum does too.
        let port = PORTS_FROM + u16::try_from((offset + k) % span).unwrap_or(0);
        if let Ok(listener) = TcpListener::bind((HOST, port)) {
            listeners.push(listener);
            if listeners.len() == count {
                break;
            }
        }
    }
    if listeners.len() < count {
        return Err(io::Error::other(format!(
            "only {} free ports in {PORTS_FROM}..{below} for {count} nodes",
            listeners.len()
        )));
    }
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

/// Where the kernel's ephemeral ports start (Linux); `None` elsewhere.
fn ephemeral_range_start() -> Option<u16> {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ports_are_free_distinct_and_below_the_ephemeral_range() {
        let ports = free_ports(100).expect("100 free ports");
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 100);
        let below = ephemeral_range_start().unwrap_or(32_768);
        assert!(
            ports.iter().all(|p| (PORTS_FROM..below).contains(p)),
            "{ports:?}"
        );
    }
}
