#!/usr/bin/env bash
# The cluster's cost, measured against the same binary as a single node, on this machine
# over loopback: publishers on node 1 and subscribers on node 2 against both on one node,
# connects spread over the cluster's nodes, CONNACK latency, and takeover latency (the same
# client id connecting on node 2 while it is connected on node 1: new CONNECT sent -> old
# connection closed). Writes its table into BENCHMARKS.md between its own markers, which
# bench/compare.sh keeps when it regenerates the file.
#
#   bench/cluster.sh                   # RUNS=3 per topology and scenario
#   QUICK=1 RUNS=1 bench/cluster.sh    # smoke test: 10x smaller counts
#   CPU_LIMIT=0.5 bench/cluster.sh     # and again with each broker on a host of 0.5 CPU
#   SCALE=5 ONLY=fanin-q1,pairs-q0 CPU_LIMIT=0.5 bench/cluster.sh   # longer runs, two scenarios
#
# CPU_LIMIT (a number of CPUs, e.g. 0.5): after the usual pass, every scenario runs again
# with each broker process (the single node, and each cluster node) in a cgroup of its own
# (cgroup v1 cpu controller, /sys/fs/cgroup/cpu/skein-bench-PID/node-I) with the same CFS
# quota, so that "cluster/single" compares equal-sized hosts, as production nodes are,
# instead of three brokers sharing the cores one broker has. A second table gives that
# pass, with the quota and the load generator's CPU (it is not limited: it must not be the
# bottleneck). Where the cgroups cannot be made (not root, no cgroup v1 cpu controller),
# the limited pass is skipped and the table says so. The cgroups are removed afterwards.
# CPU_PERIOD_US (default 10000) is the CFS period: a short one spreads the quota finely (a
# node throttled for the rest of a long period stalls its peers' round trips, which a
# smaller host would not), like a slower CPU rather than one that stops and starts.
#
# Environment: RUNS (default 3), QUICK (0/1), NODES (default 3), TIMEOUT (seconds per bench
# run, default 60), SCALE (default 1: counts multiplied by it; a default run lasts about half a
# second per scenario, which the limited pass's 10 ms CFS periods and start-up make noisy),
# ONLY (comma-separated scenario ids: fanin-q0, fanin-q1, pairs-q0, pairs-q1, connect,
# takeover; default all), CPU_LIMIT (unset: no limited pass), PORT_BASE (default 24883: MQTT from there, HTTP from +100, gRPC from
# +200), OUT (default BENCHMARKS.md), SKEIN_WORKER_THREADS (passed on when set), SKEIN_BIN
# and BENCH_BIN (binaries to run instead of building target/release's, e.g. for an A/B).
# A fresh single node or cluster (empty data dirs) is started for every run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS="${RUNS:-3}"
QUICK="${QUICK:-0}"
SCALE="${SCALE:-1}"
ONLY="${ONLY:-}"
NODES="${NODES:-3}"
TIMEOUT="${TIMEOUT:-60}"
PORT_BASE="${PORT_BASE:-24883}"
OUT="${OUT:-BENCHMARKS.md}"
CPU_LIMIT="${CPU_LIMIT:-}"
CFS_PERIOD_US="${CPU_PERIOD_US:-10000}"
INFLIGHT=1000
QUEUED=1000000

say() { printf '[cluster-bench] %s\n' "$*" >&2; }

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }
for i in $(seq 1 "$NODES"); do
  for p in $((PORT_BASE + i)) $((PORT_BASE + 100 + i)) $((PORT_BASE + 200 + i)); do
    if listening "$p"; then
      say "port $p is in use: set PORT_BASE to a free range"
      exit 2
    fi
  done
done
mqtt_port() { echo $((PORT_BASE + $1)); }
http_port() { echo $((PORT_BASE + 100 + $1)); }
grpc_port() { echo $((PORT_BASE + 200 + $1)); }

WORK="$ROOT/target/bench-cluster"
rm -rf "$WORK"
mkdir -p "$WORK/logs"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# CPU time (user + system) each broker process spent during a run: id, topology, run, ms per node.
CPU="$WORK/cpu.tsv"
: >"$CPU"
# The load generator's CPU ms and wall ms per run: id, topology, run, cpu ms, wall ms.
LOADGEN="$WORK/loadgen.tsv"
: >"$LOADGEN"
CLK_TCK="$(getconf CLK_TCK)"

if [ -n "${SKEIN_BIN:-}${BENCH_BIN:-}" ]; then
  say "using SKEIN_BIN=${SKEIN_BIN:-} BENCH_BIN=${BENCH_BIN:-} (nothing built)"
else
  say "building release skein and skein-bench"
  cargo build --release -p skein-broker --bin skein
  cargo build --release -p skein-bench --bin skein-bench
fi
SKEIN_BIN="${SKEIN_BIN:-$ROOT/target/release/skein}"
BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/skein-bench}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SKEIN_ENV=(SKEIN_MAX_INFLIGHT=$INFLIGHT SKEIN_MAX_QUEUED_MESSAGES=$QUEUED SKEIN_LOG=warn)
[ -n "${SKEIN_WORKER_THREADS:-}" ] && SKEIN_ENV+=("SKEIN_WORKER_THREADS=$SKEIN_WORKER_THREADS")

# ---------------------------------------------------------------- CPU_LIMIT cgroups
CG_ROOT="/sys/fs/cgroup/cpu/skein-bench-$$"
CG_QUOTA_US=""
LIMITED=0        # whether the nodes being started go into their cgroups
CG_SKIPPED=""    # why the limited pass was skipped
if [ -n "$CPU_LIMIT" ]; then
  CG_QUOTA_US="$(python3 -c 'import sys; q=float(sys.argv[1]); print(int(q*int(sys.argv[2])) if q > 0 else "")' "$CPU_LIMIT" "$CFS_PERIOD_US" 2>/dev/null || true)"
  if [ -z "$CG_QUOTA_US" ]; then
    say "CPU_LIMIT=$CPU_LIMIT is not a positive number of CPUs"
    exit 2
  fi
  if [ ! -w /sys/fs/cgroup/cpu ] || [ ! -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] || ! mkdir "$CG_ROOT" 2>/dev/null; then
    CG_SKIPPED="cgroup v1's cpu controller is not writable here (/sys/fs/cgroup/cpu)"
    say "CPU_LIMIT=$CPU_LIMIT: $CG_SKIPPED; the limited pass is skipped"
  fi
fi
# Weight of each cgroup of ours against the machine's other work (a plain task has 1024): on
# a shared machine the quota, not other processes, should be what limits a broker.
CG_SHARES=8192
# cg_place I PID: node I's cgroup, with the quota, holds PID (every thread of it).
cg_place() {
  local dir="$CG_ROOT/node-$1"
  mkdir -p "$dir"
  echo "$CG_SHARES" >"$dir/cpu.shares"
  echo "$CFS_PERIOD_US" >"$dir/cpu.cfs_period_us"
  echo "$CG_QUOTA_US" >"$dir/cpu.cfs_quota_us"
  echo "$2" >"$dir/cgroup.procs"
}
# This shell, and so the load generator it starts, in a cgroup of the same weight and no
# quota (brokers start there too, and are moved to their own at once).
cg_enter() {
  mkdir -p "$CG_ROOT/loadgen"
  echo "$CG_SHARES" >"$CG_ROOT/loadgen/cpu.shares"
  echo $$ >"$CG_ROOT/loadgen/cgroup.procs"
}
cg_remove() {
  [ -d "$CG_ROOT" ] || return 0
  echo $$ >/sys/fs/cgroup/cpu/cgroup.procs 2>/dev/null || true
  local dir
  for dir in "$CG_ROOT"/*/; do [ -d "$dir" ] && rmdir "$dir" 2>/dev/null; done
  rmdir "$CG_ROOT" 2>/dev/null || say "could not remove $CG_ROOT (a process still in it?)"
}

PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; cg_remove' EXIT
trap 'stop_all; cg_remove; exit 130' INT TERM

# cluster_ready N: every node's /api/v1/cluster names a leader and N members.
cluster_ready() {
  local n="$1" i body
  for i in $(seq 1 "$n"); do
    body="$(curl -fsS --max-time 1 "http://127.0.0.1:$(http_port "$i")/api/v1/cluster" 2>/dev/null)" || return 1
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); n=int(sys.argv[2]);
sys.exit(0 if d.get("leader_id") is not None and len(d.get("members",[]))==n else 1)' "$body" "$n" || return 1
  done
}

# start_nodes N: N fresh nodes forming one cluster (N=1: a single node, no --peers).
start_nodes() {
  local n="$1" i peers=""
  if [ "$n" -gt 1 ]; then
    for i in $(seq 1 "$n"); do peers="${peers:+$peers,}$i@127.0.0.1:$(grpc_port "$i")"; done
  fi
  for i in $(seq 1 "$n"); do
    rm -rf "$WORK/node-$i"
    local args=(--node-id "$i" --mqtt "127.0.0.1:$(mqtt_port "$i")" --http "127.0.0.1:$(http_port "$i")"
      --grpc "127.0.0.1:$(grpc_port "$i")" --data-dir "$WORK/node-$i")
    [ -n "$peers" ] && args+=(--peers "$peers")
    env "${SKEIN_ENV[@]}" "$SKEIN_BIN" "${args[@]}" >>"$WORK/logs/node-$i.log" 2>&1 &
    PIDS+=($!)
    if [ "$LIMITED" = 1 ] && ! cg_place "$i" "$!"; then
      say "could not put node $i into its cgroup under $CG_ROOT"
      stop_all
      return 1
    fi
  done
  for _ in $(seq 1 300); do
    if cluster_ready "$n"; then return 0; fi
    sleep 0.1
  done
  say "the $n-node cluster did not get a leader and $n members within 30 s (see $WORK/logs)"
  stop_all
  return 1
}

if [ "$QUICK" = 1 ]; then S=$SCALE; else S=$((10 * SCALE)); fi
# id | title | arguments on one node | arguments on the cluster (node 1 = port, node 2 = sub-port)
P1="--port $(mqtt_port 1)"
SCENARIOS=(
  "fanin-q0|fan-in 4 pubs x $((5000 * S)) -> 1 sub, QoS 0|fanin --publishers 4 --count $((5000 * S)) --qos 0 $P1|fanin --publishers 4 --count $((5000 * S)) --qos 0 $P1 --sub-port $(mqtt_port 2)"
  "fanin-q1|fan-in 4 pubs x $((5000 * S)) -> 1 sub, QoS 1 (window 100)|fanin --publishers 4 --count $((5000 * S)) --qos 1 --inflight 100 $P1|fanin --publishers 4 --count $((5000 * S)) --qos 1 --inflight 100 $P1 --sub-port $(mqtt_port 2)"
  "pairs-q0|100 pairs x $((200 * S)), QoS 0|pairs --pairs 100 --count $((200 * S)) --qos 0 $P1|pairs --pairs 100 --count $((200 * S)) --qos 0 $P1 --sub-port $(mqtt_port 2)"
  "pairs-q1|100 pairs x $((200 * S)), QoS 1 (window 100)|pairs --pairs 100 --count $((200 * S)) --qos 1 --inflight 100 $P1|pairs --pairs 100 --count $((200 * S)) --qos 1 --inflight 100 $P1 --sub-port $(mqtt_port 2)"
  "connect|connect $((1000 * S)) connections, 100 at a time (cluster: spread over the nodes)|connect --connections $((1000 * S)) --concurrency 100 --hold 1 $P1|connect --connections $((1000 * S)) --concurrency 100 --hold 1 $P1 --spread-ports $(seq -s, "$(mqtt_port 2)" "$(mqtt_port "$NODES")")"
  "takeover|$((30 * S)) takeovers, one at a time (cluster: node 1 -> node 2)|takeover --count $((30 * S)) $P1|takeover --count $((30 * S)) $P1 --sub-port $(mqtt_port 2)"
)

# cpu_ticks: user + system clock ticks of every running node, in node order.
cpu_ticks() {
  local pid out=""
  for pid in "${PIDS[@]}"; do
    out="$out $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)"
  done
  echo "$out"
}

SKEIN_VERSION="$(git describe --always --dirty 2>/dev/null || echo unknown)"
[ "$SKEIN_BIN" != "$ROOT/target/release/skein" ] && SKEIN_VERSION="$SKEIN_BIN (SKEIN_BIN)"
START_TIME=$(date +%s)
run_one() { # run_one SCENARIO_ID TOPOLOGY RUN ARGS...
  local id="$1" topo="$2" run="$3"; shift 3
  local n=1
  [ "$topo" = cluster ] && n="$NODES"
  if ! start_nodes "$n"; then
    printf '%s\t%s\t%s\tNOSTART\n' "$id" "$topo" "$run" >>"$RESULTS"
    return 0
  fi
  local extra=()
  [ "$id" = connect ] && [ "$topo" = single ] && extra=(--broker-pid "${PIDS[0]}")
  local line rc=0 before after gen_before gen_after wall_before wall_after
  before="$(cpu_ticks)"
  # The load generator's CPU: this shell's waited-for children's ticks (cutime + cstime)
  # around the run, which only the bench's subshell adds to in between.
  gen_before="$(awk '{print $16 + $17}' "/proc/$$/stat")"
  wall_before="$(date +%s%N)"
  # shellcheck disable=SC2068
  line=$("$BENCH_BIN" $@ "${extra[@]}" --broker "skein-$topo" --timeout "$TIMEOUT" --json \
    2>>"$WORK/logs/bench-stderr.log") || rc=$?
  wall_after="$(date +%s%N)"
  gen_after="$(awk '{print $16 + $17}' "/proc/$$/stat")"
  after="$(cpu_ticks)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$topo" "$run" \
    "$(( (gen_after - gen_before) * 1000 / CLK_TCK ))" "$(( (wall_after - wall_before) / 1000000 ))" >>"$LOADGEN"
  printf '%s\t%s\t%s\t%s\n' "$id" "$topo" "$run" "$(python3 -c 'import sys
b, a, hz = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
print(" ".join(str((int(y) - int(x)) * 1000 // hz) for x, y in zip(b, a)))' "$before" "$after" "$CLK_TCK")" >>"$CPU"
  stop_all
  line=$(printf '%s\n' "$line" | grep '^{' | tail -n1 || true)
  if [ -z "$line" ]; then
    say "$id $topo run $run: no result (exit $rc)"
    printf '%s\t%s\t%s\tFAILED\n' "$id" "$topo" "$run" >>"$RESULTS"
    return 0
  fi
  say "$id $topo run $run (exit $rc): $line"
  printf '%s\t%s\t%s\t%s\n' "$id" "$topo" "$run" "$line" >>"$RESULTS"
}

selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

run_pass() {
  local entry id title single_args cluster_args run topo args order
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r id title single_args cluster_args <<<"$entry"
    selected "$id" || continue
    for run in $(seq 1 "$RUNS"); do
      # Alternate which topology goes first, run by run.
      if (( run % 2 )); then order=(single cluster); else order=(cluster single); fi
      for topo in "${order[@]}"; do
        if [ "$topo" = single ]; then args="$single_args"; else args="$cluster_args"; fi
        # shellcheck disable=SC2086
        run_one "$id" "$topo" "$run" $args
      done
    done
  done
}
run_pass
elapsed=$(( $(date +%s) - START_TIME ))
UNLIMITED=("$RESULTS" "$CPU" "$LOADGEN")
limited_elapsed=""
if [ -n "$CPU_LIMIT" ] && [ -z "$CG_SKIPPED" ]; then
  say "again with each broker in a cgroup of $CPU_LIMIT CPU (quota $CG_QUOTA_US us per $CFS_PERIOD_US us)"
  RESULTS="$WORK/results-limited.tsv" CPU="$WORK/cpu-limited.tsv" LOADGEN="$WORK/loadgen-limited.tsv"
  : >"$RESULTS"; : >"$CPU"; : >"$LOADGEN"
  LIMITED=1
  cg_enter
  started=$(date +%s)
  run_pass
  limited_elapsed=$(( $(date +%s) - started ))
  LIMITED=0
  LIMITED_FILES=("$RESULTS" "$CPU" "$LOADGEN")
  cg_remove
fi
RESULTS="${UNLIMITED[0]}" CPU="${UNLIMITED[1]}" LOADGEN="${UNLIMITED[2]}"

# ---------------------------------------------------------------- report
median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.stdin.read().split()]; print(statistics.median(v) if v else "")'; }
values() { # values SCENARIO TOPOLOGY FIELD: the field of every completed run
  awk -F'\t' -v s="$1" -v t="$2" '$1==s && $2==t && substr($4,1,1)=="{" {print $4}' "$RESULTS" |
    python3 -c 'import json,sys
for line in sys.stdin:
    d=json.loads(line)
    if d.get("complete") and d.get(sys.argv[1]) is not None: print(d[sys.argv[1]])' "$3"
}
cell() { local m; m="$(values "$1" "$2" "$3" | median)"; [ -n "$m" ] && printf '%.0f' "$m" || echo "n/a"; }
ratio() { python3 -c 'import sys
a,b=sys.argv[1],sys.argv[2]
try: print("%.2f" % (float(a)/float(b)))
except (ValueError, ZeroDivisionError): print("n/a")' "$1" "$2"; }
# cpu_cell SCENARIO TOPOLOGY WHICH: median over runs of the busiest node's CPU ms (WHICH=max)
# or of node N's (WHICH=N).
cpu_cell() {
  awk -F'\t' -v s="$1" -v t="$2" '$1==s && $2==t {print $4}' "$CPU" | python3 -c 'import statistics,sys
which = sys.argv[1]
v = []
for line in sys.stdin:
    ms = [int(x) for x in line.split()]
    if not ms: continue
    if which == "max": v.append(max(ms))
    elif int(which) <= len(ms): v.append(ms[int(which) - 1])
print("%.0f" % statistics.median(v) if v else "n/a")' "$3"
}
completed() { awk -F'\t' -v s="$1" -v t="$2" '$1==s && $2==t && substr($4,1,1)=="{"' "$RESULTS" | grep -c '"complete":true' || true; }

# busiest_node SCENARIO: which cluster node spent the most CPU (median run's pick).
busiest_node() {
  awk -F'\t' -v s="$1" '$1==s && $2=="cluster" {print $4}' "$CPU" | python3 -c 'import collections,sys
c = collections.Counter()
for line in sys.stdin:
    ms = [int(x) for x in line.split()]
    if ms: c[ms.index(max(ms)) + 1] += 1
print(c.most_common(1)[0][0] if c else "?")'
}

# loadgen_cell SCENARIO TOPOLOGY: median over runs of the load generator's cores used
# (CPU ms / wall ms) and CPU ms.
loadgen_cell() {
  awk -F'\t' -v s="$1" -v t="$2" '$1==s && $2==t {print $4, $5}' "$LOADGEN" | python3 -c 'import statistics,sys
rows = [tuple(int(x) for x in l.split()) for l in sys.stdin if l.strip()]
rows = [(c, w) for c, w in rows if w > 0]
print("%.2f (%.0f ms)" % (statistics.median(c / w for c, w in rows), statistics.median(c for c, _ in rows)) if rows else "n/a")'
}

# rows [limited]: the table of the runs in $RESULTS, $CPU and $LOADGEN.
rows() {
  echo "| scenario | metric | single node | cluster | cluster/single | completed runs (single, cluster) |"
  echo "|---|---|---:|---:|---:|---|"
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r id title _ _ <<<"$entry"
    selected "$id" || continue
    runs="$(completed "$id" single) / $RUNS, $(completed "$id" cluster) / $RUNS"
    case "$id" in
      connect)
        metrics=("connects/s:connects_per_sec" "CONNACK p50 us:p50_us" "CONNACK p99 us:p99_us") ;;
      takeover)
        metrics=("old closed p50 us:p50_us" "old closed p99 us:p99_us" "new CONNACK p99 us:connack_p99_us") ;;
      *)
        metrics=("msgs/s:msgs_per_sec" "p50 us:p50_us" "p99 us:p99_us") ;;
    esac
    first=1
    for m in "${metrics[@]}"; do
      label="${m%%:*}" field="${m#*:}"
      s="$(cell "$id" single "$field")" c="$(cell "$id" cluster "$field")"
      if [ "$first" = 1 ]; then
        echo "| $title | $label | $s | $c | $(ratio "$c" "$s") | $runs |"
        first=0
      else
        echo "|  | $label | $s | $c | $(ratio "$c" "$s") | |"
      fi
    done
    case "$id" in
      connect|takeover) ;;
      *)
        s="$(cpu_cell "$id" single max)" c="$(cpu_cell "$id" cluster max)"
        echo "|  | busiest broker's CPU ms (cluster: node $(busiest_node "$id")) | $s | $c | $(ratio "$c" "$s") | |"
        if [ "${1:-}" = limited ]; then
          echo "|  | load generator: cores used (CPU ms) | $(loadgen_cell "$id" single) | $(loadgen_cell "$id" cluster) | | |"
        else
          echo "|  | per-host throughput bound (single CPU / busiest CPU) | | | $(ratio "$s" "$c") | |"
        fi ;;
    esac
  done
}

BEGIN_MARK='<!-- bench/cluster.sh: begin -->'
END_MARK='<!-- bench/cluster.sh: end -->'
TABLE="$WORK/table.md"
{
  echo "$BEGIN_MARK"
  echo "## Cluster ($NODES nodes) against a single node, same binary"
  echo
  echo "Generated by \`bench/cluster.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') in ${elapsed} s (RUNS=$RUNS,"
  echo "QUICK=$QUICK, SCALE=$SCALE${ONLY:+, ONLY=$ONLY}), skein $SKEIN_VERSION; load average at the end"
  echo "$(cut -d' ' -f1-3 /proc/loadavg). Medians of completed runs. Every node runs on this"
  echo "machine's $(nproc) cores with the load generator, so a cluster run has $NODES brokers (and their"
  echo "Raft) sharing the cores one broker has in a single-node run. Single: everything on one"
  echo "node. Cluster: publishers on node 1, subscribers on node 2 (throughput); connections"
  echo "round-robin over all nodes (connect); the second connection of each takeover on node 2."
  echo "CPU ms: user + system time a broker process spent during the run (from /proc), median"
  echo "over runs; on hosts of their own each node has its cores to itself, so the busiest"
  echo "node's CPU per message bounds the cluster's throughput, whatever this machine's sharing."
  [ "$QUICK" = 1 ] && echo "**QUICK mode: counts are 10x smaller; a smoke test, not a result.**"
  echo
  rows
  if [ -n "$CPU_LIMIT" ]; then
    echo
    echo "### Equal-sized hosts: each broker limited to $CPU_LIMIT CPU"
    echo
    if [ -n "$CG_SKIPPED" ]; then
      echo "Not run: $CG_SKIPPED."
    else
      echo "The same scenarios again (in ${limited_elapsed} s), each broker process (the single node, and each"
      echo "cluster node) in a cgroup of its own with the same CFS quota: \`cpu.cfs_quota_us\` $CG_QUOTA_US per"
      echo "\`cpu.cfs_period_us\` $CFS_PERIOD_US ($CPU_LIMIT CPU), so a cluster node has what the single node has,"
      echo "as on hosts of equal size. The load generator is not limited; its CPU (cores used: CPU"
      echo "time over the run's wall time) shows whether it, or this machine's $(nproc) cores shared"
      echo "by $NODES limited brokers and it, could be the bottleneck instead of the quota. Each of"
      echo "these cgroups (the load generator's too) has \`cpu.shares\` $CG_SHARES (a plain task: 1024), so"
      echo "that other work on the machine takes less from them than the quota leaves."
      echo
      RESULTS="${LIMITED_FILES[0]}" CPU="${LIMITED_FILES[1]}" LOADGEN="${LIMITED_FILES[2]}" rows limited
    fi
  fi
  echo
  echo "Commands: \`target/release/skein-bench ARGS --broker skein-TOPOLOGY --timeout $TIMEOUT --json\`, with"
  echo
  echo "| scenario | single node | cluster |"
  echo "|---|---|---|"
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r id _ single_args cluster_args <<<"$entry"
    echo "| $id | \`$single_args\` | \`$cluster_args\` |"
  done
  echo
  echo "Nodes: \`SKEIN_MAX_INFLIGHT=$INFLIGHT SKEIN_MAX_QUEUED_MESSAGES=$QUEUED SKEIN_LOG=warn skein --node-id I"
  echo "--mqtt 127.0.0.1:$(mqtt_port 1)+I-1 --http ... --grpc 127.0.0.1:$(grpc_port 1)+I-1 --peers 1@127.0.0.1:$(grpc_port 1),...\`"
  echo "(a single node: no \`--peers\`, a cluster of one)."
  echo "$END_MARK"
} >"$TABLE"

if [ -f "$OUT" ] && grep -qF "$BEGIN_MARK" "$OUT"; then
  python3 - "$OUT" "$TABLE" "$BEGIN_MARK" "$END_MARK" <<'EOF'
import sys
out, table, begin, end = sys.argv[1:5]
text = open(out).read()
a = text.index(begin)
b = text.index(end, a) + len(end)
open(out, "w").write(text[:a] + open(table).read().rstrip("\n") + text[b:])
EOF
else
  { echo; cat "$TABLE"; } >>"$OUT"
fi
say "wrote the cluster table into $OUT"
cat "$TABLE"
