//! Shared helpers of cloister's end-to-end tests: the `cloister-node` binary,
//! built once per test binary, and the rule that clusters run one at a time.
//!
//! The tests themselves live in `tests/` and drive real processes through
//! [`cloister_ractor::testing::LocalCluster`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cloister_examples::build_node_binary;
use cloister_ractor::testing::{LocalCluster, LocalClusterBuilder};

/// Builds `cloister-node` (with `$CARGO`, in this workspace, debug profile)
/// the first time it is asked for, and returns its path.
///
/// A test binary cannot name another package's binary through
/// `CARGO_BIN_EXE_*`, and `cargo test -p cloister-tests` does not build it,
/// hence the nested `cargo build`. Panics with cargo's error if it fails.
pub fn ensure_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match build_node_binary("cloister-node") {
        Ok(path) => path,
        Err(err) => panic!("cannot build cloister-node: {err}"),
    })
}

/// A cluster builder of `size` nodes that runs the freshly built binary.
pub fn cluster(size: usize) -> LocalClusterBuilder {
    LocalCluster::builder(ensure_binary(), size)
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
