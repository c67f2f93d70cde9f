//! Links cloister-node with `order/cloister-node.txt`, the functions a node
//! runs, hottest first (see `order/README.md`): placed together, they fill
//! fewer pages, and a node keeps fewer of its binary's pages resident.

use std::path::Path;
use std::process::Command;

fn main() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("order/cloister-node.txt");
    println!("cargo::rerun-if-changed={}", file.display());
    println!("cargo::rerun-if-env-changed=CLOISTER_NO_ORDER");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    if std::env::var_os("CLOISTER_NO_ORDER").is_some() || !links_with_lld() {
        return;
    }
    for arg in [
        format!("--symbol-ordering-file={}", file.display()),
        // Names missing from this build (another toolchain or dependency
        // version) are skipped: the binary is only less compact.
        "--no-warn-symbol-ordering".to_string(),
    ] {
        println!("cargo::rustc-link-arg-bin=cloister-node=-Wl,{arg}");
    }
}

/// Whether rustc links this build with its own lld, the only linker here
/// that reads a symbol ordering file: the default on x86_64 Linux (GNU)
/// from Rust 1.90, unless the build chose its linker itself (`-C linker`,
/// `-C link-self-contained`, `-C link-arg=-fuse-ld=...` or the target's
/// linker variable).
fn links_with_lld() -> bool {
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu" {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let chosen = ["linker", "link-self-contained", "fuse-ld"];
    if chosen.iter().any(|flag| flags.contains(flag)) {
        return false;
    }
    let target_linker = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER";
    if std::env::var_os(target_linker).is_some() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("-V")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
