-- agenthost.agent: conversations that hold across runs.  Each case here
-- was a bug of the first agent loop (max_turns counted over the whole
-- conversation, a finished conversation answered again on resume, string
-- ids refused, errors without their conversation, floats after a resume,
-- tool failures invisible to the developer and showing source paths to the
-- model), and states to find what to resume after a crash.

local ah = require "agenthost"
local proc = require "support.proc"
local agent = ah.agent
local task = ah.task

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

-- A provider that answers with the given turns in order (each a response
-- table, or a function of the request returning one) and records requests.
local function scripted(turns)
  local p = { requests = {} }
  function p:chat(req)
    local copy = {}
    for i, m in ipairs(req.messages) do copy[i] = m end
    self.requests[#self.requests + 1] = { messages = copy, tools = req.tools, system = req.system }
    local t = turns[#self.requests]
    assert(t, "the scripted model has no turn " .. #self.requests)
    if type(t) == "function" then t = t(req) end
    return t
  end
  return p
end

local function call(id, name, args) return { id = id, name = name, arguments = args or {} } end

local n = 0
local function memdb()
  n = n + 1
  return require("support.backend").db(string.format("%s/conv%d.sqlite", dir, n))
end

local noop = { name = "noop", run = function() return "ok" end }

describe("agent conversations across runs", function()
  it("bounds the model calls of each run call by max_turns, not the whole conversation", function()
    task.run(function()
      local db = memdb()
      local answers = {}
      for i = 1, 8 do answers[i] = { text = "answer " .. i, usage = { input_tokens = 1, output_tokens = 1 } } end
      local p = scripted(answers)
      local a = agent.new { name = "t", provider = p, memory = db, max_turns = 2 }
      local r = a:run("first")
      for i = 2, 5 do
        r = a:run("input " .. i, { conversation = r.conversation })
        assert.equal("answer " .. i, r.text)
        assert.equal(1, r.turns)
      end
      assert.equal(5, #p.requests)
      db:close()
    end)
  end)

  it("gives a resumed max_turns conversation a fresh budget, as its error says", function()
    task.run(function()
      local db = memdb()
      local loop = function() return { tool_calls = { call("c" .. math.random(1e9), "noop") } } end
      local p = scripted { loop, loop, { text = "finally" } }
      local a = agent.new { name = "t", provider = p, memory = db, max_turns = 2, tools = { noop } }
      local ok, err = pcall(a.run, a, "go")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "max_turns"), tostring(err))
      assert.equal("max_turns", ah.memory.open(db):run(err.conversation).status)
      assert.matches("conversation = " .. err.conversation, err.message)
      local r = a:run(nil, { conversation = err.conversation })
      assert.equal("finally", r.text)
      assert.equal(1, r.turns)
      assert.equal("done", ah.memory.open(db):run(err.conversation).status)
      db:close()
    end)
  end)

  it("returns the stored answer of a finished conversation without calling the model", function()
    task.run(function()
      local db = memdb()
      local p = scripted { { text = "the answer", usage = { input_tokens = 5, output_tokens = 2 } } }
      local a = agent.new { name = "t", provider = p, memory = db }
      local r = a:run("question")
      for _ = 1, 3 do
        local again = a:run(nil, { conversation = r.conversation })
        assert.equal("the answer", again.text)
        assert.equal(0, again.turns)
        assert.equal(r.conversation, again.conversation)
      end
      assert.equal(1, #p.requests)
      assert.equal(2, #ah.memory.open(db):history(r.conversation)) -- no duplicate answer stored
      db:close()
    end)
  end)

  it("takes a conversation id given as a string, and names the type for a wrong one", function()
    task.run(function()
      local db = memdb()
      local p = scripted { { text = "one" }, { text = "two" } }
      local a = agent.new { name = "t", provider = p, memory = db }
      local r = a:run("first")
      local r2 = a:run("second", { conversation = tostring(r.conversation) })
      assert.equal("two", r2.text)
      assert.equal(r.conversation, r2.conversation)
      assert.equal("integer", math.type(r2.conversation))
      for _, bad in ipairs { "abc", 1.5, {}, true } do
        local ok, err = pcall(a.run, a, "x", { conversation = bad })
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches("integer id", err.message)
      end
      local ok, err = pcall(a.run, a, "x", { conversation = 999 })
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      assert.matches("no conversation 999", err.message)
      db:close()
    end)
  end)

  it("gives every error it raises the conversation and the turn", function()
    task.run(function()
      local db = memdb()
      -- a model failure
      local p = { chat = function() error(ah.error.new("http", "upstream 500")) end }
      local a = agent.new { name = "t", provider = p, memory = db }
      local ok, err = pcall(a.run, a, "go")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "http"), tostring(err))
      assert.is_not_nil(err.conversation)
      assert.equal(1, err.turn)
      assert.equal("failed", ah.memory.open(db):run(err.conversation).status)
      -- max_turns
      local b = agent.new { name = "t", provider = scripted { { tool_calls = { call("x", "noop") } } },
                            memory = db, max_turns = 1, tools = { noop } }
      ok, err = pcall(b.run, b, "go")
      assert.is_true(ah.error.is(err, "max_turns"), tostring(err))
      assert.equal(1, err.turn)
      assert.is_not_nil(err.conversation)
      -- a raw Lua error from a provider becomes a structured one
      local c = agent.new { name = "t", provider = { chat = function() local x = nil; return x.y end }, memory = db }
      ok, err = pcall(c.run, c, "go")
      assert.is_true(ah.error.is(err), tostring(err))
      assert.is_not_nil(err.conversation)
      assert.equal(1, err.turn)
      -- cancellation
      local calling = task.event()
      local slow = { chat = function() calling:set(); task.sleep(10) end }
      local d = agent.new { name = "t", provider = slow, memory = db }
      local t = task.spawn(d.run, d, "go")
      calling:wait() -- the model call of turn 1 has started
      t:cancel()
      ok, err = t:result()
      assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
      assert.is_not_nil(err.conversation)
      assert.equal(1, err.turn)
      db:close()
    end)
  end)

  it("keeps token counts integers and is_error a boolean after a resume", function()
    task.run(function()
      local db = memdb()
      local p = scripted {
        { tool_calls = { call("c1", "noop"), call("c2", "nope") }, usage = { input_tokens = 71, output_tokens = 9 } },
        { text = "done", usage = { input_tokens = 80, output_tokens = 3 } },
        { text = "more", usage = { input_tokens = 90, output_tokens = 4 } },
      }
      local a = agent.new { name = "t", provider = p, memory = db, tools = { noop } }
      local r = a:run("go")
      local function check(msgs)
        local tools = 0
        for _, m in ipairs(msgs) do
          if m.role == "tool" then
            tools = tools + 1
            assert.equal("boolean", type(m.is_error))
          end
          if m.usage then
            assert.equal("integer", math.type(m.usage.input_tokens))
            assert.equal("integer", math.type(m.usage.output_tokens))
          end
        end
        assert.equal(2, tools)
      end
      check(r.messages)
      local b = agent.new { name = "t", provider = p, memory = db, tools = { noop } }
      local r2 = b:run("again", { conversation = r.conversation })
      check(r2.messages)
      assert.equal("integer", math.type(r2.usage.input_tokens))
      assert.same({ input_tokens = 90, output_tokens = 4 }, r2.usage)
      assert.is_false(p.requests[3].messages[3].is_error)
      assert.is_true(p.requests[3].messages[4].is_error)
      db:close()
    end)
  end)

  it("marks each conversation's state so that the unfinished ones can be found and resumed", function()
    task.run(function()
      local db = memdb()
      local mem = ah.memory.open(db)
      local gate = { name = "deploy", needs_approval = true, run = function() return "deployed" end }
      local p = scripted { { tool_calls = { call("d1", "deploy") } }, { text = "deployed it" } }
      local a = agent.new { name = "ops", provider = p, memory = db, tools = { gate } }
      local t = task.spawn(a.run, a, "deploy please")
      local conv
      for _ = 1, 400 do
        local w = mem:conversations { agent = "ops", state = "waiting_approval" }
        if #w == 1 then conv = w[1].id break end
        task.sleep(0.005)
      end
      assert.is_not_nil(conv, "the conversation never showed as waiting_approval")
      a:approve("d1", true)
      assert.equal("deployed it", t:join().text)
      assert.equal("done", mem:run(conv).status)
      assert.same({}, mem:conversations { agent = "ops", state = "running" })
      db:close()
    end)
  end)
end)

describe("agent events", function()
  it("reach agent.observe for every run, with run ids, durations and usage", function()
    task.run(function()
      local seen = {}
      local stop = agent.observe(function(ev) seen[#seen + 1] = ev end)
      local p = scripted { { tool_calls = { call("c1", "noop") }, usage = { input_tokens = 3, output_tokens = 2 } },
                           { text = "done", usage = { input_tokens = 4, output_tokens = 1 } },
                           { text = "unseen" } }
      local a = agent.new { name = "t", provider = p, tools = { noop } }
      local r = a:run("go")
      stop()
      a:run("again")
      local types, by = {}, {}
      for i, ev in ipairs(seen) do
        types[i] = ev.type
        by[ev.type] = by[ev.type] or ev
        assert.equal(r.run, ev.run)
        assert.equal(r.conversation, ev.conversation)
        assert.equal("t", ev.agent)
        assert.equal("number", type(ev.time))
      end
      assert.same({ "run_start", "turn_start", "model_start", "model_response", "tool_start", "tool_end",
                    "turn_end", "turn_start", "model_start", "model_response", "turn_end", "run_end" }, types)
      assert.same({ input_tokens = 3, output_tokens = 2 }, by.model_response.usage)
      assert.equal("c1", by.tool_end.call_id)
      for _, k in ipairs { "model_response", "tool_end", "turn_end", "run_end" } do
        assert.is_true(by[k].duration >= 0, k)
      end
      assert.same({ input_tokens = 7, output_tokens = 3 }, by.run_end.usage)
      assert.equal("done", by.run_end.status)
      assert.equal(2, seen[#seen].turns)
    end)
  end)
end)

describe("agent event handlers", function()
  it("that fail are reported on stderr and the run goes on", function()
    local script = proc.script [[
      local ah = require "agenthost"
      local p = { chat = function() return { text = "done" } end }
      local a = ah.agent.new { name = "t", provider = p,
        on_event = function(ev) if ev.type == "turn_start" then error("the handler broke") end end }
      print(a:run("go").text)
    ]]
    local r = proc.cli { script }
    assert.equal(0, r.code, r.err)
    assert.matches("done", r.out)
    assert.matches("an on_event handler failed: .*the handler broke", r.err)
  end)

  it("end the run with cancelled when the run is cancelled while a handler waits", function()
    task.run(function()
      local db = memdb()
      local waiting = task.event()
      local gated = { name = "gated", needs_approval = true, run = function() return "ran" end }
      local a = agent.new { name = "t", memory = db, tools = { gated },
        provider = scripted { { tool_calls = { call("c1", "gated") } }, { text = "never" } },
        on_event = function(ev)
          if ev.type == "tool_start" then
            waiting:set()
            task.sleep(3600) -- waiting for the approval somewhere else
          end
        end }
      local t = task.spawn(a.run, a, "go")
      waiting:wait()
      t:cancel()
      -- Swallowed by the handler, the cancellation would leave the call
      -- waiting for its approval for ever (bounded here, to fail).
      local ok, err = task.timeout(30, t.result, t)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
      assert.is_number(err.conversation)
      -- The mark is posted (the cancelled task may not wait): flush first.
      local mem = ah.memory.open(db)
      mem:flush()
      assert.equal("failed", mem:run(err.conversation).status)
      db:close()
    end)
  end)

  it("end the run without marking it when they raise an error with unwind = true", function()
    task.run(function()
      local db = memdb()
      local ends = {}
      local a = agent.new { name = "t", memory = db, tools = { noop },
        provider = scripted { { tool_calls = { call("c1", "noop") } }, { text = "after" } },
        on_event = function(ev)
          if ev.type == "tool_start" and not ends.resumed then
            error(ah.error.new("parked", "parked by the host", { unwind = true }), 0)
          end
          if ev.type == "run_end" then ends[#ends + 1] = ev.status end
        end }
      local ok, err = pcall(a.run, a, "go")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "parked"), tostring(err))
      assert.same({ "stopped" }, ends)
      -- The conversation is still running; resumed, it runs the open call.
      assert.equal("running", ah.memory.open(db):run(err.conversation).status)
      ends.resumed = true
      local r = a:run(nil, { conversation = err.conversation })
      assert.equal("after", r.text)
      assert.equal("done", ah.memory.open(db):run(err.conversation).status)
      db:close()
    end)
  end)
end)

describe("agent tool errors", function()
  it("emits tool_error with the traceback and shows the model the message without paths", function()
    task.run(function()
      local p = scripted {
        { tool_calls = { call("1", "broken"), call("2", "honest"), call("3", "structured") } },
        { text = "ok" },
      }
      local events = {}
      local function explode() local t = nil; return t.field end
      local a = agent.new { name = "t", provider = p, on_event = function(ev)
        if ev.type == "tool_error" then events[#events + 1] = ev end
      end, tools = {
        { name = "broken", run = function() local v = explode() return v end },
        { name = "honest", raw_errors = true, run = function() error("disk full at /srv/data") end },
        { name = "structured", run = function() ah.error.raise("http", "upstream said 502") end },
      } }
      a:run("go")
      local by = {}
      for _, m in ipairs(p.requests[2].messages) do
        if m.role == "tool" then by[m.tool_call_id] = m.content end
      end
      assert.equal("error: broken failed: attempt to index a nil value (local 't')", by["1"])
      assert.matches("^error: honest failed: .*agent_conversation_spec%.lua:%d+: disk full at /srv/data$", by["2"])
      assert.equal("error: structured failed: upstream said 502", by["3"])
      assert.equal(3, #events)
      table.sort(events, function(x, y) return x.call.id < y.call.id end)
      assert.equal("broken", events[1].call.name)
      assert.matches("agent_conversation_spec%.lua:%d+: attempt to index a nil value", tostring(events[1].error))
      assert.matches("stack traceback", events[1].traceback)
      assert.matches("explode", events[1].traceback)
    end)
  end)

  it("prints a failing tool's traceback to stderr when no on_event handler is set", function()
    local script = proc.script [[
      local ah = require "agenthost"
      local n = 0
      local p = { chat = function()
        n = n + 1
        if n == 1 then return { tool_calls = { { id = "c1", name = "broken", arguments = {} } } } end
        return { text = "done" }
      end }
      local a = ah.agent.new { name = "t", provider = p, tools = {
        { name = "broken", run = function() error("the tool broke") end } } }
      print(a:run("go").text)
    ]]
    local r = proc.cli { script }
    assert.equal(0, r.code, r.err)
    assert.matches("done", r.out)
    assert.matches("tool broken failed", r.err)
    assert.matches("the tool broke", r.err)
    assert.matches("stack traceback", r.err)
  end)
end)
