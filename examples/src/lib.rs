//! Examples and the demo node for cloister.
//!
//! The binaries here are driven by
//! [`cloister_ractor::testing::LocalCluster`]; [`build_node_binary`] builds the
//! one they run.

pub mod bench;
pub mod certs;
pub mod garbled;
pub mod http;
pub mod logs;
pub mod memory;

pub use logs::{init_logs, try_init_logs, LogFormat};

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Builds a binary of this package (`cloister-node`, `kv-node`) with cargo
/// (`$CARGO`, else `cargo` on the PATH) in this workspace, with the profile
/// of the running executable, and returns the path cargo reports for it.
///
/// A program in another package (the tests, the demo run alone) cannot name
/// these binaries through `CARGO_BIN_EXE_*`, hence the nested build.
pub fn build_node_binary(bin: &str) -> io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["-p", "cloister-examples", "--bin", bin]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command.stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        let why = format!("cargo build of {bin} failed: {}", output.status);
        return Err(io::Error::other(why));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["target"]["name"] == bin)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from));
    executable.ok_or_else(|| io::Error::other(format!("cargo reported no {bin} executable")))
}
