#!/usr/bin/env bash
# The main job: train the demo recipe on tiny-shakespeare on CPU, then sample from it.
# Installs PyTorch 2.11.0 into a shared venv the first time; reruns reuse the finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
target/release/roux check recipes/demo.roux
target/release/roux plan recipes/demo.roux
target/release/roux run recipes/demo.roux "$@"
echo "--- sample ---"
target/release/roux sample runs/demo/pretrain --prompt "ROMEO:" --tokens 300 --seed 1
