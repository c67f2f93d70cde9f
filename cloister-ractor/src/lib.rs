//! # cloister-ractor
//!
//! Cluster assembly for ractor. Put a [`CloisterManager`] into your supervision
//! tree; it finds its peers (a static `name@host:port` list or a DNS service
//! name), connects them with ractor_cluster, holds your boot until `consensus`
//! members are connected, keeps a consistent-hash ring of the members, drops
//! peers that crash or freeze, and tells subscribers when the topology changes.
//!
//! ```text
//! your supervisor
//! └── CloisterManager            drives cloister-core's membership machine
//!     ├── NodeServer             ractor_cluster: one NodeSession per peer
//!     │   └── NodeSession ...
//!     ├── Acceptor               the node port: handshake deadline and caps, then
//!     │                          each stream to the NodeServer
//!     └── Herald                 in pg group `cloister:{app}`: heartbeats from peers
//! ```
//!
//! ## In your supervisor
//!
//! ```no_run
//! use cloister_core::Config;
//! use cloister_ractor::CloisterManager;
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//!
//! struct Root;
//! impl Actor for Root {
//!     type Msg = ();
//!     type State = cloister_ractor::Cloister;
//!     type Arguments = ();
//!     async fn pre_start(&self, myself: ActorRef<()>, _: ()) -> Result<Self::State, ActorProcessingErr> {
//!         // Returns once `consensus` members are connected, or fails at the deadline.
//!         let (_manager, cloister) = CloisterManager::spawn_linked(
//!             Some("cloister".into()), Config::from_env()?, myself.get_cell()).await?;
//!         // Children spawned from here on start in an assembled cluster.
//!         Ok(cloister)
//!     }
//! }
//! ```
//!
//! Then `cloister.node_for("user:42")` answers from any thread without an actor
//! round trip, and [`subscribe`] delivers topology events to an actor.
//!
//! ## What stays inside
//!
//! The Manager's plumbing (its internal messages and state) cannot be named
//! outside this crate, so no other code in the process can inject a
//! heartbeat or a session event:
//!
//! ```compile_fail
//! use cloister_ractor::Internal; // not exported
//! ```
//!
//! ```compile_fail
//! use cloister_ractor::ManagerState; // not exported
//! ```
//!
//! ## Your message types need `RactorMessage` now
//!
//! ractor_cluster turns on ractor's `cluster` feature, which removes the
//! blanket `impl Message for T`: in a binary that uses cloister, every actor
//! message type needs `#[derive(ractor_cluster::RactorMessage)]` (or
//! `impl ractor::Message for MyMsg {}`) when it stays local, and
//! `#[derive(ractor_cluster::RactorClusterMessage)]` when it crosses nodes
//! (its fields must implement `ractor::BytesConvertable`). ractor's own
//! impls for `String`, the numbers and `bool` panic on bytes from a peer
//! that do not fit: make such fields, and reply types, [`Wire`]s, which
//! decode any bytes and hand the handler an error for those that do not
//! parse (see [`wire`]).
//!
//! ## Testing your binary: which part goes where
//!
//! A binary that a test runs as a cluster uses [`harness`] (its
//! [`EventLines`](harness::EventLines) listener and its control channel,
//! [`control_lines`](harness::control_lines) or
//! [`exit_with_harness`](harness::exit_with_harness)): always there, no
//! feature needed, and inert unless the harness started the process. The
//! harness itself, `testing::LocalCluster` and the event readers, is the
//! `testing` feature: turn it on in `[dev-dependencies]` only, so it
//! (and the signal crate it uses) stays out of production builds.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod accept;
mod discovery;
mod drain;
mod error;
mod group;
mod handle;
pub mod harness;
mod herald;
mod inspect;
#[cfg(feature = "management")]
mod management;
mod manager;
mod members;
mod routing;
mod sessions;
mod stats;
mod subscribe;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
pub mod wire;

pub use error::CloisterError;

/// A `tracing_subscriber::EnvFilter` directive for a node's log: `info`,
/// ractor at `warn`, and ractor_cluster at `error`. ractor_cluster writes a
/// warning or two for every connection that fails its handshake (garbage on
/// the port, a wrong cookie, a port scan), so anyone who can reach the port
/// could fill the disk; cloister counts those connections itself and logs
/// the count at most every 10 seconds.
///
/// ```no_run
/// tracing_subscriber::fmt()
///     .with_env_filter(cloister_ractor::LOG_FILTER)
///     .init();
/// ```
pub const LOG_FILTER: &str = "info,ractor=warn,ractor_cluster=error";
pub use drain::{leave, leave_on_signal, DrainHold, LeaveOutcome};
pub use group::Group;
pub use handle::Cloister;
pub use inspect::{inspect, Inspection, RecentEvent, Share, RECENT_EVENTS};
pub use manager::{Assembled, CloisterManager, CloisterMessage, Spawned, StartOptions};
pub use routing::{Multicall, RouteError};
pub use stats::Stats;
pub use subscribe::{add_listener, await_consensus, subscribe, Listener, Subscriber};
pub use wire::{Wire, WireError};
