#!/usr/bin/env bash
# A local Skein cluster on 127.0.0.1 for development and tests: node i listens for MQTT on
# 1882+i, HTTP on 8079+i and gRPC on 7069+i; its data, log and pid file live under
# ./.cluster (or $SKEIN_CLUSTER_DIR). Run without arguments for the usage.
set -euo pipefail

readonly MQTT_BASE=1882 HTTP_BASE=8079 GRPC_BASE=7069
readonly MAX_NODES=100

usage() {
  cat <<'EOF'
usage: scripts/cluster.sh COMMAND [ARG]

commands:
  up [N]      start N nodes (default 3) as one cluster and wait until every node sees a
              leader and all N members; prints the ports
  down        stop every node: SIGTERM, then SIGKILL for those still running after the
              stop timeout
  status      each node's pid, ports and the leader it sees; the members and their roles
  kill I      SIGKILL node I
  stop I      SIGTERM node I and wait for it to exit
  start I     start node I again (with its data) and wait until it serves
  restart I   stop node I (if running), then start it
  logs I      print node I's log (stdout and stderr)

Node i listens on 127.0.0.1: MQTT 1882+i, HTTP 8079+i, gRPC 7069+i (node 1: 1883, 8080,
7070), with --node-id i and --peers naming every node. A node's data stays in the cluster
directory across stop/start and down/up; remove the directory for a fresh cluster.

environment:
  SKEIN_BIN                   the skein binary (default: target/release/skein, brought
                              up to date with cargo build --release first)
  SKEIN_CLUSTER_DIR           the cluster directory (default: ./.cluster)
  SKEIN_CLUSTER_WAIT_SECS     how long up/start wait for the cluster (default 60)
  SKEIN_CLUSTER_STOP_SECS     how long stop/down wait before SIGKILL (default 15)
  SKEIN_API_TOKEN             sent as the bearer token when the nodes require one
Other SKEIN_* variables reach the nodes as their settings.
EOF
}

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

cluster_dir() {
  local dir=${SKEIN_CLUSTER_DIR:-$PWD/.cluster}
  case $dir in
    /*) printf '%s\n' "$dir" ;;
    *) printf '%s\n' "$PWD/$dir" ;;
  esac
}

DIR=$(cluster_dir)
readonly DIR
readonly WAIT_SECS=${SKEIN_CLUSTER_WAIT_SECS:-60}
readonly STOP_SECS=${SKEIN_CLUSTER_STOP_SECS:-15}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]] && ((10#$1 <= MAX_NODES)); }

mqtt_port() { echo $((MQTT_BASE + $1)); }
http_port() { echo $((HTTP_BASE + $1)); }
grpc_port() { echo $((GRPC_BASE + $1)); }

pid_file() { echo "$DIR/node-$1.pid"; }
log_file() { echo "$DIR/node-$1.log"; }
data_dir() { echo "$DIR/node-$1/data"; }

# The size of the cluster in $DIR, or nothing when there is none.
cluster_size() {
  if [[ -f $DIR/size ]]; then cat "$DIR/size"; fi
}

require_cluster() {
  local n
  n=$(cluster_size)
  [[ -n $n ]] || die "no cluster in $DIR (start one with: scripts/cluster.sh up [N])"
  echo "$n"
}

# Checks that I names a node of the cluster; prints the cluster size.
require_node() {
  local i=${1:-} n
  n=$(require_cluster)
  [[ -n $i ]] || die "which node? (1..$n)"
  if ! [[ $i =~ ^[1-9][0-9]*$ ]] || ((10#$i > n)); then
    die "no node $i: the cluster has nodes 1..$n"
  fi
  echo "$n"
}

# The pid of node I when its process runs (not a zombie, not a reused pid); else nothing.
node_pid() {
  local file pid cmdline
  file=$(pid_file "$1")
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  # A zombie has no command line; another program that got the pid has a different one.
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)
  if [[ $cmdline == *"--data-dir $(data_dir "$1") "* ]]; then echo "$pid"; fi
}

port_taken() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Dies naming every port of node I that something already listens on.
check_ports() {
  local i=$1 taken=()
  port_taken "$(mqtt_port "$i")" && taken+=("MQTT $(mqtt_port "$i")")
  port_taken "$(http_port "$i")" && taken+=("HTTP $(http_port "$i")")
  port_taken "$(grpc_port "$i")" && taken+=("gRPC $(grpc_port "$i")")
  ((${#taken[@]} == 0)) || die "node $i's ports are taken: ${taken[*]} (something else listens there)"
}

skein_bin() {
  if [[ -n ${SKEIN_BIN:-} ]]; then
    [[ -x $SKEIN_BIN ]] || die "SKEIN_BIN=$SKEIN_BIN is not an executable file"
    echo "$SKEIN_BIN"
    return
  fi
  local root target bin
  root=$(repo_root)
  target=${CARGO_TARGET_DIR:-target}
  # cargo takes a relative target directory from the workspace root.
  [[ $target == /* ]] || target=$root/$target
  bin=$target/release/skein
  # cargo rebuilds only what changed, so a binary left from older sources is not run.
  if command -v cargo >/dev/null 2>&1; then
    echo "cargo build --release -p skein-broker --bin skein" >&2
    (cd "$root" && cargo build --release -p skein-broker --bin skein) >&2 ||
      die "the release build failed"
  elif [[ -x $bin ]]; then
    echo "cargo not found: running $bin as it is" >&2
  else
    die "no $bin and no cargo to build it (or set SKEIN_BIN)"
  fi
  echo "$bin"
}

peers() {
  local n=$1 i list=()
  for ((i = 1; i <= n; i++)); do
    list+=("$i@127.0.0.1:$(grpc_port "$i")")
  done
  local IFS=,
  echo "${list[*]}"
}

# Starts node I of an N-node cluster in the background; its output goes to its log.
launch() {
  local i=$1 n=$2 bin=$3
  mkdir -p "$(data_dir "$i")"
  echo "--- $(date -u '+%Y-%m-%dT%H:%M:%SZ') cluster.sh starts node $i" >>"$(log_file "$i")"
  "$bin" --node-id "$i" \
    --mqtt "127.0.0.1:$(mqtt_port "$i")" \
    --http "127.0.0.1:$(http_port "$i")" \
    --grpc "127.0.0.1:$(grpc_port "$i")" \
    --peers "$(peers "$n")" \
    --data-dir "$(data_dir "$i")" \
    </dev/null >>"$(log_file "$i")" 2>&1 &
  local pid=$!
  echo "$pid" >"$(pid_file "$i")"
  # Until the child has exec'd the binary, its command line is this script's: wait for
  # that (or for its end), so that node_pid does not take a starting node for a dead one.
  local deadline=$((SECONDS + 10))
  while [[ -z $(node_pid "$i") ]] && kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.05
  done
}

# GET /api/v1/cluster of node I: prints the HTTP status (000: no answer), a newline and
# the body.
cluster_get() {
  local auth=()
  [[ -n ${SKEIN_API_TOKEN:-} ]] && auth=(-H "Authorization: Bearer $SKEIN_API_TOKEN")
  local body status
  body=$(mktemp)
  status=$(curl -sS --max-time 2 -o "$body" -w '%{http_code}' "${auth[@]}" \
    "http://127.0.0.1:$(http_port "$1")/api/v1/cluster" 2>/dev/null || true)
  printf '%s\n' "${status:-000}"
  cat "$body"
  rm -f "$body"
}

# GET /api/v1/cluster of node I (the JSON), or nothing when it does not answer 200.
cluster_json() {
  local answer
  answer=$(cluster_get "$1")
  if [[ ${answer%%$'\n'*} == 200 ]]; then printf '%s\n' "${answer#*$'\n'}"; fi
}

# Why node I's GET /api/v1/cluster gives no JSON, in a few words.
no_answer_reason() {
  local status
  status=$(cluster_get "$1" | head -n1)
  case $status in
    000) echo "no answer" ;;
    401) echo "HTTP 401: set SKEIN_API_TOKEN" ;;
    *) echo "HTTP $status" ;;
  esac
}

# A top-level number of the cluster JSON (`leader_id`, `term`); `null` or nothing if absent.
json_number() {
  { printf '%s' "$1" | grep -o "\"$2\":[0-9a-z]*" || true; } | sed -n '1s/^[^:]*://p'
}

# The member objects of the cluster JSON, one per line.
json_members() {
  printf '%s\n' "$1" | sed -e 's/.*"members":\[{//' -e 's/}\].*//' -e 's/},{/\n/g'
}

# A field of one member line (string quotes removed).
member_field() {
  { printf '%s' "$1" | grep -o "\"$2\":\(\"[^\"]*\"\|[^,]*\)" || true; } |
    sed -n '1{s/^[^:]*://;s/"//g;p}'
}

# Whether node I answers its HTTP API and, when N is given, sees a leader and N members
# with their records.
node_ready() {
  local json leader
  json=$(cluster_json "$1")
  [[ -n $json ]] || return 1
  [[ -n ${2:-} ]] || return 0
  leader=$(json_number "$json" leader_id)
  [[ $leader =~ ^[0-9]+$ ]] || return 1
  (($(json_members "$json" | grep -c '"role"') == $2)) || return 1
  # Every member's record (name, MQTT address) has reached this node.
  [[ $json != *'"name":""'* ]]
}

log_tail() {
  local i=$1
  echo "--- node $i: last lines of $(log_file "$i")" >&2
  tail -n 20 "$(log_file "$i")" >&2 2>/dev/null || echo "(no log)" >&2
}

# Waits until each node I... runs and is ready (see node_ready; N may be empty); else says
# why, with the log tails, and returns 1.
wait_nodes() {
  local n=$1
  shift
  local deadline=$((SECONDS + WAIT_SECS)) i pending
  while :; do
    pending=()
    for i in "$@"; do
      if [[ -z $(node_pid "$i") ]]; then
        log_tail "$i"
        echo "cluster.sh: node $i exited while starting (log: $(log_file "$i"))" >&2
        return 1
      fi
      node_ready "$i" "$n" || pending+=("$i")
    done
    ((${#pending[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      for i in "${pending[@]}"; do log_tail "$i"; done
      for i in "${pending[@]}"; do
        [[ -n $(cluster_json "$i") ]] || echo "cluster.sh: node $i: $(no_answer_reason "$i")" >&2
      done
      if [[ -n $n ]]; then
        echo "cluster.sh: after ${WAIT_SECS}s, node(s) ${pending[*]} see no leader or not all $n members" >&2
      else
        echo "cluster.sh: after ${WAIT_SECS}s, node(s) ${pending[*]} do not answer on HTTP" >&2
      fi
      return 1
    fi
    sleep 0.2
  done
}

print_ports() {
  local i=$1
  printf '  node %s: mqtt 127.0.0.1:%s  http 127.0.0.1:%s  grpc 127.0.0.1:%s\n' \
    "$i" "$(mqtt_port "$i")" "$(http_port "$i")" "$(grpc_port "$i")"
}

cmd_up() {
  local n=${1:-3} i pid existing bin
  is_count "$n" || die "up: N must be a whole number from 1 to $MAX_NODES, not '$n'"
  existing=$(cluster_size)
  if [[ -n $existing ]]; then
    for ((i = 1; i <= existing; i++)); do
      pid=$(node_pid "$i")
      [[ -z $pid ]] || die "node $i is already running (pid $pid); scripts/cluster.sh down stops the cluster"
    done
    [[ $existing == "$n" ]] ||
      die "$DIR holds a $existing-node cluster: 'up $existing' starts it again; for $n nodes remove $DIR first"
  fi
  for ((i = 1; i <= n; i++)); do check_ports "$i"; done
  bin=$(skein_bin)
  mkdir -p "$DIR"
  echo "$n" >"$DIR/size"
  for ((i = 1; i <= n; i++)); do launch "$i" "$n" "$bin"; done
  echo "starting $n node(s) from $bin in $DIR"
  # shellcheck disable=SC2046 # a list of node numbers
  if ! wait_nodes "$n" $(seq 1 "$n"); then
    # shellcheck disable=SC2046
    stop_nodes $(seq 1 "$n")
    die "the cluster did not come up; its nodes are stopped (their logs: scripts/cluster.sh logs I)"
  fi
  for ((i = 1; i <= n; i++)); do print_ports "$i"; done
  local leader
  leader=$(json_number "$(cluster_json 1)" leader_id)
  echo "the cluster is up: $n member(s), leader node $leader"
}

# Sends SIG to the running nodes among I... and waits up to SECS for them to exit;
# prints the ones still running.
signal_and_wait() {
  local sig=$1 secs=$2 i pid
  shift 2
  for i in "$@"; do
    pid=$(node_pid "$i")
    [[ -z $pid ]] || kill -s "$sig" "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + secs)) left
  while :; do
    left=()
    for i in "$@"; do [[ -z $(node_pid "$i") ]] || left+=("$i"); done
    if ((${#left[@]} == 0)) || ((SECONDS >= deadline)); then
      echo "${left[*]}"
      return
    fi
    sleep 0.1
  done
}

# Stops nodes I...: SIGTERM, then SIGKILL after the stop timeout.
stop_nodes() {
  local left i
  left=$(signal_and_wait TERM "$STOP_SECS" "$@")
  if [[ -n $left ]]; then
    echo "still running after ${STOP_SECS}s, killing node(s): $left" >&2
    # shellcheck disable=SC2086 # a list of node numbers
    left=$(signal_and_wait KILL 10 $left)
    [[ -z $left ]] || die "node(s) $left survived SIGKILL"
  fi
  for i in "$@"; do rm -f "$(pid_file "$i")"; done
}

cmd_down() {
  local n i running=()
  n=$(require_cluster)
  for ((i = 1; i <= n; i++)); do [[ -z $(node_pid "$i") ]] || running+=("$i"); done
  if ((${#running[@]} == 0)); then
    echo "no node is running"
    return
  fi
  stop_nodes "${running[@]}"
  echo "stopped node(s) ${running[*]} (data kept in $DIR)"
}

cmd_kill() {
  local i=${1:-} pid
  require_node "$i" >/dev/null
  pid=$(node_pid "$i")
  [[ -n $pid ]] || die "node $i is not running"
  local left
  left=$(signal_and_wait KILL 10 "$i")
  [[ -z $left ]] || die "node $i (pid $pid) survived SIGKILL"
  rm -f "$(pid_file "$i")"
  echo "killed node $i (pid $pid)"
}

cmd_stop() {
  local i=${1:-} pid
  require_node "$i" >/dev/null
  pid=$(node_pid "$i")
  [[ -n $pid ]] || die "node $i is not running"
  stop_nodes "$i"
  echo "stopped node $i (pid $pid)"
}

cmd_start() {
  local i=${1:-} n pid
  n=$(require_node "$i")
  pid=$(node_pid "$i")
  [[ -z $pid ]] || die "node $i is already running (pid $pid)"
  check_ports "$i"
  launch "$i" "$n" "$(skein_bin)"
  # Serving is enough: a node started alone waits for others to have a quorum.
  if ! wait_nodes "" "$i"; then
    stop_nodes "$i"
    die "node $i did not start; its log: scripts/cluster.sh logs $i"
  fi
  print_ports "$i"
  local leader
  leader=$(json_number "$(cluster_json "$i")" leader_id)
  [[ $leader =~ ^[0-9]+$ ]] && leader="node $leader" || leader="none yet"
  echo "node $i is running (pid $(node_pid "$i")); the leader it sees: $leader"
}

cmd_restart() {
  local i=${1:-}
  require_node "$i" >/dev/null
  [[ -z $(node_pid "$i") ]] || stop_nodes "$i"
  cmd_start "$i"
}

cmd_logs() {
  local i=${1:-}
  require_node "$i" >/dev/null
  [[ -f $(log_file "$i") ]] || die "node $i has no log yet ($(log_file "$i"))"
  cat "$(log_file "$i")"
}

cmd_status() {
  local n i pid json leader term first_json=""
  n=$(require_cluster)
  echo "cluster of $n node(s) in $DIR"
  printf '%-5s %-8s %-8s %-16s %-16s %-16s %s\n' node pid state mqtt http grpc "sees leader"
  for ((i = 1; i <= n; i++)); do
    pid=$(node_pid "$i")
    leader=-
    if [[ -n $pid ]]; then
      json=$(cluster_json "$i")
      if [[ -n $json ]]; then
        [[ -n $first_json ]] || first_json=$json
        leader=$(json_number "$json" leader_id)
        term=$(json_number "$json" term)
        [[ $leader =~ ^[0-9]+$ ]] && leader="node $leader (term $term)" || leader=none
      else
        leader="($(no_answer_reason "$i"))"
      fi
    fi
    printf '%-5s %-8s %-8s %-16s %-16s %-16s %s\n' "$i" "${pid:--}" \
      "$([[ -n $pid ]] && echo running || echo stopped)" "127.0.0.1:$(mqtt_port "$i")" \
      "127.0.0.1:$(http_port "$i")" "127.0.0.1:$(grpc_port "$i")" "$leader"
  done
  if [[ -z $first_json ]]; then
    echo "members: unknown (no node answers)"
    return
  fi
  echo "members (as node $(json_number "$first_json" node_id) sees them):"
  local m
  while IFS= read -r m; do
    [[ -n $m ]] || continue
    printf '  %s %s: %s, %s, grpc %s, mqtt %s\n' \
      "$(member_field "$m" id)" "$(member_field "$m" name)" "$(member_field "$m" role)" \
      "$([[ $(member_field "$m" reachable) == true ]] && echo reachable || echo unreachable)" \
      "$(member_field "$m" grpc)" "$(member_field "$m" mqtt)"
  done < <(json_members "$first_json")
}

main() {
  command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
  local cmd=${1:-}
  (($# > 0)) && shift
  case $cmd in
    up) (($# <= 1)) || die "up takes at most one argument (N)"; cmd_up "$@" ;;
    down) (($# == 0)) || die "down takes no argument"; cmd_down ;;
    status) (($# == 0)) || die "status takes no argument"; cmd_status ;;
    kill | stop | start | restart | logs)
      (($# == 1)) || die "$cmd takes one argument: the node number"
      "cmd_$cmd" "$1"
      ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) echo "cluster.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"
