#!/usr/bin/env bash
# The quick start: builds tessera (release) and runs `tessera up`, a whole local cluster in one
# process (a mon, three OSDs on files under ./tessera-data, an NBD server on 127.0.0.1:10809,
# a pool and a volume). Ctrl-C stops it; running it again brings the same data back. Extra
# arguments go to `tessera up` (see `tessera up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_rust
# protoc builds the etcd client; the rest are the NBD clients the banner suggests.
need_cmds protoc:protobuf-compiler nbdinfo:libnbd-bin qemu-img:qemu-utils fio:fio
echo "== building tessera (release; the first build takes a few minutes)"
cargo build --release -p tessera --quiet
exec "${CARGO_TARGET_DIR:-target}/release/tessera" up "$@"
