-- tests/support/fleet_worker.lua: a worker process of the fleet specs.
--
--   agenthost tests/support/fleet_worker.lua URL CONCURRENCY LEASE STEP_MS [NAME]
--
-- Serves the fleet NAME ("chaos" by default) with the handler "chaos": 3
-- steps, each of which first records its execution in the side table
-- chaos_exec (the run, the step, the claim's token, this process's pid,
-- the database's clock) in a statement of its own, then waits about
-- STEP_MS milliseconds and returns the step's number.  The recording
-- happens before the checkpoint, so an execution whose checkpoint never
-- committed (the worker was killed in between) is seen too.  The run's
-- result is the sum of the three steps, 6.
--
-- Prints "serving PID" once registered; on SIGTERM serve releases its
-- runs and the process exits 143.
local ah = require "agenthost"
local url, conc, lease, step_ms, name = ...
conc, lease, step_ms = tonumber(conc), tonumber(lease), tonumber(step_ms)
local fleet = ah.fleet.open { db = url, name = name or "chaos", pool_size = 6 }
local db = fleet.db

local function chaos(run, input)
  local sum = 0
  for i = 1, 3 do
    sum = sum + run:step("s" .. i, function(key)
      db:exec("INSERT INTO chaos_exec (run_id, step, token, pid, key) " ..
        "VALUES ($1::bigint, $2::integer, $3::bigint, $4::integer, $5::text)",
        run.id, i, run.token, fleet.worker_pid, key)
      ah.task.sleep(step_ms / 1000 * (0.5 + math.random()))
      return i
    end)
  end
  return sum
end

ah.task.spawn(function()
  while not fleet.worker do ah.task.sleep(0.005) end
  fleet.worker_pid = fleet:worker_stats().pid
  io.stdout:write("serving ", fleet.worker_pid, "\n")
  io.stdout:flush()
end)
fleet:serve { concurrency = conc, lease = lease, heartbeat = lease / 5, quiet = true,
              handlers = { chaos = chaos } }
