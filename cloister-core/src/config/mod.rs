//! Configuration: how a node finds its peers and how fast it reacts, with one set
//! of defaults and validation.
//!
//! Both configurations of the Elixir original carry over one to one. A static
//! list of nodes (a list of strings is always nodes):
//!
//! ```toml
//! app = "cloister_test"
//! sentry = ["node1@127.0.0.1:4001", "node2@127.0.0.1:4002"]
//! consensus = 1
//! ```
//!
//! or a DNS service name (a string without `@` is always a service):
//!
//! ```toml
//! sentry = "cloister_test.local"
//! consensus = 3
//! ```
//!
//! Loading layers defaults < TOML file < `CLOISTER_<FIELD>` environment variables
//! through figment ([`Config::figment`]). Loading is the one place cloister-core
//! reads a file or the environment, and only when asked: [`Config::load`],
//! [`Config::from_env`], or [`Config::from_figment`] on a figment from
//! [`Config::figment`]. The runtime calls them; the rest of the core never does.
//! Every loader and [`Config::validated`] run [`Config::validate`], so the
//! `Config` they return is usable as is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The figment version cloister-core is built with, for merging more providers
/// (CLI flags, another file) into [`Config::figment`].
pub use figment;
use serde::{Deserialize, Serialize};

use crate::names::{Host, NameError, NodeName};

/// Why a configuration was refused. Building, loading or validating a config
/// never changes anything else: on error there is simply no `Config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value it may not have: [`Config::validate`], the
    /// constructors, and the loaders after a successful read.
    #[error("invalid `{field}` = {value}: {allowed}")]
    Invalid {
        /// The field at fault, as spelled in files (`consensus`).
        field: &'static str,
        /// The offending value, as it would be written (strings quoted).
        value: String,
        /// What the field allows, or why this value cannot work.
        allowed: String,
    },
    /// The file or an environment variable could not be read or did not fit a
    /// field: a missing file, bad TOML, an unknown key in the file, a value of the
    /// wrong type or out of range. The message names the key, the value and the
    /// source (file path or `CLOISTER_*` variable).
    #[error("{message}")]
    Load {
        /// The whole explanation, one line per problem found.
        message: String,
    },
}

fn invalid(field: &'static str, value: impl Into<String>, why: impl fmt::Display) -> ConfigError {
    let (value, allowed) = (value.into(), why.to_string());
    ConfigError::Invalid {
        field,
        value,
        allowed,
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn duration(value: Duration) -> String {
    humantime_serde::re::humantime::format_duration(value).to_string()
}

mod build;
mod listen;
mod load;
mod own_entry;
mod quorum;
mod sentry;
mod timers;
mod tls;

pub use listen::DEFAULT_COOKIE;
pub use load::TOOL_VARIABLES;
pub use own_entry::{LocalAddrs, OwnEntry, OwnEntryError};
pub(crate) use quorum::fixed_size;
pub use quorum::{Quorum, TieBreaker};
pub use sentry::{RingMode, Sentry, Sessions};
pub use tls::TlsFiles;

/// Everything a node needs to join its cluster. Durations are written as
/// humantime text in files and the environment: `"300ms"`, `"2s"`, `"1m 30s"`;
/// each timer is at most [`Config::MAX_TIMER`] (a day), `startup_deadline` at
/// most [`Config::MAX_STARTUP_DEADLINE`] (a year).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The application's name (Elixir's `otp_app`): this node is named
    /// `{app}@{host}` unless `node_name` is set. Default `"cloister"`. 1-64
    /// ASCII letters, digits, `_`, `-` or `.`. Changing it renames the node, so
    /// static `sentry` lists elsewhere must follow.
    pub app: String,
    /// The node-name part, when it must differ from `app`. Default: none, which
    /// means `app`. Names must be unique in the cluster, so several nodes of one
    /// app on one host (`node1@127.0.0.1`, `node2@127.0.0.1`) each need one.
    pub node_name: Option<String>,
    /// How to find peers. Required: the default, an empty list, fails
    /// validation. A list of `name@host:port` nodes (dialled directly; a static
    /// cluster), or a DNS service name re-resolved every `discovery_tick` (grows
    /// and shrinks with the service; needs working DNS). Names in a list are
    /// unique. A list may name one node name on many hosts
    /// (`shop@10.0.0.1:4000,shop@10.0.0.2:4000`, one image everywhere): each
    /// node then finds its own entry by its own addresses, or by
    /// `advertised_host`; a node not listed uses the list as seeds (see
    /// [`Config::own_entry`]).
    pub sentry: Sentry,
    /// How many nodes, this one included, the ring needs before the cluster is
    /// ready. Default 1 (ready alone). Higher guards against a node serving
    /// alone at boot, but start-up waits (up to `startup_deadline`) until that
    /// many are up. With a static list, at most its length when this node is
    /// listed, its length + 1 when the list is a seed list (checked at start,
    /// once the node knows its own entry).
    pub consensus: usize,
    /// How many members, this node included, a node must see to stay
    /// `Ready` when the cluster splits: `off` (default: every side of a
    /// partition stays ready, each with its own ring and sentry), `majority`,
    /// or a number. A ready node that sees fewer goes `NoQuorum`: routing
    /// by key fails with the reason, it names no sentry, and it keeps its
    /// sessions, so it is ready again when the partition heals. Majority
    /// of what: see [`Quorum::Majority`] and `expected_size`.
    pub quorum: Quorum,
    /// The cluster's size for `quorum`, when the static list does not say
    /// it or says it wrong. Default: none, which means the static list
    /// (this node added when unlisted), or in service mode the most members
    /// seen at once, less those that left gracefully. Set it in service
    /// mode, so that a node that boots alone on the wrong side of a
    /// partition is not ready on its own.
    pub expected_size: Option<usize>,
    /// Who keeps quorum when a partition splits the cluster exactly in
    /// half, with `quorum = "majority"`: `none` (default: neither half) or
    /// `oldest` (the half holding the last sentry). See [`TieBreaker`].
    pub tie_breaker: TieBreaker,
    /// With a quorum configured, how long the nodes that the records of who
    /// cannot reach whom would take out must stay the same before a partial
    /// partition is ended (some members hear a node that others cannot: a
    /// bridge, a one-way cut): then every node takes the same nodes out of
    /// its ring (under a bridge the smaller side), so the rest are one ring
    /// with one sentry. Default 5s, longer than
    /// `heartbeat_timeout`. Shorter ends a partial partition sooner; a link
    /// that flaps faster than this is never acted on.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
    /// The TCP port this node listens on for peers. Default 4000. A/AAAA records
    /// carry no port, so in service mode every replica must use the same one.
    /// 0 lets the OS pick: loopback tests only, as no list can then name it.
    pub listen_port: u16,
    /// The IP address the node port is bound to. Default `::`: every
    /// interface, IPv4 and IPv6. `0.0.0.0` is every IPv4 interface; an
    /// address of one interface keeps the node off the others;
    /// `127.0.0.1` keeps it on this machine (the built-in cookie is
    /// allowed only there, see [`Config::check_cookie_exposure`]). Narrower
    /// is safer, but peers must reach the node at its `advertised_host`
    /// through it.
    pub listen_addr: IpAddr,
    /// The host peers reach this node at, and the host part of its name.
    /// Default: none, found at run time: from a static list, the entry with
    /// this node's name, or of several, the one on an address of this
    /// machine; in service mode, the service's record that is one of this
    /// machine's addresses. Set it behind NAT, with several interfaces, or
    /// for a node not in a static list (the list is then its seeds); never a
    /// wildcard such as `0.0.0.0`. In service mode peers name a node after
    /// its address in the service's answer, so a name here must resolve to
    /// one of this machine's addresses (as a Swarm task's `hostname` does
    /// through `/etc/hosts`), which the node then uses; set the pod IP in
    /// Kubernetes.
    pub advertised_host: Option<Host>,
    /// The shared secret of the handshake: nodes with different cookies refuse
    /// each other. Default `"cloister"` ([`DEFAULT_COOKIE`]), public, so a
    /// node refuses to start with it unless `listen_addr` is loopback: set
    /// your own everywhere else (`CLOISTER_COOKIE`). Not empty.
    pub cookie: String,
    /// How often the sentry is resolved again and missing peers are dialled.
    /// Default 500ms. Shorter finds new nodes sooner, for more DNS queries and
    /// dial attempts.
    #[serde(with = "humantime_serde")]
    pub discovery_tick: Duration,
    /// The first wait before dialling a failed peer again; it doubles per failure
    /// up to `dial_backoff_max`. Default 25ms, more than zero. Shorter reconnects
    /// faster after a blip but hammers a peer that is down.
    #[serde(with = "humantime_serde")]
    pub dial_backoff_min: Duration,
    /// The longest wait between dials of a failing peer. Default 2s, at least
    /// `dial_backoff_min`. Longer spares a dead peer and the network; shorter
    /// notices its return sooner.
    #[serde(with = "humantime_serde")]
    pub dial_backoff_max: Duration,
    /// The fraction, 0.0 to 1.0, by which each backoff wait is randomly varied,
    /// so nodes that lost a peer together do not dial it in lockstep. Default
    /// 0.2. 0 makes waits predictable (tests); more spreads dials wider.
    pub dial_backoff_jitter: f64,
    /// How long a connection attempt may take before it counts as failed.
    /// Default 1s, more than zero. Shorter gives up on an unreachable peer
    /// sooner; longer tolerates slow, distant links. When the handshakes of
    /// this node's dials time out, it doubles this and the handshake
    /// timeout, up to eight times, and halves them again once handshakes
    /// are quick: on a machine slower than the timeouts assume, a cluster
    /// forms slower instead of not at all.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// The longest a member whose session closed stays in the ring waiting
    /// for a replacing session, before it counts as crashed. Default 250ms,
    /// shorter than `heartbeat_timeout`. ractor_cluster settles two
    /// simultaneous dials by closing one session, and a peer may see that
    /// close just before the winner is ready; the grace hides that flap.
    /// The replacement can only be a connection that was in its handshake
    /// at the close, so the grace applies only while one was, and ends as
    /// soon as none of them is left in its handshake: the close of a peer's
    /// only session is a crash at once, and on an idle machine a grace lasts
    /// milliseconds. The limit matters on a loaded one, where a handshake
    /// can take most of a second (100 nodes forming on two cores). 0 drops
    /// at once always (a flap then shows as a `NodeDown` and `NodeUp` pair).
    #[serde(with = "humantime_serde")]
    pub session_grace: Duration,
    /// How often this node sends a heartbeat to each member that watches it
    /// (see `monitors`). Default 300ms, more than zero. Shorter detects
    /// freezes sooner for more traffic. Rounds fall on multiples of the
    /// interval in wall-clock time, so every node's rounds coincide (within
    /// the hosts' clock skew) and a node wakes once for its watchers'
    /// heartbeats rather than once each.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// The silence after which a peer counts as down and leaves the ring.
    /// Default 1500ms (five intervals); longer than `heartbeat_interval`.
    /// Shorter reacts to crashes sooner, but a pause or a lossy link may then
    /// evict a live node and move its keys twice.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How many members watch each member's heartbeats, and how many each
    /// watches. Default 5, at least 1. A member that a watcher has not heard
    /// for `heartbeat_timeout` leaves every ring: the watcher tells every
    /// member. A node's heartbeat cost is about twice this many messages per
    /// interval, however large the cluster; a cluster of this many nodes
    /// plus one or fewer is a full mesh. More watchers notice a freeze as
    /// soon, with more traffic and more chances that one overloaded watcher
    /// drops a live node. With a quorum configured, each node also probes
    /// one member it does not watch per interval (a heartbeat and its
    /// answer), and records at most this many probed members it cannot
    /// reach.
    pub monitors: usize,
    /// How long start-up waits for `consensus` before it reports that the
    /// cluster did not assemble. Default 60s, more than zero. Longer rides out
    /// slow orchestration (images pulled, DNS published); shorter surfaces a
    /// wrong sentry sooner.
    #[serde(with = "humantime_serde")]
    pub startup_deadline: Duration,
    /// How long a leaving node waits for the application to hand off what
    /// it owns before it stops. On leave (`cloister_ractor::leave`, or
    /// SIGTERM through `cloister_ractor::leave_on_signal`) the node goes
    /// `stopping` (probes fail), says goodbye (peers report `left` and take
    /// it out of their rings), publishes a `leaving` event, and stops once
    /// every drain hold is released or this much time has passed. Default
    /// 5s; 0 stops as soon as the goodbyes are out (250 ms). Longer lets a large handoff
    /// finish; keep it below the orchestrator's grace period (Kubernetes'
    /// `terminationGracePeriodSeconds`, Swarm's `stop_grace_period`), which
    /// kills the process when it runs out.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Virtual nodes per member on the consistent-hash ring. Default 256, 1 to
    /// 4096. More spreads keys more evenly, for more memory and slower rehashes.
    /// Every node must use the same value, or they would place keys
    /// differently: a peer with another value is refused, and the assembly
    /// report says so.
    pub ring_vnodes: u32,
    /// Who keeps the consistent-hash ring: `builtin` (default) or `external`,
    /// the original's `ring:` option. Under `external` cloister still tracks
    /// the members, their digest and every topology event, but builds no
    /// hash ring: `node_for` answers `None` and the routing functions refuse
    /// with [`RouteError::ExternalRing`](../../cloister_ractor/enum.RouteError.html),
    /// while the application places keys with a ring of its own, kept from
    /// the events.
    pub ring: RingMode,
    /// Which peers each node keeps a session with: `full` (default, every
    /// other node) or `bounded` (the `monitors` nearest on each side in hash
    /// order and a few farther ones; the other members are learned from
    /// them, each change passed on from neighbour to neighbour). `bounded`
    /// is for clusters of about 50 nodes and more. Not yet together with a
    /// `quorum`. Every node of a cluster must use the same value.
    pub sessions: Sessions,
    /// Where the management endpoint listens (`/ready`, `/alive`,
    /// `/members` and `/metrics`), as `ip:port`, for
    /// example `0.0.0.0:9100`. Default: none, no endpoint. Needs
    /// cloister-ractor's `management` feature; a node built without it
    /// refuses to start with this set. Port 0 picks one (tests).
    pub management_addr: Option<std::net::SocketAddr>,
    /// This node's certificate chain for mutual TLS between nodes, a PEM
    /// file, leaf first. Default: none, plain TCP. Set together with
    /// `tls_key` and `tls_ca`, or not at all. With TLS every connection
    /// between nodes is encrypted and both sides must present a
    /// certificate that chains to `tls_ca`, so a node without one never
    /// reaches the cookie handshake, and the built-in cookie is allowed
    /// off loopback; the price is a TLS handshake per connection and the
    /// certificates to issue and renew (read again every
    /// `tls_reload_interval`: a renewed file needs no restart).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`'s leaf certificate, a PEM file
    /// (PKCS#8, PKCS#1 or SEC1). Default: none. Only with `tls_cert` and
    /// `tls_ca`.
    pub tls_key: Option<PathBuf>,
    /// The certificate authorities a peer's certificate must chain to, a
    /// PEM file of one or more certificates. Default: none. Only with
    /// `tls_cert` and `tls_key`. Every node of a cluster needs a
    /// certificate issued under it; a peer whose chain ends elsewhere, or
    /// whose certificate is expired or not yet valid, is refused before any
    /// cluster message. Peers are checked by chain and validity, not by
    /// the name or address in their certificate, unless `tls_check_names`
    /// is on.
    pub tls_ca: Option<PathBuf>,
    /// How often `tls_cert`, `tls_key` and `tls_ca` are read again: when
    /// any of them changed, the node builds its TLS settings anew and new
    /// connections use them (connections already up keep theirs). Default
    /// `30s`; `0s` reads them once, at start. A replacement that does not
    /// load (a half-written file, a key that is not the certificate's)
    /// leaves the settings in use as they were, with a warning naming the
    /// file. Shorter picks up a renewed certificate sooner, for three small
    /// file reads per interval. Ignored without TLS.
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    /// Whether a peer's certificate must name the node it claims to be:
    /// the part of its node name before `@` must be one of the
    /// certificate's DNS names (see [`crate::certified`]). Default `false`:
    /// any certificate under `tls_ca` may claim any name. On, a node cannot
    /// pass for another, at the price of one certificate per node name;
    /// a peer that claims a name its certificate does not carry is refused
    /// (a dial, in its TLS handshake; a connection it made, once it says
    /// its name) and never enters the ring. Needs TLS.
    pub tls_check_names: bool,
}

/// Like a derived `Debug`, but the cookie is never printed: configs end up in
/// logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("app", &self.app)
            .field("node_name", &self.node_name)
            .field("sentry", &self.sentry)
            .field("consensus", &self.consensus)
            .field("quorum", &self.quorum)
            .field("expected_size", &self.expected_size)
            .field("tie_breaker", &self.tie_breaker)
            .field("stable_after", &self.stable_after)
            .field("listen_port", &self.listen_port)
            .field("listen_addr", &self.listen_addr)
            .field("advertised_host", &self.advertised_host)
            .field("cookie", &"<redacted>")
            .field("discovery_tick", &self.discovery_tick)
            .field("dial_backoff_min", &self.dial_backoff_min)
            .field("dial_backoff_max", &self.dial_backoff_max)
            .field("dial_backoff_jitter", &self.dial_backoff_jitter)
            .field("dial_timeout", &self.dial_timeout)
            .field("session_grace", &self.session_grace)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("monitors", &self.monitors)
            .field("startup_deadline", &self.startup_deadline)
            .field("drain_timeout", &self.drain_timeout)
            .field("ring_vnodes", &self.ring_vnodes)
            .field("ring", &self.ring)
            .field("sessions", &self.sessions)
            .field("management_addr", &self.management_addr)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_ca", &self.tls_ca)
            .field("tls_reload_interval", &self.tls_reload_interval)
            .field("tls_check_names", &self.tls_check_names)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            app: "cloister".into(),
            node_name: None,
            sentry: Sentry::Nodes(Vec::new()),
            consensus: 1,
            quorum: Quorum::Off,
            expected_size: None,
            tie_breaker: TieBreaker::None,
            stable_after: Duration::from_secs(5),
            listen_port: 4000,
            listen_addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            advertised_host: None,
            cookie: DEFAULT_COOKIE.into(),
            discovery_tick: Duration::from_millis(500),
            dial_backoff_min: Duration::from_millis(25),
            dial_backoff_max: Duration::from_secs(2),
            dial_backoff_jitter: 0.2,
            dial_timeout: Duration::from_secs(1),
            session_grace: Duration::from_millis(250),
            heartbeat_interval: Duration::from_millis(300),
            heartbeat_timeout: Duration::from_millis(1500),
            monitors: 5,
            startup_deadline: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
            ring_vnodes: 256,
            ring: RingMode::Builtin,
            sessions: Sessions::Full,
            management_addr: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_reload_interval: Duration::from_secs(30),
            tls_check_names: false,
        }
    }
}

const SENTRY: &str =
    "a list of `name@host:port` nodes (or one string of them joined by commas) or a DNS service name";
const NAME_PART: &str = "1-64 ASCII letters, digits, `_`, `-` or `.`";
const DURATION: &str = "a duration such as \"300ms\", \"2s\" or \"1m 30s\"";

const WILDCARD: &str = "must be an address peers can dial, not a wildcard";

impl Config {
    /// Finishes a builder chain: the config if [`Config::validate`] accepts it.
    pub fn validated(self) -> Result<Config, ConfigError> {
        self.validate()?;
        Ok(self)
    }

    /// The node-name part of this node's name: `node_name`, else `app`.
    pub fn effective_node_name(&self) -> &str {
        self.node_name.as_deref().unwrap_or(&self.app)
    }

    /// How long a connection may take to authenticate before it is closed:
    /// `dial_timeout`, but at least a second, so a slow but honest peer is
    /// not cut off on a loaded machine.
    pub fn handshake_timeout(&self) -> Duration {
        self.dial_timeout.max(Duration::from_secs(1))
    }

    /// This node's name on `host`: `{effective_node_name}@{host}`.
    pub fn node_name_for(&self, host: &Host) -> Result<NodeName, NameError> {
        NodeName::new(self.effective_node_name(), host)
    }

    /// Checks every rule the field docs state and returns the first broken one,
    /// naming the field, its value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let local = Host::Ip(Ipv4Addr::LOCALHOST.into());
        let names = [
            ("app", Some(&self.app)),
            ("node_name", self.node_name.as_ref()),
        ];
        for (field, name) in names {
            if let Some(name) = name.filter(|name| NodeName::new(name, &local).is_err()) {
                return Err(invalid(field, quoted(name), format!("must be {NAME_PART}")));
            }
        }
        self.sentry.check()?;
        let most = self.sentry.nodes().map_or(usize::MAX, |n| n.len() + 1);
        if self.consensus == 0 || self.consensus > most {
            let listed = most - 1;
            let why = match self.consensus {
                0 => "must be at least 1 (this node counts)".to_string(),
                _ => format!("can never be met: the sentry lists {listed} node(s), plus this one"),
            };
            return Err(invalid("consensus", self.consensus.to_string(), why));
        }
        quorum::check(
            self.quorum,
            self.expected_size,
            self.tie_breaker,
            &self.sentry,
        )?;
        if let Some(ip) = self.advertised_host.as_ref().and_then(Host::ip) {
            if ip.is_unspecified() {
                return Err(invalid("advertised_host", ip.to_string(), WILDCARD));
            }
        }
        self.check_listen_addr()?;
        self.check_tls()?;
        if self.cookie.is_empty() {
            return Err(invalid("cookie", "\"\"", "must not be empty"));
        }
        self.check_timers()?;
        if self.monitors == 0 {
            let why =
                "must be at least 1: a member nobody watches is never dropped when it freezes";
            return Err(invalid("monitors", "0", why));
        }
        if self.sessions == Sessions::Bounded && self.quorum != Quorum::Off {
            let why = "cannot be used with a `quorum` yet: the reachability records behind \
                       the quorum assume a session with every member; use `sessions = \"full\"` \
                       with a quorum";
            return Err(invalid("sessions", "\"bounded\"", why));
        }
        let vnodes = self.ring_vnodes;
        if !(1..=4096).contains(&vnodes) {
            let why = "must be from 1 to 4096";
            return Err(invalid("ring_vnodes", vnodes.to_string(), why));
        }
        Ok(())
    }
}
