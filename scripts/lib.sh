# Shared helpers for the scripts in this directory (sourced, not run).

# Installs Debian packages that provide the given commands, if any command is missing.
# Usage: need_cmds fio:fio nbdinfo:libnbd-bin
need_cmds() {
    local missing=()
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Makes sure cargo and the rustfmt/clippy components exist.
need_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install the Rust toolchain first (https://rustup.rs)" >&2
        exit 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
        rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    fi
}

# What building and testing the workspace needs from Debian: protoc (etcd-client's build
# script), etcd (the metastore tests run a real etcd server), fio (the benchmark's peer and
# the NBD tests' nbd engine), libnbd-bin and qemu-utils (the NBD tests' real clients).
need_build_deps() {
    need_cmds protoc:protobuf-compiler etcd:etcd-server fio:fio nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-img:qemu-utils qemu-io:qemu-utils ip:iproute2
}

# Starts a mon (embedded store) and 3 OSDs (2 GiB device files, hosts h0..h2) from $BIN in
# directory $1, each logging to $1/<name>.log; creates pool `default` (64 PGs, 3 replicas)
# and waits until its PGs are active+clean. Sets MON (host:port) and appends the daemons'
# pids to the array CLUSTER_PIDS.
start_tessera_cluster() {
    local dir=$1 i
    MON=127.0.0.1:$(free_port)
    "$BIN" mon --store "embedded:$dir/mon.redb" --listen "$MON" >"$dir/mon.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://$MON/healthz" >/dev/null && break; sleep 0.1; done
    for i in 0 1 2; do
        "$BIN" osd run --mon "$MON" --data "$dir/osd$i.dev" --size 2G --listen "127.0.0.1:$(free_port)" --host "h$i" >"$dir/osd$i.log" 2>&1 &
        CLUSTER_PIDS+=($!)
    done
    for _ in $(seq 100); do [ "$("$BIN" osd list --mon "$MON" --json | grep -c '"up": true')" = 3 ] && break; sleep 0.2; done
    "$BIN" pool create default --pg-count 64 --mon "$MON" >/dev/null
}

# After start_tessera_cluster: creates the 1 GiB volume `bench`, waits for clean PGs and
# starts `tessera nbd` exporting it; sets URI (nbd://...) and appends its pid to CLUSTER_PIDS.
start_tessera_nbd() {
    local dir=$1 port
    "$BIN" volume create bench --size 1G --mon "$MON" >/dev/null
    wait_tessera_clean
    port=$(free_port)
    "$BIN" nbd --mon "$MON" --listen "127.0.0.1:$port" >"$dir/nbd.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    URI="nbd://127.0.0.1:$port/bench"
    for _ in $(seq 100); do nbdinfo --size "$URI" >/dev/null 2>&1 && break; sleep 0.1; done
}

# Waits until every PG of a 64-PG cluster is active+clean (at most 20 s).
wait_tessera_clean() {
    for _ in $(seq 100); do "$BIN" cluster status --mon "$MON" | grep -q "64 active+clean" && break; sleep 0.2; done
}

# Shared setup of the benchmark scripts: WORK (directory $1, or a temp dir removed at exit
# unless the run failed), a release build at BIN (or TESSERA_BIN if set), and PIDS killed
# at exit.
bench_setup() {
    KEEP=${1:+yes}
    WORK=${1:-$(mktemp -d)}
    mkdir -p "$WORK"
    if [ -n "${TESSERA_BIN:-}" ]; then
        BIN=$(realpath "$TESSERA_BIN") # a binary built before (e.g. of another commit)
    else
        cargo build --release -q -p tessera
        BIN=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/tessera
    fi
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ $rc -ne 0 ]; then echo "failed: logs kept in $WORK" >&2; elif [ -z "$KEEP" ]; then rm -rf "$WORK"; fi
}

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
