#!/usr/bin/env bash
# The pre-commit hook (.pre-commit-hooks.yaml): check the recipes given, as GitHub annotations.
# Uses the torch-free validator, installed once per machine from this checkout
# (`cargo install --no-default-features`: no libtorch, no Python). ROUX_VALIDATOR names another
# roux binary to use instead (the tests pass the one they built).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
roux="${ROUX_VALIDATOR:-}"
if [ -z "$roux" ]; then
  root="${XDG_CACHE_HOME:-$HOME/.cache}/roux/validator"
  roux="$root/bin/roux"
  if [ ! -x "$roux" ]; then
    cargo install --quiet --locked --no-default-features --path "$here" --root "$root"
  fi
fi
[ "$#" -gt 0 ] || exit 0
exec "$roux" check --format github "$@"
