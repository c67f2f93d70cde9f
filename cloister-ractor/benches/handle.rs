//! The `Cloister` handle's lookup against the raw ring, for BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p cloister-ractor --bench handle -- --measurement-time 2 --warm-up-time 1
//! ```
//!
//! A `Cloister` handle only comes from a running Manager, so the bench starts a
//! real one in-process (tokio runtime, one worker) on a free port of
//! 127.0.0.1, with consensus 1 and a static sentry list of just itself, and
//! waits until it is ready. Its ring then has one member, which makes every
//! lookup cheap and is not representative, so the bench also rebuilds what the
//! handle does at 100 members: an `ArcSwap` of a view holding an `Arc<Ring>`,
//! read as `view.load().ring.node_for(key).cloned()` (handle.rs, verbatim).
//!
//! Benchmark ids:
//! - `handle_1/Cloister::node_for`: the real handle, `cloister.node_for(key)`.
//! - `handle_1/cloister.ring().node_for`: `cloister.ring().node_for(key).cloned()`
//!   per call (a load, an `Arc` clone and drop, the lookup).
//! - `handle_1/Ring::node_for`: the ring taken once, `ring.node_for(key)`.
//! - `ring_100x256/Ring::node_for`: `Ring::new(100 members, 256)` lookup, by reference.
//! - `ring_100x256/Ring::node_for+clone`: the same, returning an owned `NodeName`
//!   (what the handle returns: an `Arc<str>` increment).
//! - `ring_100x256/ArcSwap+Ring::node_for+clone`: the handle's read path at 100 members.
//! - `ring_100x256/hashring`: raw `HashRing<(String, u32)>::get`, same members and vnodes.

use std::hint::black_box;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use cloister_core::{Config, Host, NodeName, Ring};
use cloister_ractor::{Cloister, CloisterManager, CloisterMessage};
use criterion::Criterion;
use hashring::HashRing;
use ractor::ActorRef;

/// Cycling through many keys keeps the branch predictor from learning one path.
fn keys() -> Vec<String> {
    (0..1024).map(|i| format!("user:{i}")).collect()
}

fn member_names(count: usize) -> Vec<NodeName> {
    (0..count)
        .map(|i| {
            format!("app@10.0.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .expect("a valid member name")
        })
        .collect()
}

/// The handle's `View` is crate-private: this is its shape, enough to read the
/// same way (the snapshot field is never read by `node_for`).
struct View {
    ring: Arc<Ring>,
}

/// A Manager on a free port of 127.0.0.1, alone in its sentry list, ready.
fn start_manager(runtime: &tokio::runtime::Runtime) -> (ActorRef<CloisterMessage>, Cloister) {
    let port = TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port();
    let mut config = Config::nodes("bench", [format!("bench@127.0.0.1:{port}")])
        .expect("a valid sentry entry")
        .with_consensus(1)
        .with_listen_port(port);
    config.advertised_host = Some("127.0.0.1".parse::<Host>().expect("an IP host"));
    let config = config.validated().expect("a valid config");
    runtime.block_on(async {
        let spawned = tokio::time::timeout(
            Duration::from_secs(20),
            CloisterManager::spawn(Some("cloister".into()), config),
        )
        .await
        .expect("the Manager is ready within 20s")
        .expect("the Manager starts");
        (spawned.0, spawned.1)
    })
}

fn handle(c: &mut Criterion, cloister: &Cloister) {
    let keys = keys();
    assert!(cloister.node_for("probe").is_some(), "the ring is empty");
    let mut group = c.benchmark_group(format!("handle_{}", cloister.members().len()));
    group.bench_function("Cloister::node_for", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            cloister.node_for(black_box(keys[i].as_str()))
        })
    });
    group.bench_function("cloister.ring().node_for", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            cloister
                .ring()
                .node_for(black_box(keys[i].as_str()))
                .cloned()
        })
    });
    let ring = cloister.ring();
    group.bench_function("Ring::node_for", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            ring.node_for(black_box(keys[i].as_str())).is_some()
        })
    });
    group.finish();
}

fn hundred(c: &mut Criterion) {
    const MEMBERS: usize = 100;
    const VNODES: u32 = 256;
    let keys = keys();
    let names = member_names(MEMBERS);
    let ring = Arc::new(Ring::new(names.clone(), VNODES));
    let view = ArcSwap::from_pointee(View {
        ring: Arc::clone(&ring),
    });
    let mut raw: HashRing<(String, u32)> = HashRing::new();
    raw.batch_add(
        names
            .iter()
            .flat_map(|name| (0..VNODES).map(move |i| (name.to_string(), i)))
            .collect(),
    );

    let mut group = c.benchmark_group(format!("ring_{MEMBERS}x{VNODES}"));
    group.bench_function("Ring::node_for", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            ring.node_for(black_box(keys[i].as_str())).is_some()
        })
    });
    group.bench_function("Ring::node_for+clone", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            ring.node_for(black_box(keys[i].as_str())).cloned()
        })
    });
    group.bench_function("ArcSwap+Ring::node_for+clone", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            view.load()
                .ring
                .node_for(black_box(keys[i].as_str()))
                .cloned()
        })
    });
    group.bench_function("hashring", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            raw.get(&black_box(keys[i].as_str())).is_some()
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (manager, cloister) = start_manager(&runtime);
    handle(&mut criterion, &cloister);
    hundred(&mut criterion);
    manager.stop(None);
    drop(runtime);
    criterion.final_summary();
}
