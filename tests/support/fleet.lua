-- tests/support/fleet.lua: what the fleet specs share.
--
--   local sf = require "support.fleet"
--   sf.wait_until("what", 30, function() return done end, procs)  -- in a task
--   local w = sf.start_worker(procs, { "scripts/examples/fleet_demo.lua", "worker", ... })
--   sf.stop_workers(procs)
--
-- Workers are agenthost processes that print "serving PID" once they
-- serve; procs is the spec's list of them ({p = the ah.proc process, pid}),
-- whose stderr a failed wait shows.
local ah = require "agenthost"
local task = ah.task

local M = {}
M.BIN = os.getenv("AGENTHOST_BIN") or "build/agenthost"

-- Polls fn every 20 ms until it returns a true value (returned), and
-- raises after limit seconds, with the workers' stderr when procs is given.
function M.wait_until(what, limit, fn, procs)
  local deadline = ah.clock() + limit
  while true do
    local v = fn()
    if v then return v end
    if ah.clock() > deadline then
      local errs = {}
      for _, w in ipairs(procs or {}) do errs[#errs + 1] = w.p:stderr() end
      error(string.format("gave up waiting (%g s) for %s%s", limit, what,
        #errs > 0 and ("; the workers said:\n" .. table.concat(errs, "\n")) or ""), 2)
    end
    task.sleep(0.02)
  end
end

function M.start_worker(procs, args)
  local p = ah.proc.spawn { cmd = M.BIN, args = args, stderr = "pipe" }
  local ok, line = pcall(task.timeout, 60, p.read_line, p)
  assert(ok and line and line:match("^serving %d+$"),
    "a worker did not start: " .. tostring(line) .. "\n" .. p:stderr())
  local w = { p = p, pid = tonumber(line:match("%d+")) }
  procs[#procs + 1] = w
  return w
end

-- SIGTERM to the workers still running, and their exits awaited.
function M.stop_workers(procs)
  for _, w in ipairs(procs) do
    if w.p:status() == "running" then w.p:kill("TERM") end
  end
  for _, w in ipairs(procs) do pcall(task.timeout, 30, w.p.wait, w.p) end
end

return M
