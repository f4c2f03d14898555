#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, snapshot, cfn-lint, CLI, the
# store suite on SQLite and PostgreSQL, end to end against moto and a fake GitHub, a SIGKILL restart).
# Installs the pinned Python tools it needs into ./.venv first.
set -euo pipefail
cd "$(dirname "$0")"
source deploy/venv.sh
ensure_venv

# The store suite also runs against PostgreSQL (trust auth on 127.0.0.1:5432 on our machines); start the
# local cluster if it is installed but stopped. PREVIEWD_TEST_POSTGRES_URL=skip leaves PostgreSQL out.
export PREVIEWD_TEST_POSTGRES_URL="${PREVIEWD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if [ "$PREVIEWD_TEST_POSTGRES_URL" != skip ] && command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "==> starting the local PostgreSQL cluster" >&2
  for v in $(ls /etc/postgresql 2>/dev/null); do pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test" >&2
cargo test --workspace --locked
