#!/bin/bash
# Diagnostic for chaos runs: when a run reports a node's admin API not answering while that
# node is not stopped (SIGSTOP: state T), dump every thread of it with gdb, once per run.
# Usage: chaos/hangwatch.sh RUN_DIR... (each the directory holding a run's out.txt, the
# harness's output); writes RUN_DIR/dump.txt. Needs gdb (Debian) and a build with debuginfo
# (the release profile has it).
set -u
while true; do
  for d in "$@"; do
    [ -f "$d/dumped" ] && continue
    line=$(grep "no answer within 3s" "$d/out.txt" 2>/dev/null | tail -1)
    [ -z "$line" ] && continue
    port=$(echo "$line" | grep -o "127.0.0.1:[0-9]*" | head -1 | cut -d: -f2)
    pid=$(ss -ltnp "sport = :$port" 2>/dev/null | grep -o "pid=[0-9]*" | head -1 | cut -d= -f2)
    [ -z "$pid" ] && continue
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
    [ "$state" = "T" ] && continue
    {
      echo "$(date -u) port $port pid $pid state $state: $line"
      gdb -p "$pid" -batch -ex "thread apply all bt 30"
    } > "$d/dump.txt" 2>&1
    touch "$d/dumped"
  done
  sleep 1
done
