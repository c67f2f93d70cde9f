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
//! With `--garble` it lies in another way: it sends the target's key owner
//! (`cloister-node`'s `key_owner` group) messages whose fields no honest
//! node sends, `Tick` casts with 3 bytes where cloister-node's `Tick` once
//! took a `u64` (8 bytes), and `Owner` calls with a key that is not UTF-8.
//! examples/tests/forged_heartbeat.rs checks that the node neither panics
//! nor logs a line per message.
//!
//! It prints one JSON line on stdout, `{"event":"forged","sent":N}` (or
//! `"garbled"`), once the messages are sent, then stays connected until its
//! stdin closes (or `--linger` runs out), so that the session it lied over
//! stays up.
//!
//! ```text
//! cargo run -p cloister-examples --bin rogue-heartbeat -- \
//!     --target 127.0.0.1:4000 --victim node2@127.0.0.1
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};
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

/// cloister-node's key owner's variant names, with fields of any bytes.
#[derive(RactorClusterMessage)]
enum KeyOwnerJunk {
    Tick(Vec<u8>),
    #[rpc]
    Owner(Vec<u8>, RpcReplyPort<Vec<u8>>),
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
    /// Send the key owner garbled messages instead of forged heartbeats.
    #[arg(long)]
    garble: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cloister_examples::init_logs();
    let args = Args::parse();

    // The rogue only dials, but a NodeServer needs a port of its own. A
    // port found free may be taken again before the NodeServer binds it
    // (other tests start nodes meanwhile): a few tries, each a new port.
    let mut tries = 0;
    let node_server = loop {
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
        match Actor::spawn(None, server, ()).await {
            Ok((node_server, _)) => break node_server,
            Err(e) if tries < 5 && e.to_string().contains("Address already in use") => {
                tries += 1;
            }
            Err(e) => return Err(e).context("cannot start a NodeServer"),
        }
    };
    ractor_cluster::client_connect(&node_server, args.target.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("dial {} failed: {e:?}", args.target))?;

    if args.garble {
        let owner: ActorRef<KeyOwnerJunk> = remote_member("cloister:group:key_owner", args.wait)
            .await?
            .into();
        for _ in 0..args.count {
            owner
                .cast(KeyOwnerJunk::Tick(vec![1, 2, 3]))
                .context("cast to the key owner")?;
            // Unanswered by a node that checks the key: a short wait each.
            let _ = owner
                .call(
                    |reply| KeyOwnerJunk::Owner(vec![0x80, 0xff], reply),
                    Some(Duration::from_millis(20)),
                )
                .await;
        }
        println!("{}", json!({ "event": "garbled", "sent": args.count }));
        return linger(node_server, args.linger).await;
    }

    // The target's herald, once its session has synced the group.
    let group = format!("cloister:{}", args.app);
    let herald: ActorRef<HeraldMessage> = remote_member(&group, args.wait).await?.into();

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
    linger(node_server, args.linger).await
}

/// The target's actor in pg group `group`, once its session has synced the
/// group, waiting `wait` seconds at most.
async fn remote_member(group: &str, wait: u64) -> anyhow::Result<ActorCell> {
    for _ in 0..wait * 20 {
        let member = ractor::pg::get_members(&group.to_string())
            .into_iter()
            .find(|cell| !cell.get_id().is_local());
        if let Some(member) = member {
            return Ok(member);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no remote member in pg group {group} within {wait}s")
}

/// Stays connected until the harness lets go (stdin closes) or `linger`
/// seconds run out.
async fn linger(
    node_server: ActorRef<ractor_cluster::NodeServerMessage>,
    linger: u64,
) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(linger), async {
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    node_server.stop(None);
    Ok(())
}
