#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need when it is missing.
# Exits non-zero if any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_rust
need_build_deps

echo "== cargo test (workspace)"
cargo test --workspace --all-targets
# Doc tests are not part of --all-targets.
cargo test --workspace --doc

if [ "${TESSERA_FUZZ_SMOKE:-1}" = "1" ]; then
    echo "== fuzz smoke (every on-disk decoder, ${TESSERA_FUZZ_SECONDS:-15}s each)"
    scripts/fuzz.sh "${TESSERA_FUZZ_SECONDS:-15}"
fi
echo "== all tests passed"
