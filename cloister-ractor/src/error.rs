//! The errors the runtime gives its callers.

use std::error::Error;
use std::io;

use cloister_core::config::OwnEntryError;
use cloister_core::membership::AssemblyReport;
use cloister_core::ConfigError;
use ractor::SpawnErr;

/// What can go wrong starting or using cloister. Each variant says what
/// happened; none leaves a half-started node behind.
///
/// # Examples
///
/// Say which peers were missing when the cluster did not assemble in time:
///
/// ```no_run
/// use cloister_ractor::{CloisterError, CloisterManager};
/// # async fn example(config: cloister_core::Config) {
/// match CloisterManager::spawn(None, config).await {
///     Ok((_manager, _, cloister)) => println!("ready as {}", cloister.me()),
///     Err(CloisterError::ConsensusTimeout(report)) => {
///         for peer in &report.missing {
///             eprintln!("{} not connected: {}", peer.name, peer.why);
///         }
///     }
///     Err(error) => eprintln!("cannot start: {error}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum CloisterError {
    /// The configuration is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// This node cannot take its place in its static `sentry` list: it
    /// cannot tell which entry is its own (its name is listed on several
    /// hosts, none or more than one of them this machine's, or not at all
    /// and `advertised_host` is unset), or `consensus` is more than the
    /// nodes the list allows. The message names the entries and what to
    /// set. Nothing was started.
    #[error(transparent)]
    OwnEntry(#[from] OwnEntryError),
    /// The node could not listen on `listen_addr:listen_port`: the port is
    /// taken by another process (`error.kind()` is `AddrInUse`), this user
    /// may not bind it, or `listen_addr` is no address of this machine
    /// (`AddrNotAvailable`). Nothing was left running.
    #[error("cannot listen on {addr}: {}", plain(.error))]
    Listen {
        /// The address it tried: `listen_addr` and `listen_port`.
        addr: std::net::SocketAddr,
        /// The error the operating system gave.
        #[source]
        error: io::Error,
    },
    /// TLS is on but a file of `tls_cert`, `tls_key` or `tls_ca` cannot be
    /// used: missing or unreadable, no PEM item of the right kind, a key
    /// that is not the certificate's, a CA that is not one. Nothing was
    /// started.
    #[error("cannot use `{field}` = {}: {reason}", .path.display())]
    Tls {
        /// The field naming the file.
        field: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The management endpoint could not listen on `management_addr`
    /// (taken, or not an address of this machine), or `management_addr` is
    /// set in a build without the `management` feature. Nothing was left
    /// running.
    #[error("cannot serve the management endpoint on {addr}: {reason}")]
    Management {
        /// The configured `management_addr`.
        addr: std::net::SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The Manager could not start, and nothing was left running: this node
    /// cannot tell its own name (no address of this machine in the
    /// service's DNS answer), or another part of it failed; `reason` says
    /// which.
    #[error("cannot start the cloister manager (listen port {port}): {reason}")]
    Spawn {
        /// The configured listen port.
        port: u16,
        /// What failed.
        reason: String,
    },
    /// `consensus` members were not connected by the startup deadline; the
    /// Manager and its NodeServer were stopped.
    #[error("{}", describe_timeout(.0))]
    ConsensusTimeout(Box<AssemblyReport>),
    /// The Manager is gone (stopped or crashed); the call could not be made.
    #[error("the cloister manager is not running: {0}")]
    ManagerGone(String),
    /// [`leave`](crate::leave) waited this long without an answer. The leave
    /// goes on: the node stops at `drain_timeout` at the latest.
    #[error(
        "the leave did not end within {waited:?}; it goes on, and the node stops at \
         `drain_timeout` at the latest"
    )]
    LeaveTimeout {
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// The process could not listen for SIGTERM or SIGINT; nothing changed.
    #[error("cannot listen for SIGTERM and SIGINT: {0}")]
    Signals(String),
}

impl CloisterError {
    /// The `CloisterError` that stopped an actor's start, however deep ractor
    /// nested it: a supervisor whose `pre_start` returns the error of
    /// [`CloisterManager::start`](crate::CloisterManager::start) fails to
    /// spawn with it inside, worded by ractor as a panic.
    ///
    /// ```no_run
    /// # async fn example(root: impl ractor::Actor<Arguments = ()>) {
    /// use cloister_ractor::CloisterError;
    /// if let Err(error) = ractor::Actor::spawn(None, root, ()).await {
    ///     match CloisterError::cause_of(&error) {
    ///         Some(CloisterError::Listen { addr, .. }) => eprintln!("{addr} is taken"),
    ///         Some(cloister) => eprintln!("{cloister}"),
    ///         None => eprintln!("{error}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn cause_of(error: &SpawnErr) -> Option<&CloisterError> {
        match error {
            SpawnErr::StartupFailed(inner) => match inner.downcast_ref::<SpawnErr>() {
                Some(nested) => CloisterError::cause_of(nested),
                None => inner.downcast_ref(),
            },
            _ => None,
        }
    }

    /// The error for a NodeServer listening on `addr` that did not start:
    /// it does nothing but open its listener.
    pub(crate) fn listen(addr: std::net::SocketAddr, error: SpawnErr) -> CloisterError {
        let error = match innermost(error) {
            Ok(cause) => match cause.downcast::<io::Error>() {
                Ok(error) => *error,
                Err(other) => io::Error::other(other),
            },
            Err(spawn) => io::Error::other(spawn.to_string()),
        };
        CloisterError::Listen { addr, error }
    }

    /// The error for a Manager on `port` that did not start: the
    /// `CloisterError` its `pre_start` raised (a taken port), else the
    /// innermost reason as [`CloisterError::Spawn`].
    pub(crate) fn not_started(port: u16, error: SpawnErr) -> CloisterError {
        let reason = match innermost(error) {
            Ok(cause) => match cause.downcast::<CloisterError>() {
                Ok(error) => return *error,
                Err(cause) => match cause.downcast::<ConfigError>() {
                    Ok(error) => return CloisterError::Config(*error),
                    Err(cause) => match cause.downcast::<OwnEntryError>() {
                        Ok(refusal) => return CloisterError::OwnEntry(*refusal),
                        Err(cause) => cause.to_string(),
                    },
                },
            },
            Err(spawn) => spawn.to_string(),
        };
        CloisterError::Spawn { port, reason }
    }
}

/// The innermost cause of a failed start: ractor wraps the failure of every
/// actor that did not start in the next one's `StartupFailed`, and words each
/// as a panic ("Actor panicked during startup '...'"), however deep it was
/// (a listener inside the NodeServer inside the Manager).
fn innermost(error: SpawnErr) -> Result<Box<dyn Error + Send + Sync>, SpawnErr> {
    match error {
        SpawnErr::StartupFailed(inner) => match inner.downcast::<SpawnErr>() {
            Ok(nested) => innermost(*nested),
            Err(cause) => Ok(cause),
        },
        other => Err(other),
    }
}

/// An operating-system error as its kind ("address in use"), without the
/// errno; any other error as itself.
pub(crate) fn plain(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(_) => error.kind().to_string(),
        None => error.to_string(),
    }
}

fn describe_timeout(report: &AssemblyReport) -> String {
    let mut text = format!(
        "consensus not reached by the startup deadline: wanted {} member(s), had {} ({})",
        report.wanted,
        report.members.len(),
        join(report.members.iter().map(ToString::to_string)),
    );
    if report.missing.is_empty() {
        text.push_str("; no other node is known");
    } else {
        text.push_str("; not connected: ");
        text.push_str(&join(report.missing.iter().map(|m| {
            let addr = m
                .addr
                .as_ref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default();
            format!("{}{addr} ({})", m.name, m.why)
        })));
    }
    if let Some(error) = &report.discovery_error {
        text.push_str(&format!("; discovery failed: {error}"));
    }
    text
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
