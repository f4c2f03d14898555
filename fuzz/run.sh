#!/usr/bin/env bash
# Fuzzes each target in turn with cargo-fuzz (libFuzzer) for N seconds, 60 by default:
#
#   fuzz/run.sh          # a quick pass, a few minutes in all
#   fuzz/run.sh 3600     # the longer run: an hour per target
#
# Each target starts from its seeds in fuzz/corpus/<target>/; what it finds interesting grows in
# fuzz/work/<target>/ (not committed) and is reused by the next run. On a crash the crashing input is
# copied into fuzz/regressions/<target>/, which `cargo test` (fuzz/checks/tests/replay.rs) replays from
# then on, and the script exits non-zero. Installs cargo-fuzz (pinned) when it is missing; libfuzzer-sys
# builds libFuzzer with the system's C++ compiler.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir="$(pwd)"

seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*)
    echo "usage: fuzz/run.sh [seconds-per-target]" >&2
    exit 2
    ;;
esac

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# cargo-fuzz builds with nightly-only flags; this machine has the stable toolchain only.
export RUSTC_BOOTSTRAP=1

for target in webhook signature branch_names settings; do
  mkdir -p "work/$target" "artifacts/$target" "regressions/$target"
  # libFuzzer names each crash after its content; this marks which files in artifacts/ are new.
  started="$(mktemp)"
  echo "==> fuzzing $target for ${seconds}s" >&2
  # No sanitizer: previewd's crates forbid unsafe code, so the bug to find is a panic (or a hang).
  # Debug assertions on, so an arithmetic overflow panics too. libFuzzer reads every corpus folder given
  # (past crashes included, so one that is back shows at once) and writes new inputs into the first.
  if cargo fuzz run "$target" -s none --debug-assertions \
    "$fuzz_dir/work/$target" "$fuzz_dir/corpus/$target" "$fuzz_dir/regressions/$target" \
    -- -max_total_time="$seconds"; then
    rm -f "$started"
    continue
  fi
  saved=()
  while IFS= read -r -d '' artifact; do
    cp "$artifact" "regressions/$target/"
    saved+=("fuzz/regressions/$target/$(basename "$artifact")")
  done < <(find "artifacts/$target" -type f -newer "$started" -print0)
  rm -f "$started"
  if [ "${#saved[@]}" -eq 0 ]; then
    echo "error: cargo fuzz run $target failed without a crashing input (see the build output above)" >&2
  else
    echo "error: $target crashed; the input is saved for the test suite to replay:" >&2
    printf '  %s\n' "${saved[@]}" >&2
    echo "Reproduce with: cargo test -p previewd-fuzz-checks --test replay" >&2
  fi
  exit 1
done
echo "==> no crash in ${seconds}s per target" >&2
