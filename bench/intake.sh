#!/usr/bin/env bash
# Webhook intake: signed GitHub `push` deliveries, each with its own delivery id, through previewd (release
# build; SQLite, then PostgreSQL when one answers on 127.0.0.1:5432) and, side by side, through Debian's
# `webhook` (adnanh/webhook: checks the same signature, runs /bin/true, records nothing), with wrk at 1, 50
# and 500 connections. Prints one line per run and the previewd/webhook throughput ratio at each; asserts
# nothing about time. Every delivery previewd answered 202 must be in its deliveries table: the recorded
# count is printed beside the accepted one, and the script fails if any is missing. Installs wrk and
# webhook (Debian) if missing. Rerun with
#   INTAKE_SECONDS=10 INTAKE_CONNECTIONS="1 50 500" INTAKE_TARGETS="webhook previewd" \
#     INTAKE_BACKENDS="sqlite postgres" bench/intake.sh
# INTAKE_BIN=PATH measures another build of previewd (an earlier commit's, say) instead of this one's.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${INTAKE_SECONDS:-10}"
connections="${INTAKE_CONNECTIONS:-1 50 500}"
targets="${INTAKE_TARGETS:-webhook previewd}"
# Few branches, several commits each: the environments table stays small, a branch's pushes are new commits.
branches=50
commits=4

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v webhook >/dev/null || need+=(webhook)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]} (Debian)" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q "${need[@]}" >&2
fi

bin="${INTAKE_BIN:-target/release/previewd}"
if [[ " $targets " == *" previewd "* ]] && [ -z "${INTAKE_BIN:-}" ]; then
  echo "==> cargo build --release -p previewd" >&2
  cargo build --release -p previewd --locked >&2
fi

work="$(mktemp -d -t previewd-intake.XXXXXX)"
server="" # the one server running (webhook or previewd), stopped on exit
client="" # wrk while it runs
silent="" # the upstream that never answers
pg_db=""
lost=0
cleanup() {
  local rc=$?
  [ -z "$client" ] || stop "$client"
  [ -z "$server" ] || stop "$server"
  [ -z "$silent" ] || stop "$silent"
  [ -z "$pg_db" ] || psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null || true
  if [ "$rc" = 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# SIGTERM, then SIGKILL if it is still there after 15 s (previewd lets running reconciles finish first).
stop() {
  if kill "$1" 2>/dev/null; then
    for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
  fi
  wait "$1" 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The bodies and their signatures, computed once: wrk only picks one and stamps a fresh delivery id.
secret="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
python3 bench/intake/bodies.py tests/fixtures/github/push.json "$secret" "$branches" "$commits" "$work/bodies.lua"

# CPU time the server has used so far, its reaped children's included (webhook runs a command per
# request), in clock ticks.
tick="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$server/stat"; }

# One wrk run; prints its table line. Accepted: 202 from previewd (recorded), any 2xx from webhook.
# cpu_us: the server's CPU time (user + system) per accepted request, less noisy than requests/s on a
# machine the load generator shares.
declare -A rps
run() {
  local target=$1 backend=$2 c=$3 url=$4 tag="$2-c$3"
  [ "$backend" != - ] || tag="$target-c$c" # delivery ids start with it
  local threads=$((c < 2 ? c : 2)) # wrk wants at least one connection per thread
  # A 30 s timeout: a slow answer is measured, not dropped from the latencies as wrk does past 2 s. In the
  # background, waited for: wrk reports and exits 0 on Ctrl-C, and bash would then go on to the next run.
  local cpu_before; cpu_before="$(cpu_ticks)"
  INTAKE_BODIES="$work/bodies.lua" INTAKE_RUN="$tag" \
    wrk -t"$threads" -c"$c" -d"${secs}s" --timeout 30s --latency -s bench/intake/push.lua "$url" \
    >"$work/wrk-$target-$tag.txt" 2>&1 &
  client=$!
  wait "$client" || { cat "$work/wrk-$target-$tag.txt" >&2; exit 1; }
  client=""
  local cpu_used=$(($(cpu_ticks) - cpu_before))
  local line; line="$(grep '^intake-wrk ' "$work/wrk-$target-$tag.txt")"
  local -A f
  for kv in ${line#intake-wrk }; do f[${kv%%=*}]=${kv#*=}; done
  local accepted recorded="-" missing="-"
  if [ "$target" = previewd ]; then
    accepted=${f[202]}
    recorded="$(count "$backend" "$tag")"
    missing=$((recorded < accepted ? accepted - recorded : 0))
    [ "$missing" = 0 ] || lost=1
  else
    accepted=${f[2xx]}
  fi
  rps[$target/$backend/$c]=${f[rps]}
  local cpu_us; cpu_us="$(python3 -c "print(f'{$cpu_used * 1e6 / $tick / max($accepted, 1):.0f}')")"
  printf '%-9s %-8s %6s %10s %9s %9s %7s %7s %9s %9s %8s %7s  %s\n' "$target" "$backend" "$c" "${f[rps]}" \
    "${f[p50_ms]}" "${f[p99_ms]}" "${f[non2xx]}" "${f[errors]}" "$accepted" "$recorded" "$missing" "$cpu_us" \
    "${f[statuses]}"
}

# Deliveries previewd recorded for one run (their ids start with the run's tag).
db_url=""
count() {
  case $1 in
    sqlite) python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
print(db.execute("SELECT COUNT(*) FROM deliveries WHERE id LIKE ?", (sys.argv[2] + "-%",)).fetchone()[0])' \
      "${db_url#sqlite://}" "$2" ;;
    postgres) psql -h 127.0.0.1 -U postgres -d "$pg_db" -Atc "SELECT COUNT(*) FROM deliveries WHERE id LIKE '$2-%'" ;;
  esac
}

printf '%-9s %-8s %6s %10s %9s %9s %7s %7s %9s %9s %8s %7s  %s\n' target backend conns req/s p50_ms p99_ms \
  non2xx errors accepted recorded missing cpu_us statuses

if [[ " $targets " == *" webhook "* ]]; then
  port="$(free_port)"
  # -template puts the secret in from the environment: one secret, made fresh for each run of this script.
  INTAKE_SECRET="$secret" webhook -template -hooks bench/intake/hooks.json -ip 127.0.0.1 -port "$port" \
    >"$work/webhook.log" 2>&1 &
  server=$!
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    if ! kill -0 "$server" 2>/dev/null || [ "$i" = 100 ]; then
      echo "webhook did not come up:" >&2; tail -20 "$work/webhook.log" >&2; exit 1
    fi
    sleep 0.1
  done
  for c in $connections; do run webhook - "$c" "http://127.0.0.1:$port/hooks/github"; done
  stop "$server"
  server=""
fi

if [[ " $targets " == *" previewd "* ]]; then
  # Accepts connections (the kernel's backlog does) and never reads or answers.
  python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True); time.sleep(1e9)' >"$work/silent.port" &
  silent=$!
  for _ in $(seq 50); do [ -s "$work/silent.port" ] && break; sleep 0.1; done
  silent_port="$(cat "$work/silent.port")"
  backends=()
  [[ " ${INTAKE_BACKENDS:-sqlite postgres} " != *" sqlite "* ]] || backends+=(sqlite)
  if [[ " ${INTAKE_BACKENDS:-sqlite postgres} " == *" postgres "* ]]; then
    if pg_isready -q -h 127.0.0.1; then
      backends+=(postgres)
    else
      echo "==> PostgreSQL skipped: nothing answers on 127.0.0.1:5432 (pg_isready)" >&2
    fi
  fi
  for backend in "${backends[@]}"; do
    if [ "$backend" = sqlite ]; then
      db_url="sqlite://$work/previewd.db"
    else
      pg_db="previewd_intake_$$"
      psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $pg_db" >/dev/null
      db_url="postgres://postgres@127.0.0.1:5432/$pg_db"
    fi
    port="$(free_port)"
    # Every recorded push makes a reconcile due. GitHub and AWS are an address that takes connections and
    # never answers (as a slow upstream would hold a worker): the one worker waits out GitHub's 2 s timeout
    # and the reconciler writes a few rows a second, not a busy loop of instant failures writing hundreds.
    # No resync or reaper pass.
    cat >"$work/previewd-$backend.toml" <<EOF
owner = "bench"
dns_zone = "preview.example.com"
listen = "127.0.0.1:$port"
database_url = "$db_url"
webhook_secrets = ["$secret"]
stacks_dir = "$PWD/stacks"

[github]
api_url = "http://127.0.0.1:$silent_port"
timeout = "2s"

[reconciler]
workers = 1
resync_every = "24h"

[reaper]
schedule = "0 0 0 1 1 *"

[repos."acme/shop"]
blueprint = "webapp"
EOF
    PREVIEWD_CONFIG="$work/previewd-$backend.toml" AWS_ENDPOINT_URL=http://127.0.0.1:$silent_port AWS_REGION=us-east-1 \
      AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_EC2_METADATA_DISABLED=true \
      "$bin" serve >/dev/null 2>"$work/previewd-$backend.log" &
    server=$!
    for i in $(seq 600); do
      curl -fso /dev/null "http://127.0.0.1:$port/healthz" && break
      if ! kill -0 "$server" 2>/dev/null || [ "$i" = 600 ]; then
        echo "previewd serve ($backend) did not come up:" >&2; tail -20 "$work/previewd-$backend.log" >&2; exit 1
      fi
      sleep 0.1
    done
    for c in $connections; do
      run previewd "$backend" "$c" "http://127.0.0.1:$port/webhooks/github"
      sleep 1 # requests wrk abandoned at its deadline finish before the next run
    done
    stop "$server"
    server=""
    if [ "$backend" = postgres ]; then
      psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $pg_db WITH (FORCE)" >/dev/null
      pg_db=""
    fi
  done
fi

# previewd's throughput over webhook's, at each connection count (where both ran).
echo "# previewd/webhook throughput"
for backend in sqlite postgres; do
  for c in $connections; do
    p="${rps[previewd/$backend/$c]:-}" w="${rps[webhook/-/$c]:-}"
    [ -n "$p" ] && [ -n "$w" ] || continue
    printf 'ratio %-8s %6s %8s\n' "$backend" "$c" "$(python3 -c "print(f'{$p / $w:.3f}' if $w else '-')")"
  done
done

if [ "$lost" != 0 ]; then
  echo "previewd answered 202 for deliveries it did not record (the missing column)" >&2
  exit 1
fi
