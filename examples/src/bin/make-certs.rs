//! `make-certs`: the certificates of the Docker walkthrough's TLS variant,
//! made offline (rcgen, no openssl): a new CA and one node certificate that
//! every replica of the compose service shares, written as `ca.pem`,
//! `node.pem` and `node.key` into a directory (`docker/certs` by default),
//! where `docker/docker-compose.tls.yml` mounts them.
//!
//! One certificate for the whole service, not one per node: the replicas
//! of `--scale` share one service definition, so they could not mount
//! different files, and their names are their IP addresses, which nobody
//! knows before they start. Nodes check a peer's chain to the CA, not the
//! name in its certificate, so the shared certificate is enough; whoever
//! holds its key is a node of the cluster. The CA's key is not written:
//! run `make-certs --force` again for new certificates (every node then
//! needs a restart).
//!
//! ```text
//! cargo run -p cloister-examples --bin make-certs            # docker/certs
//! cargo run -p cloister-examples --bin make-certs -- /path/to/dir --force
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use cloister_examples::certs::{write_service_certs, Ca, SERVICE_FILES};

#[derive(Parser, Debug)]
#[command(about = "A CA and a node certificate for the Docker walkthrough's TLS variant")]
struct Args {
    /// The directory to write ca.pem, node.pem and node.key into (created
    /// if missing).
    #[arg(default_value = "docker/certs")]
    dir: PathBuf,
    /// Replace the files if the directory already has them.
    #[arg(long)]
    force: bool,
    /// The name the node certificate carries (peers check its chain to the
    /// CA, not this name).
    #[arg(long, default_value = "cloister_test")]
    name: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let existing: Vec<String> = SERVICE_FILES
        .iter()
        .map(|file| args.dir.join(file))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        bail!(
            "not overwriting {}: pass --force to replace the certificates (every node then \
             needs a restart)",
            existing.join(", ")
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let ca = Ca::new("cloister walkthrough CA")?;
    let written = write_service_certs(&args.dir, &ca, &ca, &args.name)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
