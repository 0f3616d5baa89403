#!/usr/bin/env bash
# Compare Skein with Mosquitto and rumqttd on this machine, over loopback only, and write
# BENCHMARKS.md at the repository root.
#
#   bench/compare.sh                 # full run, RUNS=3 per broker and scenario
#   QUICK=1 RUNS=1 bench/compare.sh  # smoke test: 10x smaller counts, one run each
#
# Environment: RUNS (default 3), QUICK (0/1), TIMEOUT (seconds per bench run, default 60),
# BUDGET (seconds for all runs, default 1320: what is left is skipped and said so),
# PORT_BASE (default 21883; five ports from there: MQTT for each broker, then TLS for Skein
# and Mosquitto), OUT (default BENCHMARKS.md),
# SKEIN_WORKER_THREADS (passed on to skein when set).
# Every broker is started fresh for every run (a clean process: RSS and queues start
# empty) and stopped after it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS="${RUNS:-3}"
QUICK="${QUICK:-0}"
TIMEOUT="${TIMEOUT:-60}"
BUDGET="${BUDGET:-1320}"
PORT_BASE="${PORT_BASE:-21883}"
OUT="${OUT:-BENCHMARKS.md}"
INFLIGHT=1000
QUEUED=1000000

listening() {
  if command -v ss >/dev/null 2>&1; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q LISTEN
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
# Five free ports in a row from PORT_BASE (other work on this machine may hold some).
for _ in $(seq 1 50); do
  busy=0
  for k in 0 1 2 3 4; do listening $((PORT_BASE + k)) && busy=1; done
  [ "$busy" = 0 ] && break
  PORT_BASE=$((PORT_BASE + 10))
done
SKEIN_PORT=$PORT_BASE
MOSQ_PORT=$((PORT_BASE + 1))
RUMQ_PORT=$((PORT_BASE + 2))
# The TLS listeners of the "-tls" scenarios (rumqttd is not run in those).
SKEIN_TLS_PORT=$((PORT_BASE + 3))
MOSQ_TLS_PORT=$((PORT_BASE + 4))

WORK="$ROOT/target/bench-compare"
rm -rf "$WORK"
mkdir -p "$WORK/logs"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

say() { printf '[compare] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
say "building release skein and skein-bench"
cargo build --release -p skein-broker --bin skein
cargo build --release -p skein-bench --bin skein-bench
SKEIN_BIN="$ROOT/target/release/skein"
BENCH_BIN="$ROOT/target/release/skein-bench"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  say "installing Debian mosquitto"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQ_BIN="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

RUMQ_BIN="$ROOT/bench/.tools/bin/rumqttd"
RUMQ_SKIP=""
if [ ! -x "$RUMQ_BIN" ]; then
  say "installing rumqttd into bench/.tools"
  if ! cargo install rumqttd --root "$ROOT/bench/.tools" >"$WORK/logs/rumqttd-install.log" 2>&1; then
    RUMQ_SKIP="\`cargo install rumqttd\` failed (see target/bench-compare/logs/rumqttd-install.log)"
    say "rumqttd skipped: $RUMQ_SKIP"
  fi
fi

BROKERS=(skein mosquitto)
[ -z "$RUMQ_SKIP" ] && BROKERS+=(rumqttd)

# 10k idle connections need file descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- configs
# A CA and a server certificate for localhost (P-256 ECDSA), made for this run only.
TLS_DIR="$WORK/tls"
mkdir -p "$TLS_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=skein bench CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$TLS_DIR/server.ext"
openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
  -CAcreateserial -days 2 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.pem" 2>/dev/null
# Mosquitto runs as its own user when started as root: let it read the key.
chmod 644 "$TLS_DIR/server.key"

MOSQ_CONF="$WORK/mosquitto.conf"
cat >"$MOSQ_CONF" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
max_queued_messages $QUEUED
max_inflight_messages $INFLIGHT
log_type error
log_type warning

listener $MOSQ_TLS_PORT 127.0.0.1
certfile $TLS_DIR/server.pem
keyfile $TLS_DIR/server.key
EOF

RUMQ_CONF="$WORK/rumqttd.toml"
cat >"$RUMQ_CONF" <<EOF
id = 0

[router]
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RUMQ_PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = $INFLIGHT
    dynamic_filters = true
EOF

SKEIN_ENV="SKEIN_MAX_INFLIGHT=$INFLIGHT SKEIN_MAX_QUEUED_MESSAGES=$QUEUED SKEIN_LOG=warn"
SKEIN_ENV="$SKEIN_ENV SKEIN_TLS_CERT_FILE=$TLS_DIR/server.pem SKEIN_TLS_KEY_FILE=$TLS_DIR/server.key"
# Passed on when set (the README's worker_threads): the written command line shows it.
[ -n "${SKEIN_WORKER_THREADS:-}" ] && SKEIN_ENV="$SKEIN_ENV SKEIN_WORKER_THREADS=$SKEIN_WORKER_THREADS"
skein_cmd() { echo "$SKEIN_BIN --mqtt 127.0.0.1:$SKEIN_PORT --mqtts 127.0.0.1:$SKEIN_TLS_PORT --http 127.0.0.1:0 --data-dir $WORK/skein-data"; }
mosq_cmd() { echo "$MOSQ_BIN -c $MOSQ_CONF"; }
rumq_cmd() { echo "$RUMQ_BIN -q -c $RUMQ_CONF"; }

port_of() {
  case "$1" in skein) echo "$SKEIN_PORT" ;; mosquitto) echo "$MOSQ_PORT" ;; rumqttd) echo "$RUMQ_PORT" ;; esac
}
tls_port_of() {
  case "$1" in skein) echo "$SKEIN_TLS_PORT" ;; mosquitto) echo "$MOSQ_TLS_PORT" ;; esac
}

BROKER_PID=""
BROKER_WRAP=""
BENCH_WRAP=""

start_broker() {
  local b="$1" log="$WORK/logs/$1.log" port
  port="$(port_of "$b")"
  if listening "$port"; then
    say "port $port is already in use"; return 1
  fi
  case "$b" in
    skein)
      rm -rf "$WORK/skein-data"
      # shellcheck disable=SC2086
      env $SKEIN_ENV $BROKER_WRAP $(skein_cmd) >>"$log" 2>&1 &
      ;;
    # shellcheck disable=SC2086
    mosquitto) $BROKER_WRAP $(mosq_cmd) >>"$log" 2>&1 & ;;
    # shellcheck disable=SC2086
    rumqttd) $BROKER_WRAP $(rumq_cmd) >>"$log" 2>&1 & ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 1 200); do
    if listening "$port"; then return 0; fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
    sleep 0.05
  done
  say "$b did not start listening on $port (see $log)"
  stop_broker
  return 1
}

stop_broker() {
  [ -n "$BROKER_PID" ] || return 0
  kill -TERM "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}
trap 'stop_broker' EXIT
trap 'stop_broker; exit 130' INT TERM

# ---------------------------------------------------------------- scenarios
# id | title | skein-bench arguments (full counts) | QUICK counts
if [ "$QUICK" = 1 ]; then S=1; else S=10; fi
SCENARIOS=(
  "fanin-q0|fan-in 4 pubs x $((5000 * S)) -> 1 sub, QoS 0|fanin --publishers 4 --count $((5000 * S)) --qos 0"
  "fanin-q1|fan-in 4 pubs x $((5000 * S)) -> 1 sub, QoS 1 (window 100)|fanin --publishers 4 --count $((5000 * S)) --qos 1 --inflight 100"
  "fanout-q0|fan-out 1 pub -> 20 subs x $((2000 * S)), QoS 0|fanout --subscribers 20 --count $((2000 * S)) --qos 0"
  "fanout-q1|fan-out 1 pub -> 20 subs x $((2000 * S)), QoS 1 (window 100)|fanout --subscribers 20 --count $((2000 * S)) --qos 1 --inflight 100"
  "pairs-q0|100 pairs x $((200 * S)), QoS 0|pairs --pairs 100 --count $((200 * S)) --qos 0"
  "pairs-q1|100 pairs x $((200 * S)), QoS 1 (window 100)|pairs --pairs 100 --count $((200 * S)) --qos 1 --inflight 100"
  "rate-q1|100 pairs x $((200 * S)) at 10k msg/s total, QoS 1|pairs --pairs 100 --count $((200 * S)) --qos 1 --rate 10000"
  "rate-q1-pinned|the same, broker pinned to CPU 0 and the load generator to CPU 1|pairs --pairs 100 --count $((200 * S)) --qos 1 --rate 10000"
  "connect|connect $((1000 * S)) connections, 100 at a time, held 5 s|connect --connections $((1000 * S)) --concurrency 100 --hold 5"
  "pairs-q1-tls|100 pairs x $((200 * S)) over TLS, QoS 1 (window 100)|pairs --pairs 100 --count $((200 * S)) --qos 1 --inflight 100"
  "connect-tls|connect $((1000 * S)) connections over TLS, 100 at a time, held 5 s|connect --connections $((1000 * S)) --concurrency 100 --hold 5"
)

json_field() { # json_field NAME < line
  grep -o "\"$1\":[^,}]*" | head -n1 | cut -d: -f2- | tr -d '"'
}

START_TIME=$(date +%s)
SKIPPED=0
run_one() { # run_one SCENARIO_ID BROKER RUN ARGS...
  local id="$1" b="$2" run="$3"; shift 3
  local now; now=$(date +%s)
  if (( now - START_TIME > BUDGET )); then
    SKIPPED=$((SKIPPED + 1))
    printf '%s\t%s\t%s\tSKIPPED\n' "$id" "$b" "$run" >>"$RESULTS"
    return 0
  fi
  # "-pinned" scenarios keep the broker and the load generator off each other's core, so
  # the latency measured is the broker's and not the two fighting over two cores.
  BROKER_WRAP=""; BENCH_WRAP=""
  if [[ "$id" == *-pinned ]] && command -v taskset >/dev/null 2>&1; then
    BROKER_WRAP="taskset -c 0"; BENCH_WRAP="taskset -c 1"
  fi
  if ! start_broker "$b"; then
    printf '%s\t%s\t%s\tNOSTART\n' "$id" "$b" "$run" >>"$RESULTS"
    return 0
  fi
  local extra=() port
  port="$(port_of "$b")"
  [[ "$id" == connect* ]] && extra=(--broker-pid "$BROKER_PID")
  if [[ "$id" == *-tls ]]; then
    port="$(tls_port_of "$b")"
    extra+=(--tls-ca "$TLS_DIR/ca.pem")
  fi
  local line rc=0
  # shellcheck disable=SC2086
  line=$($BENCH_WRAP "$BENCH_BIN" "$@" "${extra[@]}" --port "$port" --broker "$b" \
    --timeout "$TIMEOUT" --json 2>>"$WORK/logs/bench-stderr.log") || rc=$?
  stop_broker
  line=$(printf '%s\n' "$line" | grep '^{' | tail -n1 || true)
  if [ -z "$line" ]; then
    say "$id $b run $run: no result (exit $rc)"
    printf '%s\t%s\t%s\tFAILED\n' "$id" "$b" "$run" >>"$RESULTS"
    return 0
  fi
  say "$id $b run $run (exit $rc): $line"
  printf '%s\t%s\t%s\t%s\n' "$id" "$b" "$run" "$line" >>"$RESULTS"
}

for entry in "${SCENARIOS[@]}"; do
  IFS='|' read -r id title args <<<"$entry"
  for run in $(seq 1 "$RUNS"); do
    # Alternate brokers, rotating who goes first from run to run.
    n=${#BROKERS[@]}
    for k in $(seq 0 $((n - 1))); do
      b=${BROKERS[$(((k + run - 1) % n))]}
      # rumqttd gets no TLS listener here: the TLS rows compare Skein with Mosquitto.
      [[ "$id" == *-tls && "$b" == rumqttd ]] && continue
      # shellcheck disable=SC2086
      run_one "$id" "$b" "$run" $args
    done
  done
done

# ---------------------------------------------------------------- report
median() { # median of the numbers on stdin ("" if none)
  sort -g | awk '{a[NR]=$1} END {if (NR==0) print ""; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
values() { # values SCENARIO BROKER FIELD: the field of every complete-enough run
  awk -F'\t' -v s="$1" -v b="$2" '$1==s && $2==b && substr($4,1,1)=="{" {print $4}' "$RESULTS" \
    | while IFS= read -r l; do printf '%s\n' "$l" | json_field "$3"; done | grep -v '^null$' || true
}
med() { values "$1" "$2" "$3" | median; }
sum_field() { values "$1" "$2" "$3" | awk '{s+=$1} END {print s+0}'; }
incomplete() { values "$1" "$2" complete | grep -c false || true; }
fmt() { # fmt VALUE DECIMALS
  if [ -z "$1" ]; then echo "n/a"; else LC_ALL=C printf "%.${2}f" "$1"; fi
}
ratio() {
  if [ -z "$1" ] || [ -z "$2" ] || awk -v d="$2" 'BEGIN {exit !(d == 0)}'; then echo "n/a"; else
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; fi
}

versions_skein="skein $(git describe --always --dirty 2>/dev/null || echo unknown) ($("$SKEIN_BIN" --version 2>/dev/null || echo "version unknown"))"
versions_mosq="$("$MOSQ_BIN" -h 2>/dev/null | head -n1 || true)"
versions_rumq="$([ -z "$RUMQ_SKIP" ] && "$RUMQ_BIN" --version 2>/dev/null || echo "not run: $RUMQ_SKIP")"
mem_total="$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
cpu_model="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
elapsed=$(( $(date +%s) - START_TIME ))

# Hand-written notes (the optimisation log, analyses of missed targets) live below this
# marker in BENCHMARKS.md and survive regeneration.
MARKER='<!-- notes below are kept when this file is regenerated -->'
NOTES=""
if [ -f "$OUT" ] && grep -qF "$MARKER" "$OUT"; then
  NOTES="$(sed -n "/$MARKER/,\$p" "$OUT")"
fi

{
  echo "# Benchmarks"
  echo
  echo "Generated by \`bench/compare.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') in ${elapsed} s"
  echo "(RUNS=$RUNS, QUICK=$QUICK, TIMEOUT=$TIMEOUT s per run). Medians over the runs; every"
  echo "broker is started fresh for each run, brokers alternate run by run, and the load"
  echo "generator (\`skein-bench\`, release build) runs on the same machine over loopback."
  [ "$QUICK" = 1 ] && echo "**QUICK mode: counts are 10x smaller than the real benchmark; a smoke test, not a result.**"
  [ "$SKIPPED" -gt 0 ] && echo "**$SKIPPED run(s) were skipped: the BUDGET of $BUDGET s ran out.**"
  echo
  echo "## Machine"
  echo
  echo "- CPUs: $(nproc) ($cpu_model), shared with other work: load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- Memory: $mem_total; kernel $(uname -r)"
  echo
  echo "## Brokers"
  echo
  echo "- Skein: $versions_skein"
  echo "- Mosquitto: $versions_mosq"
  echo "- rumqttd: $versions_rumq"
  echo
  echo "Every broker gets the same in-flight window (1000 unacknowledged QoS 1/2 messages per"
  echo "client) and a queue large enough not to drop (1,000,000 messages)."
  echo
  echo "Skein:"
  echo
  echo '```sh'
  echo "$SKEIN_ENV \\"
  echo "  target/release/skein --mqtt 127.0.0.1:$SKEIN_PORT --mqtts 127.0.0.1:$SKEIN_TLS_PORT --http 127.0.0.1:0 --data-dir target/bench-compare/skein-data"
  echo '```'
  echo
  echo "Mosquitto: \`mosquitto -c mosquitto.conf\` with"
  echo
  echo '```'
  cat "$MOSQ_CONF"
  echo '```'
  echo
  if [ -z "$RUMQ_SKIP" ]; then
    echo "rumqttd: \`bench/.tools/bin/rumqttd -q -c rumqttd.toml\` with"
    echo
    echo '```toml'
    cat "$RUMQ_CONF"
    echo '```'
    echo
    echo "Note: rumqttd 0.20 awaits \`tokio::time::sleep(next_connection_delay_ms)\` after every"
    echo "accept. Even at 0 that sleep goes through tokio's millisecond timer wheel, and the connect"
    echo "scenario measures about 1.1 ms per accepted connection: rumqttd's connects/s stays near"
    echo "1000 whatever the configuration, so that row says little about rumqttd's connection cost."
  else
    echo "rumqttd: skipped, $RUMQ_SKIP."
  fi
  echo
  echo "## Commands"
  echo
  echo "Each run: \`target/release/skein-bench ARGS --port PORT --broker NAME --timeout $TIMEOUT --json\`"
  echo "(connect adds \`--broker-pid PID\`; the \"over TLS\" rows use the TLS port and add"
  echo "\`--tls-ca target/bench-compare/tls/ca.pem\`: TLS 1.3, a P-256 certificate made by the run;"
  echo "rumqttd is not run in them). Defaults: 64-byte payloads, keep alive 60 s."
  echo
  echo "| scenario | ARGS |"
  echo "|---|---|"
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r id title args <<<"$entry"
    echo "| $title | \`$args\` |"
  done
  echo
  echo "## Results (medians)"
  echo
  echo "Throughput is delivered messages per second from the first publish to the last"
  echo "delivery; latency is publish -> deliver (for the offered-rate row, from each message's"
  echo "scheduled send time). For msgs/s and connects/s a ratio above 1 favours Skein; for"
  echo "latency and memory a ratio below 1 does."
  echo
  printf '| scenario | metric | Skein | Mosquitto |'
  [ -z "$RUMQ_SKIP" ] && printf ' rumqttd |'
  printf ' Skein/Mosquitto |'
  [ -z "$RUMQ_SKIP" ] && printf ' Skein/rumqttd |'
  echo
  printf '|---|---|---:|---:|'
  [ -z "$RUMQ_SKIP" ] && printf -- '---:|'
  printf -- '---:|'
  [ -z "$RUMQ_SKIP" ] && printf -- '---:|'
  echo
  row() { # row TITLE METRIC_LABEL FIELD DECIMALS SCENARIO
    local s_=$(med "$5" skein "$3") m_=$(med "$5" mosquitto "$3") r_=""
    [ -z "$RUMQ_SKIP" ] && r_=$(med "$5" rumqttd "$3")
    printf '| %s | %s | %s | %s |' "$1" "$2" "$(fmt "$s_" "$4")" "$(fmt "$m_" "$4")"
    [ -z "$RUMQ_SKIP" ] && printf ' %s |' "$(fmt "$r_" "$4")"
    printf ' %s |' "$(ratio "$s_" "$m_")"
    [ -z "$RUMQ_SKIP" ] && printf ' %s |' "$(ratio "$s_" "$r_")"
    echo
  }
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r id title args <<<"$entry"
    case "$id" in
      connect*)
        row "$title" "connects/s" connects_per_sec 0 "$id"
        row "" "RSS bytes per idle connection" rss_per_conn_bytes 0 "$id"
        ;;
      rate-*)
        row "$title" "p50 us" p50_us 0 "$id"
        row "" "p99 us" p99_us 0 "$id"
        row "" "delivered msgs/s" msgs_per_sec 0 "$id"
        ;;
      *)
        row "$title" "msgs/s" msgs_per_sec 0 "$id"
        row "" "p50 us" p50_us 0 "$id"
        row "" "p99 us" p99_us 0 "$id"
        ;;
    esac
  done
  echo
  echo "## Completeness"
  echo
  echo "Lost and duplicate deliveries summed over all runs (exact, from per-publisher sequence"
  echo "numbers), and runs that did not complete (timed out, lost messages, refused or"
  echo "failed connections). Runs that produced no result at all are listed as failed."
  echo
  echo "| scenario | broker | runs | lost | duplicates | incomplete runs | failed runs |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r id title args <<<"$entry"
    for b in "${BROKERS[@]}"; do
      total=$(awk -F'\t' -v s="$id" -v b="$b" '$1==s && $2==b' "$RESULTS" | wc -l)
      failed=$(awk -F'\t' -v s="$id" -v b="$b" '$1==s && $2==b && substr($4,1,1)!="{"' "$RESULTS" | wc -l)
      if [[ "$id" == connect* ]]; then lost=$(sum_field "$id" "$b" failed); dups="-"; else
        lost=$(sum_field "$id" "$b" lost); dups=$(sum_field "$id" "$b" duplicates); fi
      echo "| $id | $b | $total | $lost | $dups | $(incomplete "$id" "$b") | $failed |"
    done
  done
  echo
  echo "(For connect, \"lost\" counts failed connections.) Raw JSON lines of every run:"
  echo "\`target/bench-compare/results.tsv\` of the run that wrote this file."
  if [ -n "$NOTES" ]; then
    echo
    printf '%s\n' "$NOTES"
  fi
} >"$OUT"

say "wrote $OUT"
