#!/usr/bin/env bash
# Where tessera's time goes: a CPU profile (perf, DWARF call graphs) of every tessera process
# (mon, 3 OSDs, `tessera nbd`) while fio drives one NBD job, then a summary by process and by
# component (crc32c, memcpy, raft-rs, engine, tokio, kernel: network, fsync, ...).
# Usage: scripts/profile.sh [JOB, default "randwrite 32"] [SECONDS, default 10] [DIR]
#   JOB is "<fio rw> <iodepth>", e.g. "randwrite 1" or "randread 32"; BS=128k for another
#   block size (default 4k).
# Writes DIR/perf.data, DIR/report.txt (perf report --no-children) and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust
need_build_deps
need_cmds perf:linux-perf
read -r RW QD <<<"${1:-randwrite 32}"
SECS=${2:-10}
bench_setup "${3:-}"
start_tessera_cluster "$WORK"
PIDS+=("${CLUSTER_PIDS[@]}")
"$BIN" volume create vol --size 1G --mon "$MON" >/dev/null
NBD=127.0.0.1:$(free_port)
"$BIN" nbd --mon "$MON" --listen "$NBD" >"$WORK/nbd.log" 2>&1 &
PIDS+=($!)
wait_tessera_clean
for _ in $(seq 100); do nbdinfo "nbd://$NBD/vol" >/dev/null 2>&1 && break; sleep 0.1; done
fio --name=fill --ioengine=nbd --uri="nbd://$NBD/vol" --size=256M --rw=write --bs=1M --iodepth=4 >/dev/null
fio --name=j --ioengine=nbd --uri="nbd://$NBD/vol" --size=256M --rw="$RW" --bs="${BS:-4k}" --iodepth="$QD" \
    --time_based --runtime=$((SECS + 4)) --output="$WORK/fio.txt" >/dev/null &
FIO=$!
sleep 2
pids=$(IFS=,; echo "${PIDS[*]}")
perf record -q -F 499 --call-graph dwarf,16384 -p "$pids" -o "$WORK/perf.data" -- sleep "$SECS" 2>/dev/null
wait $FIO
grep -E 'IOPS|clat \(usec\).*avg' "$WORK/fio.txt" | head -3
perf report -i "$WORK/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -v '^$' >"$WORK/report.txt" || true
perf report -i "$WORK/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' >"$WORK/flat.txt" || true
echo "== CPU by process (samples)"
perf report -i "$WORK/perf.data" --no-children --sort pid --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo "== top symbols (self time, all processes)"
head -30 "$WORK/flat.txt"
echo "== by component"
python3 - "$WORK/flat.txt" <<'PY'
import re, sys
groups = [
    ("crc32c", r"crc32c"),
    ("memcpy/memmove/memset", r"mem(cpy|move|set)|copy_user|rep_movs|clear_page"),
    ("raft-rs + protobuf", r"raft::|protobuf|prost"),
    ("engine", r"tessera_engine"),
    ("osd store / peers", r"tessera_osd"),
    ("client library + nbd", r"tessera_client|tessera_nbd"),
    ("wire codec", r"tessera_wire"),
    ("tokio runtime", r"tokio::"),
    ("allocator", r"malloc|free|realloc|_int_|alloc::"),
    ("kernel: network", r"tcp_|ip_|__dev|skb|sock|net_|nf_|loopback|__netif"),
    ("kernel: fsync / block / fs", r"ext4|jbd2|blk_|bio|submit|nvme|virtblk|iomap|filemap|fdatasync|file_write"),
    ("kernel: scheduling / futex / epoll", r"futex|schedule|switch_to|ep_|epoll|try_to_wake|finish_task|enqueue|dequeue|update_|pick_next"),
    ("kernel: syscall entry", r"entry_SYSCALL|syscall|do_syscall"),
]
tot = {}
other = 0.0
for line in open(sys.argv[1]):
    m = re.match(r"\s+([0-9.]+)%\s+(.*)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(2)
    for name, pat in groups:
        if re.search(pat, sym):
            tot[name] = tot.get(name, 0) + pct
            break
    else:
        other += pct
for name, pct in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"{pct:6.1f}%  {name}")
print(f"{other:6.1f}%  other")
PY
echo "full reports: $WORK/report.txt, $WORK/flat.txt"
