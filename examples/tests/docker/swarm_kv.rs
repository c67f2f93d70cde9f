//! The kv example through a Swarm rolling update: `docker/kv-stack.yml`
//! (3 tasks of `/kv-node`, two copies of every key, start-first updates one
//! task at a time) on the single-node swarm that `swarm.rs` leases. Keys are
//! put through the tasks' stdin (`docker attach`, as in `kv.rs`), then
//! `docker service update --force` replaces every task while more puts go to
//! the ready tasks. Each old task, stopped with SIGTERM, leaves: its peers
//! report it `left`, it hands every key to the tasks that hold it after it
//! (a `drained` line with nothing un-handed) and stops on its own before
//! Swarm's SIGKILL. Afterwards every acknowledged put, before or during the
//! update, reads back its value through every new task.

use super::kv::{acknowledged, unreadable, Clients};
use super::swarm::{Stack, StackFile, Task, UPDATE_DEADLINE};
use super::*;

const KV_STACK: StackFile = StackFile {
    path: "docker/kv-stack.yml",
    service: "kv",
    app: "kv",
};
/// The stack file's replicas.
const REPLICAS: usize = 3;
/// Puts before the update, spread over the tasks.
const KEYS: usize = 200;
/// While the update runs, one put to every ready task this often (plus the
/// time a look at the tasks takes).
const PUT_EVERY: Duration = Duration::from_millis(250);

/// The spans `[from, to)` (Unix ms) during which `task` said it was ready:
/// from a `state_changed` to ready (or a ready `snapshot`) to the next
/// `state_changed` away from it, else to its container's stop, else to
/// `horizon`.
fn ready_spans(task: &Task, horizon: i64) -> Vec<(i64, i64)> {
    let mut spans = Vec::new();
    let mut since = None;
    for e in &task.view.events {
        let Some(ts) = e["ts"].as_i64() else { continue };
        let ready = match e["event"].as_str() {
            Some("snapshot") => e["state"] == "ready",
            Some("state_changed") => e["to"] == "ready",
            _ => continue,
        };
        match (ready, since) {
            (true, None) => since = Some(ts),
            (false, Some(from)) if e["event"] == "state_changed" => {
                spans.push((from, ts));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = since {
        spans.push((from, task.finished_ms.unwrap_or(horizon)));
    }
    spans
}

/// Milliseconds of `[start, end)` with fewer than [`REPLICAS`] tasks ready,
/// and with none.
fn unavailability(tasks: &[Task], start: i64, end: i64) -> (i64, i64) {
    let mut edges: Vec<(i64, i64)> = Vec::new();
    for task in tasks {
        for (from, to) in ready_spans(task, end) {
            let (from, to) = (from.max(start), to.min(end));
            if from < to {
                edges.extend([(from, 1), (to, -1)]);
            }
        }
    }
    edges.sort_unstable();
    edges.push((end, 0));
    let (mut degraded, mut outage, mut ready, mut at) = (0, 0, 0, start);
    for (point, step) in edges {
        if ready < REPLICAS as i64 {
            degraded += point - at;
        }
        if ready == 0 {
            outage += point - at;
        }
        (ready, at) = (ready + step, point);
    }
    (degraded, outage)
}

/// The `ts` of `view`'s first line of kind `event`.
fn first_ts(view: &View, event: &str) -> Option<i64> {
    view.after(0, event).find_map(|e| e["ts"].as_i64())
}

/// Deploy 3 kv tasks, put keys, update every task while putting more, and
/// read every acknowledged put back through every new task.
#[test]
fn swarm_kv_rolling_update_loses_no_acknowledged_key() {
    if !docker_ready("swarm kv") {
        return;
    }
    let stack = Stack::deploy("kv", KV_STACK);
    // Declared after the stack: the attach processes end first.
    let mut clients = Clients::new();
    let old = stack.wait_agree(REPLICAS, "3 kv tasks ready on one ring", DEADLINE, |_| true);

    let run = std::process::id();
    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..KEYS {
        let (key, value) = (format!("k{i}"), format!("v{run}-{i}"));
        clients.send(&old[i % old.len()], &format!("put {key} {value}"));
        sent.insert(key, value);
    }
    let answered = stack.wait("an answer to every put", DEADLINE, |tasks| {
        let views: Vec<View> = tasks.iter().map(|t| t.view.clone()).collect();
        let puts: usize = views.iter().map(|v| v.after(0, "put").count()).sum();
        (puts >= KEYS).then_some(views)
    });
    let acked_before = acknowledged(&answered, &sent).len();
    assert!(
        acked_before > 0,
        "no put was acknowledged before the update\n{}",
        stack.report(&stack.tasks())
    );

    let old_ids: BTreeSet<&str> = old.iter().map(|v| v.id.as_str()).collect();
    let start = now_ms();
    let started = Instant::now();
    stack.service_cmd(&["update", "--force"]);
    let until = Instant::now() + UPDATE_DEADLINE;
    let mut during = 0;
    let new = loop {
        let tasks = stack.tasks();
        let done = stack
            .agreeing(&tasks, REPLICAS)
            .filter(|running| {
                running
                    .iter()
                    .all(|t| !old_ids.contains(t.view.id.as_str()))
            })
            .filter(|_| stack.update_completed());
        if let Some(running) = done {
            break running
                .into_iter()
                .map(|t| t.view.clone())
                .collect::<Vec<View>>();
        }
        assert!(
            Instant::now() < until,
            "[{}] the update did not complete with 3 new tasks on one ring in \
             {UPDATE_DEADLINE:?}\n{}",
            stack.service(),
            stack.report(&tasks)
        );
        // A task that stops meanwhile takes its unanswered puts with it:
        // they are not acknowledged, so nothing is expected of them.
        for task in tasks.iter().filter(|t| t.view.running && t.view.is_ready()) {
            let (key, value) = (format!("u{during}"), format!("v{run}-u{during}"));
            if clients
                .try_send(&task.view, &format!("put {key} {value}"))
                .is_ok()
            {
                sent.insert(key, value);
            }
            during += 1;
        }
        thread::sleep(PUT_EVERY);
    };
    let total = started.elapsed();
    let end = now_ms();

    // The old tasks stop on their own once drained (Swarm's SIGKILL comes
    // only after the stack's stop_grace_period).
    let all = stack.wait("every old task stopped", DEADLINE, |tasks| {
        let stopped = tasks
            .iter()
            .filter(|t| old_ids.contains(t.view.id.as_str()) && !t.view.running)
            .count();
        (stopped == old_ids.len()).then(|| tasks.to_vec())
    });
    let report = stack.report(&all);
    let views: Vec<View> = all.iter().map(|t| t.view.clone()).collect();
    for o in all
        .iter()
        .map(|t| &t.view)
        .filter(|v| old_ids.contains(v.id.as_str()))
    {
        let name = o.node().unwrap_or_default();
        let drained = o.after(0, "drained").next();
        println!("swarm kv: {name} (old) {drained:?}");
        assert!(
            drained.is_some_and(|d| d["not_handed_off"] == 0),
            "{} ({name}) did not hand every key off: {drained:?}\n{report}",
            o.container
        );
        assert_eq!(
            o.exit_code,
            Some(0),
            "{} ({name}) did not stop on its own after its drain\n{report}",
            o.container
        );
        // Every task that had it in its ring and was still there when it
        // drained (not an old task gone before it) reports it `left`.
        let gone_at = first_ts(o, "drained").unwrap_or(i64::MAX);
        for peer in &views {
            let knew = peer.id != o.id && peer.ring_with(0, name).is_some();
            // An old task gone first, drained or not, says nothing.
            let gone = [first_ts(peer, "drained"), first_ts(peer, "left")];
            let outlived = gone.into_iter().flatten().all(|ts| ts > gone_at);
            assert!(
                !(knew && outlived) || peer.saw_down(0, name, "left").is_some(),
                "{} did not report {name} `left`: {:?}\n{report}",
                peer.container,
                peer.after(0, "node_down").collect::<Vec<_>>()
            );
        }
    }

    let acked = acknowledged(&views, &sent);
    let now = |node: &View| {
        let tasks = stack.tasks();
        tasks
            .into_iter()
            .find(|t| t.view.id == node.id)
            .map(|t| t.view)
    };
    for task in &new {
        let missing = unreadable(&now, &mut clients, task, &acked);
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged puts unreadable through {} after the update: {missing:?}\n{}",
            missing.len(),
            acked.len(),
            task.container,
            stack.report(&stack.tasks())
        );
    }

    let (degraded, outage) = unavailability(&all, start, end);
    println!(
        "swarm kv: {acked_before} keys acknowledged before the update, {} during it \
         ({} puts sent), none lost",
        acked.len() - acked_before,
        sent.len() - KEYS,
    );
    measure(
        "swarm kv: rolling update of 3 tasks, command -> completed and one ring",
        total.as_millis() as i64,
    );
    measure("swarm kv: during the update, fewer than 3 ready", degraded);
    measure("swarm kv: during the update, none ready", outage);
}
