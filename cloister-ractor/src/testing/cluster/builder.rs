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
use crate::testing::HARNESS_VAR;

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
/// its name and port, the sentry list, consensus, and the short timers of
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
