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
#   docker/bench.sh                                  # everything, ~4 minutes
#   CLOISTER_BENCH_SCENARIOS="kill pause" docker/bench.sh
#   CLOISTER_BENCH_BUILD=1 docker/bench.sh           # rebuild the image first
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

python3 - "$image" "$prefix" "$out" "$scenarios" "${compose[@]}" <<'PY'
import calendar, json, os, statistics, subprocess, sys, time

IMAGE, PREFIX, OUT, SCENARIOS = sys.argv[1:5]
COMPOSE = sys.argv[5:]
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
    def __init__(self, tag, consensus, subnet=None):
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
                    "networks:\n  local:\n    driver: bridge\n    ipam:\n"
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
                   "--listen-port", "4999", "--consensus", "2",
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


plan = {
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
