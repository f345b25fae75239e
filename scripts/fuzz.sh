#!/usr/bin/env bash
# Fuzz the front end (parse + check + print round trip) with cargo-fuzz / libFuzzer.
#   scripts/fuzz.sh [RUNS]     (default 1,000,000 executions)
#   FUZZ_SANITIZER=none scripts/fuzz.sh RUNS   without AddressSanitizer (the test suite's short pass:
#       the front end's only `unsafe` passes allocations to the system's allocator, and the build
#       takes ~2 min instead of ~3.5, running 8× faster)
# Uses the machine's stable toolchain with RUSTC_BOOTSTRAP=1 for the sanitizer flags that
# cargo-fuzz needs (no nightly can be fetched here). Crashes land in fuzz/artifacts/ and become
# regression tests by copying them into tests/bad/ with their expected diagnostic.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-1000000}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/parse_check
cp recipes/*.roux tests/bad/*.roux tests/fixtures/*.roux fuzz/seeds/* fuzz/corpus/parse_check/ 2>/dev/null || true
export RUSTC_BOOTSTRAP=1
cargo fuzz run parse_check --fuzz-dir fuzz --sanitizer "${FUZZ_SANITIZER:-address}" -- -runs="$RUNS" -max_len=4096 -timeout=10 -print_final_stats=1
