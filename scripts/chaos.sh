#!/usr/bin/env bash
# The chaos suite outside the normal test run.
#   scripts/chaos.sh                 the CI run: 3 fixed seeds and a fresh one, 12 faults each
#   scripts/chaos.sh --long          one fresh seed, 300 faults
#   scripts/chaos.sh --seed N        replay one seed (use the same --faults / --long as the run)
#   scripts/chaos.sh --faults N      any number of faults (per seed)
# The seed is printed first; a failure prints it again with the directory of the daemons'
# logs and devices. Needs root (network namespaces) and fio.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
need_build_deps
faults=12
while [ $# -gt 0 ]; do
    case "$1" in
        --long) faults=300; export TESSERA_CHAOS_SEED="${TESSERA_CHAOS_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}" ;;
        --faults) faults="$2"; shift ;;
        --seed) export TESSERA_CHAOS_SEED="$2"; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
export TESSERA_CHAOS_FAULTS="$faults"
exec cargo test -p tessera --test chaos -- --nocapture
