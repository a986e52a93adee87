-- ah.trace: span structure and nesting across tasks (a run with turns, a
-- gather of tool calls under one turn, a nested sub-run, a handoff), the
-- current span following the task through spawn, gather, map, race,
-- timeout and detach, errors, W3C ids, and the cost when off: no
-- allocation at all on the path the agent loop instruments, counted over
-- real agent runs against the mock model (the loop as it is, and with its
-- trace lines removed).
--
-- The agent-shaped traces here are built with the trace API directly, the
-- calls the agent loop makes (docs/observability.md); the spans of real
-- agents are in tests/trace_agent_spec.lua.

local ah = require "agenthost"
local trace = ah.trace
local task = ah.task

local spans
local function collect() spans = require("support.spans").collect() end

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

    it("adds no allocation to real agent runs: the agent loop as it is against it with every trace line removed", function()
      -- Two copies of agenthost.agent from its source: as it is, and with
      -- every line that names the trace module blanked (the lines stay, so
      -- that positions in messages match).  Each runs the team of
      -- tests/support/trace_team.lua against the mock model: a run through
      -- every traced step (turns, a gather of tools with one failing, a
      -- sub-agent as a tool, a handoff, both kinds of guardrail) and a run
      -- an input guardrail refuses.  The agents have no memory: the store's
      -- writer thread hands back its commits in batches that depend on its
      -- timing, which changes a few bytes of the loop's own bookkeeping from
      -- one count to the next on a busy machine, and the trace lines are
      -- the same with memory or without.
      -- The GC is stopped from the warm-up on, so that no collection
      -- (which shrinks stacks and tables) falls into one copy's count and
      -- not the other's; the copies take turns going first, and the least
      -- count of each over the rounds is compared.
      local mockllm = require "support.mockllm"
      local team = require "support.trace_team"
      local proc = require "support.proc"
      local path = assert(package.searchpath("agenthost.agent", package.path))
      local src = proc.read(path)
      local blanked = 0
      local untraced = src:gsub("[^\n]*\n", function(line)
        if line:find("%f[%w_]trace%f[^%w_]") then
          blanked = blanked + 1
          return "\n"
        end
      end)
      assert.is_true(blanked >= 12, "the agent loop names the trace module on " .. blanked .. " lines only")
      assert.is_nil(untraced:find("trace[.:]"))
      for _, kind in ipairs(mockllm.DIALECTS) do
        local m <close> = mockllm.start { rules = team.RULES }
        task.run(function()
          local copies = {}
          for i, text in ipairs { src, untraced } do
            local mod = assert(load(text, "=agent.lua"))()
            copies[i] = team.new { agent = mod, provider = m:provider(kind), on_event = function() end }
          end
          local started = trace.stats().started
          local function runs(lead, n)
            for _ = 1, n do
              local r = lead:run(team.QUESTION)
              assert(r.text == team.ANSWER and r.turns == 3, r.text)
              local ok, err = pcall(lead.run, lead, "a forbidden question")
              assert(not ok and ah.error.is(err, "guardrail"), tostring(err))
            end
          end
          local function bytes(lead)
            local before = collectgarbage("count")
            runs(lead, 2)
            return (collectgarbage("count") - before) * 1024
          end
          collectgarbage("collect")
          collectgarbage("stop")
          local ok, err = pcall(function()
            runs(copies[1], 3)
            runs(copies[2], 3)
            local least, seen = { math.huge, math.huge }, { {}, {} }
            for round = 1, 16 do
              local first = round % 2 == 1 and 1 or 2
              for _, i in ipairs { first, 3 - first } do
                local b = bytes(copies[i])
                seen[i][#seen[i] + 1] = string.format("%.0f", b)
                least[i] = math.min(least[i], b)
              end
            end
            assert.is_true(least[2] > 10000, "the runs allocated " .. least[2] .. " bytes: no real work")
            assert.equal(least[2], least[1], kind .. ": bytes of the loop as it is: " ..
              table.concat(seen[1], " ") .. "; with its trace lines removed: " .. table.concat(seen[2], " "))
          end)
          collectgarbage("restart")
          assert(ok, err)
          assert.is_false(trace.on)
          assert.equal(started, trace.stats().started)
        end)
      end
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

    it("make each handoff the stretch of the run the agent handed to has, its turns under it", function()
      collect()
      task.run(function()
        local run = trace.agent("triage", 1, nil)
        local t1 = trace.turn(1, "triage")
        trace.handoff("triage", "billing", "call_1") -- inside the turn that asked for it
        t1:finish()
        local t2 = trace.turn(2, "billing")
        trace.handoff("billing", "tech", "call_2")
        t2:finish()
        trace.turn(3, "tech"):finish()
        assert.equal("handoff tech", trace.current().name)
        trace.agent_end(run, { turns = 3 }, ah.error.new("timeout", "took too long"))
        assert.is_nil(trace.current())
      end)
      local run = by_name("invoke_agent triage")
      local h1, h2 = by_name("handoff billing"), by_name("handoff tech")
      assert.equal("handoff", h1.kind)
      assert.same({ "triage", "billing", "call_1" }, { h1.attributes["agenthost.handoff.from"],
        h1.attributes["agenthost.handoff.to"], h1.attributes["gen_ai.tool.call.id"] })
      -- both stretches are children of the run, one after the other
      assert.equal(run.span_id, h1.parent_id)
      assert.equal(run.span_id, h2.parent_id)
      assert.is_true(h1.end_ns <= h2.start_ns)
      assert.equal(run.span_id, by_name("turn 1").parent_id)
      assert.equal(h1.span_id, by_name("turn 2").parent_id)
      assert.equal(h2.span_id, by_name("turn 3").parent_id)
      assert.equal("billing", by_name("turn 2").attributes["gen_ai.agent.name"])
      -- the run's error ends the stretch it happened in, and only that one
      assert.equal(trace.STATUS_UNSET, h1.status)
      assert.equal(trace.STATUS_ERROR, h2.status)
      assert.equal("timeout", h2.attributes["error.type"])
      assert.equal(trace.STATUS_ERROR, run.status)
      assert.is_true(h2.end_ns <= run.end_ns)
    end)

    it("put a handoff outside a run's span as a point under the current span", function()
      collect()
      task.run(function()
        local sp = trace.start("loop of my own")
        local h = trace.handoff("a", "b")
        assert.equal(sp, trace.current())
        assert.truthy(h.end_ns)
        sp:finish()
      end)
      assert.equal(by_name("loop of my own").span_id, by_name("handoff b").parent_id)
    end)

    it("end as to-be-closed values with the error that leaves the block", function()
      collect()
      task.run(function()
        local run = trace.agent("ops", 7, nil)
        pcall(function()
          local turn <close> = trace.turn(1, "ops")
          local chat <close> = trace.chat({ model = "m", kind = "openai" })
          error(ah.error.new("http", "503 from the model", { attempts = 3 }))
        end)
        do
          local t <close> = trace.tool({ id = "c", name = "ok" })
        end
        trace.agent_end(run, { turns = 1 })
      end)
      local chat, turn = by_name("chat m"), by_name("turn 1")
      assert.equal(trace.STATUS_ERROR, chat.status)
      assert.equal("http", chat.attributes["error.type"])
      assert.equal(2, chat.attributes["agenthost.chat.retries"])
      assert.equal("openai", chat.attributes["gen_ai.provider.name"])
      assert.equal(trace.STATUS_ERROR, turn.status)
      assert.equal(0, by_name("execute_tool ok").status)
      assert.equal(0, by_name("invoke_agent ops").status)
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
