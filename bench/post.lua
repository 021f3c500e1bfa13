-- wrk script: POST with an Authorization header (and an optional JSON body), then print the
-- run's numbers as one JSON line after the marker "BENCH-JSON " for bench/loadgen.py to parse.
-- Values come from the environment so one static script serves every scenario:
--   BENCH_AUTHORIZATION  full header value, e.g. "Bearer eyJ..." (omitted when empty)
--   BENCH_BODY           request body (empty: no body, Content-Length: 0)
--   BENCH_CONTENT_TYPE   content type of the body (default application/json)
-- The request is static (no request() function), so wrk formats it once: the cheapest client.

wrk.method = "POST"

local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local body = os.getenv("BENCH_BODY")
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
else
  wrk.headers["Content-Length"] = "0"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %.1f, "p90": %.1f, "p99": %.1f, "max": %.1f, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
