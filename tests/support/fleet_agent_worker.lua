-- tests/support/fleet_agent_worker.lua: a fleet worker whose handler is an
-- ah.agent (tests/fleet_agent_spec.lua).
--
--   agenthost tests/support/fleet_agent_worker.lua URL MOCK_BASE LEASE [park]
--
-- The handler "ops" runs an agent on the mock model at MOCK_BASE with one
-- tool, deploy, that needs approval.  Its conversation is made once (a
-- step) in the agent's memory on the fleet's own database (the pool the
-- fleet uses), and every execution, on any worker, continues it; the
-- approval of a call waits as the durable event "approve:CALL_ID"
-- (recorded first in the table asked, so the spec can see the wait), and
-- deploy records each execution in the table deploys.  With "park" the
-- approval's wait parks the run (park_after = 0: the run leaves the worker
-- until the approval is sent, the agent unwound from inside on_event);
-- without it the wait keeps the run on the worker.  Prints "serving PID".
local ah = require "agenthost"
local url, base, lease, mode = ...
local fleet = ah.fleet.open { db = url, name = "agents", pool_size = 4 }
local memory = ah.memory.open(fleet.db)
local provider = ah.llm.provider { kind = "openai", model = "mock-1", api_key = "k",
                                   base_url = base .. "/v1" }
local pid

local tools = { {
  name = "deploy", description = "Deploys the service.", needs_approval = true,
  parameters = { type = "object", properties = {} },
  run = function(_, ctx)
    fleet.db:exec("INSERT INTO deploys (call_id, pid) VALUES ($1::text, $2::integer)",
      ctx.call.id, pid)
    return "deployed"
  end,
} }

local function ops(run, input)
  local conv = run:step("conversation", function()
    local c = memory:start_run("ops", { goal = input.question })
    memory:append(c, { role = "user", content = input.question })
    return c
  end)
  local a
  a = ah.agent.new { name = "ops", provider = provider, memory = memory, tools = tools,
    on_event = function(ev)
      if ev.type == "tool_start" and ev.needs_approval then
        fleet.db:exec("INSERT INTO asked (run_id, call_id, pid) VALUES ($1::bigint, $2::text, $3::integer)",
          run.id, ev.call.id, pid)
        local d = run:wait_event("approve:" .. ev.call.id, { park = mode == "park" })
        a:approve(ev.call.id, d and d.ok)
      end
    end }
  local r = a:run(nil, { conversation = conv })
  return { text = r.text, conversation = conv }
end

ah.task.spawn(function()
  while not fleet.worker do ah.task.sleep(0.005) end
  pid = fleet:worker_stats().pid
  io.stdout:write("serving ", pid, "\n")
  io.stdout:flush()
end)
fleet:serve { concurrency = 10, lease = tonumber(lease), heartbeat = tonumber(lease) / 5,
              park_after = mode == "park" and 0 or nil, quiet = true, handlers = { ops = ops } }
