-- wrk reporter: prints one machine-readable line at the end of a run, so the
-- harness does not depend on wrk's human-readable units (us/ms/s, k/M).
-- Latencies are in microseconds, duration in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKSTATS requests=%d duration_us=%d bytes=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
