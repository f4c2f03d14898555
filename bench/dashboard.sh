#!/usr/bin/env bash
# Server time of the environment list with many environments (default 10,000) in SQLite: the JSON API and
# the dashboard, p50 and p99 through the real router (the test profile: dependencies at opt-level 1, as
# Cargo.toml sets them; a release build would be faster still). Rerun with
#   PREVIEWD_BENCH_ENVS=10000 bench/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PREVIEWD_BENCH_ENVS="${PREVIEWD_BENCH_ENVS:-10000}"
cargo test --quiet -p previewd-web --test bench_dashboard -- --ignored --nocapture 2>&1 | grep -E "^(GET|set-up)|test result"
