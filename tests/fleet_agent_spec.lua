-- ah.agent as a fleet handler, with its memory on the fleet's database: a
-- worker process runs an agent whose tool call waits for approval as a
-- durable event; the worker is killed with
-- SIGKILL while it waits; a second worker resumes the run from the
-- agent's stored conversation, the approval is sent to the run from here,
-- and the tool runs once and the agent finishes.  The model is the mock
-- (tests/support/mockllm.lua); the worker is
-- tests/support/fleet_agent_worker.lua.
local ah = require "agenthost"
local pgs = require "support.pg"
local mockllm = require "support.mockllm"
local sf = require "support.fleet"
local task = ah.task

local LEASE = 2

describe("ah.agent on the fleet", function()
  local srv, mock
  setup(function()
    srv = pgs.start()
    mock = mockllm.start { rules = { rules = {
      { when = "tool", reply = "Done: {{tool_results}}" },
      { when = "user", match = "deploy", tool_calls = { { name = "deploy", arguments = {} } } },
      { reply = "nothing to do" },
    } } }
  end)
  teardown(function()
    if mock then mock:stop() end
    if srv then srv:stop() end
  end)

  -- The fleet, and the tables the worker's tools write to, empty.
  local function open_fleet()
    local fleet = ah.fleet.open { db = srv.url, name = "agents" }
    local db = fleet.db
    db:exec("CREATE TABLE IF NOT EXISTS asked (run_id bigint, call_id text, pid integer)")
    db:exec("CREATE TABLE IF NOT EXISTS deploys (call_id text, pid integer)")
    db:exec("DELETE FROM asked; DELETE FROM deploys")
    return fleet, db
  end

  it("continues on another worker after a crash; the approval waits as a durable event", function()
    task.run(function()
      local fleet, db = open_fleet()
      local procs = {}
      local function start_worker()
        return sf.start_worker(procs, { "tests/support/fleet_agent_worker.lua", srv.url, mock.base,
          tostring(LEASE) })
      end
      local function wait_until(what, limit, fn) return sf.wait_until(what, limit, fn, procs) end
      local ok, err = pcall(function()
        mock:reset()
        local a = start_worker()
        local id = fleet:submit("ops", { question = "please deploy the api" }, { key = "ops-1" })
        local asked = wait_until("the approval asked", 60, function()
          return db:first("SELECT call_id, pid FROM asked WHERE run_id = $1::bigint", id)
        end)
        assert.equal(a.pid, asked.pid)
        a.p:kill("KILL")
        assert.equal(9, a.p:wait().signal)
        local b = start_worker()
        -- The approval, sent while no worker holds the run: kept until it waits.
        fleet:send(id, "approve:" .. asked.call_id, { ok = true })
        local r = fleet:wait(id, { timeout = 120 })
        assert.matches("Done: deployed", r.text)
        -- The tool ran once, on the second worker, after the approval; both
        -- workers asked for the same call.
        local d = db:query("SELECT call_id, pid FROM deploys")
        assert.equal(1, #d)
        assert.same({ asked.call_id, b.pid }, { d[1].call_id, d[1].pid })
        local asks = db:query("SELECT DISTINCT call_id FROM asked WHERE run_id = $1::bigint", id)
        assert.equal(1, #asks)
        -- The model answered the first turn once (the stored answer was
        -- reloaded, not asked again), then the turn after the tool.
        assert.equal(2, mock:stats().requests.chat_completions)
        local st = fleet:status(id)
        assert.equal("done", st.state)
        assert.equal(2, st.attempts)
        -- The conversation is in the fleet's database: one user message,
        -- the model's call, the tool's result, the answer.
        local memory = ah.memory.open(db)
        local roles = {}
        for _, m in ipairs(memory:history(r.conversation)) do roles[#roles + 1] = m.role end
        assert.same({ "user", "assistant", "tool", "assistant" }, roles)
      end)
      sf.stop_workers(procs)
      fleet:close()
      if not ok then error(err, 0) end
    end)
  end)

  it("parks a run whose agent waits for an approval in on_event, and resumes it when it comes", function()
    task.run(function()
      local fleet, db = open_fleet()
      local procs = {}
      local ok, err = pcall(function()
        mock:reset()
        local w = sf.start_worker(procs, { "tests/support/fleet_agent_worker.lua", srv.url, mock.base,
          tostring(LEASE), "park" })
        local agents = fleet
        local id = agents:submit("ops", { question = "please deploy the db" }, { key = "ops-park" })
        local asked = sf.wait_until("the approval asked", 60, function()
          return db:first("SELECT call_id FROM asked WHERE run_id = $1::bigint", id)
        end, procs)
        -- Parked: no worker holds it, and the agent's conversation is not
        -- marked failed (it was unwound, not finished).
        local st = sf.wait_until("the run parked", 60, function()
          local s = agents:status(id)
          return s.state == "waiting" and s
        end, procs)
        assert.equal("waiting", st.state)
        agents:send(id, "approve:" .. asked.call_id, { ok = true })
        local r = agents:wait(id, { timeout = 120 })
        assert.matches("Done: deployed", r.text)
        local d = db:query("SELECT call_id, pid FROM deploys")
        assert.equal(1, #d)
        assert.same({ asked.call_id, w.pid }, { d[1].call_id, d[1].pid })
        local memory = ah.memory.open(db)
        assert.equal("done", memory:run(r.conversation).status)
        -- Nothing of the parked execution is left in the worker: one
        -- SIGTERM ends it (a handler left waiting would hold it).
        w.p:kill("TERM")
        local ok_exit, st_exit = pcall(task.timeout, 30, w.p.wait, w.p)
        assert.is_true(ok_exit, "the worker did not exit on SIGTERM: " .. tostring(st_exit))
      end)
      sf.stop_workers(procs)
      fleet:close()
      if not ok then error(err, 0) end
    end)
  end)
end)
