-- The behaviour of the agents in reload_demo.lua.  Edit it while the demo
-- runs: change `mood`, the policy in decide(), or the sleep; save, and the
-- running agents pick up the new code at their next step.  A mistake (a
-- syntax error, a runtime error in the body, a failing validate) keeps this
-- version serving and is reported as file:line.

local ah = require "agenthost"

local M = {}

local mood = "curious"

-- One step of an agent: returns what it did.
function M.decide(agent, step)
  ah.task.sleep(0.05 + (agent % 10) / 100)
  if step % 7 == 0 then return mood .. ":reflect" end
  return mood .. ":act"
end

-- Refuse a version that would break the agents.
function M.validate()
  return type(M.decide) == "function"
end

-- Carry the counters over to the new version.
function M.migrate(old)
  return old or { steps = 0 }
end

M.state = { steps = 0 }

return M
