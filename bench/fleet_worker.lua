-- bench/fleet_worker.lua: one worker of agenthost's fleet for bench/fleet.
--
--   agenthost bench/fleet_worker.lua URL CONCURRENCY STEP_MS [LEASE]
--
-- Serves the kind "bench" of the fleet "bench": a run is 3 checkpointed
-- steps (run:step), each waiting STEP_MS milliseconds and returning a
-- number; the same workload as bench/peers/fleet_dbos.mjs and
-- fleet_pgboss.mjs.  Prints "ready cpu=S" once serving and "cpu=S" (the
-- process's CPU seconds, user + system) when SIGTERM stops it.  A run whose
-- input carries t0 (ah.clock() in ms: the machine's monotonic clock, the
-- one the peers' process.hrtime reads) records now - t0, taken as the
-- handler starts, into bench_pickup.
local ah = require "agenthost"
local url, conc, step_ms, lease = ...
conc, step_ms, lease = tonumber(conc), tonumber(step_ms), tonumber(lease or "10")
if not (url and conc and step_ms) then
  io.stderr:write("usage: agenthost bench/fleet_worker.lua URL CONCURRENCY STEP_MS [LEASE]\n")
  os.exit(2)
end
local fleet = ah.fleet.open { db = url, name = "bench", pool_size = 8 }
local wait = step_ms / 1000
local function step(i)
  ah.task.sleep(wait)
  return i
end
local function bench(run, input)
  if input and input.t0 then
    local ms = ah.clock() * 1000 - input.t0
    fleet.db:exec("INSERT INTO bench_pickup (system, ms) VALUES ('agenthost', $1::float8)", ms)
  end
  local sum = 0
  for i = 1, 3 do sum = sum + run:step("step" .. i, step, i) end
  return sum
end
ah.task.spawn(function()
  -- "ready" once the worker is registered (its row is there).
  while not fleet.worker do ah.task.sleep(0.005) end
  io.stdout:write(string.format("ready cpu=%.3f\n", ah.rusage().cpu))
  io.stdout:flush()
end)
local ok, err = pcall(fleet.serve, fleet, { concurrency = conc, lease = lease,
  handlers = { bench = bench } })
io.stdout:write(string.format("cpu=%.3f\n", ah.rusage().cpu))
io.stdout:flush()
if not ok and not ah.error.is(err, "cancelled") then error(err, 0) end
