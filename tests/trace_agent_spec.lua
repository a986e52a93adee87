-- The spans of real agents (agenthost.agent) against the mock model, in
-- both dialects: a run of several turns with its model calls, a gather of
-- tools under one turn (one failing), a sub-agent as a tool, a handoff,
-- guardrails (one tripping), a model call's tokens, finish reason, retries
-- and time to first token, a conversation continued over runs, the spans
-- stored in the agent's memory database, and the W3C traceparent of a
-- model call arriving at the mock with the chat span as its parent.
--
-- The team and its rules are tests/support/trace_team.lua.

local ah = require "agenthost"
local mockllm = require "support.mockllm"
local proc = require "support.proc"
local team = require "support.trace_team"
local span_list = require "support.spans"
local trace = ah.trace
local task = ah.task

local RULES = { rules = {} }
for i, r in ipairs(team.RULES.rules) do RULES.rules[i] = r end
table.insert(RULES.rules, { system = "plain agent", reply = "A plain answer to: {{user}}, given in enough words to stream." })
table.insert(RULES.rules, { system = "resumable agent", when = "user", tool_calls = { { name = "gate" } } })
table.insert(RULES.rules, { system = "resumable agent", when = "tool", reply = "Done: {{tool_results}}" })

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local n = 0
local function mempath()
  n = n + 1
  return string.format("%s/trace%d.db", dir, n)
end

-- Memory on the specs' backend where the suite has more than one
-- (tests/support/backend.lua: SQLite, or PostgreSQL when a pg_ spec runs
-- this file again), else SQLite.
local backend = package.searchpath("support.backend", package.path) and require("support.backend")
local memory = backend and backend.memory or ah.memory

-- What `agenthost trace` is given for the memory at path: the file, or the
-- URL of the PostgreSQL schema standing for it.
local function cli_target(path)
  if backend and backend.is_pg() then return backend.url(path) end
  return path
end

-- fn(mem) in a task, with the memory at path open.
local function with_memory(path, fn)
  return task.run(function()
    local mem = memory.open(path)
    local res = table.pack(pcall(fn, mem))
    mem.db:flush()
    mem:close()
    if not res[1] then error(res[2], 0) end
    return table.unpack(res, 2, res.n)
  end)
end

local spans -- what the running spec's spans went to (support.spans.collect)
local function collect(opts) spans = span_list.collect(opts) end
local function named(name) return span_list.named(spans, name) end
local function one(name) return span_list.one(spans, name) end
local function children(parent) return span_list.children(spans, parent) end
local names = span_list.names

local function sorted(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  table.sort(out)
  return out
end

-- Every span lies within its parent, and every parent is a span of the trace.
local function check_tree(root)
  local by = {}
  for _, s in ipairs(spans) do by[s.span_id] = s end
  for _, s in ipairs(spans) do
    assert.equal(root.trace_id, s.trace_id, s.name)
    assert.is_true(s.start_ns <= s.end_ns, s.name)
    if s ~= root then
      local p = by[s.parent_id]
      assert.truthy(p, s.name .. " has no parent in the trace")
      assert.is_true(p.start_ns <= s.start_ns and s.end_ns <= p.end_ns, s.name .. " is not within " .. p.name)
    end
  end
end

local REASONS = {
  openai = { calls = "tool_calls", stop = "stop", id = "^chatcmpl%-mock" },
  anthropic = { calls = "tool_use", stop = "end_turn", id = "^msg_mock" },
}

local function parse_tp(h)
  local t, p = tostring(h):match("^00%-(%x+)%-(%x+)%-01$")
  return t, p
end

for _, kind in ipairs(mockllm.DIALECTS) do
  describe("the spans of real agents (" .. kind .. ")", function()
    local m
    setup(function() m = mockllm.start { rules = RULES } end)
    teardown(function() m:stop() end)
    after_each(function() trace.disable() end)

    it("nest a run's turns, a gather of tools, a sub-agent, a handoff and guardrails as they ran", function()
      local path = mempath()
      collect()
      local r, sub_conversation
      with_memory(path, function(mem)
        local lead = team.new { provider = m:provider(kind), memory = mem, on_event = function(ev)
          if ev.type == "run_start" and ev.agent == "researcher" then sub_conversation = ev.conversation end
        end }
        r = lead:run(team.QUESTION)
      end)
      assert.equal(team.ANSWER, r.text)
      assert.equal(3, r.turns)
      assert.same(sorted(team.SPANS), sorted(names(spans)))
      local run = one("invoke_agent lead")
      assert.is_nil(run.parent_id)
      check_tree(run)
      assert.equal("invoke_agent", run.attributes["gen_ai.operation.name"])
      assert.equal("lead", run.attributes["gen_ai.agent.name"])
      assert.equal(tostring(r.conversation), run.attributes["gen_ai.conversation.id"])
      assert.equal(3, run.attributes["agenthost.agent.turns"])
      assert.equal(r.usage.input_tokens, run.attributes["gen_ai.usage.input_tokens"])
      assert.equal(r.usage.output_tokens, run.attributes["gen_ai.usage.output_tokens"])
      -- the run: turn 1 and turn 2 of the lead, then the closer's stretch
      local top = children(run)
      assert.same({ "turn 1", "turn 2", "handoff closer" }, names(top))
      local t1, t2, h = top[1], top[2], top[3]
      assert.same({ "lead", "lead" }, { t1.attributes["gen_ai.agent.name"], t2.attributes["gen_ai.agent.name"] })
      assert.same({ 1, 2 }, { t1.attributes["agenthost.turn.number"], t2.attributes["agenthost.turn.number"] })
      assert.is_true(t1.end_ns <= t2.start_ns)
      assert.is_true(t2.end_ns <= h.end_ns)
      assert.same({ "lead", "closer" }, { h.attributes["agenthost.handoff.from"], h.attributes["agenthost.handoff.to"] })
      assert.matches("^%S+$", h.attributes["gen_ai.tool.call.id"])
      -- the closer's turn is under its stretch, with its output guardrail
      local hk = children(h)
      assert.same({ "turn 3" }, names(hk))
      assert.equal("closer", hk[1].attributes["gen_ai.agent.name"])
      assert.same({ "chat mock-1", "guardrail plain_answer" }, names(children(hk[1])))
      local og = one("guardrail plain_answer")
      assert.same({ "plain_answer", "output", false },
        { og.attributes["agenthost.guardrail.name"], og.attributes["agenthost.guardrail.stage"],
          og.attributes["agenthost.guardrail.triggered"] })
      -- turn 1: the input guardrail, the model call and the three tools, siblings
      local k1 = children(t1)
      assert.same(sorted { "guardrail no_forbidden", "chat mock-1", "execute_tool lookup",
                           "execute_tool lookup", "execute_tool researcher" }, sorted(names(k1)))
      assert.equal("input", one("guardrail no_forbidden").attributes["agenthost.guardrail.stage"])
      local tools = {}
      for _, s in ipairs(k1) do if s.kind == "tool" then tools[#tools + 1] = s end end
      assert.equal(3, #tools)
      -- they ran at once: each started before any of them ended
      local first_end = math.huge
      for _, s in ipairs(tools) do first_end = math.min(first_end, s.end_ns) end
      for _, s in ipairs(tools) do assert.is_true(s.start_ns < first_end, s.name) end
      local failed
      for _, s in ipairs(tools) do
        assert.equal("execute_tool", s.attributes["gen_ai.operation.name"])
        assert.equal("function", s.attributes["gen_ai.tool.type"])
        assert.is_true(s.attributes["agenthost.tool.arguments_bytes"] > 2)
        if s.status == trace.STATUS_ERROR then
          assert.is_nil(failed)
          failed = s
        end
      end
      -- the failing lookup is marked, with the error the tool raised
      assert.truthy(failed, "no tool span is marked failed")
      assert.equal("lookup", failed.attributes["gen_ai.tool.name"])
      assert.equal("not_found", failed.attributes["error.type"])
      assert.matches("no such key: missing", failed.status_message)
      -- the sub-agent's run under its tool call, in a conversation of its own
      local sub = one("invoke_agent researcher")
      local rt = one("execute_tool researcher")
      assert.equal(rt.span_id, sub.parent_id)
      assert.equal(tostring(sub_conversation), sub.attributes["gen_ai.conversation.id"])
      assert.are_not.equal(run.attributes["gen_ai.conversation.id"], sub.attributes["gen_ai.conversation.id"])
      assert.same({ "turn 1" }, names(children(sub)))
      assert.same({ "chat mock-1" }, names(children(children(sub)[1])))
      assert.equal(tostring(sub_conversation), children(sub)[1].conversation)
      -- each model call: the model, tokens, finish reason, response id, retries
      local chats, lead_in, lead_out = named("chat mock-1"), 0, 0
      assert.equal(4, #chats)
      for _, c in ipairs(chats) do
        local a = c.attributes
        assert.equal(trace.CLIENT, c.span_kind)
        assert.same({ "chat", "mock-1", kind, "mock-1", 0 }, { a["gen_ai.operation.name"],
          a["gen_ai.request.model"], a["gen_ai.provider.name"], a["gen_ai.response.model"],
          a["agenthost.chat.retries"] })
        assert.matches(REASONS[kind].id, a["gen_ai.response.id"])
        assert.is_true(math.type(a["gen_ai.usage.input_tokens"]) == "integer" and a["gen_ai.usage.input_tokens"] > 0)
        assert.is_nil(a["agenthost.chat.time_to_first_token"]) -- not streamed
        if c.conversation == run.conversation then
          lead_in = lead_in + a["gen_ai.usage.input_tokens"]
          lead_out = lead_out + a["gen_ai.usage.output_tokens"]
        end
      end
      assert.equal(r.usage.input_tokens, lead_in)
      assert.equal(r.usage.output_tokens, lead_out)
      local reasons = {}
      for _, t in ipairs { t1, t2, hk[1] } do
        for _, c in ipairs(children(t)) do
          if c.kind == "chat" then reasons[#reasons + 1] = c.attributes["gen_ai.response.finish_reasons"][1] end
        end
      end
      assert.same({ REASONS[kind].calls, REASONS[kind].calls, REASONS[kind].stop }, reasons)
      -- the tokens of each model call are those stored with its answer
      local stored, rows = {}, nil
      local history = with_memory(path, function(mem)
        rows = mem.db:query("SELECT span_id, parent_span_id, name, status, conversation FROM trace_spans")
        return mem:history(r.conversation)
      end)
      for _, row in ipairs(history) do
        if row.role == "assistant" then stored[#stored + 1] = row.data.usage.input_tokens end
      end
      local per_turn = {}
      for _, t in ipairs { t1, t2, hk[1] } do
        for _, c in ipairs(children(t)) do
          if c.kind == "chat" then per_turn[#per_turn + 1] = c.attributes["gen_ai.usage.input_tokens"] end
        end
      end
      assert.same(stored, per_turn)
      -- every span is in the memory database, the sub-run's too
      assert.equal(#spans, #rows)
      local by = {}
      for _, row in ipairs(rows) do by[row.span_id] = row end
      for _, s in ipairs(spans) do
        local row = by[s.span_id]
        assert.truthy(row, s.name .. " is not stored")
        assert.equal(s.name, row.name)
        assert.equal(s.parent_id, row.parent_span_id)
        assert.equal(s.conversation, row.conversation)
      end
      assert.equal("error", by[failed.span_id].status)
    end)

    it("mark a tripped input guardrail, the model call it cancelled, the turn and the run", function()
      collect()
      local ok, err
      with_memory(mempath(), function(mem)
        local lead = team.new { provider = m:provider(kind), memory = mem, on_event = function() end }
        ok, err = pcall(lead.run, lead, "a forbidden question")
      end)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "guardrail"), tostring(err))
      assert.same(sorted { "invoke_agent lead", "turn 1", "guardrail no_forbidden", "chat mock-1" }, sorted(names(spans)))
      local run = one("invoke_agent lead")
      check_tree(run)
      local g = one("guardrail no_forbidden")
      assert.equal(one("turn 1").span_id, g.parent_id)
      assert.equal(trace.STATUS_ERROR, g.status)
      assert.is_true(g.attributes["agenthost.guardrail.triggered"])
      assert.equal("guardrail", g.attributes["error.type"])
      assert.equal("the input says forbidden", g.status_message)
      local c = one("chat mock-1")
      assert.equal(one("turn 1").span_id, c.parent_id)
      assert.equal("cancelled", c.attributes["error.type"])
      for _, s in ipairs { one("turn 1"), run } do
        assert.equal(trace.STATUS_ERROR, s.status, s.name)
        assert.equal("guardrail", s.attributes["error.type"], s.name)
      end
      assert.equal(1, run.attributes["agenthost.agent.turns"])
      assert.equal(tostring(err.conversation), run.attributes["gen_ai.conversation.id"])
    end)

    it("give a model call its retries and a streamed one its time to first token", function()
      collect()
      local r, events = nil, {}
      m:reset() -- forgets the times= counts of earlier requests
      with_memory(mempath(), function(mem)
        -- The first request of this provider gets a 500 (times=1), which
        -- it retries at once (its sleep does not wait); the reply streams
        -- 4 bytes per event, 2 ms apart.
        local p = m:provider(kind, { sleep = function() end, headers = {
          ["x-mock-fault"] = "500;times=1", ["x-mock-stream"] = "chunk=4;delay_ms=2" } })
        local a = ah.agent.new { name = "plain", provider = p, memory = mem, stream = true,
          system = "You are the plain agent.",
          on_event = function(ev) if ev.type == "model_response" then events[#events + 1] = ev end end }
        r = a:run("how are things")
      end)
      assert.matches("^A plain answer to: how are things", r.text)
      local c = one("chat mock-1")
      local a = c.attributes
      assert.equal(1, a["agenthost.chat.retries"])
      assert.equal(1, events[1].response.retries)
      local ttft = a["agenthost.chat.time_to_first_token"]
      assert.equal("number", type(ttft))
      assert.is_true(ttft > 0 and ttft * 1e9 <= c.end_ns - c.start_ns)
      assert.equal(events[1].response.time_to_first_token, ttft)
      assert.same({ REASONS[kind].stop }, a["gen_ai.response.finish_reasons"])
      assert.matches(REASONS[kind].id, a["gen_ai.response.id"])
      assert.equal("mock-1", a["gen_ai.response.model"])
      assert.same({ r.usage.input_tokens, r.usage.output_tokens },
        { a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"] })
      assert.is_true(r.usage.output_tokens > 0)
    end)

    it("mark a model call that fails after its retries, with the retries", function()
      collect()
      local ok, err
      task.run(function()
        local p = m:provider(kind, { sleep = function() end, max_retries = 2,
          headers = { ["x-mock-fault"] = "500" } })
        local a = ah.agent.new { name = "plain", provider = p, system = "You are the plain agent." }
        ok, err = pcall(a.run, a, "hello")
      end)
      assert.is_false(ok)
      local c = one("chat mock-1")
      assert.equal(trace.STATUS_ERROR, c.status)
      assert.equal("http", c.attributes["error.type"])
      assert.equal(2, c.attributes["agenthost.chat.retries"])
      assert.matches("500", c.status_message)
      assert.equal("http", one("invoke_agent plain").attributes["error.type"])
      assert.is_true(#c.events >= 1 and c.events[1].name == "exception")
    end)

    it("number a continued conversation's turns within the run and within the conversation", function()
      collect()
      with_memory(mempath(), function(mem)
        local a = ah.agent.new { name = "plain", provider = m:provider(kind), memory = mem,
          system = "You are the plain agent." }
        local r = a:run("first question")
        a:run("second question", { conversation = r.conversation })
      end)
      local turns = named("turn 1")
      assert.equal(2, #turns)
      table.sort(turns, function(x, y) return x.start_ns < y.start_ns end)
      assert.same({ 1, 2 }, { turns[1].attributes["agenthost.conversation.turn"],
                              turns[2].attributes["agenthost.conversation.turn"] })
      local runs = named("invoke_agent plain")
      assert.equal(2, #runs)
      assert.are_not.equal(runs[1].trace_id, runs[2].trace_id)
      assert.equal(runs[1].attributes["gen_ai.conversation.id"], runs[2].attributes["gen_ai.conversation.id"])
    end)

    it("are drawn by the timeline command from the memory database", function()
      local path = mempath()
      collect()
      local r
      with_memory(path, function(mem)
        local a = ah.agent.new { name = "plain", provider = m:provider(kind), memory = mem,
          system = "You are the plain agent." }
        r = a:run("hello")
      end)
      trace.disable()
      local page = dir .. "/timeline" .. n .. ".html"
      local res = proc.cli { "trace", cli_target(path), "--html", page, "--conversation", tostring(r.conversation) }
      assert.equal(0, res.code, res.err)
      assert.matches("wrote %S+: 3 spans in 1 traces", res.out)
      local html = proc.read(page)
      for _, name in ipairs { "invoke_agent plain", "turn 1", "chat mock-1", "A plain answer to: hello" } do
        assert.truthy(html:find(name, 1, true), name)
      end
      -- a memory database without spans says so
      local empty = mempath()
      with_memory(empty, function() end)
      res = proc.cli { "trace", cli_target(empty), "--html", page }
      assert.equal(1, res.code)
      assert.matches("there are no spans in", res.err)
      local secret = cli_target(empty):match("://[^:/@]*:([^@]+)@")
      if secret then assert.is_nil((res.out .. res.err):find(secret, 1, true)) end -- a URL's password is never shown
    end)

    it("send the chat span as the traceparent of the model's request", function()
      for _, http in ipairs { false, true } do
        collect { http = http }
        task.run(function()
          local a = ah.agent.new { name = "plain", provider = m:provider(kind), system = "You are the plain agent." }
          a:run("hello")
        end)
        local t, p = parse_tp(m:last().headers.traceparent)
        local c = one("chat mock-1")
        assert.equal(c.trace_id, t)
        if http then
          -- the request's own client span names the header, under the chat span
          local h = one("POST")
          assert.equal(p, h.span_id)
          assert.equal(c.span_id, h.parent_id)
          assert.equal(200, h.attributes["http.response.status_code"])
        else
          assert.equal(c.span_id, p)
          assert.equal(0, #named("POST"))
        end
        trace.disable()
      end
      -- with tracing off, no header
      task.run(function()
        local a = ah.agent.new { name = "plain", provider = m:provider(kind), system = "You are the plain agent." }
        a:run("hello")
      end)
      assert.is_nil(m:last().headers.traceparent)
    end)
  end)
end

describe("the spans of real agents", function()
  after_each(function() trace.disable() end)

  it("end with an error or a cancellation of the run, and a refused run makes none", function()
    local m <close> = mockllm.start { rules = RULES, first_byte_ms = 200 }
    collect()
    with_memory(mempath(), function(mem)
      local a = ah.agent.new { name = "plain", provider = m:provider("openai"), memory = mem,
        system = "You are the plain agent." }
      local t = task.spawn(a.run, a, "slow question")
      for _ = 1, 2000 do
        if m:stats().in_flight > 0 then break end
        task.sleep(0.005)
      end
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
      -- a conversation that does not exist: refused before the run starts
      local ok2 = pcall(a.run, a, nil, { conversation = 999 })
      assert.is_false(ok2)
    end)
    assert.same(sorted { "invoke_agent plain", "turn 1", "chat mock-1" }, sorted(names(spans)))
    for _, s in ipairs(spans) do
      assert.equal(trace.STATUS_ERROR, s.status, s.name)
      assert.equal("cancelled", s.attributes["error.type"], s.name)
    end
    assert.is_nil(trace.current())
  end)
end)

describe("the spans of a resumed run", function()
  after_each(function() trace.disable() end)

  it("put the tool calls its last turn left open under the run, before its turns", function()
    local m <close> = mockllm.start { rules = RULES }
    local path = mempath()
    collect()
    local r
    with_memory(path, function(mem)
      local opened, gate_open = task.event(), false
      local gate = { name = "gate", description = "Waits for the gate.", run = function()
        if not gate_open then
          opened:set()
          task.sleep(3600) -- the first run is cancelled here
        end
        return "the gate is open"
      end }
      local function agent()
        return ah.agent.new { name = "resumer", provider = m:provider("openai"), memory = mem,
          tools = { gate }, system = "You are the resumable agent." }
      end
      local a = agent()
      local conversation
      a.on_event = function(ev) conversation = conversation or ev.conversation end
      local t = task.spawn(a.run, a, "open the gate")
      opened:wait()
      t:cancel()
      assert.is_false((t:result()))
      gate_open = true
      collect() -- the resumed run's spans only
      r = agent():run(nil, { conversation = conversation })
    end)
    assert.equal("Done: the gate is open", r.text)
    local run = one("invoke_agent resumer")
    check_tree(run)
    assert.same({ "execute_tool gate", "turn 1" }, names(children(run)))
    assert.same({ "chat mock-1" }, names(children(one("turn 1"))))
    assert.equal(2, one("turn 1").attributes["agenthost.conversation.turn"])
  end)
end)

describe("make run's ops agent", function()
  it("stores its run's spans in its memory and prints the command that draws them", function()
    local db = dir .. "/var/memory.db"
    local r = proc.run({ "env", "-u", "OPENAI_API_KEY", "-u", "ANTHROPIC_API_KEY", "-u", "AGENTHOST_PROVIDER",
      "-u", "AGENTHOST_BASE_URL", "-u", "AGENTHOST_MODEL", "-u", "AGENTHOST_SEARCH_URL",
      "-u", "OTEL_EXPORTER_OTLP_ENDPOINT", "-u", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
      proc.bin, "scripts/examples/ops_agent.lua", "--memory", db }, { limit = 60 })
    assert.equal(0, r.code, r.err)
    local stored, where, cmd = r.out:match("%[trace: (%d+) spans stored in (%S+); open the timeline: ([^%]]+)%]")
    assert.truthy(stored, r.out)
    assert.equal(db, where)
    local conversation = r.out:match("conversation (%d+) in ")
    assert.matches(" trace " .. db:gsub("%p", "%%%0") .. " %-%-html %S+ %-%-conversation " .. conversation .. "$", cmd)
    local rows = task.run(function()
      local store = ah.store.open(db) -- the ops agent's SQLite file, whatever the specs' backend
      local list = store:query("SELECT name, kind, parent_span_id, span_id, conversation FROM trace_spans ORDER BY start_ns")
      store:close()
      return list
    end)
    assert.equal(tonumber(stored), #rows)
    -- one trace whose root is the run: its turns, model calls, tools and their requests
    local kinds = {}
    for _, row in ipairs(rows) do kinds[row.kind] = (kinds[row.kind] or 0) + 1 end
    assert.same({ agent = 1, turn = 2, chat = 2, tool = 2, http = 3 }, kinds)
    assert.equal("invoke_agent ops", rows[1].name)
    assert.is_nil(rows[1].parent_span_id)
    assert.equal(conversation, rows[1].conversation)
    -- the printed command, as printed, writes the timeline of those spans
    local f = io.popen(cmd .. " 2>&1")
    local out = f:read("a")
    assert.is_true(f:close(), out)
    assert.matches("wrote %S+: " .. stored .. " spans in 1 traces", out)
  end)
end)
