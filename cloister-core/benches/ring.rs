//! `Ring` against raw `hashring`, for BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p cloister-core --bench ring -- --measurement-time 2 --warm-up-time 1
//! ```
//!
//! Criterion times `node_for` at 3, 10 and 100 members, ours and raw hashring
//! (`HashRing<(String, u32)>`, default hasher, `&str` keys) with the same
//! virtual nodes, at 256 (our default) and 128. Benchmark ids read
//! `node_for/{Ring|hashring}/{members}x{vnodes}`.
//!
//! It also times building a ring of 10 and 100 members at 256 virtual nodes
//! (`build/...`): raw hashring's `batch_add` of `(name, i)` pairs,
//! `Ring::new`, and `Ring::with_members` from the ring of all members but
//! one (a join, as a forming cluster rebuilds) and from the ring with one
//! more (a crash), each followed by the first lookup, which lays the ring
//! out; and a rebuild that nobody looks up.
//!
//! Before timing, the binary prints placement figures over 1,000,000 keys:
//! the share of keys that move when an 11th member joins 10 (ideal 1/11,
//! 9.09%) and when a middle member of 10 leaves (ideal 1/10), and the busiest
//! member's load over the mean at 10 members (ideal 1.00). It also times the
//! same lookups as criterion with ours and raw hashring interleaved, best of
//! 7, for a ratio that survives a busy machine. These are printed only in a
//! real bench run (`--bench`), not by `cargo test --benches`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use cloister_core::{NodeName, Ring};
use criterion::{BenchmarkId, Criterion};
use hashring::HashRing;

/// Raw hashring built the obvious way, the baseline we compare against.
type RawRing = HashRing<(String, u32)>;

fn member_names(count: usize) -> Vec<NodeName> {
    (0..count)
        .map(|i| {
            format!("app@10.0.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .expect("a valid member name")
        })
        .collect()
}

fn raw_ring(members: &[NodeName], vnodes: u32) -> RawRing {
    let mut ring = HashRing::new();
    ring.batch_add(
        members
            .iter()
            .flat_map(|name| (0..vnodes).map(move |i| (name.to_string(), i)))
            .collect(),
    );
    ring
}

fn node_for(c: &mut Criterion) {
    // Cycling through many keys keeps the branch predictor from learning one path.
    let keys: Vec<String> = (0..1024).map(|i| format!("user:{i}")).collect();
    let mut group = c.benchmark_group("node_for");
    for vnodes in [256, 128] {
        for members in [3, 10, 100] {
            let names = member_names(members);
            let ring = Ring::new(names.clone(), vnodes);
            let raw = raw_ring(&names, vnodes);
            let shape = format!("{members}x{vnodes}");
            group.bench_function(BenchmarkId::new("Ring", &shape), |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    ring.node_for(black_box(keys[i].as_str())).is_some()
                })
            });
            group.bench_function(BenchmarkId::new("hashring", &shape), |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    raw.get(&black_box(keys[i].as_str())).is_some()
                })
            });
        }
    }
    group.finish();
}

/// The owner of a key, for either kind of ring.
trait Owner {
    fn owner(&self, key: &str) -> &str;
}

impl Owner for Ring {
    fn owner(&self, key: &str) -> &str {
        self.node_for(key).map_or("", NodeName::as_str)
    }
}

impl Owner for RawRing {
    fn owner(&self, key: &str) -> &str {
        self.get(&key).map_or("", |(name, _)| name.as_str())
    }
}

const FIGURE_KEYS: usize = 1_000_000;

/// (share moved on join 10 -> 11, share moved on leave 10 -> 9, max/mean load at 10).
fn figures(ten: &impl Owner, eleven: &impl Owner, nine: &impl Owner) -> (f64, f64, f64) {
    let (mut joined, mut left) = (0, 0);
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut key = String::new();
    for i in 0..FIGURE_KEYS {
        key.clear();
        write!(key, "key-{i}").expect("writing to a String cannot fail");
        let owner = ten.owner(&key);
        joined += usize::from(eleven.owner(&key) != owner);
        left += usize::from(nine.owner(&key) != owner);
        *load.entry(owner).or_default() += 1;
    }
    let max = load.values().copied().max().unwrap_or(0);
    let mean = FIGURE_KEYS as f64 / load.len() as f64;
    let share = |moved: usize| moved as f64 / FIGURE_KEYS as f64;
    (share(joined), share(left), max as f64 / mean)
}

fn print_placement_figures() {
    let eleven = member_names(11);
    let ten = &eleven[..10];
    let nine: Vec<NodeName> = ten
        .iter()
        .filter(|&name| *name != ten[5])
        .cloned()
        .collect();
    println!("placement over {FIGURE_KEYS} keys (join 10->11: ideal 9.09%; leave 10->9: ideal 10.00%; max/mean at 10: ideal 1.00)");
    println!("| ring | vnodes | moved on join | moved on leave | max/mean load |");
    println!("|---|---|---|---|---|");
    for vnodes in [128, 256] {
        let build = |members: &[NodeName]| Ring::new(members.to_vec(), vnodes);
        let ours = figures(&build(ten), &build(&eleven), &build(&nine));
        let raw = figures(
            &raw_ring(ten, vnodes),
            &raw_ring(&eleven, vnodes),
            &raw_ring(&nine, vnodes),
        );
        for (name, (join, leave, load)) in [("Ring", ours), ("hashring", raw)] {
            println!(
                "| {name} | {vnodes} | {:.2}% | {:.2}% | {load:.3} |",
                join * 100.0,
                leave * 100.0
            );
        }
    }
}

/// Best-of-7 nanoseconds per lookup of `Ring` and of raw hashring, the two
/// timed in alternation so that load from other processes hits both alike.
/// On a shared machine this ratio is steadier than two separate criterion runs.
fn interleaved_lookup_ns(ring: &Ring, raw: &RawRing, keys: &[String]) -> (f64, f64) {
    let time = |lookup: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        for _ in 0..200 {
            for key in keys {
                black_box(lookup(black_box(key.as_str())));
            }
        }
        start.elapsed().as_nanos() as f64 / (200 * keys.len()) as f64
    };
    let (mut ours, mut theirs) = (f64::MAX, f64::MAX);
    for _ in 0..7 {
        ours = ours.min(time(&|key| ring.node_for(key).is_some()));
        theirs = theirs.min(time(&|key| raw.get(&key).is_some()));
    }
    (ours, theirs)
}

fn print_interleaved_lookups() {
    let keys: Vec<String> = (0..1024).map(|i| format!("user:{i}")).collect();
    println!("node_for, interleaved best of 7 (ns per lookup)");
    println!("| members x vnodes | Ring | hashring | Ring / hashring |");
    println!("|---|---|---|---|");
    for vnodes in [256, 128] {
        for members in [3, 10, 100] {
            let names = member_names(members);
            let (ours, raw) = interleaved_lookup_ns(
                &Ring::new(names.clone(), vnodes),
                &raw_ring(&names, vnodes),
                &keys,
            );
            println!(
                "| {members} x {vnodes} | {ours:.1} | {raw:.1} | {:.2} |",
                ours / raw
            );
        }
    }
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for members in [10, 100] {
        let names = member_names(members);
        let shape = format!("{members}x256");
        group.bench_function(BenchmarkId::new("hashring", &shape), |b| {
            b.iter(|| raw_ring(black_box(&names), 256).len())
        });
        // A ring is laid out at its first lookup: each build here is
        // followed by one, and rebuilds start from a laid-out ring.
        group.bench_function(BenchmarkId::new("Ring::new", &shape), |b| {
            b.iter(|| {
                Ring::new(black_box(names.clone()), 256)
                    .node_for("k")
                    .cloned()
            })
        });
        let one_less = Ring::new(names[1..].to_vec(), 256);
        let _ = one_less.node_for("k");
        group.bench_function(BenchmarkId::new("with_members, a join", &shape), |b| {
            b.iter(|| {
                one_less
                    .with_members(black_box(names.clone()))
                    .node_for("k")
                    .cloned()
            })
        });
        let one_more = Ring::new(member_names(members + 1), 256);
        let _ = one_more.node_for("k");
        group.bench_function(BenchmarkId::new("with_members, a crash", &shape), |b| {
            b.iter(|| {
                one_more
                    .with_members(black_box(names.clone()))
                    .node_for("k")
                    .cloned()
            })
        });
        group.bench_function(BenchmarkId::new("with_members, no lookup", &shape), |b| {
            b.iter(|| one_less.with_members(black_box(names.clone())).len())
        });
    }
    group.finish();
}

fn main() {
    // Criterion's own rule: `cargo bench` passes `--bench`, `cargo test --benches` does not.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test") {
        print_placement_figures();
        print_interleaved_lookups();
    }
    let mut criterion = Criterion::default().configure_from_args();
    node_for(&mut criterion);
    build(&mut criterion);
    criterion.final_summary();
}
