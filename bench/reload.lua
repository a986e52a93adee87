-- bench/reload.lua: time from saving a module to the first call that runs
-- the new version, over many reloads through the file watcher.
--
--   build/agenthost bench/reload.lua [RELOADS]   (default 100)
--
-- A task calls the module every millisecond (as an agent loop would); the
-- writer saves a new version and notes the time; the delay is measured at
-- the first call that returns the new version.  Prints p50, p99 and max in
-- milliseconds, and the count of reloads that were lost (never observed).

local ah = require "agenthost"
local task = ah.task

local reloads = math.tointeger(tonumber((...) or "100")) or 100
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'"))
local path = dir .. "/bench_mod.lua"
local function save(v)
  local f = assert(io.open(path, "wb"))
  f:write(("local M = {}\nfunction M.version() return %d end\nreturn M\n"):format(v))
  f:close()
end

save(0)
ah.reload.quiet = true
ah.reload.watch(dir)
local mod = require "bench_mod"

local delays, lost = {}, 0
for v = 1, reloads do
  task.sleep(0.02) -- let the watcher settle between saves
  local t0 = ah.clock()
  save(v)
  local seen = false
  while ah.clock() - t0 < 2 do
    if mod.version() == v then seen = true; break end
    task.sleep(0.001)
  end
  if seen then delays[#delays + 1] = (ah.clock() - t0) * 1000 else lost = lost + 1 end
end
ah.reload.stop()
os.remove(path)
os.remove(dir)

table.sort(delays)
local function pct(p)
  if #delays == 0 then return 0 / 0 end
  return delays[math.max(1, math.ceil(#delays * p))]
end
print(string.format("reloads=%d observed=%d lost=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f debounce_ms=50",
  reloads, #delays, lost, pct(0.5), pct(0.99), delays[#delays] or 0 / 0))
