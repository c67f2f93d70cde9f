//! What the benchmark programs share: the node configuration they run with,
//! and readings from `/proc`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use cloister_core::Config;
use cloister_ractor::testing::{timer_env, LocalCluster};
use serde_json::Value;

/// The `CLOISTER_*` variables and flags that give `LocalCluster`'s nodes
/// `Config::default()`'s timers (the harness sets the test timers, and a
/// builder's own variables come after its and win), or nothing with
/// `tests_preset`, which keeps the test timers.
pub fn node_config(tests_preset: bool) -> (Vec<(String, String)>, Vec<String>) {
    let config = if tests_preset {
        Config::for_tests()
    } else {
        Config::default()
    };
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let env = if tests_preset {
        Vec::new()
    } else {
        let rest = [
            (
                "CLOISTER_DIAL_BACKOFF_JITTER",
                config.dial_backoff_jitter.to_string(),
            ),
            ("CLOISTER_SESSION_GRACE", ms(config.session_grace)),
            ("CLOISTER_RING_VNODES", config.ring_vnodes.to_string()),
        ];
        let rest = rest.into_iter().map(|(k, v)| (k.to_string(), v));
        timer_env(&config).into_iter().chain(rest).collect()
    };
    let extra_args = vec![
        "--heartbeat-interval".into(),
        ms(config.heartbeat_interval),
        "--heartbeat-timeout".into(),
        ms(config.heartbeat_timeout),
    ];
    (env, extra_args)
}

/// The `cloister-node` to measure: `binary` if given, else one built with
/// this program's profile. Warns when that profile is a debug one.
pub fn node_binary(binary: Option<&Path>) -> Result<PathBuf> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with `cargo run --release` for real figures");
    }
    let binary = match binary {
        Some(path) => path.to_path_buf(),
        None => crate::build_node_binary("cloister-node").context("building cloister-node")?,
    };
    if let Some((matched, listed)) = order_list_matched(&binary) {
        if matched * 10 < listed * 9 {
            eprintln!(
                "warning: {} defines {matched} of the {listed} functions in \
                 examples/order/cloister-node.txt: the list is stale or the binary was \
                 built without it, and its VmRSS reads high; see examples/order/README.md",
                binary.display()
            );
        }
    }
    Ok(binary)
}

/// How many of the names in `examples/order/cloister-node.txt` `binary`
/// defines, and how many the list holds, read with `nm` (`None` when `nm`
/// cannot read it).
fn order_list_matched(binary: &Path) -> Option<(usize, usize)> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("order/cloister-node.txt");
    let list = fs::read_to_string(list).ok()?;
    let nm = std::process::Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    Some(count_listed(&list, &String::from_utf8_lossy(&nm.stdout)))
}

/// Of the names in `list` (one per line), how many are among the symbols of
/// `nm_output` (`address type name` lines), and how many `list` holds.
fn count_listed(list: &str, nm_output: &str) -> (usize, usize) {
    let defined: std::collections::HashSet<&str> = nm_output
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    let names: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
    let matched = names.iter().filter(|name| defined.contains(*name)).count();
    (matched, names.len())
}

/// Now, in unix milliseconds (the clock of the nodes' `ts` fields).
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

/// A `--env CLOISTER_<FIELD>=value` argument of the benchmark programs.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if key.starts_with("CLOISTER_") => Ok((key.into(), value.into())),
        _ => Err(format!("`{text}` is not CLOISTER_<FIELD>=value")),
    }
}

/// The `ts` (unix ms) of an event line.
pub fn ts(event: &Value) -> Option<u64> {
    event["ts"].as_u64()
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_kib(status: &str, field: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc status"))
}

/// Seconds of CPU per clock tick of `/proc/<pid>/stat`: USER_HZ is 100 on
/// Linux.
pub const TICK_SECONDS: f64 = 0.01;

/// utime + stime of a process, in clock ticks (see [`TICK_SECONDS`]).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) and stime (15) are at 11, 12.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Waits until every node of `survivors` has shown that `victim` is gone
/// (a `node_down` for it, or a `ring_changed` without it) among the events
/// after its mark in `marks`, and returns, for each, when (its `ts`) and how
/// (the `node_down` reason, or `ring_changed`).
pub fn wait_dropped(
    cluster: &LocalCluster,
    survivors: &[usize],
    marks: &[usize],
    victim: &str,
    deadline: Duration,
) -> Result<Vec<(u64, String)>> {
    let seen = |cluster: &LocalCluster, k: usize| -> Option<(u64, String)> {
        let events = cluster.events(survivors[k]);
        events[marks[k].min(events.len())..].iter().find_map(|e| {
            let (gone, how) = match e["event"].as_str() {
                Some("node_down") => (
                    e["peer"] == victim,
                    e["reason"].as_str().unwrap_or("?").to_string(),
                ),
                Some("ring_changed") => (
                    e["members"]
                        .as_array()
                        .is_some_and(|m| !m.iter().any(|m| m == victim)),
                    "ring_changed".to_string(),
                ),
                _ => (false, String::new()),
            };
            gone.then(|| ts(e).map(|ts| (ts, how))).flatten()
        })
    };
    cluster
        .wait_until(&format!("the survivors to drop {victim}"), deadline, |c| {
            (0..survivors.len()).all(|k| seen(c, k).is_some())
        })
        .map_err(|e| anyhow!(e))?;
    Ok((0..survivors.len())
        .filter_map(|k| seen(cluster, k))
        .collect())
}

/// What the processes `pids` use over `idle`: the CPU of each, in % of one
/// core, and then the memory of each, in MiB.
pub fn idle_cost(pids: &[u32], idle: Duration) -> Result<(Vec<f64>, Vec<Memory>)> {
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?;
    let start = std::time::Instant::now();
    std::thread::sleep(idle);
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 * TICK_SECONDS / elapsed * 100.0)
        .collect();
    let mut memory = Vec::with_capacity(pids.len());
    for &pid in pids {
        let read = |file: &str| {
            fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|e| anyhow!("process {pid} is gone: {e}"))
        };
        memory.push(Memory {
            rss_mib: status_kib(&read("status")?, "VmRSS:")? as f64 / 1024.0,
            pss_mib: status_kib(&read("smaps_rollup")?, "Pss:")? as f64 / 1024.0,
        });
    }
    Ok((cpu, memory))
}

/// One process's memory. VmRSS counts every page it maps, the executable's
/// code included, which N processes of one binary share: most of a small
/// node's VmRSS (a cloister-node alone: 4.4 MiB, of which 0.7 MiB is its
/// own heap and stacks; see `examples/order` for why not more). PSS divides each shared page among the processes
/// that map it: what a process costs the machine.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS, in MiB.
    pub rss_mib: f64,
    /// Proportional set size, in MiB.
    pub pss_mib: f64,
}

/// The medians of `memory`, as a table cell: `VmRSS (PSS)`.
pub fn memory_cell(memory: &[Memory]) -> String {
    let rss: Vec<f64> = memory.iter().map(|m| m.rss_mib).collect();
    let pss: Vec<f64> = memory.iter().map(|m| m.pss_mib).collect();
    format!("{:.1} MiB ({:.1})", median(&rss), median(&pss))
}

/// The median of `values` (the upper one of an even count), 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// The sizes and runs a scale benchmark measures, shared by `bench-scale`
/// and `raw-mesh` so that the two are run alike.
#[derive(clap::Args, Debug, Clone)]
pub struct Sizes {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,25")]
    pub sizes: Vec<usize>,
    /// Runs per size.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds a cluster may take to form before the run counts as failed.
    #[arg(long, default_value_t = 60)]
    pub deadline: u64,
    /// Seconds each formed cluster idles while its CPU (and, for cloister,
    /// its drops) is counted.
    #[arg(long, default_value_t = 20)]
    pub idle: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_list_is_matched_against_the_binarys_defined_symbols() {
        let list = "_ZN4hot1\n_ZN4hot2\n\n_ZN4gone\n";
        let nm = "0000000000401000 T _ZN4hot1\n\
                  0000000000402000 t _ZN4hot2\n\
                  0000000000403000 T _ZN5other\n";
        assert_eq!(count_listed(list, nm), (2, 3));
        assert_eq!(count_listed(list, ""), (0, 3));
    }
}
