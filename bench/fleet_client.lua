-- bench/fleet_client.lua: the submitting side of bench/fleet for agenthost.
--
--   agenthost bench/fleet_client.lua submit URL RUNS    submit RUNS runs
--   agenthost bench/fleet_client.lua bulk URL RUNS      the same, 500 a transaction
--   agenthost bench/fleet_client.lua pickup URL SAMPLES one run at a time
--
-- submit sends RUNS runs of kind "bench" from 16 tasks at once, each
-- submit its own transaction; bulk submits them inside transactions of 500
-- (fleet:submit{tx = ...}), 4 at once, to fill a deep queue; pickup sends
-- one run with t0 = ah.clock() in ms, waits until its worker has recorded
-- the pickup in bench_pickup, pauses 20 ms, and sends the next.
local ah = require "agenthost"
local mode, url, n = ...
n = tonumber(n)
if not (url and n) or (mode ~= "submit" and mode ~= "bulk" and mode ~= "pickup") then
  io.stderr:write("usage: agenthost bench/fleet_client.lua submit|bulk URL RUNS | pickup URL SAMPLES\n")
  os.exit(2)
end
local fleet = ah.fleet.open { db = url, name = "bench", pool_size = 8 }
if mode == "submit" then
  local next_i = 0
  local lanes = {}
  for l = 1, 16 do
    lanes[l] = function()
      while next_i < n do
        next_i = next_i + 1
        fleet:submit("bench", { i = next_i })
      end
    end
  end
  ah.task.gather(table.unpack(lanes))
elseif mode == "bulk" then
  local next_i = 0
  local lanes = {}
  for l = 1, 4 do
    lanes[l] = function()
      while next_i < n do
        local first = next_i + 1
        local last = math.min(n, next_i + 500)
        next_i = last
        fleet.db:transaction(function(tx)
          for i = first, last do fleet:submit("bench", { i = i }, { tx = tx }) end
        end)
      end
    end
  end
  ah.task.gather(table.unpack(lanes))
else
  local function count()
    return fleet.db:first("SELECT count(*) AS n FROM bench_pickup WHERE system = 'agenthost'").n
  end
  local have = count()
  for _ = 1, n do
    fleet:submit("bench", { t0 = ah.clock() * 1000 })
    local deadline = ah.clock() + 30
    while count() <= have do
      if ah.clock() > deadline then error("pickup: the run was not started within 30 s") end
      ah.task.sleep(0.002)
    end
    have = have + 1
    ah.task.sleep(0.02)
  end
end
fleet:close()
