-- metrics: the host's own runtime metrics, for an agent that watches the
-- system it runs on: tasks, HTTP transfers in flight and waiting to start,
-- the memory store's queue, loop lag, CPU time and peak memory; and, while
-- tracing is loaded, its spans and the OTLP exporter's queue, exported and
-- dropped spans (docs/observability.md).

local ah = require "agenthost"
local task = ah.task

local M = {
  name = "metrics",
  description = "Read this host's runtime metrics: tasks, in-flight HTTP requests, " ..
    "database write queue, event-loop lag, CPU seconds, peak memory and tracing counters.",
  parameters = { type = "object", properties = {}, additionalProperties = false },
  timeout = 5,
}

-- How late a 1 ms sleep wakes up now: the loop's current lag.
local function loop_lag_ms()
  local t0 = ah.clock()
  task.sleep(0.001)
  return math.max(0, (ah.clock() - t0 - 0.001) * 1000)
end

function M.run(_, ctx)
  local s = task.stats()
  local ru = ah.rusage() or {}
  local hs = ah.http.stats()
  local out = {
    tasks = { live = s.live, ready = s.ready, sleeping = s.sleeping, spawned = s.spawned },
    http = { in_flight = hs.active, queued = hs.queued },
    loop_lag_ms = math.floor(loop_lag_ms() * 1000 + 0.5) / 1000,
    cpu_seconds = ru.cpu and math.floor(ru.cpu * 1000 + 0.5) / 1000,
    max_rss_mb = ru.maxrss_kb and math.floor(ru.maxrss_kb / 1024 + 0.5),
  }
  -- Tracing is reported only where it was loaded: the tool never loads it.
  local trace = package.loaded["agenthost.trace"]
  if trace then
    local ts = trace.stats()
    out.trace = { on = ts.on, spans_started = ts.started, spans_finished = ts.finished,
                  spans_stored = ts.stored }
    local ex = ts.export
    if ex then
      out.trace.export = { queued = ex.queued, exported = ex.exported, dropped = ex.dropped,
                           dropped_queue_full = ex.dropped_queue_full, rejected = ex.rejected,
                           retries = ex.retries, failed_batches = ex.failed_batches }
    end
  end
  local db = ctx and ctx.memory and ctx.memory.db
  if db then
    local st = db:stats()
    out.store = { queued = st.queued, transactions = st.transactions, failed = st.failed }
  end
  return out
end

return M
