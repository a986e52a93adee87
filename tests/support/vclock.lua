-- A virtual clock for specs of code that takes a clock and a sleep
-- (agenthost.llm providers and limits, docs/llm.md "Waiting"), so that a
-- spec checks the delays such code computes instead of waiting for them.
-- Its time starts at 0 and moves only when a sleep or the spec moves it,
-- so what the code under test computes from it is the same on every run,
-- however busy the machine.
--
--   local vc = vclock.new()              -- sleeps move the clock themselves
--   local vc = vclock.new{ manual = true } -- sleeps wait for vc:advance
--                                          (a sleep of 0 only yields)
--   llm.provider{ ..., clock = vc.clock, sleep = vc.sleep }
--   vc.clock()       the virtual time in seconds
--   vc.sleep(s)      records s in vc.slept and waits s of virtual time
--   vc.slept         the delays asked for, in order
--   vc:total()       their sum
--   vc:sleeping()    how many tasks are in vc.sleep now (manual clocks)
--   vc:advance(s)    moves the clock on by s and wakes the sleepers whose
--                    time has come (manual clocks)
--
-- Every sleep suspends the calling task (an automatic clock's for one
-- task.yield), so a sleeping task can be cancelled and other tasks run
-- while it sleeps, as with task.sleep.  The contract these functions keep
-- is the one docs/llm.md asks of a given clock and sleep: the clock never
-- goes back, and reads at least s later once sleep(s) has returned.

local ah = require "agenthost"
local task = ah.task

local M = {}

local Clock = {}
Clock.__index = Clock

function Clock:total()
  local sum = 0
  for _, s in ipairs(self.slept) do sum = sum + s end
  return sum
end

function Clock:sleeping()
  local n = 0
  for _ in pairs(self.waiters) do n = n + 1 end
  return n
end

function Clock:advance(s)
  assert(type(s) == "number" and s >= 0, "vclock: advance takes seconds >= 0")
  self.now = self.now + s
  for w in pairs(self.waiters) do
    if w.deadline <= self.now then
      self.waiters[w] = nil
      w.event:set()
    end
  end
end

-- new{manual = false}
function M.new(opts)
  local self = setmetatable({ now = 0, slept = {}, waiters = {},
                              manual = opts and opts.manual or false }, Clock)
  self.clock = function() return self.now end
  self.sleep = function(s)
    assert(type(s) == "number" and s >= 0, "vclock: sleep takes seconds >= 0")
    self.slept[#self.slept + 1] = s
    if not self.manual or s == 0 then
      self.now = self.now + s
      task.yield()
      return
    end
    local w = { deadline = self.now + s, event = task.event() }
    self.waiters[w] = true
    -- A cancelled sleeper leaves the list, as a cancelled task.sleep
    -- leaves the timer heap.
    local ok, err = pcall(w.event.wait, w.event)
    self.waiters[w] = nil
    if not ok then error(err, 0) end
  end
  return self
end

return M
