#!/usr/bin/env bash
# Times the compose scenario (docker/docker-compose.yml) with the release image
# and the compose file's default timers (300 ms heartbeats, 1.5 s timeout):
#
#   formation  `up -d --scale cloister_test=N` (N=3 x5, N=10 x3, consensus N):
#              last container's StartedAt -> last `state_changed` to ready
#   kill       3 ready, `docker kill` one: the kill -> last survivor's node_down (x5)
#   pause      3 ready, `docker pause` one: the pause -> last other's
#              node_down "unresponsive" (x3)
#   recreate   3 ready, `docker rm -f` one, its IP held by a placeholder
#              container, `up -d --scale` again: the new container's StartedAt ->
#              its name in every survivor's ring and itself ready (x3)
#
#   split      5 ready with quorum = "majority", 3|2 cut with iptables in the
#              containers' network namespaces (nsenter, as root): the cut ->
#              the last of the two `no_quorum`, -> the three's last ring
#              change; the heal -> one ring on all five (x3)
#   bridge     the same five, 0,1|3,4 cut while node 2 reaches all: the cut ->
#              one ring of three on the rest and the other pair `no_quorum`;
#              the heal -> one ring on all five (x3)
#
#   docker/bench.sh                                  # formation kill pause recreate
#   CLOISTER_BENCH_SCENARIOS="kill pause" docker/bench.sh
#   CLOISTER_BENCH_SCENARIOS="split bridge" docker/bench.sh                 # library defaults
#   CLOISTER_BENCH_SCENARIOS="split bridge" CLOISTER_BENCH_TIMERS=fast docker/bench.sh
#   CLOISTER_BENCH_BUILD=1 docker/bench.sh           # rebuild the image first
#
# With CLOISTER_BENCH_TIMERS=fast the split and bridge containers run the
# container tests' timers (100 ms heartbeats, 600 ms timeout, 200 ms discovery
# tick, 500 ms dial timeout and backoff) and `stable_after = 1s`; otherwise
# the library's defaults (300 ms, 1.5 s, 500 ms, 2 s backoff, 5 s).
#
# The image (CLOISTER_IMAGE, default cloister-node:local) is built with
# docker/build.sh (release) when missing or when CLOISTER_BENCH_BUILD=1. Every
# run is its own compose project `cbench_<pid>_<scenario><i>`, taken down on
# exit (also on Ctrl-C or failure). Times come from the nodes' own `ts` (unix
# ms) and from `docker inspect`, so polling `docker logs` does not add to them.
# Every container's stdout and stderr are kept under $CLOISTER_BENCH_OUT
# (default target/docker-bench/<UTC time>/), with results.json; the summary
# table goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${CLOISTER_IMAGE:-cloister-node:local}
scenarios=${CLOISTER_BENCH_SCENARIOS:-formation kill pause recreate}
out=${CLOISTER_BENCH_OUT:-target/docker-bench/$(date -u +%Y%m%dT%H%M%SZ)}
prefix="cbench_$$"
mkdir -p "$out"

# The compose file's defaults, whatever the calling shell says.
unset CLOISTER_HEARTBEAT_INTERVAL CLOISTER_HEARTBEAT_TIMEOUT RUST_LOG CLOISTER_CONSENSUS
# The nodes' shared secret (the compose file takes it from here).
export CLOISTER_COOKIE=${CLOISTER_COOKIE:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}

if docker-compose version >/dev/null 2>&1; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  echo "neither docker-compose nor docker compose runs" >&2
  exit 1
fi

cleanup() {
  # Placeholders (plain `docker run`), then every project of this run.
  local ids
  ids=$(docker ps -aq --filter "label=cloister.bench=$prefix" 2>/dev/null || true)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1 || true
  local project
  for project in $(docker ps -a --format '{{.Label "com.docker.compose.project"}}' 2>/dev/null |
    grep "^${prefix}_" | sort -u); do
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    for id in $ids; do docker unpause "$id" >/dev/null 2>&1 || true; done
    "${compose[@]}" -f docker/docker-compose.yml -p "$project" \
      down -v --remove-orphans -t 1 >/dev/null 2>&1 || true
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1 || true
  done
  local net
  for net in $(docker network ls --format '{{.Name}}' | grep "^${prefix}_" || true); do
    docker network rm "$net" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${CLOISTER_BENCH_BUILD:-0}" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
  CLOISTER_PROFILE=release CLOISTER_IMAGE="$image" docker/build.sh
fi

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(lscpu | sed -n 's/^Model name: *//p'), docker $(docker version --format '{{.Server.Version}}'), $("${compose[@]}" version --short 2>/dev/null || true)"
echo "# image: $image ($(docker image inspect -f '{{.Created}}' "$image")), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# logs: $out"

python3 - "$image" "$prefix" "$out" "$scenarios" "${CLOISTER_BENCH_TIMERS:-defaults}" "${compose[@]}" <<'PY'
import calendar, json, os, statistics, subprocess, sys, time

IMAGE, PREFIX, OUT, SCENARIOS, TIMERS = sys.argv[1:6]
COMPOSE = sys.argv[6:]
SCENARIOS = SCENARIOS.split()
SERVICE = "cloister_test"
BASE = os.path.abspath("docker/docker-compose.yml")
DEADLINE = 60.0
POLL = 0.25
results = {}


def now_ms():
    return time.time_ns() // 1_000_000


def run(args, env=None, check=True):
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def rfc3339_ms(text):
    """`2026-11-26T15:58:26.512345678Z` -> unix ms."""
    text = text.rstrip("Z")
    date, clock = text.split("T")
    hms, _, frac = clock.partition(".")
    y, mo, d = (int(x) for x in date.split("-"))
    h, mi, s = (int(x) for x in hms.split(":"))
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    return secs * 1000 + int((frac + "000")[:3])


def events_of(cid):
    p = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
    events = []
    for line in p.stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("event"), str):
            events.append(e)
    return events


class Project:
    def __init__(self, tag, consensus, subnet=None, env=()):
        self.name = f"{PREFIX}_{tag}"
        self.consensus = consensus
        self.files = ["-f", BASE]
        self.subnet = subnet
        if subnet:
            # Layered over the shipped file: only an explicit subnet, so a
            # placeholder can hold an address with `docker run --ip`.
            d = os.path.join(OUT, self.name)
            os.makedirs(d, exist_ok=True)
            over = os.path.join(d, "docker-compose.override.yml")
            with open(over, "w") as f:
                f.write(
                    "# generated by docker/bench.sh over docker/docker-compose.yml\n"
                    'version: "3.8"\n'
                    + (f"services:\n  {SERVICE}:\n    environment:\n" if env else "")
                    + "".join(f"      - {var}\n" for var in env)
                    + "networks:\n  local:\n    driver: bridge\n    ipam:\n"
                    f"      config:\n        - subnet: {subnet}.0/24\n"
                )
            self.files += ["-f", over]
        self.placeholders = []

    @property
    def network(self):
        return f"{self.name}_local"

    def compose(self, *args):
        env = dict(os.environ, CLOISTER_CONSENSUS=str(self.consensus))
        return run(COMPOSE + self.files + ["-p", self.name] + list(args), env=env)

    def up(self, n):
        self.compose("up", "-d", "--no-recreate", "-t", "1", "--scale", f"{SERVICE}={n}")

    def ids(self):
        out = run(["docker", "ps", "-aq", "--no-trunc", "--filter",
                   f"label=com.docker.compose.project={self.name}"], check=False)
        return out.split()

    def views(self, with_events=True):
        ids = self.ids()
        if not ids:
            return []
        inspected = json.loads(run(["docker", "inspect"] + ids))
        views = []
        for c in inspected:
            nets = c["NetworkSettings"]["Networks"] or {}
            ip = (nets.get(self.network) or {}).get("IPAddress") or None
            v = {
                "id": c["Id"],
                "container": c["Name"].lstrip("/"),
                "number": int(c["Config"]["Labels"].get("com.docker.compose.container-number", 0)),
                "running": c["State"]["Running"],
                "paused": c["State"]["Paused"],
                "started_ms": rfc3339_ms(c["State"]["StartedAt"]),
                "ip": ip,
            }
            v["events"] = events_of(v["id"]) if with_events and v["running"] else []
            views.append(v)
        views.sort(key=lambda v: v["number"])
        return views

    def wait(self, what, check, deadline=DEADLINE):
        until = time.monotonic() + deadline
        while True:
            views = self.views()
            value = check(views)
            if value is not None:
                return value
            if time.monotonic() > until:
                raise RuntimeError(f"[{self.name}] timed out waiting for {what}")
            time.sleep(POLL)

    def hold(self, ip):
        cid = run(["docker", "run", "-d", "--label", f"cloister.bench={PREFIX}",
                   "--network", self.network, "--ip", ip, IMAGE,
                   "--app", "placeholder", "--sentry", f"placeholder@{ip}:4999",
                   "--listen-port", "4999", "--listen-addr", "127.0.0.1",
                   "--consensus", "2",
                   "--startup-deadline", "300s"]).strip()
        self.placeholders.append(cid)

    def save_logs(self):
        d = os.path.join(OUT, self.name)
        os.makedirs(d, exist_ok=True)
        for cid in self.ids():
            name = run(["docker", "inspect", "-f", "{{.Name}}", cid], check=False).strip().lstrip("/")
            p = subprocess.run(["docker", "logs", "-t", cid], capture_output=True, text=True)
            with open(os.path.join(d, f"{name}.out"), "w") as f:
                f.write(p.stdout)
            with open(os.path.join(d, f"{name}.err"), "w") as f:
                f.write(p.stderr)

    def down(self):
        for cid in self.placeholders:
            run(["docker", "rm", "-f", cid], check=False)
        for cid in self.ids():
            run(["docker", "unpause", cid], check=False)
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "1")
        except RuntimeError as err:
            print(f"warning: {err}", file=sys.stderr)
        left = self.ids()
        if left:
            run(["docker", "rm", "-f"] + left, check=False)
        run(["docker", "network", "rm", self.network], check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.save_logs()
        finally:
            self.down()


# --- what a node says --------------------------------------------------------

def node(v):
    for e in reversed(v["events"]):
        if "node" in e:
            return e["node"]
    return None


def state(v):
    for e in reversed(v["events"]):
        if e["event"] == "snapshot":
            return e.get("state")
        if e["event"] == "state_changed":
            return e.get("to")
    return None


def ring(v):
    for e in reversed(v["events"]):
        if isinstance(e.get("members"), list):
            return e
    return None


def first_ready(v, mark=0):
    for e in v["events"][mark:]:
        if e["event"] == "state_changed" and e.get("to") == "ready":
            return e["ts"]
    return None


def live(views):
    return [v for v in views if v["running"] and not v["paused"]]


def all_agree(n):
    """Check: exactly n live containers, each ready on one ring of all of them."""
    def check(views):
        nodes = live(views)
        if len(nodes) != n or any(not v["events"] for v in nodes):
            return None
        names = {node(v) for v in nodes}
        digests = set()
        for v in nodes:
            r = ring(v)
            if state(v) != "ready" or r is None or set(r["members"]) != names:
                return None
            digests.add(r.get("ring_digest"))
        return views if len(digests) == 1 else None
    return check


def saw_down(v, mark, peer, reason=None):
    for e in v["events"][mark:]:
        if e["event"] == "node_down" and e.get("peer") == peer and (reason is None or e.get("reason") == reason):
            return e
    return None


def ring_with(v, mark, member):
    for e in v["events"][mark:]:
        if isinstance(e.get("members"), list) and member in e["members"]:
            return e["ts"]
    return None


def log(msg):
    print(msg, flush=True)


def record(key, value, **extra):
    results.setdefault(key, []).append(dict(ms=value, **extra))


# --- scenarios ---------------------------------------------------------------

def formation(n, i):
    with Project(f"form{n}_{i}", n) as p:
        p.up(n)
        views = p.wait(f"{n} containers ready", all_agree(n))
        starts = [v["started_ms"] for v in views]
        ready = [first_ready(v) for v in views]
        ms = max(ready) - max(starts)
        record(f"formation{n}", ms, start_spread=max(starts) - min(starts),
               first_ready=min(ready) - max(starts))
        log(f"formation N={n} #{i}: last start -> all ready {ms} ms "
            f"(starts spread over {max(starts) - min(starts)} ms, first ready at {min(ready) - max(starts)} ms)")


def fault(action, i):
    """3 ready containers; `docker kill` or `docker pause` one: the action ->
    the last other container's node_down (for a pause, "unresponsive")."""
    reason = "unresponsive" if action == "pause" else None
    with Project(f"{action}{i}", 3) as p:
        p.up(3)
        views = p.wait("3 ready", all_agree(3))
        target = views[i % 3]
        name = node(target)
        marks = {v["id"]: len(v["events"]) for v in views}
        t0 = now_ms()
        run(["docker", action, target["id"]])

        def check(views):
            seen = [saw_down(v, marks.get(v["id"], 0), name, reason)
                    for v in views if v["id"] != target["id"]]
            return seen if all(seen) else None
        downs = p.wait(f"the others see {name} down", check)
        ms = max(e["ts"] for e in downs) - t0
        reasons = sorted({e.get("reason") for e in downs})
        each = [e["ts"] - t0 for e in downs]
        record(action, ms, reasons=reasons, each=each)
        log(f"{action} #{i}: docker {action} -> node_down on every other {ms} ms "
            f"(reason {','.join(reasons)}; each: {', '.join(map(str, each))})")
        if action == "pause":
            run(["docker", "unpause", target["id"]])


def recreate(i):
    subnet = f"10.213.{(os.getpid() + i) % 250}"
    with Project(f"recreate{i}", 3, subnet=subnet) as p:
        p.up(3)
        views = p.wait("3 ready", all_agree(3))
        victim = views[i % 3]
        old_name, old_ip = node(victim), victim["ip"]
        marks = {v["id"]: len(v["events"]) for v in views}
        t0 = now_ms()
        run(["docker", "rm", "-f", victim["id"]])

        def gone(views):
            seen = [saw_down(v, marks.get(v["id"], 0), old_name) for v in views]
            return seen if all(seen) else None
        downs = p.wait(f"survivors see {old_name} down", gone)
        rm_ms = max(e["ts"] for e in downs) - t0
        # Docker hands out the lowest free address: hold the old one, so the
        # new container gets a new IP (a new name), as a new pod would.
        p.hold(old_ip)
        p.up(3)
        views = p.wait("the recreated container on a ring of three", all_agree(3))
        fresh = next(v for v in views if v["id"] not in marks)
        new_name = node(fresh)
        joined = [ring_with(v, marks[v["id"]], new_name) for v in views if v["id"] in marks]
        ready = first_ready(fresh)
        start = fresh["started_ms"]
        ms = max(joined + [ready]) - start
        record("recreate", ms, in_survivor_rings=max(joined) - start, fresh_ready=ready - start,
               new_ip=fresh["ip"], old_ip=old_ip, rm_to_down=rm_ms)
        log(f"recreate #{i}: new container start -> in every ring {max(joined) - start} ms, "
            f"it ready {ready - start} ms -> {ms} ms (IP {old_ip} -> {fresh['ip']}; "
            f"rm -f -> node_down on survivors {rm_ms} ms)")


# --- faults in the containers' network namespaces ----------------------------

class Nemesis:
    """iptables rules put into containers' namespaces, removed on exit (a
    container that is gone takes its rules along)."""

    def __init__(self):
        self.rules = []

    def add(self, v, rule):
        pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", v["id"]]).strip()
        run(["nsenter", "-t", pid, "-n", "iptables", "-I"] + rule)
        self.rules.append((pid, rule))

    def partition(self, a, b):
        """Nothing passes between any node of `a` and any node of `b`."""
        for x in a:
            for y in b:
                self.add(x, ["INPUT", "-s", y["ip"], "-j", "DROP"])
                self.add(x, ["OUTPUT", "-d", y["ip"], "-j", "DROP"])

    def heal(self):
        for pid, rule in reversed(self.rules):
            run(["nsenter", "-t", pid, "-n", "iptables", "-D"] + rule, check=False)
        self.rules = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.heal()


FAST = ["CLOISTER_HEARTBEAT_INTERVAL=100ms", "CLOISTER_HEARTBEAT_TIMEOUT=600ms",
        "CLOISTER_DISCOVERY_TICK=200ms", "CLOISTER_DIAL_TIMEOUT=500ms",
        "CLOISTER_DIAL_BACKOFF_MAX=500ms", "CLOISTER_STABLE_AFTER=1s"]


def quorum_project(tag, i):
    env = ["CLOISTER_QUORUM=majority"] + (FAST if TIMERS == "fast" else [])
    subnet = f"10.214.{(os.getpid() + 7 * i + len(tag)) % 250}"
    return Project(f"{tag}{i}", 1, subnet=subnet, env=env)


def out_of_ring(nodes):
    return all(state(v) == "no_quorum" for v in nodes)


def one_ring(nodes):
    """The ts of the last ring change when `nodes` are ready on one ring of
    exactly them, else None."""
    names = {node(v) for v in nodes}
    rings = [ring(v) for v in nodes]
    if any(state(v) != "ready" for v in nodes) or any(r is None for r in rings):
        return None
    if any(set(r["members"]) != names for r in rings) or len({r.get("ring_digest") for r in rings}) != 1:
        return None
    return max(r["ts"] for r in rings)


def heal_timed(p, nem, key):
    t1 = now_ms()
    nem.heal()
    views = p.wait("all five on one ring after the heal", all_agree(5))
    ms = max(ring(v)["ts"] for v in views) - t1
    record(key, ms)
    return ms


def split(i):
    with quorum_project("split", i) as p, Nemesis() as nem:
        p.up(5)
        views = p.wait("5 ready", all_agree(5))
        kept, cut = views[:3], views[3:]
        ids = {v["id"] for v in cut}
        t0 = now_ms()
        nem.partition(cut, kept)

        def check(now):
            off = [v for v in live(now) if v["id"] in ids]
            on = [v for v in live(now) if v["id"] not in ids]
            last = one_ring(on)
            if last is None or not out_of_ring(off):
                return None
            left = [next(e["ts"] for e in reversed(v["events"]) if e.get("to") == "no_quorum") for v in off]
            return max(left), last
        left, last = p.wait("the two no_quorum, the three on one ring", check)
        record("split_minority", left - t0)
        record("split_majority", last - t0)
        healed = heal_timed(p, nem, "split_heal")
        log(f"split #{i}: cut -> both of the two no_quorum {left - t0} ms, "
            f"-> the three's last ring change {last - t0} ms; heal -> one ring of five {healed} ms")


def bridge(i):
    with quorum_project("bridge", i) as p, Nemesis() as nem:
        p.up(5)
        views = p.wait("5 ready", all_agree(5))
        t0 = now_ms()
        nem.partition(views[:2], views[3:])
        pairs = [{v["id"] for v in views[:2]}, {v["id"] for v in views[3:]}]

        def check(now):
            for out in pairs:
                off = [v for v in live(now) if v["id"] in out]
                on = [v for v in live(now) if v["id"] not in out]
                last = one_ring(on)
                if len(on) == 3 and last is not None and out_of_ring(off):
                    return last, sorted(node(v) for v in off)
            return None
        last, out = p.wait("one pair out, one ring of three", check)
        record("bridge", last - t0)
        healed = heal_timed(p, nem, "bridge_heal")
        log(f"bridge #{i}: cut -> one ring of three {last - t0} ms (out: {', '.join(out)}); "
            f"heal -> one ring of five {healed} ms")


plan = {
    "split": [(split, (i,)) for i in range(1, 4)],
    "bridge": [(bridge, (i,)) for i in range(1, 4)],
    "formation": [(formation, (3, i)) for i in range(1, 6)] + [(formation, (10, i)) for i in range(1, 4)],
    "kill": [(fault, ("kill", i)) for i in range(1, 6)],
    "pause": [(fault, ("pause", i)) for i in range(1, 4)],
    "recreate": [(recreate, (i,)) for i in range(1, 4)],
}
began = time.monotonic()
for scenario in SCENARIOS:
    for fn, args in plan[scenario]:
        fn(*args)

with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(results, f, indent=1)

rows = [
    ("formation3", "Formation, 3 containers: last start -> all ready", "< 1 s",
     "Elixir cloister: 5 s polls, 2 s boot retries; Akka bootstrap >= 5 s"),
    ("formation10", "Formation, 10 containers: last start -> all ready", "< 1 s",
     "Elixir cloister: 5 s polls, 2 s boot retries; Akka bootstrap >= 5 s"),
    ("kill", "`docker kill` -> `node_down` on every survivor", "-", "-"),
    ("pause", "`docker pause` -> `node_down` unresponsive on every other", "< 2 s",
     "Akka ~5.5 s, memberlist ~5.5 s, Erlang 45-75 s, ractor_cluster alone never"),
    ("recreate", "Recreated container start -> in every ring (and it ready)", "< 1 s", "-"),
    ("split_minority", f"3\\|2 cut -> the two `no_quorum` ({TIMERS} timers)", "-",
     "Akka SBR: detection ~5 s + stable-after 20 s"),
    ("split_majority", f"3\\|2 cut -> the three on one ring ({TIMERS} timers)", "-",
     "Akka SBR: detection ~5 s + stable-after 20 s"),
    ("split_heal", f"heal of 3\\|2 -> one ring of five ({TIMERS} timers)", "-", "-"),
    ("bridge", f"bridge 0,1\\|3,4 -> one ring of three ({TIMERS} timers)", "-",
     "Akka SBR down-indirectly-connected: ~5 s + 20 s"),
    ("bridge_heal", f"heal of the bridge -> one ring of five ({TIMERS} timers)", "-", "-"),
]
log(f"\n# total {time.monotonic() - began:.0f} s\n")
log("| scenario | runs | median | max | goal | anchor |")
log("|---|---|---|---|---|---|")
for key, label, goal, anchor in rows:
    if key not in results:
        continue
    ms = [r["ms"] for r in results[key]]
    log(f"| {label} | {len(ms)} | {statistics.median(ms):g} ms | {max(ms)} ms | {goal} | {anchor} |")
PY
