# Sourced by test.sh and demo.sh: makes ./.venv hold the pinned Python tools (cfn-lint, moto) and puts
# it first on the PATH. Reinstalls only when deploy/requirements-dev.txt changes.
ensure_venv() {
  local root req stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  req="$root/deploy/requirements-dev.txt"
  stamp="$root/.venv/.requirements.sha256"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -x "$root/.venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing Python tools into .venv (cfn-lint, moto)" >&2
    python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
  fi
  export PATH="$root/.venv/bin:$PATH"
}
