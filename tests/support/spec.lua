-- Helpers shared by the task specs: <close> objects, waiting for a
-- condition that ready tasks establish, expecting a failure of a kind, and
-- capturing reported errors.

local ah = require "agenthost"
local task = ah.task

local M = {}

-- A to-be-closed value that calls fn.
function M.closer(fn)
  return setmetatable({}, { __close = fn })
end

-- Lets ready tasks run until cond() holds (for conditions that ready tasks
-- establish without waiting for a timer).
function M.settle(cond)
  for _ = 1, 1000 do
    if cond() then return end
    task.yield()
  end
  error("condition never held", 2)
end

-- Waits (in 5 ms sleeps, `seconds` at most: 2 by default) until cond()
-- holds.
function M.eventually(cond, seconds)
  for _ = 1, math.ceil((seconds or 2) / 0.005) do
    if cond() then return true end
    task.sleep(0.005)
  end
  return cond()
end

-- Runs fn as a main task that must fail with an error of this kind;
-- returns the error.
function M.fails(kind, fn)
  local ok, err = pcall(task.run, fn)
  assert(not ok, "expected a " .. kind .. " error")
  assert(ah.error.is(err, kind), "expected kind " .. kind .. ", got " .. tostring(err))
  return err
end

-- Routes uncaught task errors into the returned list (undo with
-- task.on_error(nil)).
function M.capture_reports()
  local got = {}
  task.on_error(function(err, traceback)
    got[#got + 1] = { err = err, traceback = traceback }
  end)
  return got
end

return M
