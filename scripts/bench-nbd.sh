#!/usr/bin/env bash
# The side-by-side benchmark, in one run, the same fio jobs against:
#   raw file: fio's io_uring engine, direct=1, on a local file (the single-node floor; the
#             QD1 write row with fsync=1);
#   tessera:  a mon + 3 OSDs + `tessera nbd` (separate processes, all on this machine), a pool
#             with 3 replicas: every write is acknowledged once fsynced on 2 of 3 OSDs
#             (ioengine=nbd);
#   qemu-nbd: --cache=none --aio=native on one local raw file (one node, no replication);
#   nbdkit:   the file plugin on one local raw file.
# Then a second table: tessera's IOPS as a fraction of each peer's, job by job.
# The QD1 write row uses fio's fsync=1 (an NBD FLUSH after every write), the durable latency
# for the peers; for tessera a write is durable when acknowledged and FLUSH is free.
# CPU is the sum over the serving processes (user + system) during each job (ramp included,
# scaled to the measured runtime), per 1,000 IOs.
# For the raw file, CPU is fio's own (user + system): there is no server process.
# Write amplification: bytes the serving processes wrote to storage (/proc/PID/io
# write_bytes, direct IO included) per byte fio wrote; tessera writes every byte on each of
# its 3 replicas, so 3 plus headers and cleaning is the expected figure.
# Usage: scripts/bench-nbd.sh [SECONDS per job, default 20] [DIR for files, default a temp dir]
# TARGETS="raw tessera qemu-nbd nbdkit" (default: all four) picks the targets; add
# "tessera-up" for `tessera up` (mon, 3 OSDs and the NBD server in one process, the same
# pool and volume shape) next to the separate processes.
# TESSERA_OLD_BIN=<a tessera binary of another commit> also runs that build as target
# "tessera-old" (same jobs, same run), so a change's gain is a ratio too.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_build_deps
need_cmds qemu-nbd:qemu-utils nbdkit:nbdkit
SECS=${1:-20}
bench_setup "${2:-}"
cpu() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }
# Bytes the processes sent to storage (their devices and files, direct IO included).
wbytes() { for p in "$@"; do awk '/^write_bytes/ {print $2}' "/proc/$p/io"; done | paste -sd+ | bc; }
TICK=$(getconf CLK_TCK)

# run_jobs TARGET URI PID...: the fio jobs against one NBD URI (or, for URI file:PATH, the
# local file with io_uring and O_DIRECT), one table row each.
run_jobs() {
    local target=$1 uri=$2
    shift 2
    local io=(--ioengine=nbd --uri="$uri")
    if [[ "$uri" == file:* ]]; then io=(--ioengine=io_uring --direct=1 --filename="${uri#file:}"); fi
    fio --name=fill "${io[@]}" --size=256M --rw=write --bs=1M --iodepth=4 >/dev/null
    for spec in "randwrite 1 --fsync=1" "randwrite 32" "randread 1" "randread 32" "write 8 --bs=128k" "read 8 --bs=128k"; do
        set -- $spec "${@}"
        local rw=$1 qd=$2 extra=""
        shift 2
        if [[ "${1:-}" == --* ]]; then extra=$1; shift; fi
        local before=0 wbefore=0; [ $# -gt 0 ] && before=$(cpu "$@") && wbefore=$(wbytes "$@")
        fio --name=j "${io[@]}" --size=256M --rw="$rw" --bs=4k --iodepth="$qd" $extra \
            --time_based --ramp_time=2 --runtime="$SECS" --output-format=json --output="$WORK/fio.json" >/dev/null
        local after=-1 wafter=-1; [ $# -gt 0 ] && after=$(cpu "$@") && wafter=$(wbytes "$@")
        python3 - "$target" "$rw" "$qd" "$extra" "$(( after - before ))" "$TICK" "$WORK/fio.json" "$WORK/rows.tsv" "$(( wafter - wbefore ))" <<'PY'
import json, sys
target, rw, qd, extra, ticks, tick, path, rows, wbytes = sys.argv[1:10]
j = json.load(open(path))["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] else j["read"]
lat = d["clat_ns"]
mean, p99 = lat["mean"] / 1000, lat.get("percentile", {}).get("99.000000", 0) / 1000
sync = j.get("sync", {}).get("lat_ns", {})
if sync.get("N", 0):
    mean += sync["mean"] / 1000  # fsync=1: a write is done when its flush is
    p99 += sync.get("percentile", {}).get("99.000000", 0) / 1000
ios = d["total_ios"]
# CPU was sampled over ramp + runtime; IOs are counted over the runtime only.
secs = j["job_runtime"] / 1000
if int(ticks) < 0:  # no server process: fio's own CPU (percent of its runtime)
    cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100 * secs
else:
    cpu = int(ticks) / int(tick) * secs / (secs + 2)
per_k = cpu / ios * 1000 if ios else 0
bs = "128K" if "128k" in extra else "4K"
job = f"{rw} {bs} {extra.replace('--bs=128k', '').strip()}".strip()
# Write amplification: bytes the serving processes wrote to storage (ramp included, scaled
# to the runtime like CPU) per byte fio wrote; "-" for reads and the raw file.
amp = "-"
if int(wbytes) >= 0 and j["write"]["io_bytes"]:
    amp = f"{int(wbytes) * secs / (secs + 2) / j['write']['io_bytes']:.2f}"
print(f"| {target} | {job} | {qd} | {d['iops']:.0f} | {d['bw'] / 1024:.1f} | {mean:.0f} | {p99:.0f} | {per_k:.2f} | {amp} |")
with open(rows, "a") as f:
    f.write(f"{target}\t{job} QD{qd}\t{d['iops']:.0f}\t{mean:.0f}\t{per_k:.3f}\n")
PY
    done
}

echo "| target | job | QD | IOPS | MiB/s | mean µs | p99 µs | CPU s / 1k IOs | storage bytes / written byte |"
echo "|---|---|---|---|---|---|---|---|---|"

TARGETS=${TARGETS:-raw tessera qemu-nbd nbdkit}
: >"$WORK/rows.tsv"

# raw local file (fio's own engine, no NBD, no replication)
if [[ " $TARGETS " == *" raw "* ]]; then
truncate -s 1G "$WORK/raw.file"
run_jobs "raw file (io_uring, direct)" "file:$WORK/raw.file"
fi

# tessera (and, with TESSERA_OLD_BIN, an older build of it first)
run_tessera() {
    local label=$1 dir=$2
    mkdir -p "$dir"
    CLUSTER_PIDS=()
    start_tessera_cluster "$dir"
    start_tessera_nbd "$dir"
    TPIDS=("${CLUSTER_PIDS[@]}")
    PIDS+=("${TPIDS[@]}")
    run_jobs "$label" "$URI" "${TPIDS[@]}"
    for p in "${TPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${TPIDS[@]}" 2>/dev/null || true
    rm -f "$dir"/*.dev
}
if [ -n "${TESSERA_OLD_BIN:-}" ] && [[ " $TARGETS " == *" tessera "* ]]; then
    NEW_BIN=$BIN
    BIN=$(realpath "$TESSERA_OLD_BIN")
    run_tessera "tessera-old (3 replicas)" "$WORK/old"
    BIN=$NEW_BIN
fi
if [[ " $TARGETS " == *" tessera "* ]]; then
    run_tessera "tessera (3 replicas)" "$WORK/new"
fi

# tessera up: the same cluster in one process
if [[ " $TARGETS " == *" tessera-up "* ]]; then
    dir=$WORK/up
    mkdir -p "$dir"
    UM=$(free_port) UN=$(free_port) UO=$(free_port)
    "$BIN" up --data "$dir" --osd-size 2G --volume bench --volume-size 1G --pg-count 64 \
        --mon-listen "127.0.0.1:$UM" --osd-port "$UO" --nbd-listen "127.0.0.1:$UN" --status-every 60s >"$dir/up.log" 2>&1 &
    UP=$!
    PIDS+=($UP)
    for _ in $(seq 600); do nbdinfo --size "nbd://127.0.0.1:$UN/bench" >/dev/null 2>&1 && break; sleep 0.1; done
    run_jobs "tessera up (1 process)" "nbd://127.0.0.1:$UN/bench" "$UP"
    kill "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
    rm -f "$dir"/*.dev "$dir"/osd*/* 2>/dev/null || true
fi

# qemu-nbd
if [[ " $TARGETS " == *" qemu-nbd "* ]]; then
truncate -s 1G "$WORK/qemu.raw"
Q=$(free_port)
qemu-nbd -t -x bench -b 127.0.0.1 -p "$Q" --cache=none --aio=native -f raw "$WORK/qemu.raw" >"$WORK/qemu-nbd.log" 2>&1 &
QP=$!
PIDS+=($QP)
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$Q/bench" >/dev/null 2>&1 && break; sleep 0.1; done
run_jobs "qemu-nbd (1 node)" "nbd://127.0.0.1:$Q/bench" "$QP"
kill "$QP" 2>/dev/null || true
fi

# nbdkit
if [[ " $TARGETS " == *" nbdkit "* ]]; then
truncate -s 1G "$WORK/nbdkit.raw"
K=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$K" --exportname bench file "$WORK/nbdkit.raw" >"$WORK/nbdkit.log" 2>&1 &
KP=$!
PIDS+=($KP)
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$K/bench" >/dev/null 2>&1 && break; sleep 0.1; done
run_jobs "nbdkit file (1 node)" "nbd://127.0.0.1:$K/bench" "$KP"
fi
echo
echo "($(nproc) cores; fio, every daemon and the peers on this machine; ${SECS}s per job after a 2 s ramp; commit $(git rev-parse --short HEAD))"
# tessera / peer, per job: IOPS ratio (higher is better for tessera), mean latency and CPU per IO ratios (lower is better).
python3 - "$WORK/rows.tsv" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for target, job, iops, mean, cpu in rows:
    by.setdefault(job, {})[target] = (float(iops), float(mean), float(cpu))
peers = [t for t in dict.fromkeys(r[0] for r in rows) if not t.startswith("tessera (")]
tess = next((t for t in dict.fromkeys(r[0] for r in rows) if t.startswith("tessera (")), None)
if tess and peers:
    print()
    print("| job | " + " | ".join(f"IOPS vs {p}" for p in peers) + " | " + " | ".join(f"mean latency vs {p}" for p in peers)
          + " | " + " | ".join(f"CPU/IO vs {p}" for p in peers) + " |")
    print("|---|" + "---|" * (3 * len(peers)))
    for job, t in by.items():
        if tess not in t:
            continue
        ti, tm, tc = t[tess]
        iops = [f"{ti / t[p][0]:.2f}" if p in t and t[p][0] else "-" for p in peers]
        lat = [f"{tm / t[p][1]:.2f}x" if p in t and t[p][1] else "-" for p in peers]
        cpu = [f"{tc / t[p][2]:.1f}x" if p in t and t[p][2] else "-" for p in peers]
        print(f"| {job} | " + " | ".join(iops) + " | " + " | ".join(lat) + " | " + " | ".join(cpu) + " |")
PY
