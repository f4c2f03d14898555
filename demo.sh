#!/usr/bin/env bash
# previewd end to end on this machine: the AWS emulator (moto), a fake GitHub, previewd on SQLite, and a
# signed push of branch feature/login. Shows the stack's events as they happen, then prints the preview
# URL and the dashboard address, and keeps running until Ctrl-C (or exits at once with --exit).
set -euo pipefail
cd "$(dirname "$0")"
source deploy/venv.sh
ensure_venv

exit_at_end=false
[ "${1:-}" = "--exit" ] && exit_at_end=true

echo "==> building previewd" >&2
cargo build --quiet --bin previewd --bin fake-github

work=.demo
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; python -c 'import time; time.sleep(0.1)'; done; echo "timed out waiting for $1" >&2; return 1; }
# curl may be missing on a fresh machine: a Python stand-in for the two calls this script makes.
command -v curl >/dev/null || curl() { python - "$@" <<'PY'
import sys, urllib.request
url = sys.argv[-1]
try:
    with urllib.request.urlopen(url, timeout=2) as r: sys.stdout.write(r.read().decode())
except Exception: sys.exit(7)
PY
}

zone=preview.example.com
branch=feature/login
sha=$(python -c 'import hashlib; print(hashlib.sha1(b"previewd demo").hexdigest())')
secret=demo-webhook-secret
moto_port=$(free_port)
gh_port=$(free_port)
pd_port=${PREVIEWD_DEMO_PORT:-8080}
python -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $pd_port))" 2>/dev/null || pd_port=$(free_port)

echo "==> starting the AWS emulator (moto) on :$moto_port" >&2
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$moto_port/moto-api/"
seed=$(python crates/testkit/moto_seed.py "http://127.0.0.1:$moto_port" "$zone")

echo "==> starting a fake GitHub on :$gh_port with acme/shop:$branch at ${sha:0:7}" >&2
./target/debug/fake-github "127.0.0.1:$gh_port" "acme/shop:$branch:$sha" >"$work/github.log" 2>&1 & pids+=($!)

python - "$seed" "$work" "$zone" "$gh_port" "$secret" "$pd_port" <<'PY'
import json, string, sys
seed, work, zone, gh_port, secret, pd_port = json.loads(sys.argv[1]), *sys.argv[2:]
# The emulator configuration the tests use too, with the demo's values and keys.
template = string.Template(open("tests/config/emulator.toml").read())
open(f"{work}/previewd.toml", "w").write("# Written by demo.sh for the local AWS emulator.\n" + template.substitute(
    owner="local-demo",
    zone=zone,
    database_url=f"sqlite://{work}/previewd.db",
    secret=secret,
    top=f'public_url = "http://127.0.0.1:{pd_port}"',
    github_api=f"http://127.0.0.1:{gh_port}",
    # The fake GitHub takes any token; with one, previewd reports deployments and pull-request comments.
    github='token = "demo-token"',
    reconciler='poll_min = "500ms"\npoll_max = "2s"',
    repo="acme/shop",
    vpc_id=seed["vpc_id"],
    subnet_ids=", ".join(json.dumps(s) for s in seed["subnet_ids"]),
    certificate_arn=seed["zones"][zone]["certificate_arn"],
    ready="artifact.wait = false\nreadiness.probe = false",
    extra="",
))
PY

echo "==> starting previewd on :$pd_port" >&2
AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo \
  AWS_EC2_METADATA_DISABLED=true PREVIEWD_LISTEN="127.0.0.1:$pd_port" RUST_LOG="${RUST_LOG:-warn}" \
  ./target/debug/previewd --config "$work/previewd.toml" serve >"$work/previewd.out" 2>"$work/previewd.log" & pids+=($!)
wait_http "http://127.0.0.1:$pd_port/healthz"

echo "==> GitHub: push $branch at ${sha:0:7} (signed webhook)" >&2
python - "$pd_port" "$secret" "$branch" "$sha" "http://127.0.0.1:$moto_port" <<'PY'
import hashlib, hmac, json, sys, time, urllib.request
import boto3
port, secret, branch, sha, moto = sys.argv[1:]
push = json.load(open("tests/fixtures/github/push.json"))
push.update({"ref": f"refs/heads/{branch}", "after": sha, "before": "0" * 40})
body = json.dumps(push).encode()
sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
    "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": f"demo-{time.time()}", "X-Hub-Signature-256": sig})
print(f"    previewd answered {urllib.request.urlopen(req).status}")

cfn = boto3.client("cloudformation", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo")
seen, env = set(), None
deadline = time.time() + 120
while time.time() < deadline:
    env = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/environments"))[0]
    for stack in (env["stack_name"], None):
        names = [s["StackName"] for s in cfn.list_stacks()["StackSummaries"]] if stack is None else [stack]
        for name in names:
            try:
                events = cfn.describe_stack_events(StackName=name)["StackEvents"]
            except Exception:
                continue
            for e in reversed(events):
                if e["EventId"] not in seen:
                    seen.add(e["EventId"])
                    print(f"    {e['Timestamp']:%H:%M:%S}  {e['StackName'][:44]:44}  {e['LogicalResourceId'][:26]:26}  {e['ResourceStatus']}")
    if env["status"] in ("ready", "failed"):
        break
    time.sleep(0.5)
print()
print(f"    status:    {env['status']}" + (f"  ({env['last_error']})" if env["last_error"] else ""))
print(f"    stack:     {env['stack_name']}")
print(f"    preview:   {env['url']}")
for step in env.get("seed", []):
    print(f"    seeded:    {step['name']} ({step['kind']}): {step['outcome']}: {step['detail']}")
print(f"    dashboard: http://127.0.0.1:{port}/")
sys.exit(0 if env["status"] == "ready" else 1)
PY

if $exit_at_end; then exit 0; fi
echo
echo "previewd is running (logs in $work/). Press Ctrl-C to stop."
wait
