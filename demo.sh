#!/usr/bin/env bash
# The local demo: builds previewd and shows what a branch's environment would be, offline.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --quiet --bin previewd
pd() { ./target/debug/previewd --config deploy/local.toml "$@"; }
echo "==> previewd explain --repo acme/shop --branch feature/login --diff production"
pd explain --repo acme/shop --branch feature/login --diff production
echo
echo "==> previewd render --repo acme/shop --branch feature/login  (first lines)"
pd render --repo acme/shop --branch feature/login 2>/dev/null | head -n 20
echo "..."
echo
echo "Provisioning (webhooks, CloudFormation, Route53 against the local AWS emulator) is not built yet."
