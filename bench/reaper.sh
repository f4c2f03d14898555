#!/usr/bin/env bash
# The reaper removing orphaned environments with full, versioned buckets: AWS calls made, by action, over
# the lower bound (list pages + DeleteObjects + one DeleteStack per stack). Prints the figures; rerun with
#   PREVIEWD_BENCH_ORPHANS=20 PREVIEWD_BENCH_VERSIONS=2000 bench/reaper.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/venv.sh
ensure_venv
cargo test --quiet -p previewd --test bench_reaper -- --ignored --nocapture 2>&1 | grep -E "^reaper|test result"
