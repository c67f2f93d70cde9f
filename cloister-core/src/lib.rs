//! # cloister-core
//!
//! Every decision cloister makes, as pure code: configuration and its validation,
//! node names, the membership state machine, the consistent-hash ring and the
//! topology events. Nothing here waits, sleeps, spawns, opens a socket or reads
//! the clock or the environment by itself: the runtime (`cloister-ractor`) feeds
//! the [`Membership`] machine what happened, with the time as a value, and
//! carries out the [`Effect`]s it answers with. That split is what lets the
//! simulator (feature `sim`) drive hundreds of nodes through partitions in
//! milliseconds.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod certified;
pub mod config;
pub mod events;
pub mod membership;
pub mod names;
pub mod ring;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod tally;
pub mod timer;

pub use config::{Config, ConfigError, Sentry};
pub use events::{DownReason, NodeState, Snapshot, TopologyEvent};
pub use membership::{DropReason, Effect, Heartbeat, Input, Membership, SessionId};
pub use names::{Host, Incarnation, NameError, NodeAddr, NodeName, SentryNode};
pub use ring::{Digest, Ring};
pub use timer::{Timer, TimerCounts, TimerToken};
