//! Building a config in code: the two kinds of cluster, the test timers,
//! and a `with_*` setter for the fields set most often. Finish a chain
//! with [`Config::validated`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{Config, ConfigError, Quorum, Sentry};

impl Config {
    /// A static cluster: `app` and its `name@host:port` nodes, other fields at
    /// their defaults. Fails on the first bad entry; finish with
    /// [`Config::validated`].
    ///
    /// ```
    /// use cloister_core::Config;
    /// let config = Config::nodes("cloister_test", ["node1@127.0.0.1:4001", "node2@127.0.0.1:4002"])?
    ///     .with_consensus(1)
    ///     .validated()?;
    /// assert_eq!(config.sentry.nodes().map(<[_]>::len), Some(2));
    /// assert!(Config::nodes("cloister_test", ["node1@"]).is_err());
    /// # Ok::<(), cloister_core::ConfigError>(())
    /// ```
    pub fn nodes<I, S>(app: &str, entries: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let sentry = Sentry::parse_nodes(entries)?;
        Ok(Config::default().with_app(app).with_sentry(sentry))
    }

    /// A cluster found through a DNS service name (an SRV name if it starts with
    /// `_`), other fields at their defaults. The name is checked by
    /// [`Config::validated`].
    ///
    /// ```
    /// use cloister_core::Config;
    /// let config = Config::service("cloister_test", "cloister_test.local")
    ///     .with_consensus(3)
    ///     .validated()?;
    /// assert_eq!(config.sentry.service(), Some("cloister_test.local"));
    /// # Ok::<(), cloister_core::ConfigError>(())
    /// ```
    pub fn service(app: &str, name: &str) -> Config {
        let sentry = Sentry::Service(name.to_string());
        Config::default().with_app(app).with_sentry(sentry)
    }

    /// The defaults with short timers, for nodes on loopback in tests: a
    /// heartbeat every 100ms and down after 500ms, dial backoff 10ms to 500ms,
    /// dial timeout 500ms, discovery every 100ms, start-up deadline 20s,
    /// listening on `127.0.0.1` only (so the default cookie is allowed). Too
    /// twitchy for real networks, where a pause would evict live nodes. The
    /// sentry is still required.
    ///
    /// ```
    /// use cloister_core::Config;
    /// let config = Config::for_tests()
    ///     .with_app("cloister_test")
    ///     .with_sentry("node1@127.0.0.1:4001,node2@127.0.0.1:4002".parse()?)
    ///     .validated()?;
    /// assert_eq!(config.heartbeat_timeout, std::time::Duration::from_millis(500));
    /// # Ok::<(), cloister_core::ConfigError>(())
    /// ```
    pub fn for_tests() -> Config {
        Config {
            discovery_tick: Duration::from_millis(100),
            dial_backoff_min: Duration::from_millis(10),
            dial_backoff_max: Duration::from_millis(500),
            dial_timeout: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(500),
            startup_deadline: Duration::from_secs(20),
            listen_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ..Config::default()
        }
    }

    /// Sets `app`.
    pub fn with_app(mut self, app: &str) -> Config {
        self.app = app.to_string();
        self
    }

    /// Sets `node_name`, this node's name part when it differs from `app`.
    pub fn with_node_name(mut self, node_name: &str) -> Config {
        self.node_name = Some(node_name.to_string());
        self
    }

    /// Sets `sentry`.
    pub fn with_sentry(mut self, sentry: Sentry) -> Config {
        self.sentry = sentry;
        self
    }

    /// Sets `consensus`, the nodes (this one included) needed to be ready.
    pub fn with_consensus(mut self, consensus: usize) -> Config {
        self.consensus = consensus;
        self
    }

    /// Sets `quorum`, the members (this one included) needed to stay ready
    /// through a partition.
    pub fn with_quorum(mut self, quorum: Quorum) -> Config {
        self.quorum = quorum;
        self
    }

    /// Sets `listen_port`.
    pub fn with_listen_port(mut self, listen_port: u16) -> Config {
        self.listen_port = listen_port;
        self
    }

    /// Sets `listen_addr`, the IP the node port is bound to.
    pub fn with_listen_addr(mut self, listen_addr: IpAddr) -> Config {
        self.listen_addr = listen_addr;
        self
    }

    /// Sets `cookie`, the handshake secret.
    pub fn with_cookie(mut self, cookie: &str) -> Config {
        self.cookie = cookie.to_string();
        self
    }
}
