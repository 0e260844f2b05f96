#!/usr/bin/env bash
# Benchmark of `fencelock storage` on the seed protocol with wrk.
#
# For each store (durable strict, then --in-memory strict) it starts one server on a free
# loopback port, runs wrk with 1 and 32 connections, one key (bench/wrk-onekey.lua) and
# distinct keys (bench/wrk-manykeys.lua), and prints req/s, p50 and p99 in a table.
# First it measures the same load against two ceilings that store nothing and answer a fixed
# body: `fencelock bench baseline` (the storage's own HTTP stack) and, when nginx is
# installed, nginx answering `return 200` (started here on a free port, with a configuration
# of its own in a temporary directory). Then the synced baseline, `fencelock bench baseline
# --sync-dir`: the same fixed answer, each sent only after a group sync of a file, the
# ceiling of a server that syncs before it answers, as the durable store does. Every row is
# also printed as a share of each ceiling with as many connections.
# The "other CPU" column is the share of the machine's CPU time used by everything but the
# server and wrk during the run: the kernel's I/O threads doing the server's syncs, and any
# neighbour. A busy neighbour makes the figures lower; compare runs with little of it.
#
# Usage: scripts/bench-storage.sh            (10 s per run)
#        DURATION=5s scripts/bench-storage.sh
# Needs wrk; nginx, python3 and curl for the nginx ceiling. Only loopback addresses are
# used; only the processes started here are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=2
BIN=target/release/fencelock

command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 1; }
cargo build --release --locked --quiet
work=$(mktemp -d)
server_pid=""

stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

# start_server ARGS...: starts `fencelock ARGS --listen 127.0.0.1:0` and sets $url from its
# first line.
start_server() {
  : >"$work/stdout"
  "$BIN" "$@" --listen 127.0.0.1:0 >"$work/stdout" 2>"$work/stderr" &
  server_pid=$!
  url=""
  for _ in $(seq 200); do
    url=$(sed -n 's/^listening on //p' "$work/stdout")
    [ -n "$url" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "the server did not start:" >&2
  cat "$work/stderr" >&2
  exit 1
}

# start_nginx: starts nginx in the foreground on a free loopback port and sets $url.
start_nginx() {
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes $(nproc);
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 '{"token":7}'; }
  }
}
CONF
  nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" 2>"$work/stderr" &
  server_pid=$!
  url="http://127.0.0.1:$port"
  for _ in $(seq 200); do
    curl -s -o /dev/null -X POST "$url/" && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "nginx did not start:" >&2
  cat "$work/stderr" "$work/nginx/error.log" >&2
  exit 1
}

# Busy jiffies of the whole machine, and of one process with its children (nginx's workers).
machine_busy() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }
proc_busy() {
  local pids
  pids="$1 $(cat /proc/"$1"/task/*/children 2>/dev/null || true)"
  # shellcheck disable=SC2086 # one path per PID
  awk '{ busy += $14 + $15 } END { print busy + 0 }' $(printf '/proc/%s/stat ' $pids) 2>/dev/null || echo 0
}

# to_ms VALUE: wrk's "567.00us" / "1.02ms" / "1.20s" in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "?" }'
}

# run_wrk STORE CONNECTIONS SCRIPT: one wrk run, one table row.
run_wrk() {
  local store=$1 conns=$2 script=$3 threads=$THREADS
  [ "$conns" -lt "$threads" ] && threads=$conns
  local m0 s0 m1 s1 w
  m0=$(machine_busy); s0=$(proc_busy "$server_pid")
  wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "bench/wrk-$script.lua" "$url/" \
    >"$work/wrk" &
  w=$!
  local w_busy=0
  while kill -0 "$w" 2>/dev/null; do
    w_busy=$(proc_busy "$w")
    sleep 0.2
  done
  wait "$w"
  m1=$(machine_busy); s1=$(proc_busy "$server_pid")
  local rps p50 p99 errors other
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/wrk")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/wrk")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/wrk")")
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' "$work/wrk")
  # Machine busy time not spent in the server or (approximately, sampled) in wrk.
  other=$(awk -v m=$((m1 - m0)) -v s=$((s1 - s0)) -v w="$w_busy" \
    'BEGIN { o = (m - s - w) / m * 100; if (o < 0) o = 0; printf "%.0f%%", o }')
  case $store in
    baseline) baseline_rps[$conns]=$rps ;;
    nginx) nginx_rps[$conns]=$rps ;;
    "synced baseline") synced_rps[$conns]=$rps ;;
  esac
  # The synced ceiling bounds what syncs before it answers: the durable store, not the others.
  local synced="-"
  case $store in
    durable* | "synced baseline") synced=$(share "$rps" "${synced_rps[$conns]:-}") ;;
  esac
  printf "| %-16s | %5s | %-9s | %9s | %8s | %8s | %9s | %8s | %8s | %8s |%s\n" \
    "$store" "$conns" "$script" "$rps" "$p50" "$p99" "$other" \
    "$(share "$rps" "${baseline_rps[$conns]:-}")" "$(share "$rps" "${nginx_rps[$conns]:-}")" \
    "$synced" "${errors:+ $errors}"
}

# share A B: A as a percentage of B, or "-" without B.
share() {
  if [ -n "$2" ] && [ "$2" -gt 0 ]; then
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", a / b * 100 }'
  else
    echo "-"
  fi
}
declare -A baseline_rps nginx_rps synced_rps

echo "fencelock storage, seed protocol, wrk -t$THREADS -d$DURATION, $(nproc) cores"
echo
printf "| %-16s | %5s | %-9s | %9s | %8s | %8s | %9s | %8s | %8s | %8s |\n" \
  store conns keys "req/s" "p50 ms" "p99 ms" "other CPU" "baseline" "nginx" "synced"
echo "|------------------|-------|-----------|-----------|----------|----------|-----------|----------|----------|----------|"
start_server bench baseline
for conns in 1 32; do
  run_wrk baseline "$conns" onekey
done
stop_server
if command -v nginx >/dev/null; then
  start_nginx
  for conns in 1 32; do
    run_wrk nginx "$conns" onekey
  done
  stop_server
fi
mkdir -p "$work/sync"
start_server bench baseline --sync-dir "$work/sync"
for conns in 1 32; do
  run_wrk "synced baseline" "$conns" onekey
done
stop_server
for store in durable in-memory; do
  if [ "$store" = durable ]; then
    rm -rf "$work/data"
    start_server storage --fencing strict --data-dir "$work/data"
    label="durable strict"
  else
    start_server storage --fencing strict --in-memory
    label="in-memory strict"
  fi
  for conns in 1 32; do
    for script in onekey manykeys; do
      run_wrk "$label" "$conns" "$script"
    done
  done
  stop_server
done
