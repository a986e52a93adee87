-- agenthost.memory: runs and their message history, tool calls, notes,
-- full-text recall ranked by bm25, and schema migration.

local ah = require "agenthost"
local proc = require "support.proc"
local backend = require "support.backend"
local memory = backend.memory
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
  it("keeps memory.encode and memory.decode, which return nil and the reason instead of raising", function()
    local m = require "agenthost.memory"
    assert.equal('{"n":71}', m.encode { n = 71 })
    assert.equal('[71.0]', m.encode { 71.0 })
    local v = m.decode('{"n": 71, "f": 71.0, "z": null}')
    assert.equal("integer", math.type(v.n))
    assert.equal("float", math.type(v.f))
    assert.equal(ah.null, v.z)
    local s, why = m.encode { f = print }
    assert.is_nil(s)
    assert.matches("function", why)
    local d, why2 = m.decode("{")
    assert.is_nil(d)
    assert.matches("ah.json.decode", why2)
    assert.same({ nil, "not a string" }, { m.decode(5) })
  end)

  it("flush waits until every posted message is stored", function()
    run(function()
      local mem = memory.open(path())
      local id = mem:start_run("alice")
      for i = 1, 500 do mem:post(id, { role = "user", content = "m" .. i }) end
      mem:post_finish_run(id, "failed", nil, "cancelled")
      mem:flush()
      local h = mem:history(id)
      assert.equal(500, #h)
      assert.equal("m500", h[500].content)
      assert.equal("failed", mem:run(id).status)
      mem:close()
    end)
  end)

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

  backend.sqlite_only(it)("migrates a version 1 database and indexes what it held", function()
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
      assert.same({ memory.SCHEMA_VERSION, memory.SCHEMA_VERSION }, { memory.migrate(db) }) -- nothing left to do
      db:exec("PRAGMA user_version = 99")
      local ok, err = pcall(memory.open, db)
      assert.is_false(ok)
      assert.matches("newer than this agenthost knows", tostring(err))
      db:close()
    end)
  end)

  backend.sqlite_only(it)("migrates a version 2 database as agenthost 0.1 left it, and reads what it held", function()
    -- What the agent of schema version 2 wrote: cjson-encoded data, a
    -- conversation that finished and one that never did.
    local p = path()
    run(function()
      local db = ah.store.open(p)
      assert.same({ 0, 2 }, { memory.migrate(db, 2) })
      db:exec("INSERT INTO agents(name, created) VALUES ('ops', 0)")
      db:exec("INSERT INTO runs(agent_id, goal, status, result, started, finished) VALUES (1, 'q', 'done', 'answer', 0, 1)")
      db:exec("INSERT INTO runs(agent_id, goal, started) VALUES (1, 'crashed', 0)")
      local cjson = require "cjson"
      for i, m in ipairs {
        { 1, "user", "q", nil, nil },
        { 1, "assistant", nil, nil, cjson.encode { tool_calls = { { id = "c1", name = "metrics", arguments = { limit = 5 } } },
                                                   usage = { input_tokens = 71, output_tokens = 9 } } },
        { 1, "tool", "ok", "c1", cjson.encode { is_error = true } },
        { 1, "assistant", "answer", nil, cjson.encode { usage = { input_tokens = 80, output_tokens = 3 } } },
        { 2, "user", "crashed", nil, nil },
      } do
        db:exec("INSERT INTO messages(run_id, seq, role, content, tool_call_id, data, created) VALUES (?, ?, ?, ?, ?, ?, 0)",
          m[1], i, m[2], m[3], m[4], m[5])
      end
      db:close()
    end)
    run(function()
      local mem = memory.open(p)
      assert.equal(memory.SCHEMA_VERSION, mem.db:first("PRAGMA user_version").user_version)
      local h = mem:history(1)
      assert.equal("ops", h[1].agent) -- messages of version 2 were written by the run's agent
      assert.equal("integer", math.type(h[2].data.usage.input_tokens))
      assert.equal("integer", math.type(h[2].data.tool_calls[1].arguments.limit))
      assert.is_true(h[3].data.is_error)
      local running = mem:conversations { agent = "ops", state = "running" }
      assert.equal(1, #running)
      assert.same({ 2, "ops", "ops", "crashed" },
        { running[1].id, running[1].agent, running[1].current_agent, running[1].goal })
      assert.equal("done", mem:run(1).status)
      mem:close()
    end)
  end)

  it("keeps the type of every number across a round trip", function()
    run(function()
      local mem = memory.open(path())
      local r = mem:start_run("alice")
      local data = { usage = { input_tokens = 71, output_tokens = 0 }, ratio = 0.25, whole = 3.0,
                     big = 9007199254740993, neg = -12, list = { 1, 2.5, ah.null, 4 },
                     flag = false }
      mem:append(r, { role = "assistant", content = "x", data = data })
      local got = mem:history(r)[1].data
      assert.equal("integer", math.type(got.usage.input_tokens))
      assert.equal(71, got.usage.input_tokens)
      assert.equal("integer", math.type(got.usage.output_tokens))
      assert.equal("float", math.type(got.ratio))
      assert.equal("float", math.type(got.whole))
      assert.equal(9007199254740993, got.big) -- every digit, past 2^53
      assert.equal("integer", math.type(got.neg))
      assert.same({ 1, 2.5, ah.null, 4 }, got.list)
      assert.equal("integer", math.type(got.list[1]))
      assert.is_false(got.flag)
      mem:close()
    end)
  end)

  it("takes a conversation id as an integer or a string of digits, and names the type otherwise", function()
    run(function()
      local mem = memory.open(path())
      local r = mem:start_run("alice")
      mem:append(tostring(r), { role = "user", content = "from a command line" })
      mem:append(r + 0.0, { role = "user", content = "from JSON" })
      assert.equal(2, #mem:history(tostring(r)))
      assert.equal(r, mem:run(" " .. r .. " ").id)
      for _, v in ipairs { "abc", "1.5", 1.5, 0, -3, true, {} } do
        local ok, err = pcall(mem.history, mem, v)
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches("a conversation is an integer id", err.message)
      end
      mem:close()
    end)
  end)

  it("lists conversations by agent, state and parent call, with the agent that has each", function()
    run(function()
      local mem = memory.open(path())
      local a = mem:start_run("triage", { goal = "help" })
      local b = mem:start_run("triage")
      local c = mem:start_run("researcher", { parent = a, parent_call = "call_1" })
      mem:finish_run(b, "done", "ok")
      mem:set_status(a, "waiting_approval")
      mem:set_agent(a, "billing")
      mem:finish_run(c, "failed", nil, "guardrail: no")
      local function ids(rows)
        local out = {}
        for i, row in ipairs(rows) do out[i] = row.id end
        return out
      end
      assert.same({ a, b }, ids(mem:conversations { agent = "triage" }))
      assert.same({ a }, ids(mem:conversations { agent = "triage", state = "waiting_approval" }))
      assert.same({ b }, ids(mem:conversations { state = "done" }))
      assert.same({ c }, ids(mem:conversations { parent = a, call = "call_1" }))
      assert.same({ a, b }, ids(mem:conversations { parent = false }))
      assert.same({}, ids(mem:conversations { agent = "nobody" }))
      local row = mem:run(a)
      assert.same({ "triage", "billing", "waiting_approval" }, { row.agent, row.current_agent, row.status })
      row = mem:run(c)
      assert.same({ a, "call_1", "failed", "guardrail: no" }, { row.parent, row.parent_call, row.status, row.error })
      for _, f in ipairs {
        function() mem:conversations { state = "sleeping" } end,
        function() mem:finish_run(a, "running") end,
        function() mem:set_status(a, "done") end,
        function() mem:conversations { parent = "x" } end,
      } do
        local ok, err = pcall(f)
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      end
      mem:close()
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
