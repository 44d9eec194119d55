#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds (default 60). Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Installs cargo-fuzz when missing. libFuzzer needs nightly flags; on a stable toolchain this
# sets RUSTC_BOOTSTRAP=1 for the fuzz build only (the product itself builds on stable).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
# Seed every corpus with valid encodings of the current on-disk and wire formats.
TESSERA_WRITE_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q -p tessera-engine --test decoders write_fuzz_seeds >/dev/null
TESSERA_WRITE_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q -p tessera-wire --test frames write_fuzz_seeds >/dev/null
TESSERA_WRITE_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q -p tessera-wire --test messages write_fuzz_seeds >/dev/null
TESSERA_WRITE_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q -p tessera-nbd --test sessions write_fuzz_seeds >/dev/null
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    echo "-- fuzz $t for ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    (cd fuzz && cargo fuzz run "$t" -- -max_total_time="$secs" -max_len=8192 -print_final_stats=0 2>&1 | tail -n 3)
done
