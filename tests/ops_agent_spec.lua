-- scripts/examples/ops_agent.lua, as `make run` runs it: with no model
-- configured it starts the bundled mock, the model picks tools that run
-- concurrently, memory lands in SQLite, and the answer is printed.

local proc = require "support.proc"

local SCRIPT = "scripts/examples/ops_agent.lua"
local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

-- Runs ops_agent with the model settings of the environment removed.
local function ops(args)
  local argv = { "env", "-u", "OPENAI_API_KEY", "-u", "ANTHROPIC_API_KEY", "-u", "AGENTHOST_PROVIDER",
                 "-u", "AGENTHOST_BASE_URL", "-u", "AGENTHOST_MODEL", "-u", "AGENTHOST_SEARCH_URL",
                 proc.bin, SCRIPT }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run(argv, { limit = 60 })
end

describe("ops_agent.lua", function()
  it("answers with at least two tools run concurrently, from the offline mock", function()
    local db = dir .. "/var/memory.db"
    local r = ops { "--memory", db }
    assert.equal(0, r.code, r.err)
    assert.matches("bundled offline mock", r.err)
    assert.matches("OPENAI_API_KEY", r.err) -- says how to use a real model
    local tools, at_once = r.out:match("tools used: ([%w_, ]+) %(up to (%d+) at once%)")
    assert.is_not_nil(tools, r.out)
    assert.is_true(tonumber(at_once) >= 2)
    assert.matches("metrics", tools)
    assert.matches("web_search", tools)
    assert.matches("2 turns", r.out)
    -- the conversation and its events are in the database
    local check = proc.script(string.format([[
      local ah = require "agenthost"
      local db = ah.store.open(%q)
      local m = db:first("SELECT count(*) AS n FROM messages WHERE role <> 'event'").n
      local e = db:first("SELECT count(*) AS n FROM messages WHERE role = 'event'").n
      print(m, e)
      db:close()
    ]], db))
    local c = proc.cli { check }
    assert.equal(0, c.code, c.err)
    local msgs, events = c.out:match("(%d+)%s+(%d+)")
    assert.equal(5, tonumber(msgs)) -- user, assistant + 2 tool results, answer
    assert.equal(4, tonumber(events)) -- tool_start and tool_end of each
  end)

  it("runs many agents on one provider", function()
    local r = ops { "--memory", dir .. "/many.db", "--agents", "50" }
    assert.equal(0, r.code, r.err)
    assert.matches("agents=50 answered=50 failed=0 turns=100", r.out)
  end)

  it("refuses bad arguments", function()
    local r = ops { "--agents", "zero" }
    assert.equal(2, r.code)
    assert.matches("usage:", r.err)
  end)
end)

describe("ah.config", function()
  it("starts one mock for concurrent callers and stops it", function()
    local ah = require "agenthost"
    ah.task.run(function()
      local a, b = ah.task.gather(function() return ah.config.start_mock() end,
                                  function() return ah.config.start_mock() end)
      assert.equal(a, b)
      assert.matches("^http://127%.0%.0%.1:%d+$", a)
      assert.equal(200, ah.http.get(a .. "/v1/models").status)
      ah.config.stop_mock()
      local ok, err = pcall(ah.http.get, a .. "/v1/models") -- it exited: nobody listens
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "connect"), tostring(err))
      local c = ah.config.start_mock() -- a stopped mock can be started again
      assert.equal(200, ah.http.get(c .. "/v1/models").status)
      ah.config.stop_mock()
    end)
  end)
end)
