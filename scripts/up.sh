#!/usr/bin/env bash
# Brings up what tessera has today. The one-command local cluster (`tessera up`: a mon, three
# OSDs, an NBD server) arrives with the NBD front end; until then this builds tessera and runs
# the storage engine on a real file beside fio on a raw file, so you see the engine work and
# what it costs on this machine. Extra arguments go to `tessera bench engine`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_rust
need_cmds fio:fio
echo "== building tessera (release)"
cargo build --release -p tessera --quiet
mkdir -p tessera-data
exec target/release/tessera bench engine --path tessera-data/engine-bench.dev --size 1G --duration 5s "$@"
