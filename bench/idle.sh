#!/usr/bin/env bash
# The cost of an idle fleet: one resync pass over N ready environments (default 2,000), counted at the
# AWS proxy and the fake GitHub, cold and with warm ETags, then a real `previewd serve` (the release build,
# as it runs) left idle, with its resident memory. Prints the figures; rerun with
#   PREVIEWD_BENCH_ENVS=2000 bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/venv.sh
ensure_venv
export PREVIEWD_BENCH_ENVS="${PREVIEWD_BENCH_ENVS:-2000}"
cargo test --release --quiet -p previewd --test bench_idle -- --ignored --nocapture 2>&1 | grep -E "^(idle|set-up)|test result"
