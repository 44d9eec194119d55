#!/usr/bin/env bash
# Control-plane latency: `tessera mon` API calls on the embedded store and on a real etcd,
# next to the floor of the same etcd (a raw put through etcd's own HTTP gateway).
#
# Usage: scripts/bench-mon.sh [N]     (N sequential operations per row, default 300)
# Each row: one client (curl), one request at a time, loopback; latency = curl's time_total.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_cmds protoc:protobuf-compiler etcd:etcd-server curl:curl
N=${1:-300}
cargo build --release -q -p tessera
BIN=target/release/tessera
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }

# Prints "p50 p99 mean" in milliseconds of the time_total values on stdin.
stats() { python3 -c '
import sys
v = sorted(float(x) * 1000 for x in sys.stdin.read().split())
p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
print(f"{p(0.5):8.2f} {p(0.99):8.2f} {sum(v)/len(v):8.2f}")'; }

# time_total of one request: METHOD URL [BODY]; fails on a non-2xx answer.
req() { curl -sf -o /dev/null -w '%{time_total}\n' -X "$1" "$2" ${3:+-H 'Content-Type: application/json' -d "$3"}; }

row() { printf '%-10s %-34s %s\n' "$1" "$2" "$(cat | stats)"; }

EP=$(port); EPEER=$(port)
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
    --listen-peer-urls "http://127.0.0.1:$EPEER" --initial-advertise-peer-urls "http://127.0.0.1:$EPEER" \
    --initial-cluster "bench=http://127.0.0.1:$EPEER" --log-level error >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$EP/health"

echo "== $N sequential requests per row; latency in ms; $(nproc) cores; $(date -u +%F)"
printf '%-10s %-34s %8s %8s %8s\n' backend operation p50 p99 mean
for i in $(seq "$N"); do
    k=$(printf 'bench/key%06d' "$i" | base64 -w0)
    req POST "http://127.0.0.1:$EP/v3/kv/put" "{\"key\":\"$k\",\"value\":\"dmFsdWU=\"}"
done | row etcd "raw put (etcd HTTP gateway)"

for backend in embedded etcd; do
    MP=$(port)
    if [ "$backend" = embedded ]; then store="embedded:$WORK/mon.redb"; else store="etcd:http://127.0.0.1:$EP"; fi
    $BIN mon --store "$store" --listen "127.0.0.1:$MP" >"$WORK/mon-$backend.log" 2>&1 &
    MPID=$!
    PIDS+=($MPID)
    wait_ok "http://127.0.0.1:$MP/healthz"
    M="http://127.0.0.1:$MP/api/v1"
    for o in 0 1 2; do
        req POST "$M/osds" "{\"uuid\":\"u$o\",\"addr\":\"127.0.0.1:$((9000 + o))\",\"host\":\"h$o\",\"device\":\"d\",\"capacity_bytes\":1099511627776}" >/dev/null
    done
    req POST "$M/pools" '{"name":"default","pg_count":128}' >/dev/null
    for i in $(seq "$N"); do req POST "$M/volumes" "{\"name\":\"v$i\",\"pool\":\"default\",\"size\":10737418240}"; done | row "$backend" "volume create (CAS txn)"
    for i in $(seq "$N"); do req GET "$M/volumes/v$i"; done | row "$backend" "volume info"
    for i in $(seq "$N"); do req POST "$M/osds/0/heartbeat" '{}'; done | row "$backend" "OSD heartbeat (in memory)"
    for i in $(seq "$N"); do req GET "$M/map"; done | row "$backend" "map (3 OSDs, 128 PGs)"
    kill "$MPID"; wait "$MPID" 2>/dev/null || true
done
