-- scripts/examples/fleet_demo.lua: durable runs shared by worker processes,
-- one of them killed on the way (`make fleet-demo`).
--
--   agenthost scripts/examples/fleet_demo.lua [RUNS]
--       starts a throwaway PostgreSQL, 3 workers and a submitter, kills a
--       worker with SIGKILL while it holds runs, and shows every run
--       finishing on the others (RUNS: 300)
--   agenthost scripts/examples/fleet_demo.lua worker URL CONCURRENCY LEASE STEP_MS [NAME]
--       one worker: what the demo starts three times, and what runs on
--       each machine of a real deployment (only the URL changes)
--
-- The handler "triage" has 3 checkpointed steps.  Each step first records
-- its execution in the table step_log (run, step, the claim's token, the
-- worker's pid), then works for about STEP_MS milliseconds, then returns;
-- so the demo can count how often each step really ran.  A step whose
-- checkpoint committed never runs again; the one in flight when its worker
-- died runs again on the worker that resumes the run, with the same
-- idempotency key (run.id .. ":" .. name), which the step could give to
-- whatever it calls to make the repeat harmless.
local ah = require "agenthost"
local task = ah.task

local args = { ... }

-- ---- one worker ------------------------------------------------------------------

local function worker(url, conc, lease, step_ms, name)
  local fleet = ah.fleet.open { db = url, name = name or "demo", pool_size = 6 }
  local db = fleet.db
  local pid
  local function triage(run, input)
    local total = 0
    for i = 1, 3 do
      total = total + run:step("s" .. i, function(key)
        db:exec("INSERT INTO step_log (run_id, step, token, pid, key) " ..
          "VALUES ($1::bigint, $2::integer, $3::bigint, $4::integer, $5::text)",
          run.id, i, run.token, pid, key)
        task.sleep(step_ms / 1000 * (0.5 + math.random()))
        return i * (input.weight or 1)
      end)
    end
    return total
  end
  task.spawn(function()
    while not fleet.worker do task.sleep(0.005) end
    pid = fleet:worker_stats().pid
    io.stdout:write("serving ", pid, "\n")
    io.stdout:flush()
  end)
  fleet:serve { concurrency = conc, lease = lease, heartbeat = lease / 5, quiet = true,
                handlers = { triage = triage } }
end

if args[1] == "worker" then
  local url, conc, lease, step_ms, name = args[2], tonumber(args[3]), tonumber(args[4]),
    tonumber(args[5]), args[6]
  if not (url and conc and lease and step_ms) then
    io.stderr:write("usage: fleet_demo.lua worker URL CONCURRENCY LEASE STEP_MS [NAME]\n")
    os.exit(2)
  end
  return worker(url, conc, lease, step_ms, name)
end

-- ---- the demo --------------------------------------------------------------------

local RUNS = tonumber(args[1] or "300")
local LEASE, CONC, STEP_MS = 3, 20, 80
local here = debug.getinfo(1, "S").source:match("^@(.*)$")
local root = here:match("^(.*)/scripts/examples/[^/]*$") or "."
local exe = arg and arg[-1] or "agenthost"

local function say(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n") io.stdout:flush() end

-- The throwaway cluster of the specs (tests/support/pg.lua): initdb in a
-- temporary directory, the server on a free loopback port, removed at the
-- end.  Starting it blocks the loop for a moment, before anything runs.
package.path = root .. "/tests/?.lua;" .. package.path
local srv = require("support.pg").start()
local url = srv.url
say("PostgreSQL on 127.0.0.1:%d (a throwaway cluster in %s)", srv.port, srv.dir)

local workers = {}
local ok, err = pcall(function()
  local fleet = ah.fleet.open { db = url, name = "demo" }
  local db = fleet.db
  db:exec([[CREATE TABLE step_log (run_id bigint, step integer, token bigint, pid integer,
            key text, at timestamptz DEFAULT clock_timestamp())]])
  local function start_worker()
    local p = ah.proc.spawn { cmd = exe, args = { here, "worker", url, tostring(CONC),
      tostring(LEASE), tostring(STEP_MS) }, stderr = "inherit" }
    local line = task.timeout(60, p.read_line, p)
    local w = { p = p, pid = tonumber(line and line:match("^serving (%d+)")) }
    assert(w.pid, "a worker did not start")
    workers[#workers + 1] = w
    return w
  end
  for _ = 1, 3 do start_worker() end
  say("3 workers serving: pids %d, %d, %d (lease %d s, %d runs at once each)",
    workers[1].pid, workers[2].pid, workers[3].pid, LEASE, CONC)

  local t0 = ah.clock()
  local items = {}
  for i = 1, RUNS do items[i] = i end
  local ids = task.map(items, function(i)
    return fleet:submit("triage", { ticket = i, weight = 1 }, { key = "ticket-" .. i })
  end, { limit = 16 })
  say("submitted %d runs of 'triage' (3 checkpointed steps each), keys ticket-1..%d", RUNS, RUNS)

  local victim = workers[2]
  local held
  local deadline = ah.clock() + 120
  repeat
    task.sleep(0.02)
    held = db:query([[SELECT r.id FROM fleet_demo.runs r JOIN fleet_demo.workers w
      ON w.id = r.worker WHERE r.state = 'running' AND w.pid = $1::integer]], victim.pid)
  until #held >= 5 or ah.clock() > deadline
  victim.p:kill("KILL")
  victim.p:wait()
  local t_kill = ah.clock()
  say("killed worker %d with SIGKILL while it held %d runs in flight", victim.pid, #held)

  for _, id in ipairs(ids) do fleet:wait(id, { timeout = 300 }) end
  local t_end = ah.clock()
  local c = db:first([[SELECT
      (SELECT count(*) FROM fleet_demo.runs WHERE state = 'done') AS done,
      (SELECT count(*) FROM step_log) AS executions,
      (SELECT count(*) FROM (SELECT 1 FROM step_log GROUP BY run_id, step HAVING count(*) > 1) d) AS again,
      (SELECT count(*) FROM step_log e JOIN fleet_demo.steps s ON s.run_id = e.run_id
         AND s.name = 's' || e.step WHERE e.token > s.token) AS committed_again]])
  say("all %d runs done after %.1f s (%.1f s after the kill); each has one result", c.done,
    t_end - t0, t_end - t_kill)
  say("%d step executions for %d steps: %d step(s) in flight at the kill ran again on the " ..
    "worker that resumed the run; committed steps run again: %d", c.executions, 3 * RUNS, c.again,
    c.committed_again)
  say("the runs of worker %d were taken back once its lease expired and finished by %s",
    victim.pid, (function()
      local o = {}
      for _, w in ipairs(workers) do if w ~= victim then o[#o + 1] = tostring(w.pid) end end
      return table.concat(o, " and ")
    end)())
  say("")
  say("agenthost fleet status URL --name demo:")
  io.stdout:write(require("agenthost.fleet.cli").render("demo", fleet:report()))
  fleet:close()
end)
for _, w in ipairs(workers) do
  if w.p:status() == "running" then w.p:kill("TERM") end
end
for _, w in ipairs(workers) do pcall(task.timeout, 30, w.p.wait, w.p) end
srv:stop()
say("stopped the workers and removed the cluster")
if not ok then error(err, 0) end
