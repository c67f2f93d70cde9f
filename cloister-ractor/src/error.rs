//! The errors the runtime gives its callers.

use cloister_core::config::OwnEntryError;
use cloister_core::membership::AssemblyReport;
use cloister_core::ConfigError;

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
///     Ok((_manager, cloister, _)) => println!("ready as {}", cloister.me()),
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
    /// The Manager could not start, and nothing was left running: the
    /// listen port is taken, or this node cannot tell its own name (no
    /// address of this machine in the service's DNS answer), or the
    /// NodeServer failed; `reason` says which.
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
