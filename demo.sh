#!/usr/bin/env bash
# previewd end to end on this machine: the AWS emulator (moto), a fake GitHub, previewd on SQLite, a
# stand-in app (HTTPS, for the readiness probe), and a signed push of branch feature/login. A stand-in CI
# builds the commit's image meanwhile: previewd builds the stack (with no task) alongside it, runs the
# image once it is in the emulator's ECR, and calls the environment ready when its URL answers. Shows the
# stack's events as they happen and the timeline, prints the preview URL (one that has answered) and the
# dashboard address, and keeps running until Ctrl-C (or exits at once with --exit).
set -euo pipefail
cd "$(dirname "$0")"
source deploy/venv.sh
ensure_venv

exit_at_end=false
[ "${1:-}" = "--exit" ] && exit_at_end=true

echo "==> building previewd" >&2
cargo build --quiet --bin previewd --bin fake-github --bin standin-app

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
app_port=$(free_port)
ci_seconds=${PREVIEWD_DEMO_BUILD_SECONDS:-8}
pd_port=${PREVIEWD_DEMO_PORT:-8080}
python -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $pd_port))" 2>/dev/null || pd_port=$(free_port)

echo "==> starting the AWS emulator (moto) on :$moto_port" >&2
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$moto_port/moto-api/"
seed=$(python crates/testkit/moto_seed.py "http://127.0.0.1:$moto_port" "$zone")

echo "==> starting a fake GitHub on :$gh_port with acme/shop:$branch at ${sha:0:7}" >&2
./target/debug/fake-github "127.0.0.1:$gh_port" "acme/shop:$branch:$sha" >"$work/github.log" 2>&1 & pids+=($!)

echo "==> starting a stand-in app on :$app_port (HTTPS for *.$zone, its own CA)" >&2
./target/debug/standin-app --zone "$zone" --listen "127.0.0.1:$app_port" --ca-out "$work/ca.pem" >"$work/app.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/ca.pem" ] && break; python -c 'import time; time.sleep(0.1)'; done

python - "$seed" "$work" "$zone" "$gh_port" "$secret" "$pd_port" "$app_port" <<'PY'
import json, os, string, sys
seed, work, zone, gh_port, secret, pd_port, app_port = json.loads(sys.argv[1]), *sys.argv[2:]
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
    # Wait for the commit's image in the emulator's ECR (the webapp blueprint's default repository,
    # 123456789012.dkr.ecr.us-east-1.amazonaws.com/webapp), and call it ready when the URL answers: the
    # name resolves nowhere on this machine, so the probe connects to the stand-in app, trusting its CA.
    ready="\n".join([
        "artifact.wait = true",
        "readiness.probe = true",
        f'readiness.connect_to = "127.0.0.1:{app_port}"',
        f'readiness.ca_file = "{os.path.abspath(work)}/ca.pem"',
    ]),
    extra="",
))
PY

echo "==> starting previewd on :$pd_port" >&2
AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo \
  AWS_EC2_METADATA_DISABLED=true PREVIEWD_LISTEN="127.0.0.1:$pd_port" RUST_LOG="${RUST_LOG:-warn}" \
  ./target/debug/previewd --config "$work/previewd.toml" serve >"$work/previewd.out" 2>"$work/previewd.log" & pids+=($!)
wait_http "http://127.0.0.1:$pd_port/healthz"

echo "==> GitHub: push $branch at ${sha:0:7} (signed webhook)" >&2
python - "$pd_port" "$secret" "$branch" "$sha" "http://127.0.0.1:$moto_port" "$ci_seconds" "$app_port" <<'PY'
import hashlib, hmac, json, sys, time, urllib.request
import boto3
port, secret, branch, sha, moto, ci_seconds, app_port = sys.argv[1:]

def deliver(event, payload):
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": f"demo-{time.time()}",
        "X-Hub-Signature-256": sig})
    return urllib.request.urlopen(req).status

push = json.load(open("tests/fixtures/github/push.json"))
push.update({"ref": f"refs/heads/{branch}", "after": sha, "before": "0" * 40})
print(f"    previewd answered {deliver('push', push)}")
pushed_at = time.time()

aws = dict(endpoint_url=moto, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo")
cfn, ecr = boto3.client("cloudformation", **aws), boto3.client("ecr", **aws)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
               "digest": "sha256:" + hashlib.sha256(sha.encode()).hexdigest()}, "layers": []})

def ci_done():
    # The stand-in CI: its build ends, it pushes the image and GitHub says the workflow run completed.
    ecr.create_repository(repositoryName="webapp")
    ecr.put_image(repositoryName="webapp", imageTag=sha, imageManifest=manifest)
    run = json.load(open("tests/fixtures/github/workflow_run.json"))
    run["repository"]["full_name"] = "acme/shop"
    run["workflow_run"]["head_sha"] = sha
    print(f"    {time.strftime('%H:%M:%S')}  CI: build done after {ci_seconds} s, image webapp:{sha[:7]} pushed to ECR; "
          f"workflow_run webhook: {deliver('workflow_run', run)}")

seen, env, built = set(), None, False
deadline = time.time() + 120
while time.time() < deadline:
    if not built and time.time() - pushed_at >= float(ci_seconds):
        ci_done()
        built = True
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
    waiting = (env.get("waiting_for") or {}).get("what")
    if waiting and waiting not in seen:
        seen.add(waiting)
        print(f"    {time.strftime('%H:%M:%S')}  previewd: {env['status']}, waiting for {waiting}")
    time.sleep(0.5)
env = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/environments/{env['id']}"))
print()
def since_push(at):
    if not at or not env["timeline"]["pushed_at"]:
        return "—"
    from datetime import datetime
    t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    return f"+{(t(at) - t(env['timeline']['pushed_at'])).total_seconds():.0f} s"
if env.get("timeline"):
    tl = env["timeline"]
    print(f"    timeline:  pushed {tl['pushed_at']}; image found {since_push(tl['artifact_at'])}, "
          f"infrastructure complete {since_push(tl['infrastructure_at'])}, URL answered {since_push(tl['answered_at'])}, "
          f"ready {since_push(tl['ready_at'])}")
print(f"    status:    {env['status']}" + (f"  ({env['last_error']})" if env["last_error"] else ""))
print(f"    stack:     {env['stack_name']}")
print(f"    preview:   {env['url']}  (it answered; on this machine the name resolves nowhere: "
      f"curl --connect-to ::127.0.0.1:{app_port} --cacert .demo/ca.pem {env['url']})")
for step in env.get("seed", []):
    print(f"    seeded:    {step['name']} ({step['kind']}): {step['outcome']}: {step['detail']}")
print(f"    dashboard: http://127.0.0.1:{port}/")
sys.exit(0 if env["status"] == "ready" else 1)
PY

if $exit_at_end; then exit 0; fi
echo
echo "previewd is running (logs in $work/). Press Ctrl-C to stop."
wait
