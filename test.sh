#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, snapshot, cfn-lint, CLI, the
# store suite on SQLite and PostgreSQL, end to end against moto and a fake GitHub, a SIGKILL restart, the
# dashboard in headless chromium). Installs what it needs first: the pinned Python tools into ./.venv,
# Debian's chromium, and playwright-core into tests/browser/node_modules.
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

# The browser test drives Debian's chromium through playwright-core (pinned in tests/browser); a browser
# download cannot work here, so chromium comes from Debian's packages.
if [ ! -x "${PREVIEWD_CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "==> installing chromium (Debian) for the browser test" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q chromium >&2
fi
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/@axe-core/playwright ]; then
  echo "==> installing playwright-core and axe-core (npm) for the browser test" >&2
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
# Requests previewd sends to the fake GitHub are held against GitHub's OpenAPI description (pinned
# @octokit/openapi with ajv, tests/github-openapi).
if [ ! -d tests/github-openapi/node_modules/@octokit/openapi ]; then
  echo "==> installing GitHub's OpenAPI description (npm) for the request check" >&2
  (cd tests/github-openapi && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test" >&2
cargo test --workspace --locked
# A short fuzz of each cargo-fuzz target (20 s each; `fuzz/run.sh 3600` is the long run): a crash is saved
# into fuzz/regressions/ for the replay test and fails the run.
echo "==> fuzz/run.sh 20" >&2
fuzz/run.sh 20
