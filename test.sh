#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, snapshot, cfn-lint, CLI).
# Installs the pinned Python tools it needs into ./.venv first.
set -euo pipefail
cd "$(dirname "$0")"
source deploy/venv.sh
ensure_venv

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test" >&2
cargo test --workspace --locked
