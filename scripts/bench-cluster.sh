#!/usr/bin/env bash
# The replicated data path end to end, next to a raw local file, in one run:
#   tessera: a mon (embedded store) + 3 OSDs (`tessera osd run`, one device file each, all on
#            this machine), a pool with 3 replicas, `tessera bench client` doing 4 KiB random
#            writes (each acknowledged once fsynced on 2 of 3 replicas) and reads;
#   peer:    fio on one raw file: randwrite with fsync=1 (one local fsync per write, QD1) and
#            direct randwrite/randread at the same queue depths.
# Usage: scripts/bench-cluster.sh [SECONDS per row, default 10] [DIR for device files, default a temp dir]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_build_deps
SECS=${1:-10}
bench_setup "${2:-}"

CLUSTER_PIDS=()
start_tessera_cluster "$WORK"
PIDS+=("${CLUSTER_PIDS[@]}")
"$BIN" volume create bench --size 1G --mon "$MON" >/dev/null
wait_tessera_clean

echo "## tessera: 3 OSDs, 3 replicas, client library ($(nproc) cores, all processes on this machine)"
echo
echo "command: tessera bench client --volume bench --region 256M --qd 1,32 --duration ${SECS}s --ramp 2s"
echo
"$BIN" bench client --mon "$MON" --volume bench --region 256M --qd 1,32 --duration "${SECS}s" --ramp 2s
CPU=$(for p in "${PIDS[@]}"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc)
echo
echo "CPU time of mon + OSDs during the run (incl. fill): $(echo "scale=1; $CPU / $(getconf CLK_TCK)" | bc) s"

echo
echo "## peer: fio on a raw 1 GiB file in $WORK"
echo
F="$WORK/fio.raw"
fio --name=fill --filename="$F" --size=1G --rw=write --bs=1M --direct=1 --ioengine=libaio --iodepth=4 >/dev/null
echo "| workload | QD | IOPS | mean µs | p99 µs | fio options |"  # with fsync=1: write + its fsync
echo "|---|---|---|---|---|---|"
job() {
    local rw=$1 qd=$2 extra=$3
    fio --name=j --filename="$F" --size=256M --rw="$rw" --bs=4k --direct=1 --ioengine=libaio --iodepth="$qd" \
        --time_based --ramp_time=2 --runtime="$SECS" --output-format=json $extra |
        python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] else j["read"]
lat = d["clat_ns"]
p99 = lat.get("percentile", {}).get("99.000000", 0) / 1000
iops, mean = d["iops"], lat["mean"] / 1000
sync = j.get("sync", {}).get("lat_ns", {})
if sync.get("N", 0):
    mean += sync["mean"] / 1000  # fsync=1: a write is done when its fsync is
    p99 += sync.get("percentile", {}).get("99.000000", 0) / 1000
print(f"| {sys.argv[1]} 4K | {sys.argv[2]} | {iops:.0f} | {mean:.0f} | {p99:.0f} | {sys.argv[3]} |")' "$rw" "$qd" "libaio direct $extra"
}
job randwrite 1 "--fsync=1"
job randwrite 1 ""
job randwrite 32 ""
job randread 1 ""
job randread 32 ""
