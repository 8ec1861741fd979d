-- wrk script: GET the URL given to wrk with `Authorization: $SYLPHX_AUTH`,
-- and print one machine-readable RESULT line (latencies in ms).
local auth = os.getenv("SYLPHX_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
wrk.headers["Accept"] = "application/json"

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.2f rps=%.1f p50_ms=%.3f p99_ms=%.3f bytes=%d errors=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.bytes,
    e.connect + e.read + e.write + e.timeout + e.status))
end
