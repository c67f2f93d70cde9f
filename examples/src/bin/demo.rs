//! The README's main command: `cargo run -p cloister-examples --bin demo`.
//!
//! Builds `cloister-node`, starts three of them on 127.0.0.1 with
//! `consensus = 3`, and tells what happens: the cluster assembles, the keys
//! find their owners, a node is killed and the survivors rehash, it comes back
//! and everyone agrees again. Every step has a deadline; on failure the demo
//! says which step and exits 1. No process outlives it: dropping the
//! `LocalCluster` kills whatever still runs.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use cloister_ractor::testing::{last_of, LocalCluster};
use serde_json::Value;

const KEYS: &str = "user:1,user:2,user:3,order:42";
/// The deadline of every step: far more than a healthy cluster needs.
const STEP: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\ndemo failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    println!("Building cloister-node (the first run compiles it)...");
    let binary =
        cloister_examples::build_node_binary("cloister-node").context("building cloister-node")?;
    let mut cluster = LocalCluster::builder(binary, 3)
        .consensus(3)
        .extra_args(["--show-keys", KEYS])
        .start()
        .context("starting three nodes")?;
    let mut story = Narrator::new(cluster.size());
    let (all, node1, survivors) = ([0, 1, 2], 0, [1, 2]);
    let started = |c: &LocalCluster, i| last_of(&c.events(i), "app_started").is_some();
    println!("Started node1, node2 and node3 on 127.0.0.1 with consensus 3:");
    println!("none is ready until all three see each other.\n");

    story.until(&cluster, "all three ready, applications started", |c| {
        c.agree(&all, "ready") && all.iter().all(|&i| started(c, i))
    })?;
    println!("\nAssembled. Each node answers node_for(key) from its own copy of the ring:");
    print_owners(&cluster, &all)?;

    println!("\nKilling node1 (SIGKILL: no goodbye, its socket just closes)...\n");
    cluster.kill(node1)?;
    story.until(&cluster, "the survivors agree on a 2-node ring", |c| {
        c.agree(&survivors, "rehashing")
    })?;
    println!("\n2 members < consensus 3: the survivors are rehashing. Keys now land on:");
    print_owners(&cluster, &survivors)?;

    println!("\nRestarting node1 (a new incarnation on the same port)...\n");
    cluster.restart(node1)?;
    story.forget(node1);
    story.until(&cluster, "all three ready again", |c| {
        c.agree(&all, "ready") && started(c, node1)
    })?;
    let digest = cluster.digest(node1).unwrap_or_default();
    println!("\nAll three are ready again on one ring (digest {digest}). Owners:");
    print_owners(&cluster, &all)?;

    println!("\nStopping the nodes (SIGTERM: each one leaves the cluster gracefully)...\n");
    for i in all {
        let status = cluster.terminate(i, STEP).map_err(|err| anyhow!(err))?;
        story.print_new(&cluster);
        if !status.success() {
            return Err(anyhow!("{} exited with {status}", cluster.node_name(i)));
        }
    }
    println!("\nDone: every node left and exited.");
    Ok(())
}

/// Prints the owners of the keys once every node in `nodes` has printed them
/// for its current ring, and checks that they all agree.
fn print_owners(cluster: &LocalCluster, nodes: &[usize]) -> anyhow::Result<()> {
    let owners_now = |c: &LocalCluster, i: usize| {
        let events = c.events(i);
        let owners = last_of(&events, "owners")?;
        let current = owners["ring_digest"].as_str() == c.digest(i).as_deref();
        current.then(|| owners["owners"].clone())
    };
    let what = "every node's owners line for its current ring";
    let printed = |c: &LocalCluster| nodes.iter().all(|&i| owners_now(c, i).is_some());
    cluster
        .wait_until(what, STEP, printed)
        .map_err(|err| anyhow!(err))?;
    let views: Vec<Value> = nodes
        .iter()
        .filter_map(|&i| owners_now(cluster, i))
        .collect();
    if views.iter().any(|view| view != &views[0]) {
        return Err(anyhow!("the nodes disagree on the owners: {views:?}"));
    }
    for key in KEYS.split(',') {
        let owner = views[0][key].as_str().unwrap_or("?");
        println!("    {key:<10} -> {owner}");
    }
    println!("  (all {} nodes give the same answers)", views.len());
    Ok(())
}

/// Prints the nodes' events as they arrive, in words.
struct Narrator {
    /// How many events of each node's current process were told already.
    told: Vec<usize>,
    start_ms: u128,
}

impl Narrator {
    fn new(size: usize) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH);
        let start_ms = now.map_or(0, |since| since.as_millis());
        Narrator {
            told: vec![0; size],
            start_ms,
        }
    }

    /// Node `i` restarted: its events begin again from zero.
    fn forget(&mut self, i: usize) {
        self.told[i] = 0;
    }

    /// Narrates until `done` holds, for at most [`STEP`].
    fn until(
        &mut self,
        cluster: &LocalCluster,
        what: &str,
        mut done: impl FnMut(&LocalCluster) -> bool,
    ) -> anyhow::Result<()> {
        let result = cluster.wait_until(what, STEP, |c| {
            self.print_new(c);
            done(c)
        });
        self.print_new(cluster);
        result.map_err(|err| anyhow!(err))
    }

    /// Prints the events that arrived since the last call, in time order.
    fn print_new(&mut self, cluster: &LocalCluster) {
        let mut new = Vec::new();
        for (i, told) in self.told.iter_mut().enumerate() {
            let events = cluster.events(i);
            new.extend(events.iter().skip(*told).cloned());
            *told = (*told).max(events.len());
        }
        new.sort_by_key(|event| event["ts"].as_u64());
        for event in new {
            let Some(line) = describe(&event) else {
                continue;
            };
            let ts = event["ts"].as_u64().map_or(0, u128::from);
            let at = ts.saturating_sub(self.start_ms) as f64 / 1000.0;
            let node = short(event["node"].as_str().unwrap_or("?"));
            println!("  [{at:7.3}s] {node}: {line}");
        }
    }
}

/// One event in words, or `None` for the ones the story skips.
fn describe(event: &Value) -> Option<String> {
    let text = |field: &str| event[field].as_str().unwrap_or("?").to_string();
    let members = || {
        let names = event["members"].as_array().into_iter().flatten();
        let names: Vec<&str> = names.filter_map(Value::as_str).map(short).collect();
        names.join(", ")
    };
    Some(match event["event"].as_str()? {
        "snapshot" => format!("running, {}", text("state")),
        "state_changed" => format!(
            "{} -> {}   members [{}]",
            text("from"),
            text("to"),
            members()
        ),
        "node_up" => format!("sees {} up", short(&text("peer"))),
        "node_down" => format!("sees {} down ({})", short(&text("peer")), text("reason")),
        "ring_changed" => format!(
            "ring is now [{}], digest {}",
            members(),
            text("ring_digest")
        ),
        "sentry_changed" => match event["sentry"].as_str() {
            Some(sentry) => format!("the sentry is now {}", short(sentry)),
            None => "no sentry now".to_string(),
        },
        "leaving" => format!(
            "leaving: goodbyes sent, draining (up to {} ms)",
            event["drain_timeout_ms"]
        ),
        "app_started" => "consensus reached: the application started".to_string(),
        "startup_failed" => format!("startup failed: {}", text("error")),
        _ => return None,
    })
}

/// `node1@127.0.0.1` -> `node1`.
fn short(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}
