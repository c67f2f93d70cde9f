#!/usr/bin/env bash
# Times docker/stack.yml on a single-node Docker Swarm, with the stack file's
# default timers (300 ms heartbeats, 1.5 s timeout) and the release image:
#
#   sigterm  3 tasks ready on one ring; `docker kill --signal TERM` one task's
#            container: the signal -> the last other task's `node_down` about
#            it with reason `left` (from the nodes' own `ts`); then Swarm's
#            replacement task joins and the next run starts (x RUNS, 5)
#   update   `docker service update --force` (start-first, one at a time, 2 s
#            delay): the command -> Swarm's update `completed` with every task
#            new, ready and on one ring (total time); and, over that span,
#            the seconds during which fewer tasks were Ready than the service's
#            replicas (degraded) and during which none was (outage) (x UPDATES, 3)
#
# "Ready" is the node's own state, `/ready`'s answer: a task counts from its
# `state_changed` to `ready` until its next `state_changed` away from ready,
# or until its container stopped (`docker inspect` FinishedAt) if it printed
# none. Swarm's own view (healthy tasks) is the `alive` health check, which
# passes before a node has joined: it is not what is measured.
#
#   docker/swarm-bench.sh                       # RUNS=5 UPDATES=3
#   RUNS=3 UPDATES=2 docker/swarm-bench.sh
#   CLOISTER_BENCH_BUILD=1 docker/swarm-bench.sh   # rebuild the image first
#
# When no swarm is active it runs `docker swarm init --advertise-addr
# 127.0.0.1` and leaves the swarm on exit (also on failure or Ctrl-C), and
# removes the docker_gwbridge network the init made; an active swarm is used
# and left alone. The stack `cswbench_<pid>` is removed on exit. Every task's
# stdout and the results (results.json) are kept under $CLOISTER_BENCH_OUT
# (default target/swarm-bench/<UTC time>/); the summary goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${CLOISTER_IMAGE:-cloister-node:local}
if [[ ${CLOISTER_BENCH_BUILD:-0} == 1 ]] || ! docker image inspect "$image" >/dev/null 2>&1; then
  CLOISTER_IMAGE=$image docker/build.sh
fi
# The stack file's defaults, whatever the calling shell says.
unset CLOISTER_HEARTBEAT_INTERVAL CLOISTER_HEARTBEAT_TIMEOUT CLOISTER_DISCOVERY_TICK \
  CLOISTER_DIAL_TIMEOUT CLOISTER_DIAL_BACKOFF_MAX CLOISTER_CONSENSUS RUST_LOG
export BENCH_IMAGE=$image BENCH_RUNS=${RUNS:-5} BENCH_UPDATES=${UPDATES:-3}
export BENCH_OUT=${CLOISTER_BENCH_OUT:-target/swarm-bench/$(date -u +%Y%m%dT%H%M%SZ)}
exec python3 - <<'PY'
import json, os, secrets, signal, subprocess, sys, time

image, out = os.environ["BENCH_IMAGE"], os.environ["BENCH_OUT"]
runs, updates = int(os.environ["BENCH_RUNS"]), int(os.environ["BENCH_UPDATES"])
stack = f"cswbench_{os.getpid()}"
service, network, replicas = f"{stack}_cloister", f"{stack}_cluster", 3
os.makedirs(out, exist_ok=True)

def docker(*args, check=True, env=None):
    p = subprocess.run(["docker", *args], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout

def now_ms():
    return int(time.time() * 1000)

def rfc3339_ms(text):
    if not text or text.startswith("0001"):
        return None
    date, _, frac = text.rstrip("Z").partition(".")
    from datetime import datetime, timezone
    t = datetime.strptime(date, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000) + int((frac + "000")[:3])

def tasks():
    """Every container of the service: id, running, ip, events, stop time."""
    ids = docker("ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.swarm.service.name={service}").split()
    if not ids:
        return []
    found = []
    for c in json.loads(docker("inspect", *ids)):
        logs = subprocess.run(["docker", "logs", c["Id"]], capture_output=True, text=True).stdout
        events = []
        for line in logs.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and "event" in e:
                events.append(e)
        net = (c["NetworkSettings"]["Networks"] or {}).get(network) or {}
        found.append({
            "id": c["Id"], "name": c["Name"].lstrip("/"), "running": c["State"]["Running"],
            "ip": net.get("IPAddress") or None, "events": events, "stdout": logs,
            "finished": None if c["State"]["Running"] else rfc3339_ms(c["State"]["FinishedAt"]),
        })
    return found

def state(t):
    for e in reversed(t["events"]):
        if e["event"] == "snapshot":
            return e.get("state")
        if e["event"] == "state_changed":
            return e.get("to")
    return None

def ring(t):
    for e in reversed(t["events"]):
        if isinstance(e.get("members"), list):
            return set(e["members"]), e.get("ring_digest")
    return set(), None

def one_ring(ts, n, exclude=()):
    running = [t for t in ts if t["running"]]
    if len(running) != n or any(t["ip"] is None or t["id"] in exclude for t in running):
        return None
    names = {f"cloister@{t['ip']}" for t in running}
    rings = [ring(t) for t in running]
    if all(state(t) == "ready" for t in running) and all(r == (names, rings[0][1]) for r in rings):
        return running
    return None

def wait(what, check, deadline=180):
    until = time.time() + deadline
    while time.time() < until:
        found = check(tasks())
        if found:
            return found
        time.sleep(0.25)
    raise SystemExit(f"timed out after {deadline} s waiting for: {what}")

def ready_spans(t, horizon):
    """The spans [from, to) during which the node said it was ready."""
    spans, since = [], None
    for e in t["events"]:
        if e["event"] == "snapshot" and e.get("state") == "ready" and since is None:
            since = e["ts"]
        if e["event"] == "state_changed":
            if e.get("to") == "ready" and since is None:
                since = e["ts"]
            elif e.get("to") != "ready" and since is not None:
                spans.append((since, e["ts"]))
                since = None
    if since is not None:
        spans.append((since, t["finished"] or horizon))
    return spans

def unavailability(ts, start, end):
    """ms in [start, end) with fewer than `replicas` Ready tasks, and with none."""
    edges = []
    for t in ts:
        for a, b in ready_spans(t, end):
            a, b = max(a, start), min(b, end)
            if a < b:
                edges += [(a, 1), (b, -1)]
    edges.sort()
    degraded = outage = 0
    count, at = 0, start
    for point, step in edges + [(end, 0)]:
        if count < replicas:
            degraded += point - at
        if count == 0:
            outage += point - at
        count, at = count + step, point
    return degraded, outage

swarm_created = gwbridge_created = False
def cleanup(*_):
    docker("stack", "rm", stack, check=False)
    for _ in range(120):
        left = docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}", check=False).strip()
        net = subprocess.run(["docker", "network", "inspect", network], capture_output=True).returncode == 0
        if not left and not net:
            break
        time.sleep(0.5)
    if swarm_created:
        docker("swarm", "leave", "--force", check=False)
        if gwbridge_created:
            docker("network", "rm", "docker_gwbridge", check=False)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

try:
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip() == "inactive":
        gwbridge_created = subprocess.run(["docker", "network", "inspect", "docker_gwbridge"], capture_output=True).returncode != 0
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        swarm_created = True
    env = dict(os.environ, CLOISTER_IMAGE=image, CLOISTER_COOKIE=secrets.token_hex(16))
    docker("stack", "deploy", "--resolve-image", "never", "-c", "docker/stack.yml", stack, env=env)
    wait("3 tasks ready on one ring", lambda ts: one_ring(ts, replicas))
    results = {"sigterm_to_left_ms": [], "updates": []}

    for i in range(runs):
        running = wait("3 tasks ready on one ring", lambda ts: one_ring(ts, replicas))
        victim = running[0]
        peer = f"cloister@{victim['ip']}"
        others = [t["id"] for t in running[1:]]
        marks = {t["id"]: len(t["events"]) for t in running}
        t0 = now_ms()
        docker("kill", "--signal", "TERM", victim["id"])
        def all_left(ts):
            seen = []
            for t in ts:
                if t["id"] in others:
                    hit = [e["ts"] for e in t["events"][marks[t["id"]]:]
                           if e["event"] == "node_down" and e.get("peer") == peer]
                    reasons = [e.get("reason") for e in t["events"][marks[t["id"]]:]
                               if e["event"] == "node_down" and e.get("peer") == peer]
                    if not hit:
                        return None
                    seen.append((hit[0], reasons[0]))
            return seen if len(seen) == len(others) else None
        seen = wait(f"every peer's node_down about {peer}", all_left, deadline=30)
        reasons = sorted({r for _, r in seen})
        ms = max(ts for ts, _ in seen) - t0
        results["sigterm_to_left_ms"].append({"ms": ms, "reasons": reasons})
        print(f"sigterm {i + 1}: {ms} ms to node_down on every peer (reasons {reasons})", flush=True)
        wait("the replacement on one ring of 3", lambda ts: one_ring(ts, replicas, exclude={victim["id"]}))

    for i in range(updates):
        before = {t["id"] for t in wait("3 tasks ready on one ring", lambda ts: one_ring(ts, replicas))}
        t0 = now_ms()
        docker("service", "update", "--force", "--detach", service)
        def done(ts):
            state = docker("service", "inspect", "--format", "{{.UpdateStatus.State}}", service).strip()
            return state == "completed" and one_ring(ts, replicas, exclude=before)
        wait("the update completed, 3 new tasks on one ring", done, deadline=300)
        t1 = now_ms()
        degraded, outage = unavailability(tasks(), t0, t1)
        entry = {"total_ms": t1 - t0, "degraded_ms": degraded, "outage_ms": outage}
        results["updates"].append(entry)
        print(f"update {i + 1}: total {t1 - t0} ms, fewer than {replicas} ready {degraded} ms, "
              f"none ready {outage} ms", flush=True)

    for t in tasks():
        with open(os.path.join(out, t["name"] + ".stdout"), "w") as f:
            f.write(t["stdout"])
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"kept in {out}")
finally:
    cleanup()
PY
