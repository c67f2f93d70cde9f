//! `cloister-node`: a demo node. It runs a supervisor with the cloister
//! Manager and a small key-owner actor that starts only once the cluster is
//! assembled, and writes one JSON object per line to stdout for every topology
//! event (`cloister_ractor::harness::EventLines`). Logs go to stderr.
//! Configured by `CLOISTER_*` variables, a TOML file and the flags below
//! (flags win), so `LocalCluster` drives it like any user's binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cloister_core::config::figment::providers::Serialized;
use cloister_core::config::figment::value::{Dict, Map};
use cloister_core::config::figment::{self, Metadata, Profile, Provider};
use cloister_core::{Config, NodeName, TopologyEvent};
use cloister_examples::certs::Crypto;
use cloister_examples::memory::Trim;
use cloister_ractor::harness::EventLines;
use cloister_ractor::{
    Cloister, CloisterError, CloisterManager, CloisterMessage, StartOptions, Wire,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;
use serde_json::{json, Value};

mod dropped;
mod key_owner;
mod probe;

use key_owner::{KeyOwner, KeyOwnerMsg};
use probe::{bench_routing, Probe};

/// A cloister demo node. Every flag has a `CLOISTER_*` variable twin.
#[derive(Parser, Debug, Serialize)]
#[command(version)]
struct Args {
    /// A TOML config file (defaults < file < environment < flags).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// `tests` starts from short timers meant for loopback tests.
    #[arg(long)]
    #[serde(skip)]
    preset: Option<String>,
    /// Print the owners of these comma-separated keys after every ring change.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip)]
    show_keys: Vec<String>,
    /// Print a digest of the owners of keys `key-0`..`key-{N-1}` after every ring change.
    #[arg(long)]
    #[serde(skip)]
    key_sample: Option<u32>,
    /// Once the application runs, ask the owner of keys `key-0`..`key-{N-1}`
    /// through `call_owner`, again and again, printing a `probe` line each round.
    #[arg(long)]
    #[serde(skip)]
    probe_keys: Option<u32>,
    /// Once the application runs, `multicall` every member's key owner
    /// again and again, printing a `multicall` line each round.
    #[arg(long)]
    #[serde(skip)]
    probe_multicall: bool,
    /// Once the application runs, run a dropper (an actor that stops when
    /// asked, without answering); the first member asks another's once
    /// and prints a `dropped_probe` line with what it was told.
    #[arg(long)]
    #[serde(skip)]
    probe_dropped: bool,
    /// Once the application runs, time N `call_owner` round trips against N
    /// raw remote calls to the same actor, one-way `route` casts against raw
    /// casts, and multicall latency; print a `bench_routing` line.
    #[arg(long)]
    #[serde(skip)]
    bench_routing: Option<u32>,

    /// The application name (node names are `{node_name}@{host}`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<String>,
    /// The part of this node's name before `@` (default: the app).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_name: Option<String>,
    /// Comma-separated `name@host:port` peers, or a DNS service name.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    sentry: Option<String>,
    /// Members (this node included) needed before the node is ready.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    consensus: Option<u64>,
    /// The TCP port to listen on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_port: Option<u32>,
    /// The IP to listen on: `127.0.0.1` (this machine only), `0.0.0.0`
    /// (every IPv4 interface) or `::` (default, every interface).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_addr: Option<String>,
    /// The host peers reach this node at (default: from the sentry list or DNS).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertised_host: Option<String>,
    /// The shared secret of the cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
    /// Heartbeat interval, e.g. `300ms`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_interval: Option<String>,
    /// Silence after which a peer is dropped, e.g. `1500ms`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_timeout: Option<String>,
    /// How long to wait for consensus at start, e.g. `60s`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    startup_deadline: Option<String>,
    /// Virtual nodes per member on the ring (every member must agree).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_vnodes: Option<u32>,
    /// Serve `/ready`, `/alive`, `/members` and `/metrics`
    /// here, e.g. `0.0.0.0:9100`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    management_addr: Option<String>,
    /// This node's certificate chain (PEM) for mutual TLS between nodes;
    /// with `--tls-key` and `--tls-ca`, or none of them (plain TCP).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<String>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<String>,
    /// The CA certificates (PEM) every peer's certificate must chain to.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<String>,
    /// How often the TLS files are read again (`0s`: only at start), e.g. `30s`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_reload_interval: Option<String>,
    /// Whether a peer's certificate must name the node it claims to be
    /// (`true` or `false`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_check_names: Option<bool>,
    /// The cryptography of TLS: `aws-lc-rs` (rustls's default) or `ring`
    /// (installed as the process's rustls provider; no entropy seeding
    /// from CPU jitter at the first handshake, no post-quantum key exchange).
    #[arg(long, value_enum, default_value_t = Crypto::AwsLcRs)]
    #[serde(skip)]
    tls_crypto: Crypto,

    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
}

/// What else the binary does besides running a node.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Asks a running node's management endpoint whether it is ready (or
    /// alive) and exits 0 if so, 1 if not: the health check of a scratch
    /// image, which has no curl.
    Health {
        /// The management endpoint to ask.
        #[arg(long, default_value = "127.0.0.1:9100", env = "CLOISTER_HEALTH_ADDR")]
        addr: std::net::SocketAddr,
        /// `ready` (200 only while Ready) or `alive` (while the Manager runs).
        #[arg(long, default_value = "ready")]
        probe: HealthProbe,
    },
}

/// The probes `health` can ask.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum HealthProbe {
    Ready,
    Alive,
}

/// `cloister-node health`: one GET, the answer on stdout, the verdict as
/// the exit code.
async fn health(addr: std::net::SocketAddr, probe: HealthProbe) -> ! {
    let path = match probe {
        HealthProbe::Ready => "/ready",
        HealthProbe::Alive => "/alive",
    };
    match cloister_examples::http::get(addr, path, Duration::from_secs(3)).await {
        Ok((status, body)) => {
            println!("{body}");
            std::process::exit(if status == 200 { 0 } else { 1 });
        }
        Err(error) => {
            eprintln!("cloister-node health: {error}");
            std::process::exit(1);
        }
    }
}

fn load(args: &Args) -> Result<Config, String> {
    let base = match args.preset.as_deref() {
        None => Config::default(),
        Some("tests") => Config::for_tests(),
        Some(other) => {
            return Err(format!(
                "invalid `--preset` = {other:?}: the only preset is `tests`"
            ))
        }
    };
    let figment = Config::figment_over(base, args.config.as_deref()).merge(args);
    Config::from_figment(&figment).map_err(|e| e.to_string())
}

/// The flags as the top configuration layer, named as flags in errors.
impl Provider for &Args {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
            .interpolater(|_, keys| format!("--{}", keys.join("-").replace('_', "-")))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(*self).data()
    }
}

/// Writes one JSON line to stdout.
fn emit(node: &NodeName, event: &str, fields: Value) {
    cloister_ractor::harness::print_line(node, event, fields);
}

/// Reports a failed start once, on stdout (JSON) and stderr.
fn startup_failed(error: &str) {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    REPORTED.call_once(|| {
        println!("{}", json!({ "event": "startup_failed", "error": error }));
        eprintln!("cloister-node: {error}");
    });
}

/// Prints topology events and session changes as JSON lines.
struct Printer;

enum PrinterMsg {
    Topology(TopologyEvent),
    PollSessions,
    /// Gives free memory back (see `cloister_examples::memory`).
    Trim,
}
impl ractor::Message for PrinterMsg {}

struct PrinterState {
    cloister: Cloister,
    show_keys: Vec<String>,
    key_sample: Option<u32>,
    sessions: Option<Vec<NodeName>>,
    trim: Trim,
}

impl Actor for Printer {
    type Msg = PrinterMsg;
    type State = PrinterState;
    type Arguments = PrinterState;

    async fn pre_start(
        &self,
        myself: ActorRef<PrinterMsg>,
        state: PrinterState,
    ) -> Result<PrinterState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(200), || PrinterMsg::PollSessions);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<PrinterMsg>,
        message: PrinterMsg,
        state: &mut PrinterState,
    ) -> Result<(), ActorProcessingErr> {
        let me = state.cloister.me().clone();
        match message {
            PrinterMsg::Topology(event) => {
                if matches!(
                    event,
                    TopologyEvent::RingChanged { .. } | TopologyEvent::Snapshot { .. }
                ) {
                    print_owners(state).await;
                    if state.trim.changed() {
                        myself.send_after(Trim::AFTER, || PrinterMsg::Trim);
                    }
                }
            }
            PrinterMsg::Trim => state.trim.run(),
            PrinterMsg::PollSessions => {
                // From the handle's view: the Manager is not woken for it.
                let peers = state.cloister.sessions();
                if state.sessions.as_ref() != Some(&peers) {
                    emit(&me, "sessions", json!({ "peers": peers }));
                    state.sessions = Some(peers);
                }
            }
        }
        Ok(())
    }
}

/// Prints the owners of the chosen keys: asked of the key-owner actor once
/// the application runs, read from the ring before that.
async fn print_owners(state: &PrinterState) {
    let me = state.cloister.me();
    let ring = state.cloister.ring();
    if !state.show_keys.is_empty() {
        let key_owner: Option<ActorRef<KeyOwnerMsg>> =
            ractor::registry::where_is::<String>("key_owner".into()).map(Into::into);
        let mut owners: BTreeMap<&str, Option<NodeName>> = BTreeMap::new();
        for key in &state.show_keys {
            let asked = match &key_owner {
                Some(actor) => {
                    ractor::call_t!(actor, KeyOwnerMsg::Owner, 1_000, Wire::new(key.clone()))
                        .ok()
                        .and_then(|owner| owner.into_inner().ok())
                        .and_then(|owner| owner.parse::<NodeName>().ok())
                }
                None => None,
            };
            owners.insert(key, asked.or_else(|| ring.node_for(key).cloned()));
        }
        emit(
            me,
            "owners",
            json!({ "owners": owners, "ring_digest": ring.digest() }),
        );
    }
    if let Some(n) = state.key_sample {
        let owners: Vec<String> = (0..n)
            .map(|i| {
                ring.node_for(format!("key-{i}"))
                    .map(ToString::to_string)
                    .unwrap_or_default()
            })
            .collect();
        let digest = cloister_core::Digest::of(
            owners
                .iter()
                .filter_map(|o| o.parse::<NodeName>().ok())
                .collect::<Vec<_>>()
                .iter(),
        );
        emit(
            me,
            "owners_digest",
            json!({ "sample": n, "digest": digest, "ring_digest": ring.digest() }),
        );
    }
}

/// The node's supervisor: the Manager first, then the application.
struct Root;

struct RootArgs {
    config: Config,
    show_keys: Vec<String>,
    key_sample: Option<u32>,
    probe: Probe,
}

impl Actor for Root {
    type Msg = ();
    type State = ActorRef<CloisterMessage>;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Unheld, so the printer can show the assembly as it happens; the
        // await below holds this supervisor exactly as `spawn_linked` would.
        // Event lines are written by a listener, inside the Manager and in
        // order from its first event, so every line is out before the
        // application is released.
        let options = StartOptions {
            name: Some("cloister".into()),
            supervisor: Some(myself.get_cell()),
            hold: false,
            listeners: vec![Box::new(EventLines::default())],
        };
        let (manager, _, cloister) = CloisterManager::start(args.config, options).await?;
        let printer = PrinterState {
            cloister: cloister.clone(),
            show_keys: args.show_keys,
            key_sample: args.key_sample,
            sessions: None,
            trim: Trim::default(),
        };
        let (printer, _) = Actor::spawn_linked(None, Printer, printer, myself.get_cell()).await?;
        cloister_ractor::subscribe(&manager, printer, |event| Some(PrinterMsg::Topology(event)))?;
        if let Err(error) = cloister_ractor::await_consensus(&manager).await {
            startup_failed(&error.to_string());
            return Err(error.into());
        }
        Actor::spawn_linked(
            Some("key_owner".into()),
            KeyOwner,
            cloister.clone(),
            myself.get_cell(),
        )
        .await?;
        if let Some(calls) = args.probe.bench {
            tokio::spawn(bench_routing(cloister.clone(), calls));
        }
        if args.probe.dropped {
            tokio::spawn(dropped::run(cloister.clone()));
        }
        if args.probe.keys.is_some() || args.probe.multicall {
            tokio::spawn(args.probe.run(cloister));
        }
        Ok(manager)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..) = event {
            myself.stop(Some("a child ended".into()));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    cloister_examples::init_logs();
    let args = Args::parse();
    args.tls_crypto.install();
    if let Some(Command::Health { addr, probe }) = args.command {
        health(addr, probe).await;
    }
    // Under a test's LocalCluster: exit when the test goes away.
    cloister_ractor::harness::exit_with_harness();
    let config = match load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cloister-node: bad configuration: {error}");
            std::process::exit(2);
        }
    };
    let drain = config.drain_timeout;
    let root = RootArgs {
        config,
        show_keys: args.show_keys,
        key_sample: args.key_sample,
        probe: Probe {
            keys: args.probe_keys,
            multicall: args.probe_multicall,
            dropped: args.probe_dropped,
            bench: args.bench_routing,
        },
    };
    let (root, join) = match Actor::spawn(None, Root, root).await {
        Ok(spawned) => spawned,
        Err(error) => {
            // ractor words every failed start as a panic; say what failed.
            let cloister = CloisterError::cause_of(&error);
            startup_failed(&cloister.map_or_else(|| error.to_string(), ToString::to_string));
            // 2 as for a bad configuration: this node cannot run as configured.
            let code = match cloister {
                Some(
                    CloisterError::Listen { .. }
                    | CloisterError::Config(_)
                    | CloisterError::OwnEntry(_)
                    | CloisterError::Management { .. },
                ) => 2,
                _ => 1,
            };
            std::process::exit(code);
        }
    };
    let manager = root
        .get_children()
        .into_iter()
        .find(|c| c.get_name().as_deref() == Some("cloister"));
    let Some(manager) = manager.map(ActorRef::<CloisterMessage>::from) else {
        let _ = join.await;
        return;
    };
    // SIGTERM (an orchestrator stopping the container) or Ctrl-C: a
    // graceful leave. Peers report `left`, and the node stops once drained.
    tokio::select! {
        _ = join => {}
        _ = cloister_ractor::leave_on_signal(&manager, drain + Duration::from_secs(5)) => {}
    }
}
