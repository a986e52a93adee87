-- agenthost.agent's context management against the mock model, in both
-- dialects: a 200-turn conversation under a small window (every request
-- under the budget, every tool call sent with its result, the first
-- message a user message), with trim and with summarize, and a resumed
-- conversation (continued from another agent object, and resumed after a
-- run was cancelled inside a tool call) sending exactly the requests the
-- live one sent.

local ah = require "agenthost"
local mockllm = require "support.mockllm"
local proc = require "support.proc"
local task = ah.task

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local RULES = { rules = {
  { system = "You condense conversations", reply = "Summary: numbered steps were looked up and noted." },
  { when = "user", match = "step", tool_calls = { { name = "lookup", arguments = { q = "{{user}}" } } } },
  { when = "tool", reply = "Noted: {{tool_results}}" },
} }

local INPUTS = 100 -- two model calls each: 200 turns
local BUDGET = 1200

-- A provider that records what each request sent.
local function recording(p)
  local r = { requests = {}, redact = p.redact }
  function r.chat(_, req)
    local sent = {}
    for i, m in ipairs(req.messages) do
      sent[i] = { role = m.role, content = m.content, tool_call_id = m.tool_call_id, is_error = m.is_error }
      if m.tool_calls then
        sent[i].calls = {}
        for k, c in ipairs(m.tool_calls) do sent[i].calls[k] = { id = c.id, name = c.name } end
      end
    end
    r.requests[#r.requests + 1] = { messages = sent, system = req.system, summary = req.tools == nil and
      req.system ~= nil and req.system:find("condense", 1, true) ~= nil }
    return p:chat(req)
  end
  return r
end

local n = 0
local function db_path()
  n = n + 1
  return string.format("%s/ctx%d.sqlite", dir, n)
end

-- Checks every request: under budget (by the usage the mock reported),
-- starting with a user message, and each call with its result.
local function check_requests(requests, usages)
  for i, req in ipairs(requests) do
    local msgs = req.messages
    assert.equal("user", msgs[1].role, "request " .. i .. " does not start with a user message")
    local open = {}
    for _, m in ipairs(msgs) do
      if m.role == "assistant" then
        assert.same({}, open, "request " .. i .. ": a call without its result")
        for _, c in ipairs(m.calls or {}) do open[c.id] = true end
      elseif m.role == "tool" then
        assert.is_true(open[m.tool_call_id], "request " .. i .. ": a result without its call")
        open[m.tool_call_id] = nil
      else
        assert.same({}, open, "request " .. i .. ": a call without its result")
      end
    end
    assert.same({}, open, "request " .. i .. ": a call without its result")
  end
  for i, u in ipairs(usages) do
    assert.is_true(u <= BUDGET, string.format("request %d used %d input tokens, over %d", i, u, BUDGET))
  end
end

local function lookup(gate)
  return { name = "lookup", parameters = { type = "object", properties = { q = { type = "string" } } },
    run = function(args)
      if gate and gate.hold then
        gate.held:set()
        task.sleep(3600)
      end
      return "record for " .. args.q .. ": " .. string.rep("detail ", 25)
    end }
end

local function make_agent(p, db, strategy, gate, usages)
  return ah.agent.new { name = "clerk", provider = p, memory = db,
    system = "You are a clerk. Look up each step.", tools = { lookup(gate) },
    context = { max_tokens = BUDGET, strategy = strategy, keep_last = 4, summary_tokens = 60 },
    on_event = function(ev)
      if ev.type == "model_response" and usages then usages[#usages + 1] = ev.usage.input_tokens end
    end }
end

for _, kind in ipairs(mockllm.DIALECTS) do
  for _, strategy in ipairs { "trim", "summarize" } do
    describe(string.format("context %s (%s)", strategy, kind), function()
      it("keeps a 200-turn conversation under budget, pairs intact, and resumes it identically", function()
        -- The live conversation, on a fresh mock.
        local live
        do
          local m <close> = mockllm.start { rules = RULES }
          task.run(function()
            local p = recording(m:provider(kind))
            local db = require("support.backend").db(db_path())
            local usages = {}
            local a = make_agent(p, db, strategy, nil, usages)
            local r = a:run("step 1")
            for i = 2, INPUTS do
              r = a:run("step " .. i, { conversation = r.conversation })
              assert.equal(2, r.turns)
            end
            assert.matches("^Noted: record for step " .. INPUTS, r.text)
            local agent_requests = {}
            for _, req in ipairs(p.requests) do
              if not req.summary then agent_requests[#agent_requests + 1] = req end
            end
            assert.equal(2 * INPUTS, #agent_requests)
            check_requests(p.requests, usages)
            -- the window did slide: the last request holds far fewer messages than the conversation
            assert.is_true(#agent_requests[#agent_requests].messages < 60)
            if strategy == "summarize" then
              assert.is_true(#agent_requests < #p.requests, "no summary was made")
              assert.matches("^Summary of the earlier conversation:\nSummary:",
                agent_requests[#agent_requests].messages[1].content)
              local summaries = db:first("SELECT count(*) AS n FROM messages WHERE role = 'summary'").n
              assert.equal(#p.requests - #agent_requests, summaries)
            end
            live = p.requests
            db:close()
          end)
        end
        -- The same inputs on another fresh mock: half of them from one agent
        -- object, the rest from a new one, the first of those cancelled
        -- inside its tool call and resumed.
        local m <close> = mockllm.start { rules = RULES }
        task.run(function()
          local p = recording(m:provider(kind))
          local path = db_path()
          local db = require("support.backend").db(path)
          local a = make_agent(p, db, strategy)
          local r = a:run("step 1")
          for i = 2, INPUTS // 2 do r = a:run("step " .. i, { conversation = r.conversation }) end
          local conversation = r.conversation
          db:close()
          db = require("support.backend").db(path)
          local gate = { hold = true, held = task.event() }
          local b = make_agent(p, db, strategy, gate)
          local t = task.spawn(b.run, b, "step " .. (INPUTS // 2 + 1), { conversation = tostring(conversation) })
          gate.held:wait()
          t:cancel()
          local ok, err = t:result()
          assert.is_false(ok)
          assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
          gate.hold = false
          r = b:run(nil, { conversation = conversation })
          assert.equal(1, r.turns)
          for i = INPUTS // 2 + 2, INPUTS do r = b:run("step " .. i, { conversation = conversation }) end
          assert.equal(#live, #p.requests)
          for i = 1, #live do
            assert.same(live[i], p.requests[i], "request " .. i .. " differs from the live one")
          end
          db:close()
        end)
      end)
    end)
  end
end

describe("context over budget", function()
  for _, strategy in ipairs { "trim", "summarize" } do
    it("sends the last turn whole when it alone is over budget, and says so (" .. strategy .. ")", function()
      task.run(function()
        local sent = {}
        local p = { chat = function(_, req)
          sent[#sent + 1] = req
          if req.system and req.system:find("condense") then return { text = "short summary" } end
          if #sent == 1 then return { tool_calls = { { id = "c1", name = "big", arguments = {} } } } end
          return { text = "read it" }
        end }
        local events = {}
        local a = ah.agent.new { name = "b", provider = p, context = { max_tokens = 200, strategy = strategy },
          tools = { { name = "big", run = function() return string.rep("x", 4000) end } },
          on_event = function(ev) if ev.type == "context" then events[#events + 1] = ev end end }
        local r = a:run("read the big file")
        assert.equal("read it", r.text)
        local last = sent[#sent]
        assert.equal("tool", last.messages[#last.messages].role) -- the result is there
        assert.equal("assistant", last.messages[#last.messages - 1].role) -- with its call
        assert.equal("user", last.messages[1].role)
        assert.is_true(events[#events].over_budget)
      end)
    end)
  end
end)

describe("context settings", function()
  it("refuses bad context settings", function()
    for _, c in ipairs {
      { strategy = "trim" }, { max_tokens = 0 }, { max_tokens = 10, strategy = "drop" },
      { max_tokens = 10, keep_last = -1 }, { max_tokens = 10, provider = 3 }, "big",
    } do
      local ok, err = pcall(ah.agent.new, { name = "x", provider = {}, context = c })
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    end
  end)
end)
