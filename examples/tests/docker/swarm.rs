//! The shipped Swarm stack, `docker/stack.yml`, deployed on a single-node
//! swarm: 3 tasks assemble, scale to 5 and back to 3 (the two stopped tasks
//! leave: every other task reports them `left`), then a rolling update of
//! every task (`docker service update --force`); each step ends with every
//! running task healthy, ready, on a ring of exactly the running tasks (named
//! `cloister@<overlay IP>`) with one digest.
//!
//! How the tasks are read: on a single-node swarm every task is a local
//! container (labelled `com.docker.swarm.service.name`), so `docker inspect`
//! gives its address on the stack's overlay network and its health, and
//! `docker logs` its JSON lines, as for the compose scenarios. The
//! management endpoint is not asked from here: the tasks' addresses are on an
//! overlay network the host cannot route to, a scratch image cannot
//! `docker exec` a client, and a published port would reach one task
//! through Swarm's mesh, not a chosen one. Swarm itself asks it: the stack's
//! health check runs `cloister-node health --probe alive` in each task, and
//! the test requires every task `healthy`; readiness and the ring come from
//! the node's own lines (`state_changed` to `ready`, `ring_digest`), which it
//! writes when they change, as `/ready` and `/members` would answer.
//!
//! `Stack` deploys any stack file of `docker/` this way; `swarm_kv.rs`
//! deploys `docker/kv-stack.yml` with it.
//!
//! The swarm: when none is active, the first lease runs `docker swarm init
//! --advertise-addr 127.0.0.1` and the last one leaves (`docker swarm leave
//! --force`, and removes the `docker_gwbridge` network the init created);
//! an active swarm is used and left alone. Leases are counted in this
//! process, so scenarios running in parallel can share the swarm. The stack
//! is removed on drop, also on panic, and its containers and network waited
//! for (bounded) before the swarm is left.

use std::sync::Mutex;

use super::*;

/// How long a rolling update of every task may take before the test fails.
pub(super) const UPDATE_DEADLINE: Duration = Duration::from_secs(180);

/// A stack file of `docker/` with one service.
pub(super) struct StackFile {
    /// Its path from the workspace root.
    pub(super) path: &'static str,
    /// Its service; the full name is `<stack>_<service>`.
    pub(super) service: &'static str,
    /// The `CLOISTER_APP` it sets: its tasks are `<app>@<overlay IP>`.
    pub(super) app: &'static str,
}

/// `docker/stack.yml`, the demo node.
const DEMO: StackFile = StackFile {
    path: "docker/stack.yml",
    service: "cloister",
    app: "cloister",
};

/// The swarm's users in this process, and whether this process created it.
static SWARM: Mutex<(usize, Option<Created>)> = Mutex::new((0, None));

/// What `docker swarm init` made that leaving must undo.
#[derive(Clone, Copy)]
struct Created {
    /// The `docker_gwbridge` network did not exist before the init.
    gwbridge: bool,
}

/// A use of the single-node swarm: initialised by the first lease when no
/// swarm is active, left by the last lease if this process initialised it.
pub(super) struct SwarmLease;

impl SwarmLease {
    pub(super) fn take() -> SwarmLease {
        let mut swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        if swarm.0 == 0 {
            let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
            match state.trim() {
                "active" => swarm.1 = None,
                "inactive" => {
                    let gwbridge =
                        run("docker", &["network", "inspect", "docker_gwbridge"]).is_err();
                    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                    swarm.1 = Some(Created { gwbridge });
                }
                other => panic!(
                    "this Docker engine's swarm is {other:?}; the Swarm scenario needs it \
                     `active` (it is used) or `inactive` (it is initialised, then left)"
                ),
            }
        }
        swarm.0 += 1;
        SwarmLease
    }
}

impl Drop for SwarmLease {
    fn drop(&mut self) {
        let mut swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        swarm.0 -= 1;
        if swarm.0 == 0 {
            if let Some(created) = swarm.1.take() {
                // Alone: leaving disconnects other projects' containers.
                let _alone = NETWORKS.write().unwrap_or_else(|e| e.into_inner());
                let _ = run("docker", &["swarm", "leave", "--force"]);
                if created.gwbridge {
                    let _ = run("docker", &["network", "rm", "docker_gwbridge"]);
                }
            }
        }
    }
}

/// One task: its container as a [`View`], its slot and its health.
#[derive(Clone)]
pub(super) struct Task {
    pub(super) view: View,
    pub(super) slot: u32,
    pub(super) healthy: bool,
    /// When its container stopped (Unix ms), once it has.
    pub(super) finished_ms: Option<i64>,
}

/// One deployment of a stack file; removed on drop. Holds a lease on the
/// swarm, dropped after the stack is gone.
pub(super) struct Stack {
    name: String,
    file: StackFile,
    _swarm: SwarmLease,
}

impl Stack {
    /// Deploys `file` with the container tests' short timers and a cookie
    /// of this run.
    pub(super) fn deploy(scenario: &str, file: StackFile) -> Stack {
        let swarm = SwarmLease::take();
        let stack = Stack {
            name: format!("cswarm_{scenario}_{}", std::process::id()),
            file,
            _swarm: swarm,
        };
        stack.remove();
        let file = root().join(stack.file.path);
        let cookie = format!("{:x}{:x}", std::process::id(), now_ms());
        let out = Command::new("docker")
            .args(["stack", "deploy", "--resolve-image", "never", "-c"])
            .arg(&file)
            .arg(&stack.name)
            .env("CLOISTER_IMAGE", IMAGE)
            .env("CLOISTER_COOKIE", cookie)
            .env("CLOISTER_HEARTBEAT_INTERVAL", "100ms")
            .env("CLOISTER_HEARTBEAT_TIMEOUT", "600ms")
            .env("CLOISTER_DISCOVERY_TICK", "200ms")
            .env("CLOISTER_DIAL_TIMEOUT", "500ms")
            .env("CLOISTER_DIAL_BACKOFF_MAX", "500ms")
            .output()
            .expect("cannot run docker stack deploy");
        assert!(
            out.status.success(),
            "docker stack deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    pub(super) fn service(&self) -> String {
        format!("{}_{}", self.name, self.file.service)
    }

    /// A task's node name, from its overlay address.
    pub(super) fn node_of(&self, ip: &str) -> String {
        format!("{}@{ip}", self.file.app)
    }

    fn network(&self) -> String {
        format!("{}_cluster", self.name)
    }

    /// `docker stack rm`, then waits (bounded) until its containers and
    /// network are gone: `stack rm` returns before they are.
    fn remove(&self) {
        let _ = run("docker", &["stack", "rm", &self.name]);
        let filter = format!("label=com.docker.stack.namespace={}", self.name);
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            let containers = run("docker", &["ps", "-aq", "--filter", &filter]).unwrap_or_default();
            let network = run("docker", &["network", "inspect", &self.network()]).is_ok();
            if containers.trim().is_empty() && !network {
                return;
            }
            thread::sleep(POLL);
        }
        eprintln!("stack {} not gone after {DEADLINE:?}", self.name);
    }

    /// Every container of the service, exited ones included.
    pub(super) fn tasks(&self) -> Vec<Task> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.service());
        let ids: Vec<String> = run("docker", &["ps", "-aq", "--no-trunc", "--filter", &filter])
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect"];
        args.extend(ids.iter().map(String::as_str));
        let inspected: Vec<Value> = run("docker", &args)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let network = self.network();
        let mut tasks: Vec<Task> = inspected
            .iter()
            .map(|c| {
                let id = c["Id"].as_str().unwrap_or_default().to_string();
                let (events, stderr) = logs(&id);
                let container = c["Name"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string();
                // `<stack>_cloister.<slot>.<task id>`
                let slot = container
                    .split('.')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default();
                let view = View {
                    service: self.service(),
                    number: slot,
                    exit_code: c["State"]["ExitCode"].as_i64(),
                    ip: c["NetworkSettings"]["Networks"][&network]["IPAddress"]
                        .as_str()
                        .filter(|ip| !ip.is_empty())
                        .map(String::from),
                    running: c["State"]["Running"].as_bool().unwrap_or(false),
                    paused: c["State"]["Paused"].as_bool().unwrap_or(false),
                    started_ms: c["State"]["StartedAt"].as_str().and_then(rfc3339_ms),
                    container,
                    id,
                    events,
                    stderr,
                };
                Task {
                    finished_ms: c["State"]["FinishedAt"]
                        .as_str()
                        .filter(|_| !view.running)
                        .and_then(rfc3339_ms),
                    view,
                    slot,
                    healthy: c["State"]["Health"]["Status"] == "healthy",
                }
            })
            .collect();
        tasks.sort_by_key(|t| (t.slot, t.view.started_ms));
        tasks
    }

    /// Polls the tasks until `check` returns a value, or panics after
    /// `deadline` with `what` and the last lines of every task.
    pub(super) fn wait<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut(&[Task]) -> Option<T>,
    ) -> T {
        let until = Instant::now() + deadline;
        loop {
            let tasks = self.tasks();
            if let Some(value) = check(&tasks) {
                return value;
            }
            if Instant::now() >= until {
                panic!(
                    "[{}] timed out after {deadline:?} waiting for: {what}\n{}",
                    self.name,
                    self.report(&tasks)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The service's tasks as Swarm lists them, and every task's last lines.
    pub(super) fn report(&self, tasks: &[Task]) -> String {
        let mut text = run(
            "docker",
            &[
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "{{.Name}} {{.CurrentState}} {{.Error}}",
                &self.service(),
            ],
        )
        .unwrap_or_else(|e| e);
        for t in tasks {
            let v = &t.view;
            text.push_str(&format!(
                "--- {} ip={:?} running={} healthy={} node={:?} ({} JSON lines)\n",
                v.container,
                v.ip,
                v.running,
                t.healthy,
                v.node(),
                v.events.len()
            ));
            for event in &v.events[v.events.len().saturating_sub(8)..] {
                text.push_str(&format!("  {event}\n"));
            }
            for line in &v.stderr[v.stderr.len().saturating_sub(4)..] {
                text.push_str(&format!("  stderr: {line}\n"));
            }
        }
        text
    }

    /// `docker service <args> <service>`, without waiting for it to converge.
    pub(super) fn service_cmd(&self, args: &[&str]) {
        let service = self.service();
        let mut all = vec!["service"];
        all.extend_from_slice(args);
        all.extend(["--detach", &service]);
        docker(&all);
    }

    /// Whether Swarm says the service's last update completed.
    pub(super) fn update_completed(&self) -> bool {
        let format = "{{.UpdateStatus.State}}";
        run(
            "docker",
            &["service", "inspect", "--format", format, &self.service()],
        )
        .is_ok_and(|state| state.trim() == "completed")
    }

    /// Waits until exactly `n` tasks run, all healthy, every one ready with
    /// a ring of all of them (named after their overlay IPs) and one digest,
    /// and `more` holds; returns the running tasks.
    pub(super) fn wait_agree(
        &self,
        n: usize,
        what: &str,
        deadline: Duration,
        mut more: impl FnMut(&[&Task]) -> bool,
    ) -> Vec<View> {
        self.wait(what, deadline, |tasks| {
            let running = self.agreeing(tasks, n)?;
            more(&running).then(|| running.iter().map(|t| t.view.clone()).collect())
        })
    }

    /// The running tasks among `tasks` when exactly `n` run, all healthy,
    /// every one ready with a ring of all of them and one digest.
    pub(super) fn agreeing<'a>(&self, tasks: &'a [Task], n: usize) -> Option<Vec<&'a Task>> {
        let running: Vec<&Task> = tasks.iter().filter(|t| t.view.running).collect();
        if running.len() != n || running.iter().any(|t| !t.healthy || t.view.ip.is_none()) {
            return None;
        }
        let names: BTreeSet<String> = running
            .iter()
            .map(|t| self.node_of(t.view.ip.as_deref().unwrap_or_default()))
            .collect();
        let views: Vec<&View> = running.iter().map(|t| &t.view).collect();
        agreed(&views, &names)?;
        Some(running)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Deploy 3, scale to 5 and back, update every task: one ring each time.
/// One test, so the steps share one stack and one swarm, in order.
#[test]
fn swarm_stack_deploys_scales_and_rolls() {
    if !docker_ready("swarm") {
        return;
    }
    let stack = Stack::deploy("roll", DEMO);

    let three = stack.wait_agree(3, "3 tasks healthy and ready on one ring", DEADLINE, |_| {
        true
    });
    for v in &three {
        assert_eq!(
            v.node(),
            Some(stack.node_of(v.ip.as_deref().unwrap_or_default()).as_str()),
            "{} names itself after its overlay address",
            v.container
        );
    }

    stack.service_cmd(&["update", "--replicas", "5"]);
    let five = stack.wait_agree(5, "5 tasks on one ring", DEADLINE, |_| true);

    stack.service_cmd(&["update", "--replicas", "3"]);
    let after = stack.wait_agree(3, "3 tasks left, on one ring of three", DEADLINE, |_| true);
    let kept: BTreeSet<&str> = after.iter().map(|v| v.id.as_str()).collect();
    let removed: Vec<String> = five
        .iter()
        .filter(|v| !kept.contains(v.id.as_str()))
        .filter_map(|v| v.node().map(String::from))
        .collect();
    assert_eq!(removed.len(), 2, "two tasks were removed");
    // Swarm stops a task with SIGTERM: the node says goodbye, so the others
    // report it `left` (not `crashed` or `unresponsive`).
    for v in &after {
        for gone in &removed {
            assert!(
                v.saw_down(0, gone, "left").is_some(),
                "{} did not report {gone} as left: {:?}",
                v.container,
                v.after(0, "node_down").collect::<Vec<_>>()
            );
        }
    }

    let before: BTreeSet<String> = after.iter().map(|v| v.id.clone()).collect();
    let started = Instant::now();
    stack.service_cmd(&["update", "--force"]);
    let rolled = stack.wait_agree(
        3,
        "every task replaced by a new one, the update completed, one ring",
        UPDATE_DEADLINE,
        |running| running.iter().all(|t| !before.contains(&t.view.id)) && stack.update_completed(),
    );
    measure(
        "swarm: rolling update of 3 tasks, command -> completed and one ring",
        started.elapsed().as_millis() as i64,
    );
    assert!(
        rolled.iter().all(|v| v.became(0, "ready").is_some()),
        "every new task became ready"
    );
}
