#!/usr/bin/env bash
# Fuzz the front end with cargo-fuzz / libFuzzer, each target in turn:
#   parse_check  recipe text and YAML → parse + check + print/fmt round trips
#   hf_config    a checkpoint's config.json (and a safetensors header) → the model read, its
#                tensors counted and named, and exported back to the same model
#   chat_data    conversations and preference pairs (JSONL, tools) → parsed and rendered with
#                chat templates, the trained segments joined equal to the whole render
#   scripts/fuzz.sh [RUNS] [TARGET…]   (default 1,000,000 executions of each target)
#   FUZZ_SANITIZER=none scripts/fuzz.sh RUNS   without AddressSanitizer (the test suite's short pass:
#       the front end's only `unsafe` passes allocations to the system's allocator, and the build
#       takes ~2 min instead of ~3.5, running 8× faster)
# Uses the machine's stable toolchain with RUSTC_BOOTSTRAP=1 for the sanitizer flags that
# cargo-fuzz needs (no nightly can be fetched here). Crashes land in fuzz/artifacts/TARGET/ and
# become regression tests: a unit or integration test with the expected diagnostic, the input
# kept in fuzz/seeds/ (fuzz/seeds/TARGET/ for the targets after the first).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-1000000}"
shift || true
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=(parse_check hf_config chat_data); fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/parse_check fuzz/corpus/hf_config fuzz/corpus/chat_data
cp recipes/*.roux tests/bad/*.roux tests/fixtures/*.roux fuzz/seeds/*.* fuzz/corpus/parse_check/ 2>/dev/null || true
cp fuzz/seeds/hf_config/* fuzz/corpus/hf_config/ 2>/dev/null || true
cp fuzz/seeds/chat_data/* fuzz/corpus/chat_data/ 2>/dev/null || true
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
  # Recipes are up to a few KB; a config of the keys hf_config knows is at most ~100 bytes.
  len=4096
  [ "$target" = hf_config ] && len=200
  cargo fuzz run "$target" --fuzz-dir fuzz --sanitizer "${FUZZ_SANITIZER:-address}" -- -runs="$RUNS" -max_len="$len" -timeout=10 -print_final_stats=1
done
