#!/usr/bin/env bash
# Push → first CloudFormation call for the branch's stack (and → its CreateStack), p50/p90/p99 over
# PREVIEWD_BENCH_PUSHES pushes (default 50) against moto, beside a fresh Python process with boto3 calling
# CreateStack. previewd is the release build (`cargo test --release`), as it runs. Prints the figures; rerun with
#   PREVIEWD_BENCH_PUSHES=50 bench/push.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/venv.sh
ensure_venv
cargo test --release --quiet -p previewd --test bench_push -- --ignored --nocapture 2>&1 | grep -E "^push|test result"
