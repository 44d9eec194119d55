#!/usr/bin/env bash
# The per-stage latency breakdown of the data path: a mon, 3 OSDs and `tessera nbd` (separate
# processes, all on this machine) started with TESSERA_TRACE, then fio (ioengine=nbd) jobs;
# for each job, `tessera bench trace` prints the mean and p99 of every stage of the sampled
# writes or reads (NBD receive, client library, leader data port, proposal, engine append and
# fsync on the leader and the first follower, commit, reply).
# Usage: scripts/bench-trace.sh [SECONDS per job, default 10] [DIR for files, default a temp dir]
# TESSERA_TRACE_EVERY=N samples one request in N (default 64).
# JOBS="randwrite:1 randwrite:32 randread:1 randread:32" (rw:QD; the default) picks the jobs;
# a QD1 write gets fio's fsync=1 as in scripts/bench-nbd.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_build_deps
SECS=${1:-10}
bench_setup "${2:-}"
TRACE="$WORK/trace"
mkdir -p "$TRACE"
export TESSERA_TRACE="$TRACE"
CLUSTER_PIDS=()
start_tessera_cluster "$WORK"
start_tessera_nbd "$WORK"
PIDS+=("${CLUSTER_PIDS[@]}")
fio --name=fill --ioengine=nbd --uri="$URI" --size=256M --rw=write --bs=1M --iodepth=4 >/dev/null
echo "# Per-stage latency breakdown ($(nproc) cores, ${SECS}s per job, one request in ${TESSERA_TRACE_EVERY:-64} sampled, commit $(git rev-parse --short HEAD))"
for job in ${JOBS:-randwrite:1 randwrite:32 randread:1 randread:32}; do
    rw=${job%%:*} qd=${job#*:}
    extra=""
    [ "$rw" = randwrite ] && [ "$qd" = 1 ] && extra="--fsync=1"
    fio --name=warm --ioengine=nbd --uri="$URI" --size=256M --rw="$rw" --bs=4k --iodepth="$qd" $extra --runtime=1 --time_based >/dev/null
    sleep 0.5
    t0=$("$BIN" bench clock)
    fio --name=j --ioengine=nbd --uri="$URI" --size=256M --rw="$rw" --bs=4k --iodepth="$qd" $extra \
        --time_based --runtime="$SECS" --output-format=json --output="$WORK/fio.json" >/dev/null
    t1=$("$BIN" bench clock)
    sleep 0.5 # the processes flush their traces every 200 ms
    python3 - "$WORK/fio.json" "$rw 4K QD$qd $extra" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] else j["read"]
mean = d["clat_ns"]["mean"] / 1000
sync = j.get("sync", {}).get("lat_ns", {})
if sync.get("N", 0):
    mean += sync["mean"] / 1000
print(f"\n## {sys.argv[2].strip()}: fio {d['iops']:.0f} IOPS, mean {mean:.0f} µs (write + flush where fsync=1)")
PY
    "$BIN" bench trace "$TRACE" --from "$t0" --to "$t1" --title "$rw QD$qd"
done
