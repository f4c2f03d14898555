-- wrk script for bench/intake.sh: POSTs the signed push bodies of INTAKE_BODIES (a Lua table written by
-- bodies.py: wrk does no HMAC) round-robin to the URL's path, each with a delivery id of its own
-- (INTAKE_RUN, thread, counter): previewd records a delivery once, and answers a repeat 200 unrecorded.
-- Counts answers by status; `done` prints one line the script parses:
--   intake-wrk requests=N 2xx=N 202=N non2xx=N errors=N rps=X p50_ms=X p99_ms=X statuses=202:N,503:N

local bodies = dofile(os.getenv("INTAKE_BODIES"))
local run = os.getenv("INTAKE_RUN") or "run"
local threads = {}
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- Per thread (each has its own Lua state): a counter and the answers seen, by status.
local counter = 0
statuses = {}

function init(args)
  -- Threads start at different bodies, so they do not push the same branch in step.
  counter = (tid - 1) * 7
end

function request()
  counter = counter + 1
  local b = bodies[(counter % #bodies) + 1]
  return wrk.format("POST", wrk.path, {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = string.format("%s-%d-%d", run, tid, counter),
    ["X-GitHub-Hook-ID"] = "1",
    ["X-Hub-Signature-256"] = b.signature,
  }, b.body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      all[status] = (all[status] or 0) + n
    end
  end
  local ok, non2xx, list = 0, 0, {}
  for status, n in pairs(all) do
    if status >= 200 and status < 300 then ok = ok + n else non2xx = non2xx + n end
    table.insert(list, status .. ":" .. n)
  end
  table.sort(list)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "intake-wrk requests=%d 2xx=%d 202=%d non2xx=%d errors=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f statuses=%s\n",
    summary.requests, ok, all[202] or 0, non2xx, e.connect + e.read + e.write + e.timeout, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(list, ",")))
end
