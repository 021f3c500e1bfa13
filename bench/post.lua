-- wrk script: POST with an Authorization header (and an optional JSON body and extra headers),
-- then print the run's numbers as one JSON line after the marker "BENCH-JSON " for
-- bench/loadgen.py to parse. Values come from the environment so one script serves every scenario:
--   BENCH_AUTHORIZATION  full header value, e.g. "Bearer eyJ..." (omitted when empty)
--   BENCH_BODY           request body (empty: no body)
--   BENCH_CONTENT_TYPE   content type of the body (default application/json)
--   BENCH_HEADERS        more headers, one "Name: value" per line
--   BENCH_POOL_FILE      a file of Authorization values, one per line: each request takes the
--                        next one (R2's JWT pool); BENCH_AUTHORIZATION is then ignored
--   BENCH_POOL_OFFSET    0-based pool index of the first request (runs continue the rotation)
--   BENCH_THREADS        wrk's -t: thread i sends indices offset+i, offset+i+threads, ...
--   BENCH_THINK_MS       mean think time in ms (empty or 0: none). Each connection then waits,
--                        before each of its requests, a time drawn from an exponential
--                        distribution of that mean, capped at 10x the mean (THINK_CAP in
--                        bench/loadgen.py) (R4's paced load).
--                        wrk waits whole milliseconds, so each draw is rounded to the nearest
--                        one (the mean moves by less than 0.5 % from a 3 ms mean on). wrk
--                        starts a request's latency clock after the wait: think time is never
--                        part of the latencies. When it is empty or 0, no delay() function is
--                        defined at all, so wrk asks for none and runs exactly as before.
-- Without a pool the request is static (no request() function), so wrk formats it once: the
-- cheapest client. With a pool every request is formatted in init() (one string per pool entry),
-- so request() is a table lookup.

wrk.method = "POST"

local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local extra = os.getenv("BENCH_HEADERS") or ""
for line in string.gmatch(extra, "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.-)%s*$")
  if name ~= nil then
    wrk.headers[name] = value
  end
end

local body = os.getenv("BENCH_BODY")
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
else
  wrk.headers["Content-Length"] = "0"
end

local pool_file = os.getenv("BENCH_POOL_FILE")
local use_pool = pool_file ~= nil and pool_file ~= ""

local think_ms = tonumber(os.getenv("BENCH_THINK_MS") or "") or 0
if think_ms < 0 or think_ms ~= think_ms then
  error("BENCH_THINK_MS must be a number of milliseconds >= 0, not " .. os.getenv("BENCH_THINK_MS"))
end
local paced = think_ms > 0

-- Main state: the threads, so done() can read how many requests each one formatted.
threads = {}
function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

-- Thread state.
sent = 0
local prepared = {}
local count = 0
local position = 1
local stride = 1

function init(args)
  if paced then
    -- Every wrk thread has its own Lua state, hence its own generator (shared by the thread's
    -- connections): seed each thread differently, and each run differently, so no two
    -- threads or runs draw the same sequence of think times.
    math.randomseed(os.time() * 1000 + (thread_index or 0))
  end
  if not use_pool then
    return
  end
  for value in io.lines(pool_file) do
    if value ~= "" then
      wrk.headers["Authorization"] = value
      count = count + 1
      prepared[count] = wrk.format()
    end
  end
  if count == 0 then
    error("BENCH_POOL_FILE " .. pool_file .. " holds no Authorization value")
  end
  stride = tonumber(os.getenv("BENCH_THREADS") or "1")
  local offset = tonumber(os.getenv("BENCH_POOL_OFFSET") or "0")
  position = (offset + (thread_index or 0)) % count + 1
end

if use_pool then
  function request()
    local formatted = prepared[position]
    position = (position - 1 + stride) % count + 1
    sent = sent + 1
    return formatted
  end
end

if paced then
  local think_cap = 10 * think_ms
  -- wrk calls delay() before each request of a connection (its first one included) and waits
  -- that many whole milliseconds on that connection only. Exponential think times have no
  -- memory, so connections that think independently send like independent Poisson sources, not
  -- in lock-step; the cap bounds how long one connection can stay idle.
  function delay()
    local pause = -think_ms * math.log(1 - math.random())
    if pause > think_cap then
      pause = think_cap
    end
    return math.floor(pause + 0.5)
  end
end

function done(summary, latency, requests)
  local formatted = 0
  for _, thread in ipairs(threads) do
    formatted = formatted + (thread:get("sent") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "sent": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %.1f, "p90": %.1f, "p99": %.1f, "max": %.1f, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, formatted,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
