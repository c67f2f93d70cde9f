#!/usr/bin/env bash
# Rewrites examples/order/cloister-node.txt: the functions a node runs, hottest
# first, which examples/build.rs hands the linker (`--symbol-ordering-file`) so
# that they share as few pages as possible (see README.md there).
#
#   examples/order/refresh.sh      # needs valgrind and python3; about 4 minutes
#
# It builds the release cloister-node, then runs two clusters on 127.0.0.1
# with node 1 under callgrind while the others form, idle, see a node frozen
# and resumed, one killed and restarted; node 1 leaves at the end. The first,
# a full mesh of 8, runs node 1 as the test harness and the benchmarks do
# (timers as flags, commands on stdin); the second, 100 nodes under bounded
# sessions, as a container does (the environment only). Run it again after a
# toolchain or dependency update: symbol names change with them.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "refresh.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
target=x86_64-unknown-linux-gnu
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --target "$target" -p cloister-examples --bin cloister-node
bin=$PWD/target/$target/release/cloister-node
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  { wait; } 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# train NAME N PORT_BASE SETTLE_SECONDS harness|env [CLOISTER_*=value ...]
train() {
  local name=$1 n=$2 base=$3 settle=$4 mode=$5; shift 5
  local sentry="" i
  for i in $(seq 1 "$n"); do sentry+="${sentry:+,}node$i@127.0.0.1:$((base + i))"; done
  declare -A node
  local stdin=/dev/null flags=()
  start() { # start I [VAR=value...] [wrapper...]
    local i=$1; shift
    env CLOISTER_NODE_NAME="node$i" CLOISTER_LISTEN_ADDR=127.0.0.1 \
      CLOISTER_LISTEN_PORT=$((base + i)) CLOISTER_SENTRY="$sentry" CLOISTER_CONSENSUS=1 \
      "$@" "$bin" "${flags[@]}" >"$work/$name-$i.log" 2>&1 <"$stdin" 3>&- &
    node[$i]=$!; pids+=($!)
  }
  # Node 1 keeps the library's timers; the others wait long for it, since
  # callgrind slows it some fifty times.
  local profile=(valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$name.cg")
  if [ "$mode" = harness ]; then
    # What `LocalCluster` gives a node: timers as flags, commands on stdin,
    # and the end of stdin stops it: fd 3 here is its only writer (the
    # nodes are started without it), closed at the end.
    mkfifo "$work/$name.stdin"; exec 3<>"$work/$name.stdin"
    stdin=$work/$name.stdin flags=(--heartbeat-interval 300ms --heartbeat-timeout 1500ms)
    start 1 CLOISTER_UNDER_HARNESS=1 CLOISTER_ADVERTISED_HOST=127.0.0.1 "$@" "${profile[@]}"
    stdin=/dev/null flags=()
  else
    start 1 "$@" "${profile[@]}"
  fi
  sleep 2
  for i in $(seq 2 "$n"); do start "$i" "${@}" CLOISTER_HEARTBEAT_TIMEOUT=30s; done
  sleep "$settle"
  kill -STOP "${node[$n]}"; sleep 4; kill -CONT "${node[$n]}"; sleep 4
  { kill -KILL "${node[$((n - 1))]}"; wait "${node[$((n - 1))]}"; } 2>/dev/null || true; sleep 4
  start $((n - 1)) "${@}" CLOISTER_HEARTBEAT_TIMEOUT=30s; sleep 10
  if [ "$mode" = harness ]; then exec 3>&-; else kill -TERM "${node[1]}"; fi
  wait "${node[1]}" || true
  for i in $(seq 2 "$n"); do kill -TERM "${node[$i]}" 2>/dev/null || true; done
  sleep 2
  for i in $(seq 2 "$n"); do kill -KILL "${node[$i]}" 2>/dev/null || true; done
  { wait; } 2>/dev/null || true
  grep -q '"event":"node_down"' "$work/$name-1.log" ||
    { echo "refresh.sh: node 1 of '$name' never saw a node go down: see its log" >&2; cat "$work/$name-1.log" >&2; exit 1; }
}
train mesh 8 47300 20 harness
train bounded 100 47400 40 env CLOISTER_SESSIONS=bounded
python3 examples/order/order.py --variants "$bin" "$work/mesh.cg" "$work/bounded.cg" >examples/order/cloister-node.txt
echo "examples/order/cloister-node.txt: $(wc -l <examples/order/cloister-node.txt) functions; rebuild to link with it"
