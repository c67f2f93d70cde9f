//! `rogue-heartbeat`: a peer with the cluster's cookie that lies. It is no
//! cloister node: it starts a plain ractor_cluster NodeServer, dials one
//! node, finds that node's herald in the app's `pg` group, and casts it
//! heartbeats in another node's name, saying that node is leaving.
//!
//! It is what anyone holding the cookie can do with ractor_cluster alone: a
//! message type of its own whose variant has the herald's variant name
//! (`HeraldMessage::Heartbeat(Vec<u8>)`), sent through an `ActorRef` made
//! from the remote cell. examples/tests/forged_heartbeat.rs runs it against a
//! `LocalCluster` and checks that the node it lies to keeps the victim.
//!
//! It prints one JSON line on stdout, `{"event":"forged","sent":N}`, once the
//! heartbeats are cast, then stays connected until its stdin closes (or
//! `--linger` runs out), so that the session it lied over stays up.
//!
//! ```text
//! cargo run -p cloister-examples --bin rogue-heartbeat -- \
//!     --target 127.0.0.1:4000 --victim node2@127.0.0.1
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, RactorClusterMessage};
use serde_json::json;
use tokio::io::AsyncReadExt;

/// The herald's wire format, as an attacker would write it: same variant
/// name, same payload (a JSON `Heartbeat`).
#[derive(RactorClusterMessage)]
enum HeraldMessage {
    Heartbeat(Vec<u8>),
}

#[derive(Parser, Debug)]
#[command(about = "Casts forged cloister heartbeats to one node")]
struct Args {
    /// The node to lie to, `host:port`.
    #[arg(long)]
    target: String,
    /// The node to speak for, `name@host`.
    #[arg(long)]
    victim: String,
    /// The cluster's app (its herald group is `cloister:{app}`).
    #[arg(long, default_value = "cloister")]
    app: String,
    /// The cluster's cookie.
    #[arg(long, default_value = "cloister")]
    cookie: String,
    /// The cluster's `ring_vnodes`, so the lie is not refused for that.
    #[arg(long, default_value_t = 256)]
    ring_vnodes: u32,
    /// How many forged heartbeats to cast, 10 ms apart.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// How long to wait for the target's herald, in seconds.
    #[arg(long, default_value_t = 20)]
    wait: u64,
    /// How long to stay connected afterwards at most, in seconds.
    #[arg(long, default_value_t = 120)]
    linger: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cloister_examples::init_logs();
    let args = Args::parse();

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = NodeServer::new(
        port,
        args.cookie.clone(),
        "rogue".into(),
        "127.0.0.1".into(),
        None,
        Some(NodeConnectionMode::Isolated),
    );
    let (node_server, _) = Actor::spawn(None, server, ())
        .await
        .context("cannot start a NodeServer")?;
    ractor_cluster::client_connect(&node_server, args.target.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("dial {} failed: {e:?}", args.target))?;

    // The target's herald, once its session has synced the group.
    let group = format!("cloister:{}", args.app);
    let mut herald = None;
    for _ in 0..args.wait * 20 {
        herald = ractor::pg::get_members(&group)
            .into_iter()
            .find(|cell| !cell.get_id().is_local());
        if herald.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(herald) = herald else {
        bail!("no herald in pg group {group} within {}s", args.wait);
    };
    let herald: ActorRef<HeraldMessage> = ActorRef::from(herald);

    // "The victim is leaving", from the victim's newest possible process, so
    // that no heartbeat of the real one outranks it on an incarnation order.
    let forged = json!({
        "from": args.victim,
        "app": args.app,
        "incarnation": u64::MAX,
        "digest": "0000000000000000",
        "ring_vnodes": args.ring_vnodes,
        "leaving": true,
    });
    let bytes = serde_json::to_vec(&forged)?;
    for _ in 0..args.count {
        herald
            .cast(HeraldMessage::Heartbeat(bytes.clone()))
            .context("cast to the herald")?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{}", json!({ "event": "forged", "sent": args.count }));

    // Stay connected until the harness lets go (stdin closes) or the linger
    // runs out.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(args.linger), async {
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    node_server.stop(None);
    Ok(())
}
