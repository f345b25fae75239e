#!/usr/bin/env bash
# The report pages of the shipped recipes people look at first (demo, a Switch MoE, width-sweep's
# experiment report, the whole lifecycle), each checked in headless Chromium (every plot drawn,
# no raw float) and saved as docs/screenshots/*.png. Trains the recipes into target/screenshots
# the first time (about half an hour on two cores); finished runs are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
cargo test --release --test report -- --ignored --nocapture shipped_recipes
