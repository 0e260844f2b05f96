#!/usr/bin/env bash
# The seed's manual walkthrough with fencelock: a 3-member etcd cluster on the seed's ports
# (clients 2379, 22379, 32379; peers 12380, 22380, 32380, as in etcd's Procfile) and the
# fenced storage on 127.0.0.1:8080, then client 1, `etcdctl lease revoke`, client 2, and
# Enter for client 1.
#
# Usage: scripts/walkthrough.sh          starts etcd and the storage, prints the steps to run
#                                        in other terminals, and waits for Ctrl-C
#        scripts/walkthrough.sh --run    also runs the steps itself and shows their output
#
# Needs etcd and etcdctl (FENCELOCK_ETCD_BIN / FENCELOCK_ETCDCTL_BIN choose others), e.g.
# `apt-get install etcd-server etcd-client`. Data lives in a temporary directory, removed on
# exit with every process started here. Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."

ETCD=${FENCELOCK_ETCD_BIN:-etcd}
ETCDCTL=${FENCELOCK_ETCDCTL_BIN:-etcdctl}
BIN=target/release/fencelock
ENDPOINTS=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
export ETCDCTL_API=3

mode=${1:-}
case "$mode" in
  "" | --run) ;;
  *) echo "usage: $0 [--run]" >&2; exit 2 ;;
esac
for tool in "$ETCD" "$ETCDCTL"; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install etcd-server etcd-client)" >&2; exit 1; }
done
for port in 2379 22379 32379 12380 22380 32380 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is already in use; stop what listens there first" >&2
    exit 1
  fi
done

cargo build --release --locked --quiet
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # An etcd member whose peers are gone can take seconds to stop; give it a little.
  for _ in $(seq 30); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "starting etcd: 3 members on $ENDPOINTS (logs in $work)"
cluster=infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380
for member in "infra1 2379 12380" "infra2 22379 22380" "infra3 32379 32380"; do
  read -r name client peer <<<"$member"
  "$ETCD" --name "$name" --data-dir "$work/$name.etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-token fencelock-walkthrough \
    --initial-cluster-state new >"$work/$name.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  "$ETCDCTL" --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
"$ETCDCTL" --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1 || { echo "etcd did not become healthy; see $work/*.log" >&2; exit 1; }

echo "starting the storage on http://127.0.0.1:8080 (fencing strict, data in $work/storage)"
"$BIN" storage --listen 127.0.0.1:8080 --data-dir "$work/storage" >"$work/storage.out" 2>"$work/storage.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q "listening on" "$work/storage.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" "$work/storage.out" || { echo "the storage did not start; see $work/storage.log" >&2; exit 1; }

if [ "$mode" != "--run" ]; then
  cat <<EOF

Ready. In other terminals, from $(pwd):

  1. $BIN client 1
     It acquires /lock, prints its lease and fencing token and the etcdctl command that
     revokes its lease, and waits for Enter.
  2. etcdctl --endpoints=$ENDPOINTS lease revoke <client 1's lease>
     As if client 1 had paused past its TTL: its lock key is deleted.
  3. $BIN client 2
     It acquires /lock with a larger token and writes at once: accepted (exit status 0).
  4. Press Enter in client 1's terminal: it writes with its old token and the storage
     rejects it as stale (exit status 3).

Instead of 2, pause client 1 for real: '$BIN client 1 --pause 5s' stops all its work,
keepalives included, for 5 s; run client 2 meanwhile.

Ctrl-C here stops etcd and the storage.
EOF
  # Waiting on a background sleep lets the INT/TERM trap run at once.
  while true; do
    sleep 3600 &
    pids+=($!)
    wait $! || true
  done
fi

# --run: the same steps, driven from here. Client 1's stdin is a FIFO this script holds.
echo
mkfifo "$work/enter"
"$BIN" client 1 <"$work/enter" >"$work/client1.out" 2>&1 &
client1=$!
pids+=("$client1")
exec 4>"$work/enter"
for _ in $(seq 100); do
  grep -q "press Enter" "$work/client1.out" && break
  sleep 0.1
done
cat "$work/client1.out"
shown=$(wc -l <"$work/client1.out")
lease=$(sed -n 's/.*(lease \([0-9a-f]*\),.*/\1/p' "$work/client1.out" | head -1)
[ -n "$lease" ] || { echo "client 1 did not acquire the lock" >&2; exit 1; }

echo
echo "\$ etcdctl --endpoints=$ENDPOINTS lease revoke $lease"
"$ETCDCTL" --endpoints "$ENDPOINTS" lease revoke "$lease"

echo
echo "\$ $BIN client 2"
status=0
"$BIN" client 2 || status=$?
echo "(client 2 exited with status $status)"

echo
echo "(client 1's terminal meanwhile, and after Enter)"
echo >&4
status=0
wait "$client1" || status=$?
tail -n +"$((shown + 1))" "$work/client1.out"
echo "(client 1 exited with status $status)"
