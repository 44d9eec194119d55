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
    need_cmds protoc:protobuf-compiler etcd:etcd-server fio:fio nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-img:qemu-utils qemu-io:qemu-utils
}
