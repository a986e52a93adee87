-- agenthost.agent: the loop against a scripted provider (the model's turns
-- are given; what the agent sends is recorded), with real tools, memory,
-- approvals, max_turns, cancellation and resume after kill -9.

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
  return require("support.backend").db(string.format("%s/agent%d.sqlite", dir, n))
end

describe("agenthost.agent", function()
  it("runs tool calls concurrently and feeds their results to the next turn", function()
    task.run(function()
      local log = {}
      local function slow(name)
        return { name = name, parameters = { type = "object", properties = {} },
          run = function()
            log[#log + 1] = "start " .. name
            task.sleep(0.05)
            log[#log + 1] = "end " .. name
            return name .. " ok"
          end }
      end
      local p = scripted {
        { text = nil, tool_calls = { call("c1", "a"), call("c2", "b") },
          usage = { input_tokens = 10, output_tokens = 5 } },
        { text = "done", usage = { input_tokens = 20, output_tokens = 7 } },
      }
      local events = {}
      local a = agent.new { name = "t", provider = p, system = "sys", tools = { slow "a", slow "b" },
                            on_event = function(ev) events[#events + 1] = ev.type end }
      local r = a:run("go")
      assert.equal("done", r.text)
      assert.equal(2, r.turns)
      assert.same({ input_tokens = 30, output_tokens = 12 }, r.usage)
      -- both started before either ended
      assert.same({ "start a", "start b" }, { log[1], log[2] })
      local second = p.requests[2].messages
      assert.equal(4, #second)
      assert.same({ role = "tool", tool_call_id = "c1", name = "a", content = "a ok" },
        { role = second[3].role, tool_call_id = second[3].tool_call_id, name = second[3].name,
          content = second[3].content })
      assert.equal("c2", second[4].tool_call_id)
      assert.equal("sys", p.requests[1].system)
      assert.equal(2, #p.requests[1].tools)
      assert.same({ "run_start", "turn_start", "model_start", "model_response", "tool_start",
                    "tool_start", "tool_end", "tool_end", "turn_end", "turn_start", "model_start",
                    "model_response", "turn_end", "run_end" }, events)
    end)
  end)

  it("feeds every tool error back to the model", function()
    task.run(function()
      local p = scripted {
        { tool_calls = {
            call("1", "missing"),
            call("2", "add", { a = "x" }),
            { id = "3", name = "add", raw_arguments = "{a:", error = "bad json" },
            call("4", "fail"),
            call("5", "slow"),
        } },
        { text = "recovered" },
      }
      local a = agent.new { name = "t", provider = p, on_event = function() end, tools = {
        { name = "add", parameters = { type = "object", required = { "a" },
            properties = { a = { type = "number" } } }, run = function(x) return x.a end },
        { name = "fail", run = function() error("broken pipe") end },
        { name = "slow", timeout = 0.02, run = function() task.sleep(5) end },
      } }
      local r = a:run("go")
      assert.equal("recovered", r.text)
      local msgs = p.requests[2].messages
      local by = {}
      for _, m in ipairs(msgs) do
        if m.role == "tool" then by[m.tool_call_id] = m end
      end
      for id = 1, 5 do assert.is_true(by[tostring(id)].is_error, "call " .. id) end
      assert.matches("no tool named", by["1"].content)
      assert.matches("argument a must be a number", by["2"].content)
      assert.matches("not valid JSON", by["3"].content)
      assert.matches("broken pipe", by["4"].content)
      assert.matches("did not finish within", by["5"].content)
    end)
  end)

  it("raises max_turns with the partial run", function()
    task.run(function()
      local loop = function() return { tool_calls = { call(tostring(math.random(1e9)), "noop") } } end
      local a = agent.new { name = "t", provider = scripted { loop, loop, loop }, max_turns = 3,
                            tools = { { name = "noop", run = function() return "ok" end } } }
      local ok, err = pcall(a.run, a, "go")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "max_turns"), tostring(err))
      assert.equal(3, err.partial.turns)
      assert.equal(7, #err.partial.messages) -- user + 3 x (assistant + tool)
    end)
  end)

  it("waits for approval without stopping other agents, and honours a refusal", function()
    task.run(function()
      local ran = 0
      local tools = { { name = "deploy", needs_approval = true, run = function() ran = ran + 1 return "deployed" end } }
      local p1 = scripted { { tool_calls = { call("d1", "deploy") } }, { text = "first" } }
      local p2 = scripted { { tool_calls = { call("d2", "deploy") } }, { text = "second" } }
      local asked = {}
      local function on_event(ev)
        if ev.type == "tool_start" and ev.needs_approval then asked[#asked + 1] = ev.call.id end
      end
      local a1 = agent.new { name = "a1", provider = p1, tools = tools, on_event = on_event }
      local a2 = agent.new { name = "a2", provider = p2, tools = tools, on_event = on_event }
      local t1 = task.spawn(a1.run, a1, "go")
      local t2 = task.spawn(a2.run, a2, "go")
      local other = task.spawn(function() task.sleep(0.01) return "still running" end)
      assert.equal("still running", other:join())
      assert.same({ "d1", "d2" }, asked)
      assert.is_false(t1:done())
      assert.is_true(a1:approve("d1", true))
      assert.is_true(a2:approve("d2", false))
      assert.equal("first", t1:join().text)
      assert.equal("second", t2:join().text)
      assert.equal(1, ran)
      local refused = p2.requests[2].messages[3]
      assert.is_true(refused.is_error)
      assert.matches("did not approve", refused.content)
    end)
  end)

  it("cancelling a run cancels its tool calls", function()
    task.run(function()
      local cancelled, started, both = 0, 0, task.event()
      local tool = { name = "wait", run = function()
        started = started + 1
        if started == 2 then both:set() end
        local ok, err = pcall(task.sleep, 10)
        if not ok then cancelled = cancelled + 1 error(err, 0) end
      end }
      local a = agent.new { name = "t", tools = { tool },
        provider = scripted { { tool_calls = { call("1", "wait"), call("2", "wait") } } } }
      local t = task.spawn(a.run, a, "go")
      both:wait() -- both calls are running
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.equal(2, cancelled)
    end)
  end)

  it("persists every message and resumes a conversation", function()
    task.run(function()
      local db = memdb()
      local p = scripted { { tool_calls = { call("c1", "echo", { s = "hi" }) } }, { text = "said hi" } }
      local a = agent.new { name = "t", provider = p, memory = db, tools = {
        { name = "echo", run = function(x) return x.s end } } }
      local r = a:run("say hi")
      local mem = ah.memory.open(db)
      local h = mem:history(r.conversation)
      assert.same({ "user", "assistant", "tool", "assistant" }, { h[1].role, h[2].role, h[3].role, h[4].role })
      assert.same({ { id = "c1", name = "echo", arguments = { s = "hi" } } }, h[2].data.tool_calls)
      assert.equal("done", mem:run(r.conversation).status)
      -- a follow-up on the same conversation sees the whole history
      local p2 = scripted { { text = "again" } }
      local b = agent.new { name = "t", provider = p2, memory = db }
      local r2 = b:run("once more", { conversation = r.conversation })
      assert.equal(1, r2.turns) -- the model calls of this run
      assert.equal(1, r2.usage.input_tokens + r2.usage.output_tokens == 0 and 1 or 0)
      assert.equal(5, #p2.requests[1].messages)
      db:close()
    end)
  end)

  it("resumes after kill -9 without running a finished tool again", function()
    local db_path = dir .. "/crash.sqlite"
    local tool_log = dir .. "/tools.log"
    local script = proc.script(string.format([[
      local ah = require "agenthost"
      local db = %s
      local conversation = tonumber((...))
      local function log(s)
        local f = assert(io.open(%q, "a")) f:write(s, "\n") f:close()
      end
      local turns = {
        { tool_calls = { { id = "fast", name = "fast", arguments = {} },
                         { id = "slow", name = "slow", arguments = {} } } },
        { text = "finished" },
      }
      local n = 0
      local p = { chat = function(_, req)
        n = n + 1
        if conversation then n = 2 end -- resumed: the first turn is in memory
        return turns[n]
      end }
      local a = ah.agent.new { name = "crash", provider = p, memory = db, tools = {
        { name = "fast", run = function() log("fast") return "fast done" end },
        { name = "slow", run = function()
            log("slow")
            if not conversation then
              print("waiting") io.stdout:flush()
              ah.task.sleep(3600)
            end
            return "slow done"
          end },
      } }
      local r = a:run(not conversation and "go" or nil, { conversation = conversation })
      print("answer=" .. r.text .. " turns=" .. r.turns)
    ]], require("support.backend").db_source(db_path), tool_log))
    local p = proc.spawn_cli { script }
    assert.is_true(p:wait_output("waiting", 20), p:err())
    -- wait until the fast tool's result is committed, then kill
    local conversation
    task.run(function()
      local db = require("support.backend").db(db_path)
      for _ = 1, 400 do
        local row = db:first("SELECT run_id FROM messages WHERE role = 'tool' AND tool_call_id = 'fast'")
        if row then conversation = row.run_id break end
        task.sleep(0.005)
      end
      db:close()
    end)
    assert.is_not_nil(conversation, "the fast tool's result was never stored")
    p:signal("KILL")
    assert.equal(137, p:wait(10))
    local r = proc.cli { script, tostring(conversation) }
    assert.equal(0, r.code, r.err)
    assert.matches("answer=finished turns=1", r.out) -- the resumed run made one model call
    local runs = {}
    for line in proc.read(tool_log):gmatch("[^\n]+") do runs[line] = (runs[line] or 0) + 1 end
    assert.equal(1, runs.fast)
    assert.equal(2, runs.slow) -- it never finished the first time
  end)

  it("runs against a real provider and the mock model, tools concurrently", function()
    local mock = require("support.mockllm").start { delay_ms = 1 }
    task.run(function()
      for _, kind in ipairs { "openai", "anthropic" } do
        local p = ah.llm.provider { kind = kind, model = "mock-1", api_key = "k",
          base_url = kind == "openai" and mock.base .. "/v1" or mock.base }
        local started, running, overlap = {}, 0, 0
        local function slow(name)
          return { name = name, run = function()
            running = running + 1
            overlap = math.max(overlap, running)
            task.sleep(0.02)
            running = running - 1
            return name .. ": p99 latency 840 ms on db-2"
          end }
        end
        local a = agent.new { name = "ops-" .. kind, provider = p,
          tools = { slow "metrics", slow "web_search" },
          on_event = function(ev) if ev.type == "tool_start" then started[#started + 1] = ev.call.name end end }
        local r = a:run("Analyze system performance anomalies")
        assert.equal(2, r.turns)
        table.sort(started)
        assert.same({ "metrics", "web_search" }, started)
        assert.equal(2, overlap)
        assert.matches("840 ms", r.text) -- the answer quotes the tool results
        assert.is_true(r.usage.input_tokens > 0 and r.usage.output_tokens > 0)
      end
    end)
    mock:stop()
  end)

  it("cancelling mid-turn leaves no request in flight at the mock", function()
    local mock = require("support.mockllm").start { first_byte_ms = 5000 }
    task.run(function()
      local p = ah.llm.provider { kind = "openai", model = "mock-1", api_key = "k", base_url = mock.base .. "/v1" }
      local a = agent.new { name = "c", provider = p }
      local t = task.spawn(a.run, a, "Analyze system performance anomalies", { stream = function() end })
      for _ = 1, 400 do
        if mock:stats().in_flight == 1 then break end
        task.sleep(0.005)
      end
      assert.equal(1, mock:stats().in_flight)
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
      for _ = 1, 400 do
        if mock:stats().in_flight == 0 then break end
        task.sleep(0.005)
      end
      assert.equal(0, mock:stats().in_flight)
    end)
    mock:stop()
  end)

  it("answers the open tool calls before new input when a run resumes", function()
    task.run(function()
      local db = memdb()
      local p = scripted { { tool_calls = { call("c1", "wait") } } }
      local a = agent.new { name = "t", provider = p, memory = db, tools = {
        { name = "wait", run = function() task.sleep(10) return "late" end } } }
      local t = task.spawn(a.run, a, "start")
      for _ = 1, 200 do
        if #p.requests == 1 then break end
        task.sleep(0.005)
      end
      task.sleep(0.01)
      t:cancel()
      pcall(t.join, t)
      local conversation = ah.memory.open(db):runs("t")[1].id
      local p2 = scripted { { text = "done" } }
      local b = agent.new { name = "t", provider = p2, memory = db, tools = {
        { name = "wait", run = function() return "now" end } } }
      b:run("and also this", { conversation = conversation })
      local roles = {}
      for i, m in ipairs(p2.requests[1].messages) do roles[i] = m.role end
      assert.same({ "user", "assistant", "tool", "user" }, roles)
      db:close()
    end)
  end)

  it("refuses bad settings", function()
    for _, cfg in ipairs {
      {}, { name = "x" }, { name = "x", provider = {}, max_turns = 0 },
      { name = "x", provider = {}, tool_concurrency = 1.5 },
      { name = "x", provider = {}, on_event = 3 },
    } do
      local ok, err = pcall(agent.new, cfg)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    end
  end)
end)
