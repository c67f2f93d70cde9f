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
//! Before timing with criterion, a real bench run (`--bench`) prints an
//! interleaved pass: each round times every variant once (100,000 calls) and
//! the ratios are taken within the round, so a burst of load from elsewhere
//! hits both sides of a ratio; medians over 40 rounds.
//!
//! Benchmark ids:
//! - `handle_1/Cloister::node_for`: the real handle, `cloister.node_for(key)`.
//! - `handle_1/cloister.ring().node_for`: `cloister.ring().node_for(key).cloned()`
//!   per call (a load, an `Arc` clone and drop, the lookup).
//! - `handle_1/Cloister::digest`: a load and a field read, the handle's fixed cost.
//! - `handle_1/Ring::node_for`: the ring taken once, `ring.node_for(key)`.
//! - `handle_1/Ring::node_for+clone`: the same, returning an owned `NodeName`.
//! - `handle_1/ArcSwap+Ring::node_for+clone`: the mirror below over the handle's
//!   own ring, to check that the mirror costs what the handle does.
//! - `ring_100x256/Ring::node_for`: `Ring::new(100 members, 256)` lookup, by reference.
//! - `ring_100x256/Ring::node_for+clone`: the same, returning an owned `NodeName`
//!   (what the handle returns: an `Arc<str>` increment).
//! - `ring_100x256/ArcSwap+Ring::node_for+clone`: the handle's read path at 100 members.
//! - `ring_100x256/ArcSwap load only`: the load and a field read alone.
//! - `ring_100x256/hashring`: raw `HashRing<(String, u32)>::get`, same members and vnodes.

use std::hint::black_box;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cloister_core::{Config, Host, NodeName, Ring};
use cloister_ractor::{Cloister, CloisterManager, CloisterMessage};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
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
        .with_listen_port(port)
        .with_listen_addr([127, 0, 0, 1].into());
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
        (spawned.0, spawned.2)
    })
}

/// Times `lookup` over the keys in turn, as `name` in `group`.
fn over_keys<R>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    keys: &[String],
    mut lookup: impl FnMut(&str) -> R,
) {
    group.bench_function(name, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            lookup(black_box(keys[i].as_str()))
        })
    });
}

/// The ring's own lookups, then the handle's mirror over the same ring.
fn ring_lookups(group: &mut BenchmarkGroup<'_, WallTime>, ring: &Arc<Ring>, keys: &[String]) {
    over_keys(group, "Ring::node_for", keys, |key| {
        ring.node_for(key).is_some()
    });
    over_keys(group, "Ring::node_for+clone", keys, |key| {
        ring.node_for(key).cloned()
    });
    let view = ArcSwap::from_pointee(View {
        ring: Arc::clone(ring),
    });
    over_keys(group, "ArcSwap+Ring::node_for+clone", keys, |key| {
        view.load().ring.node_for(key).cloned()
    });
}

fn handle(c: &mut Criterion, cloister: &Cloister) {
    let keys = keys();
    assert!(cloister.node_for("probe").is_some(), "the ring is empty");
    let mut group = c.benchmark_group(format!("handle_{}", cloister.members().len()));
    over_keys(&mut group, "Cloister::node_for", &keys, |key| {
        cloister.node_for(key)
    });
    over_keys(&mut group, "cloister.ring().node_for", &keys, |key| {
        cloister.ring().node_for(key).cloned()
    });
    group.bench_function("Cloister::digest", |b| {
        b.iter(|| black_box(cloister.digest()))
    });
    ring_lookups(&mut group, &cloister.ring(), &keys);
    group.finish();
}

fn hundred(c: &mut Criterion) {
    const MEMBERS: usize = 100;
    const VNODES: u32 = 256;
    let keys = keys();
    let names = member_names(MEMBERS);
    let ring = Arc::new(Ring::new(names.clone(), VNODES));
    let mut raw: HashRing<(String, u32)> = HashRing::new();
    raw.batch_add(
        names
            .iter()
            .flat_map(|name| (0..VNODES).map(move |i| (name.to_string(), i)))
            .collect(),
    );

    let mut group = c.benchmark_group(format!("ring_{MEMBERS}x{VNODES}"));
    ring_lookups(&mut group, &ring, &keys);
    let view = ArcSwap::from_pointee(View {
        ring: Arc::clone(&ring),
    });
    group.bench_function("ArcSwap load only", |b| {
        b.iter(|| black_box(view.load().ring.digest()))
    });
    over_keys(&mut group, "hashring", &keys, |key| raw.get(&key).is_some());
    group.finish();
}

/// Nanoseconds per call of `lookup` over one pass of `CALLS` keys.
fn per_call<R>(keys: &[String], mut lookup: impl FnMut(&str) -> R) -> f64 {
    const CALLS: usize = 100_000;
    let start = Instant::now();
    for i in 0..CALLS {
        black_box(lookup(black_box(keys[i % keys.len()].as_str())));
    }
    start.elapsed().as_nanos() as f64 / CALLS as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Criterion times one benchmark after the other, so on a shared machine a
/// burst of load lands on some and not others. This pass interleaves them:
/// every round times each variant once (100,000 calls), and the ratios are
/// taken within a round, then the median over rounds is printed.
fn print_interleaved(cloister: &Cloister) {
    const ROUNDS: usize = 41;
    let keys = keys();
    let one = cloister.ring();
    let one_view = ArcSwap::from_pointee(View {
        ring: Arc::clone(&one),
    });
    let hundred = Arc::new(Ring::new(member_names(100), 256));
    let view = ArcSwap::from_pointee(View {
        ring: Arc::clone(&hundred),
    });
    let names = [
        "1 member: Ring::node_for (by reference)",
        "1 member: Ring::node_for + clone",
        "1 member: Cloister::node_for (the real handle)",
        "1 member: ArcSwap + Ring::node_for + clone (mirror)",
        "100x256: Ring::node_for (by reference)",
        "100x256: Ring::node_for + clone",
        "100x256: ArcSwap + Ring::node_for + clone (the handle's path)",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        let row = [
            per_call(&keys, |k| one.node_for(k).is_some()),
            per_call(&keys, |k| one.node_for(k).cloned()),
            per_call(&keys, |k| cloister.node_for(k)),
            per_call(&keys, |k| one_view.load().ring.node_for(k).cloned()),
            per_call(&keys, |k| hundred.node_for(k).is_some()),
            per_call(&keys, |k| hundred.node_for(k).cloned()),
            per_call(&keys, |k| view.load().ring.node_for(k).cloned()),
        ];
        if round == 0 {
            continue; // warm-up
        }
        for (i, t) in row.into_iter().enumerate() {
            times[i].push(t);
        }
    }
    let ratio = |a: usize, b: usize| {
        let mut r: Vec<f64> = times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect();
        median(&mut r)
    };
    println!(
        "interleaved, {} rounds of 100,000 calls per variant",
        ROUNDS - 1
    );
    println!("| variant | median ns/call | min ns/call |");
    println!("|---|---|---|");
    for (name, t) in names.iter().zip(&times) {
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        println!("| {name} | {:.1} | {min:.1} |", median(&mut t.clone()));
    }
    println!("| ratio | median over rounds |");
    println!("|---|---|");
    for (what, a, b) in [
        ("1 member: Cloister::node_for / Ring::node_for", 2, 0),
        (
            "1 member: Cloister::node_for / Ring::node_for + clone",
            2,
            1,
        ),
        ("1 member: mirror / Cloister::node_for", 3, 2),
        ("100x256: handle path / Ring::node_for", 6, 4),
        ("100x256: handle path / Ring::node_for + clone", 6, 5),
    ] {
        println!("| {what} | {:.3} |", ratio(a, b));
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (manager, cloister) = start_manager(&runtime);
    // Criterion's own rule: `cargo bench` passes `--bench`, `cargo test --benches` does not.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test") {
        print_interleaved(&cloister);
    }
    handle(&mut criterion, &cloister);
    hundred(&mut criterion);
    manager.stop(None);
    drop(runtime);
    criterion.final_summary();
}
