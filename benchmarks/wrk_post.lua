-- wrk script for bench_server.py: POSTs one prepared body on every request and prints the
-- run's numbers as one JSON line at the end.
-- env: AIARCH_BENCH_PATH (URL path), AIARCH_BENCH_BODY (file with the body),
--      AIARCH_BENCH_HLEN (Inference-Header-Content-Length, optional)
local f = assert(io.open(os.getenv("AIARCH_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.path = os.getenv("AIARCH_BENCH_PATH")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local hlen = os.getenv("AIARCH_BENCH_HLEN")
if hlen ~= nil and hlen ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = hlen
  wrk.headers["Content-Type"] = "application/octet-stream"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
