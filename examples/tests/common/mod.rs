//! Shared helpers of cloister's end-to-end tests: the example binaries,
//! which cargo builds for these tests (`CARGO_BIN_EXE_*`), and the rule that
//! clusters run one at a time. Each test file uses only some of them.
#![allow(dead_code)]

pub mod node;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cloister_ractor::testing::{LocalCluster, LocalClusterBuilder};

/// The `cloister-node` binary cargo built for these tests.
pub fn node_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cloister-node"))
}

/// A cluster builder of `size` nodes that runs `cloister-node`.
pub fn cluster(size: usize) -> LocalClusterBuilder {
    LocalCluster::builder(node_binary(), size)
}

/// Holds the right to run a cluster: the nodes use 100 ms heartbeats and a
/// 500 ms timeout, and several clusters at once on a two-core machine could
/// starve one into looking unresponsive. A test that panicked while holding
/// it does not poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The value of a wait, or a panic with its report printed as is (an
/// `unwrap` would show the report's newlines as `\n`).
pub fn ok<T>(result: Result<T, String>) -> T {
    match result {
        Ok(value) => value,
        Err(report) => panic!("{report}"),
    }
}

/// A port nothing listens on now (on 127.0.0.1).
pub fn free_port() -> u16 {
    free_addr().port()
}

/// An address on 127.0.0.1 nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One GET to a node's management endpoint: status and body, or what failed.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(cloister_examples::http::get(
        addr,
        path,
        Duration::from_secs(3),
    ))
}

/// The value of the sample `name` (labels included, as written) in
/// OpenMetrics text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
