-- agenthost.memory: runs and their message history, tool calls, notes,
-- full-text recall ranked by bm25, and schema migration.

local ah = require "agenthost"
local proc = require "support.proc"
local memory = ah.memory
local task = ah.task

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local n = 0
local function path()
  n = n + 1
  return string.format("%s/mem%d.sqlite", dir, n)
end

local function run(fn) return task.run(fn) end

describe("agenthost.memory", function()
  it("round-trips a run's history in order, with events, data and tool calls", function()
    local p = path()
    local run_id
    run(function()
      local mem = memory.open(p)
      run_id = mem:start_run("alice", { goal = "find tides" })
      mem:append(run_id, { role = "system", content = "You are careful." })
      mem:append(run_id, { role = "user", content = "When is high tide?" })
      mem:post(run_id, { role = "assistant", content = { text = "checking" },
                         data = { tool_calls = { { id = "c1", name = "tides" } } } })
      mem:event(run_id, "tool_started", { name = "tides" })
      mem:tool_call(run_id, { id = "c1", name = "tides", arguments = { port = "Brest" },
                              result = "06:12" })
      mem:post(run_id, { role = "tool", content = "06:12", tool_call_id = "c1", name = "tides" })
      mem:finish_run(run_id, "done", { answer = "06:12" })
      mem:close()
    end)
    run(function()
      local mem = memory.open(p)
      local h = mem:history(run_id)
      assert.equal(5, #h)
      for i, m in ipairs(h) do assert.equal(i, m.seq) end
      assert.same({ "system", "user", "assistant", "event", "tool" },
        { h[1].role, h[2].role, h[3].role, h[4].role, h[5].role })
      assert.equal('{"text":"checking"}', h[3].content)
      assert.same({ tool_calls = { { id = "c1", name = "tides" } } }, h[3].data)
      assert.equal("tool_started", h[4].name)
      assert.equal("c1", h[5].tool_call_id)
      assert.equal(4, #mem:history(run_id, { events = false }))
      local calls = mem:tool_calls(run_id)
      assert.equal(1, #calls)
      assert.equal('{"port":"Brest"}', calls[1].arguments)
      local r = mem:run(run_id)
      assert.equal("done", r.status)
      assert.equal('{"answer":"06:12"}', r.result)
      assert.equal(run_id, mem:runs("alice")[1].id)
      mem:close()
    end)
  end)

  it("keeps notes per agent", function()
    run(function()
      local mem = memory.open(path())
      mem:set_note("alice", "style", "brief")
      mem:set_note("alice", "style", "detailed")
      mem:set_note("bob", "style", "terse")
      assert.equal("detailed", mem:note("alice", "style"))
      assert.same({ style = "terse" }, mem:notes("bob"))
      assert.is_nil(mem:note("bob", "missing"))
      mem:close()
    end)
  end)

  it("recalls an agent's messages ranked by bm25, from free text", function()
    run(function()
      local mem = memory.open(path())
      local a = mem:start_run("alice")
      local b = mem:start_run("bob")
      mem:append(a, { role = "user", content = "the tide tables for Brest harbour" })
      mem:append(a, { role = "assistant", content = "tide tide tide: high tide at Brest is 06:12" })
      mem:append(a, { role = "assistant", content = "the weather is sunny" })
      mem:append(b, { role = "user", content = "tide tide tide tide tide" })
      local hits = mem:recall("alice", "When is HIGH tide in Brest?", 5)
      assert.equal(3, #hits) -- any term matches; the best come first
      assert.matches("06:12", hits[1].content)
      assert.matches("tables", hits[2].content)
      assert.matches("sunny", hits[3].content)
      assert.is_true(hits[1].score <= hits[2].score and hits[2].score <= hits[3].score)
      for _, h in ipairs(hits) do assert.equal(a, h.run_id) end
      assert.equal(1, #mem:recall("alice", "tide", 1))
      -- model output is data, not FTS syntax
      assert.same({}, mem:recall("alice", 'NEAR( " * ) OR -', 3))
      assert.same({}, mem:recall("alice", "", 3))
      assert.equal(0, #mem:recall("carol", "tide", 3))
      mem:close()
    end)
  end)

  it("migrates a version 1 database and indexes what it held", function()
    local p = path()
    run(function()
      local db = ah.store.open(p)
      assert.same({ 0, 1 }, { memory.migrate(db, 1) })
      db:exec("INSERT INTO agents(name, created) VALUES ('old', 0)")
      db:exec("INSERT INTO runs(agent_id, started) VALUES (1, 0)")
      db:exec("INSERT INTO messages(run_id, seq, role, content, created) VALUES (1, 1, 'user', 'ancient lighthouse logs', 0)")
      db:close()
    end)
    run(function()
      local db = ah.store.open(p)
      local mem = memory.open(db)
      assert.equal(memory.SCHEMA_VERSION, db:first("PRAGMA user_version").user_version)
      local hits = mem:recall("old", "lighthouse", 3)
      assert.equal(1, #hits)
      assert.equal("ancient lighthouse logs", hits[1].content)
      assert.same({ 2, 2 }, { memory.migrate(db) }) -- nothing left to do
      db:exec("PRAGMA user_version = 99")
      local ok, err = pcall(memory.open, db)
      assert.is_false(ok)
      assert.matches("newer than this agenthost knows", tostring(err))
      db:close()
    end)
  end)

  it("opens one new file from two places at once", function()
    local p = path()
    run(function()
      local a, b = task.gather(function() return memory.open(p) end, function() return memory.open(p) end)
      local r = a:start_run("x")
      b:append(r, { role = "user", content = "both work" })
      assert.equal(1, #a:history(r))
      a:close()
      b:close()
    end)
  end)

  it("rejects bad arguments with invalid_argument errors", function()
    run(function()
      local mem = memory.open(path())
      local r = mem:start_run("alice")
      for _, f in ipairs {
        function() mem:append(r, "hello") end,
        function() mem:append(r, { content = "no role" }) end,
        function() mem:append("r", { role = "user" }) end,
        function() mem:append(r, { role = "user", content = print }) end,
        function() mem:recall("alice", 42) end,
        function() mem:recall("alice", "x", 0) end,
        function() mem:start_run("") end,
        function() memory.open(42) end,
      } do
        local ok, err = pcall(f)
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      end
      mem:close()
    end)
  end)
end)
