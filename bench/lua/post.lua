-- wrk script for bench/e2e.py: POST a fixed JSON body, report one parsable line.
--
--   wrk -t1 -cN -dDs -s bench/lua/post.lua URL -- BODY_FILE [API_KEY]
--
-- BODY_FILE holds the request body (the 2,048-byte Anthropic Messages request);
-- API_KEY, when given, goes in x-api-key. done() prints one line starting with
-- "E2E-RESULT" and then key=value pairs; latencies are in microseconds, and for a
-- streamed response wrk's latency is the time until the terminating chunk.

function init(args)
  local path = args[1]
  local fh = assert(io.open(path, "rb"), "cannot open body file " .. tostring(path))
  wrk.body = fh:read("*a")
  fh:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["anthropic-version"] = "2023-06-01"
  if args[2] ~= nil and args[2] ~= "" then
    wrk.headers["x-api-key"] = args[2]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "E2E-RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d"
      .. " p50=%d p90=%d p99=%d max=%d mean=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
