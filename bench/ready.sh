#!/usr/bin/env bash
# Push → URL answering with a simulated build (the stand-in CI puts the image into moto's ECR) and a
# simulated stack (the fault proxy holds the create in progress): 60 s build / 45 s stack and the reverse,
# with and without the `workflow_run` webhook, beside the sequential pipeline (build, then stack), all in
# one run. previewd is the release build, with its production polling. PREVIEWD_BENCH_SCALE=0.5 halves
# every duration.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/venv.sh
ensure_venv
cargo test --release --quiet -p previewd --test bench_ready -- --ignored --nocapture 2>&1 | grep -E "^ready|test result"
