-- ah.trace: span structure and nesting across tasks (a run with turns, a
-- gather of tool calls under one turn, a nested sub-run, a handoff), the
-- current span following the task through spawn, gather, map, race,
-- timeout and detach, errors, W3C ids, and the cost when off: no
-- allocation at all on the path the agent loop instruments.
--
-- The agent-shaped traces are built with the trace API directly, the
-- calls the agent loop makes at its events (docs/observability.md).

local ah = require "agenthost"
local trace = ah.trace
local task = ah.task

local spans
local function collect()
  spans = {}
  trace.enable { otlp = false, on_span = function(s) spans[#spans + 1] = s end }
end

local function by_name(name)
  for _, s in ipairs(spans) do if s.name == name then return s end end
  error("no span named " .. name)
end

local function all_named(prefix)
  local out = {}
  for _, s in ipairs(spans) do
    if s.name:sub(1, #prefix) == prefix then out[#out + 1] = s end
  end
  return out
end

describe("ah.trace", function()
  after_each(function() trace.disable() end)

  describe("while off", function()
    it("returns the inert span everywhere and keeps no current span", function()
      assert.is_false(trace.on)
      task.run(function()
        assert.equal(trace.NOOP, trace.start("x"))
        assert.equal(trace.NOOP, trace.agent("a", 1))
        assert.equal(trace.NOOP, trace.turn(1))
        assert.equal(trace.NOOP, trace.chat("m", "openai"))
        assert.equal(trace.NOOP, trace.tool({ name = "t" }))
        assert.equal(trace.NOOP, trace.handoff("a", "b"))
        assert.equal(trace.NOOP, trace.guardrail("g", "input"))
        assert.is_nil(trace.current())
        assert.is_nil(trace.traceparent())
        assert.equal(3, trace.run("x", nil, function() return 3 end))
      end)
    end)

    it("allocates nothing on the instrumented path of an agent step (a count of GC bytes)", function()
      local call = { id = "c1", name = "metrics", arguments = {}, raw_arguments = "{}" }
      local resp = { text = "", usage = { input_tokens = 3, output_tokens = 2 }, finish_reason = "stop" }
      local res = { content = "ok" }
      local result = { turns = 1, usage = resp.usage }
      local function step(i)
        local run = trace.agent("ops", i, nil)
        local turn = trace.turn(i)
        local g = trace.guardrail("input-check", "input")
        g:finish()
        local chat = trace.chat("mock-1", "openai")
        chat:set("gen_ai.request.max_tokens", 100)
        trace.chat_end(chat, resp, nil, nil)
        local tool = trace.tool(call)
        tool:add_event("progress")
        trace.tool_end(tool, res, nil)
        local h = trace.handoff("ops", "sub")
        h:finish()
        turn:set("k", i):finish()
        trace.agent_end(run, result, nil)
        if trace.on or trace.current() or trace.traceparent() then error("tracing is on") end
      end
      task.run(function()
        for i = 1, 100 do step(i) end -- warm up: every string and upvalue exists
        collectgarbage("collect")
        collectgarbage("stop")
        local before = collectgarbage("count")
        for i = 1, 20000 do step(i) end
        local after = collectgarbage("count")
        collectgarbage("restart")
        assert.equal(0, (after - before) * 1024)
      end)
    end)

    it("adds no allocation to an HTTP request once disabled (bytes per request as before enabling)", function()
      local httpd = require "support.httpd"
      local srv <close> = httpd.start()
      local url = srv.url("/fixed?size=10")
      local function bytes(n)
        collectgarbage("collect")
        collectgarbage("stop")
        local before = collectgarbage("count")
        for _ = 1, n do ah.http.request { url = url } end
        local after = collectgarbage("count")
        collectgarbage("restart")
        return (after - before) * 1024
      end
      task.run(function()
        bytes(20)
        local plain = bytes(50)
        trace.enable { otlp = false }
        trace.run("warm", nil, function() ah.http.request { url = url } end)
        trace.disable()
        bytes(20)
        local disabled = bytes(50)
        assert.equal(plain, disabled)
      end)
    end)
  end)

  describe("spans", function()
    it("have W3C-sized hex ids, one trace per root, and times in order", function()
      collect()
      task.run(function()
        local a = trace.start("a")
        local b = trace.start("b")
        b:finish()
        a:finish()
        local c = trace.start("c")
        c:finish()
      end)
      local a, b, c = by_name("a"), by_name("b"), by_name("c")
      assert.matches("^%x+$", a.trace_id)
      assert.equal(32, #a.trace_id)
      assert.equal(16, #a.span_id)
      assert.equal(a.trace_id, b.trace_id)
      assert.equal(a.span_id, b.parent_id)
      assert.is_nil(a.parent_id)
      assert.are_not.equal(a.trace_id, c.trace_id)
      assert.is_true(a.start_ns <= b.start_ns and b.end_ns <= a.end_ns)
      -- Unix nanoseconds, near the wall clock
      assert.is_true(math.abs(a.start_ns / 1e9 - ah.wallclock()) < 60)
    end)

    it("give a run its turns, a gather of tool calls under one turn, and a nested sub-run", function()
      collect()
      task.run(function()
        local run = trace.agent("ops", 41, nil)
        for turn_no = 1, 2 do
          local turn = trace.turn(turn_no)
          local chat = trace.chat("mock-1", "openai")
          trace.chat_end(chat, { usage = { input_tokens = 10 * turn_no, output_tokens = 4 },
                                 finish_reason = turn_no == 1 and "tool_calls" or "stop",
                                 raw = { id = "r" .. turn_no, model = "mock-1-2024" } })
          if turn_no == 1 then
            -- Three tools at once; each sleeps a different time before it
            -- starts a child span, so their steps interleave.
            task.map({ 3, 1, 2 }, function(d, i)
              local t = trace.tool({ id = "call" .. i, name = "tool" .. i, raw_arguments = '{"q":1}' })
              task.sleep(d * 0.005)
              if i == 2 then
                local sub = trace.agent("researcher", 42, nil)
                local st = trace.turn(1)
                trace.chat_end(trace.chat("mock-1", "openai"), { usage = { input_tokens = 1, output_tokens = 1 } })
                st:finish()
                trace.agent_end(sub, { turns = 1, usage = { input_tokens = 1, output_tokens = 1 } })
              else
                trace.start("step of tool" .. i):finish()
              end
              trace.tool_end(t, { content = "done" })
            end, { limit = 3 })
          end
          turn:finish()
        end
        trace.agent_end(run, { turns = 2, usage = { input_tokens = 30, output_tokens = 8 } })
        assert.is_nil(trace.current())
      end)
      local run = by_name("invoke_agent ops")
      local turns = all_named("turn ")
      assert.equal("invoke_agent", run.attributes["gen_ai.operation.name"])
      assert.equal("ops", run.attributes["gen_ai.agent.name"])
      assert.equal("41", run.attributes["gen_ai.conversation.id"])
      assert.equal(30, run.attributes["gen_ai.usage.input_tokens"])
      local top_turns = {}
      for _, t in ipairs(turns) do
        if t.parent_id == run.span_id then top_turns[#top_turns + 1] = t end
      end
      assert.equal(2, #top_turns)
      local turn1 = top_turns[1].attributes["agenthost.turn.number"] == 1 and top_turns[1] or top_turns[2]
      local tools = all_named("execute_tool ")
      assert.equal(3, #tools)
      for i = 1, 3 do
        local t = by_name("execute_tool tool" .. i)
        assert.equal(turn1.span_id, t.parent_id)
        assert.equal(run.trace_id, t.trace_id)
        assert.equal("tool" .. i, t.attributes["gen_ai.tool.name"])
        assert.equal("call" .. i, t.attributes["gen_ai.tool.call.id"])
        assert.equal("execute_tool", t.attributes["gen_ai.operation.name"])
        assert.equal(7, t.attributes["agenthost.tool.arguments_bytes"])
        assert.equal("41", t.conversation)
      end
      -- each tool's own steps nest under that tool, though the tools ran at once
      assert.equal(by_name("execute_tool tool1").span_id, by_name("step of tool1").parent_id)
      assert.equal(by_name("execute_tool tool3").span_id, by_name("step of tool3").parent_id)
      local sub = by_name("invoke_agent researcher")
      assert.equal(by_name("execute_tool tool2").span_id, sub.parent_id)
      assert.equal("42", sub.conversation)
      local chats = all_named("chat ")
      assert.equal(3, #chats)
      local sub_turn
      for _, t in ipairs(turns) do if t.parent_id == sub.span_id then sub_turn = t end end
      assert.truthy(sub_turn)
      local c1
      for _, c in ipairs(chats) do
        if c.attributes["gen_ai.response.id"] == "r1" then c1 = c end
      end
      assert.equal(turn1.span_id, c1.parent_id)
      assert.equal(3, c1.span_kind) -- CLIENT
      assert.equal("mock-1", c1.attributes["gen_ai.request.model"])
      assert.equal("openai", c1.attributes["gen_ai.provider.name"])
      assert.equal("mock-1-2024", c1.attributes["gen_ai.response.model"])
      assert.equal(10, c1.attributes["gen_ai.usage.input_tokens"])
      assert.equal(4, c1.attributes["gen_ai.usage.output_tokens"])
      assert.same({ "tool_calls" }, c1.attributes["gen_ai.response.finish_reasons"])
      -- every child lies within its parent
      local byid = {}
      for _, s in ipairs(spans) do byid[s.span_id] = s end
      for _, s in ipairs(spans) do
        local p = s.parent_id and byid[s.parent_id]
        if p then assert.is_true(p.start_ns <= s.start_ns and s.end_ns <= p.end_ns, s.name) end
      end
    end)

    it("put a handoff between the agent that hands off and the run it starts", function()
      collect()
      task.run(function()
        local run = trace.agent("triage", 1, nil)
        local turn = trace.turn(1)
        local h = trace.handoff("triage", "billing")
        local run2 = trace.agent("billing", 1, nil)
        trace.agent_end(run2, { turns = 1 })
        h:finish()
        turn:finish()
        trace.agent_end(run, { turns = 1 })
      end)
      local h = by_name("handoff billing")
      assert.equal("handoff", h.kind)
      assert.equal("triage", h.attributes["agenthost.handoff.from"])
      assert.equal("billing", h.attributes["agenthost.handoff.to"])
      assert.equal(by_name("turn 1").span_id, h.parent_id)
      assert.equal(h.span_id, by_name("invoke_agent billing").parent_id)
    end)

    it("follow the task into spawn, race, timeout and detach, and not beyond", function()
      collect()
      local seen = {}
      task.run(function()
        local root = trace.start("root")
        task.spawn(function() seen.spawn = trace.current() end):join()
        task.race(function() seen.race = trace.current() end, function() task.sleep(1) end)
        task.timeout(5, function() seen.timeout = trace.current() end)
        local done = task.event()
        task.detach(function() seen.detach = trace.current(); done:set() end)
        done:wait()
        task.gather(function() seen.gather = trace.current() end)
        root:finish()
        task.spawn(function() seen.after = trace.current() or false end):join()
        seen.root = root
      end)
      for _, k in ipairs { "spawn", "race", "timeout", "detach", "gather" } do
        assert.equal(seen.root, seen[k], k)
      end
      assert.is_false(seen.after)
    end)

    it("leave no current span on a reused task thread, even when a traced child was cancelled", function()
      collect()
      local stale = 0
      task.run(function()
        local root = trace.start("root")
        local t = task.spawn(function()
          trace.start("never finished")
          task.sleep(10)
        end)
        task.yield()
        t:cancel()
        pcall(t.join, t)
        task.gather(function() trace.start("left open") end, function() end)
        root:finish()
        -- The threads of finished internal tasks are reused by the next ones.
        for _ = 1, 20 do
          task.gather(function() if trace.current() then stale = stale + 1 end end,
                      function() if trace.current() then stale = stale + 1 end end)
        end
      end)
      assert.equal(0, stale)
    end)

    it("mark errors: status, error.type, an exception event, and the error raised again", function()
      collect()
      local err
      task.run(function()
        local ok, e = pcall(trace.run, "failing", { kind = "span" }, function()
          ah.error.raise("timeout", "it took too long")
        end)
        assert.is_false(ok)
        err = e
        local t = trace.tool({ name = "shell" })
        trace.tool_end(t, { is_error = true, content = "error: exit 2" })
        trace.start("plain"):finish("a string error")
      end)
      assert.is_true(ah.error.is(err, "timeout"))
      local f = by_name("failing")
      assert.equal(trace.STATUS_ERROR, f.status)
      assert.equal("timeout", f.attributes["error.type"])
      assert.equal("exception", f.events[1].name)
      assert.matches("it took too long", f.events[1].attributes["exception.message"])
      local t = by_name("execute_tool shell")
      assert.equal(trace.STATUS_ERROR, t.status)
      assert.equal("tool_error", t.attributes["error.type"])
      assert.equal("error: exit 2", t.status_message)
      assert.equal("error", by_name("plain").attributes["error.type"])
    end)

    it("join a remote parent given as a traceparent, and refuse a malformed one", function()
      collect()
      local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
      task.run(function()
        trace.start("from gateway", { parent = tp }):finish()
        trace.start("fresh", { parent = "00-00000000000000000000000000000000-b7ad6b7169203331-01" }):finish()
      end)
      local s = by_name("from gateway")
      assert.equal("0af7651916cd43dd8448eb211c80319c", s.trace_id)
      assert.equal("b7ad6b7169203331", s.parent_id)
      assert.is_nil(by_name("fresh").parent_id)
      assert.is_nil(trace.parse_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
      assert.is_nil(trace.parse_traceparent("00-0af765-b7ad6b7169203331-01"))
    end)

    it("report a failing on_span function once and count it; the spans go on", function()
      local n = 0
      trace.enable { otlp = false, on_span = function() n = n + 1; error("sink down") end }
      task.run(function()
        for _ = 1, 3 do trace.start("x"):finish() end
      end)
      assert.equal(3, n)
      assert.equal(3, trace.stats().sink_errors)
    end)

    it("restore the task functions when disabled", function()
      local spawn, gather = task.spawn, task.gather
      trace.enable { otlp = false }
      assert.are_not.equal(spawn, task.spawn)
      trace.disable()
      assert.equal(spawn, task.spawn)
      assert.equal(gather, task.gather)
    end)

    it("refuse bad arguments with invalid_argument errors that say what to pass", function()
      trace.enable { otlp = false }
      local ok, e = pcall(trace.start, 42)
      assert.is_false(ok)
      assert.is_true(ah.error.is(e, "invalid_argument"))
      assert.matches("name must be a string", e.message)
      ok, e = pcall(trace.start, "x", { parent = 5 })
      assert.is_false(ok)
      assert.matches("parent must be a span", e.message)
      ok, e = pcall(trace.enable, { store = 5 })
      assert.is_false(ok)
      assert.matches("store must be an ah.store database", e.message)
      ok, e = pcall(trace.enable, { http = "yes" })
      assert.is_false(ok)
      assert.matches("http must be true or false", e.message)
    end)
  end)
end)
