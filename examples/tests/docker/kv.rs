//! The kv example (`kv-node`, in the same image) under a random fault
//! schedule with `quorum = "majority"`: every put it acknowledged is
//! readable from every node once the faults have healed. Also the kv
//! clients the Swarm kv scenario (`swarm_kv.rs`) uses: command lines in
//! through `docker attach`, answers out through `docker logs`.

use std::io::Write;
use std::process::{Child, Stdio};

use super::partitions::{below_quorum_serves, five_running, Nemesis, QUORUM};
use super::*;

/// The service runs the kv example, its stdin open for `docker attach`.
const KV_SERVICE: &str = "    entrypoint: [\"/kv-node\"]\n    command: []\n    stdin_open: true\n";
/// Faults per run.
const STEPS: u64 = 6;
/// Puts sent while each fault lasts, one every [`PUT_EVERY`].
const PUTS_PER_STEP: u64 = 10;
const PUT_EVERY: Duration = Duration::from_millis(300);

/// A small seeded generator (splitmix64): the schedule is replayed from its
/// seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }

    /// `k` distinct indices below `n`.
    fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// Command lines into the kv nodes' stdin, through `docker attach`; a
/// container that restarted is attached again. The attach processes are
/// killed on drop (`docker attach --sig-proxy=false` ignores SIGTERM).
pub(super) struct Clients {
    attached: BTreeMap<String, Child>,
}

impl Clients {
    pub(super) fn new() -> Clients {
        Clients {
            attached: BTreeMap::new(),
        }
    }

    /// Sends `line` to `view`'s stdin; panics if it cannot.
    pub(super) fn send(&mut self, view: &View, line: &str) {
        if let Err(e) = self.try_send(view, line) {
            panic!("cannot write to {}'s stdin: {e}", view.container);
        }
    }

    /// Sends `line` to `view`'s stdin, or says why it could not (the
    /// container stopped, so its attach process ended).
    pub(super) fn try_send(&mut self, view: &View, line: &str) -> std::io::Result<()> {
        let alive = self
            .attached
            .get_mut(&view.id)
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        if !alive {
            let child = Command::new("docker")
                .args(["attach", "--sig-proxy=false", &view.id])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run docker attach: {e}"));
            if let Some(mut old) = self.attached.insert(view.id.clone(), child) {
                let _ = old.kill();
                let _ = old.wait();
            }
        }
        let child = self.attached.get_mut(&view.id).expect("attached above");
        let stdin = child.stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{line}")
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        for child in self.attached.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One fault of the schedule, on indices into the five running nodes.
#[derive(Debug)]
enum Fault {
    /// These nodes are cut from the rest.
    Split(Vec<usize>),
    /// The first two are cut from the last two; the middle one sees all.
    Bridge(Vec<usize>),
    /// The first stops hearing the second.
    OneWay(usize, usize),
    /// 30% of what it receives is lost.
    Loss(usize),
    Pause(usize),
    /// Killed, started again at the heal (an empty store, re-filled by the
    /// others' handoffs).
    Kill(usize),
}

impl Fault {
    fn roll(dice: &mut Dice) -> Fault {
        match dice.below(6) {
            0 => {
                let size = 1 + dice.below(2) as usize;
                Fault::Split(dice.pick(5, size))
            }
            1 => Fault::Bridge(dice.pick(5, 5)),
            2 => {
                let two = dice.pick(5, 2);
                Fault::OneWay(two[0], two[1])
            }
            3 => Fault::Loss(dice.below(5) as usize),
            4 => Fault::Pause(dice.below(5) as usize),
            _ => Fault::Kill(dice.below(5) as usize),
        }
    }

    fn apply(&self, project: &Project, nodes: &[View], nemesis: &mut Nemesis) {
        match self {
            Fault::Split(cut) => {
                let a: Vec<&View> = cut.iter().map(|&i| &nodes[i]).collect();
                let b: Vec<&View> = (0..nodes.len())
                    .filter(|i| !cut.contains(i))
                    .map(|i| &nodes[i])
                    .collect();
                nemesis.partition(project, &a, &b);
            }
            Fault::Bridge(order) => {
                let a = [&nodes[order[0]], &nodes[order[1]]];
                let b = [&nodes[order[3]], &nodes[order[4]]];
                nemesis.partition(project, &a, &b);
            }
            Fault::OneWay(deaf, to) => nemesis.deafen(&nodes[*deaf], &project.ip(&nodes[*to])),
            Fault::Loss(i) => nemesis.lossy(&nodes[*i], 30),
            Fault::Pause(i) => {
                docker(&["pause", &nodes[*i].id]);
            }
            Fault::Kill(i) => {
                docker(&["kill", &nodes[*i].id]);
            }
        }
    }

    fn heal(&self, nodes: &[View], nemesis: &mut Nemesis) {
        nemesis.heal();
        match self {
            Fault::Pause(i) => {
                docker(&["unpause", &nodes[*i].id]);
            }
            Fault::Kill(i) => {
                docker(&["start", &nodes[*i].id]);
            }
            _ => {}
        }
    }
}

/// The keys whose put some node acknowledged, with their values.
pub(super) fn acknowledged(
    views: &[View],
    sent: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    views
        .iter()
        .flat_map(|v| v.events.iter())
        .filter(|e| e["event"] == "put" && e["acknowledged"] == true)
        .filter_map(|e| e["key"].as_str())
        .filter_map(|key| Some((key.to_string(), sent.get(key)?.clone())))
        .collect()
}

/// Asks `node` for every key of `expected` until each answers its value or
/// [`DEADLINE`] passes; returns the keys still missing or wrong. `now`
/// reads the node again (its latest lines), `None` if it is gone.
pub(super) fn unreadable(
    now: &dyn Fn(&View) -> Option<View>,
    clients: &mut Clients,
    node: &View,
    expected: &BTreeMap<String, String>,
) -> Vec<String> {
    let until = Instant::now() + DEADLINE;
    let mut asking: Vec<&String> = expected.keys().collect();
    while !asking.is_empty() && Instant::now() < until {
        let mark = now(node).map_or(0, |v| v.events.len());
        for key in &asking {
            clients.send(node, &format!("get {key}"));
        }
        // Every get answers (a value, or null with errors); a node that
        // stops answering ends the wait at the deadline.
        let mut answers: Vec<Value> = Vec::new();
        while Instant::now() < until {
            if let Some(v) = now(node) {
                answers = v.after(mark, "get").cloned().collect();
            }
            if answers.len() >= asking.len() {
                break;
            }
            thread::sleep(POLL);
        }
        asking.retain(|key| {
            !answers
                .iter()
                .any(|a| a["key"] == key.as_str() && a["value"] == expected[key.as_str()].as_str())
        });
        if !asking.is_empty() {
            thread::sleep(Duration::from_millis(300));
        }
    }
    asking.into_iter().cloned().collect()
}

/// Panics, saying `when`, unless every key of `acked` reads back its value
/// through `node` (see [`unreadable`]).
fn all_readable(
    project: &Project,
    clients: &mut Clients,
    node: &View,
    acked: &BTreeMap<String, String>,
    when: &str,
) {
    let now = |node: &View| project.views().into_iter().find(|v| v.id == node.id);
    let missing = unreadable(&now, clients, node, acked);
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged puts unreadable through {}: {missing:?}\n{}",
        missing.len(),
        acked.len(),
        node.container,
        project.report(&project.views())
    );
}

/// (j) The kv example, `quorum = "majority"`, five containers, a seeded
/// random schedule of faults (a split of 1 or 2, a bridge, a one-way cut,
/// 30% loss, a pause, a kill and restart), each for 3 s while puts go to
/// random running nodes, then healed. After each heal, every acknowledged
/// put is readable through one node; after the last, through every node.
/// Nothing below quorum serves, on every poll. The seed is printed
/// (`CLOISTER_FAULT_SEED` replays one).
#[test]
fn kv_keeps_acknowledged_puts_under_a_fault_schedule() {
    let Some((project, _)) = five_running("kv", 8, KV_SERVICE) else {
        return;
    };
    let seed = std::env::var("CLOISTER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64);
    println!("kv fault schedule: CLOISTER_FAULT_SEED={seed}");
    let mut dice = Dice(seed);
    let mut nemesis = Nemesis::new();
    let mut clients = Clients::new();
    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    for step in 0..STEPS {
        let nodes: Vec<View> = live(&project.views()).into_iter().cloned().collect();
        let fault = Fault::roll(&mut dice);
        println!("step {step}: {fault:?} (seed {seed})");
        fault.apply(&project, &nodes, &mut nemesis);
        for n in 0..PUTS_PER_STEP {
            let views = project.views();
            if let Some(broken) = below_quorum_serves(&views, QUORUM) {
                panic!(
                    "seed {seed}, {fault:?}: {broken}\n{}",
                    project.report(&views)
                );
            }
            let running = live(&views);
            let to = running[dice.below(running.len() as u64) as usize];
            let (key, value) = (format!("s{step}-{n}"), format!("v{seed}-{step}-{n}"));
            clients.send(to, &format!("put {key} {value}"));
            sent.insert(key, value);
            thread::sleep(PUT_EVERY);
        }
        fault.heal(&nodes, &mut nemesis);
        let healed = wait_all_agree(&project, 5, &format!("five on one ring after {fault:?}"));
        let acked = acknowledged(&healed, &sent);
        let through = &healed[dice.below(5) as usize];
        let after = format!("seed {seed}, after {fault:?}");
        all_readable(&project, &mut clients, through, &acked, &after);
        println!(
            "step {step}: {} of {} puts acknowledged so far, all readable",
            acked.len(),
            sent.len()
        );
    }
    let views = project.views();
    let acked = acknowledged(&views, &sent);
    assert!(!acked.is_empty(), "seed {seed}: no put was acknowledged");
    for node in live(&views) {
        all_readable(
            &project,
            &mut clients,
            node,
            &acked,
            &format!("seed {seed}"),
        );
    }
}
