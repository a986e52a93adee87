-- Hot reload, live: 100 agents loop over a behaviour module; edit it while
-- they run and watch them change without a restart.
--
--   build/agenthost --watch scripts/examples scripts/examples/reload_demo.lua [SECONDS]
--
-- then edit scripts/examples/reload_behaviour.lua (change `mood`) and save.
-- Once a second the demo prints how many steps ran on each version.

local ah = require "agenthost"
local task = ah.task

local seconds = tonumber((...)) or 30
local behaviour = require "reload_behaviour"
local per_version, moods = {}, {}

ah.reload.on_reload = function(ev)
  if ev.kind == "swapped" then
    print(("reloaded %s: version %d in %.1f ms"):format(ev.module, ev.version, ev.ms))
  end
end

local stop = false
local agents = {}
for a = 1, 100 do
  agents[a] = task.spawn(function()
    local step = 0
    while not stop do
      step = step + 1
      local v = ah.reload.version("reload_behaviour") or 1
      local did = behaviour.decide(a, step) -- dispatched through the table: new code at once
      per_version[v] = (per_version[v] or 0) + 1
      moods[did] = (moods[did] or 0) + 1
      behaviour.state.steps = behaviour.state.steps + 1
    end
  end)
end

local t0 = ah.clock()
while ah.clock() - t0 < seconds do
  task.sleep(1)
  local parts = {}
  for v, n in pairs(per_version) do parts[#parts + 1] = ("v%d=%d"):format(v, n) end
  table.sort(parts)
  local m = {}
  for k, n in pairs(moods) do m[#m + 1] = k .. "=" .. n end
  table.sort(m)
  print(("%5.1fs steps=%d  %s  %s"):format(ah.clock() - t0, behaviour.state.steps,
    table.concat(parts, " "), table.concat(m, " ")))
  per_version, moods = {}, {}
end
stop = true
for a = 1, 100 do agents[a]:join() end
