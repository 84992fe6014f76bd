#!/usr/bin/env bash
# Side-by-side load test: Switchboard, Mosquitto and nats-server in turn,
# each pinned to the same server core(s) with taskset, the generator on the
# other cores, the same workloads, RUNS rounds (each target once per round): `pairs` (max, rate RATE,
# rate at half of max), `fanout` 1→FANOUT_K (max), `mesh` of MESH_USERS,
# `connect` (handshake rate) and `idle` (IDLE_CONNS connections, memory per
# connection, on a fresh server each run). Writes every run as a JSON line
# and markdown tables of medians (with ranges).
#
# Targets: switchboard (WebSocket), nats-ws and mosquitto-ws (the peers over
# WebSocket: the like-for-like comparison), nats and mosquitto (their
# native TCP protocols, for reference).
#
# Needs (Debian): mosquitto, nats-server, util-linux (taskset), python3.
# Installs nothing. Builds release binaries of switchboard and loadtest.
#
# Usage: bench/compare.sh [OUT_DIR]
# Environment (defaults):
#   RUNS=3 DURATION=5 PAIRS=100 WINDOW=32 SIZE=256 RATE=20000
#   FANOUT_K=1000 IDLE_CONNS=10000 (lowered to what the fd limit allows)
#   SERVER_CPUS=0 GEN_CPUS=1 GEN_THREADS=1
#   TARGETS="switchboard nats-ws mosquitto-ws nats mosquitto"
#   WORKLOADS="pairs fanout mesh connect idle" MESH_USERS=100 CONNECTORS=4
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/compare}
RUNS=${RUNS:-3} DURATION=${DURATION:-5} PAIRS=${PAIRS:-100} WINDOW=${WINDOW:-32} SIZE=${SIZE:-256}
RATE=${RATE:-20000} SERVER_CPUS=${SERVER_CPUS:-0} GEN_CPUS=${GEN_CPUS:-1} GEN_THREADS=${GEN_THREADS:-1}
TARGETS=${TARGETS:-"switchboard nats-ws mosquitto-ws nats mosquitto"}
FANOUT_K=${FANOUT_K:-1000} IDLE_CONNS=${IDLE_CONNS:-10000} WORKLOADS=${WORKLOADS:-"pairs fanout mesh connect idle"}
MESH_USERS=${MESH_USERS:-100} CONNECTORS=${CONNECTORS:-4}
# loadtest raises its soft limit up to the hard one; the servers inherit
# ours, so raise it here too and keep idle within it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_room=$(( $(ulimit -n) - 200 ))
if [ "$IDLE_CONNS" -gt "$fd_room" ]; then
  echo "compare.sh: the open-files limit is $(ulimit -n): idle uses $fd_room connections instead of $IDLE_CONNS" >&2
  IDLE_CONNS=$fd_room
fi

for tool in taskset python3 mosquitto nats-server; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "compare.sh needs $tool" >&2; exit 2; }
done
export PATH="$PATH:/usr/sbin"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
rm -rf "$out/reports"

(cd "$root" && cargo build --release --locked -p switchboard -p switchboard-loadtest)
sb="$root/target/release/switchboard"
lt="$root/target/release/loadtest"
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server did not open port $1" >&2
  return 1
}

start_server() { # target -> sets server_pid, url and kind (loadtest's --target)
  local port
  port=$(free_port)
  kind=${1%-ws}
  case "$1" in
    switchboard)
      SWITCHBOARD_DATA_DIR="$tmp/sb" taskset -c "$SERVER_CPUS" "$sb" serve --listen "127.0.0.1:$port" \
        --admin-listen 127.0.0.1:0 --shards "$(taskset -c "$SERVER_CPUS" nproc)" >"$tmp/sb.out" 2>"$tmp/sb.err" &
      server_pid=$!
      url="ws://127.0.0.1:$port/connect"
      ;;
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nmax_queued_messages 100000\nmax_connections -1\n' \
        "$port" >"$tmp/mosquitto.conf"
      taskset -c "$SERVER_CPUS" mosquitto -c "$tmp/mosquitto.conf" >"$tmp/mosq.log" 2>&1 &
      server_pid=$!
      url="mqtt://127.0.0.1:$port"
      ;;
    mosquitto-ws)
      # Mosquitto 2.0.11 will not start with only a websockets listener, so
      # it gets an unused TCP one too (and binds websockets to all addresses
      # whatever the config says; the load stays on loopback).
      printf 'listener %s 127.0.0.1\nlistener %s 127.0.0.1\nprotocol websockets\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nmax_connections -1\n' \
        "$(free_port)" "$port" >"$tmp/mosquitto.conf"
      taskset -c "$SERVER_CPUS" mosquitto -c "$tmp/mosquitto.conf" >"$tmp/mosq.log" 2>&1 &
      server_pid=$!
      url="ws://127.0.0.1:$port/mqtt"
      ;;
    nats-ws)
      printf 'max_connections: 1000000\nwebsocket { listen: "127.0.0.1:%s", no_tls: true }\n' "$port" >"$tmp/nats.conf"
      GOMAXPROCS=$(taskset -c "$SERVER_CPUS" nproc) taskset -c "$SERVER_CPUS" nats-server -c "$tmp/nats.conf" \
        -a 127.0.0.1 -p "$(free_port)" >"$tmp/nats.log" 2>&1 &
      server_pid=$!
      url="ws://127.0.0.1:$port"
      ;;
    nats)
      printf 'max_connections: 1000000\n' >"$tmp/nats.conf"
      GOMAXPROCS=$(taskset -c "$SERVER_CPUS" nproc) taskset -c "$SERVER_CPUS" nats-server -c "$tmp/nats.conf" \
        -a 127.0.0.1 -p "$port" >"$tmp/nats.log" 2>&1 &
      server_pid=$!
      url="nats://127.0.0.1:$port"
      ;;
  esac
  wait_port "$port"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Every run also writes an HTML report (latency plot); index.html links them.
report_path() { # target workload-name -> path of a new report file (numbered by how many exist)
  mkdir -p "$out/reports"
  local n
  n=$(find "$out/reports" -type f -name '*.html' | wc -l)
  echo "$out/reports/$(printf '%03d' $((n + 1)))-$1-$2.html"
}

record() { # target workload-name json-line
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["target"]=sys.argv[2]; d["workload"]=sys.argv[3]; print(json.dumps(d))' \
    "$3" "$1" "$2" >>"$results"
}

run() { # target workload-name args...
  local target=$1 name=$2
  shift 2
  local line
  line=$(SWITCHBOARD_DATA_DIR="$tmp/sb" taskset -c "$GEN_CPUS" "$lt" pairs --target "$kind" --url "$url" \
    --pairs "$PAIRS" --size "$SIZE" --duration "$DURATION" --threads "$GEN_THREADS" \
    --server-pid "$server_pid" --json --report "$(report_path "$target" "$name")" "$@")
  record "$target" "$name" "$line"
  echo "$target $name: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("delivered_per_s"), "msg/s", "p99", d.get("latency_us",{}).get("p99"), "us", "lost", d.get("lost"))' "$line")"
}

run_fanout() { # target
  local line
  line=$(SWITCHBOARD_DATA_DIR="$tmp/sb" taskset -c "$GEN_CPUS" "$lt" fanout --target "$kind" --url "$url" \
    --receivers "$FANOUT_K" --size "$SIZE" --duration "$DURATION" --threads "$GEN_THREADS" \
    --mode max --window "$WINDOW" --server-pid "$server_pid" --json --report "$(report_path "$1" "fanout")")
  record "$1" "fanout-1to$FANOUT_K" "$line"
  echo "$1 fanout 1->$FANOUT_K: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["deliveries_per_s"], "deliveries/s", "p99", d["latency_us"]["p99"], "us", "lost", d["lost"])' "$line")"
}

run_mesh() { # target
  local line
  line=$(SWITCHBOARD_DATA_DIR="$tmp/sb" taskset -c "$GEN_CPUS" "$lt" mesh --target "$kind" --url "$url" \
    --users "$MESH_USERS" --size "$SIZE" --duration "$DURATION" --threads "$GEN_THREADS" \
    --mode max --window "$WINDOW" --server-pid "$server_pid" --json --report "$(report_path "$1" "mesh")")
  record "$1" "mesh-$MESH_USERS" "$line"
  echo "$1 mesh $MESH_USERS: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["delivered_per_s"], "msg/s", "p99", d["latency_us"]["p99"], "us", "lost", d["lost"])' "$line")"
}

run_connect() { # target
  local line
  line=$(SWITCHBOARD_DATA_DIR="$tmp/sb" taskset -c "$GEN_CPUS" "$lt" connect --target "$kind" --url "$url" \
    --concurrency "$CONNECTORS" --duration "$DURATION" --server-pid "$server_pid" --json \
    --report "$(report_path "$1" "connect")")
  record "$1" "connect-$CONNECTORS" "$line"
  echo "$1 connect: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d["connects_per_s"]), "connects/s", "p99", d["handshake_latency_us"]["p99"], "us", "failures", d["failures"])' "$line")"
}

run_idle() { # target (on a fresh server)
  local line
  line=$(SWITCHBOARD_DATA_DIR="$tmp/sb" taskset -c "$GEN_CPUS" "$lt" idle --target "$kind" --url "$url" \
    --connections "$IDLE_CONNS" --settle 2 --max-connect-time 120 --threads "$GEN_THREADS" --server-pid "$server_pid" --json)
  record "$1" "idle-$IDLE_CONNS" "$line"
  echo "$1 idle $IDLE_CONNS: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d["bytes_per_connection"]), "bytes/connection,", d["open"], "open")' "$line")"
}

has() { case " $WORKLOADS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Rounds, not one target after another: this machine's speed drifts over
# minutes (a peer measured ten minutes later can look 1.5x faster), so each
# round runs every target once, in turn, on a fresh server.
for i in $(seq 1 "$RUNS"); do
  for target in $TARGETS; do
    start_server "$target"
    if has pairs; then
      run "$target" "max" --mode max --window "$WINDOW"
      run "$target" "rate-$RATE" --mode rate --rate "$RATE"
      # Half of this server's median max throughput so far.
      half=$(python3 - "$results" "$target" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["target"] == sys.argv[2] and json.loads(l)["workload"] == "max"]
print(int(statistics.median(r["delivered_per_s"] for r in rows) / 2))
PY
)
      run "$target" "rate-half-max" --mode rate --rate "$half"
    fi
    if has fanout; then run_fanout "$target"; fi
    if has mesh; then run_mesh "$target"; fi
    if has connect; then run_connect "$target"; fi
    stop_server
    if has idle; then
      # A fresh server: memory is measured from its idle state.
      start_server "$target"
      run_idle "$target"
      stop_server
    fi
  done
done

# summary.md and index.html: tables of medians, one latency plot per workload
# with every server's curve, and links to every run's report.
"$lt" report "$results" --html "$out/index.html" --markdown "$out/summary.md"
cat "$out/summary.md"
echo "HTML: $out/index.html"
