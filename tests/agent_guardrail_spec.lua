-- agenthost.agent's guardrails and streamed events against the mock model,
-- in both dialects.  Input guardrails run while the first model call is
-- in flight; a trip cancels that call, raises kind guardrail with the
-- conversation and turn, stores nothing of the answer and marks the
-- conversation failed; the refused input is never sent again.  Output
-- guardrails check the final answer before it is stored.  Streaming
-- delivers text_delta and tool_call_delta events.

local ah = require "agenthost"
local mockllm = require "support.mockllm"
local proc = require "support.proc"
local task = ah.task

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local RULES = { rules = {
  { when = "user", match = "look it up", tool_calls = { { name = "lookup", arguments = { query = "{{user}}", depth = 3 } } } },
  { when = "tool", reply = "Found: {{tool_results}}" },
  { reply = "Answer to: {{user}}" },
} }

local n = 0
local function memdb()
  n = n + 1
  return require("support.backend").db(string.format("%s/guard%d.sqlite", dir, n))
end

local function wait_for(cond)
  for _ = 1, 1000 do
    if cond() then return true end
    task.sleep(0.005)
  end
  return cond()
end

for _, kind in ipairs(mockllm.DIALECTS) do
  describe("guardrails (" .. kind .. ")", function()
    local m
    setup(function() m = mockllm.start { rules = RULES } end)
    teardown(function() m:stop() end)

    it("runs input guardrails while the model call is in flight, and a trip cancels it", function()
      task.run(function()
        local db = memdb()
        local mem = ah.memory.open(db)
        local slow = m:provider(kind, { headers = { ["x-mock-stream"] = "first_byte_ms=5000" } })
        local seen_in_flight
        local events = {}
        local a = ah.agent.new { name = "g", provider = slow, memory = db,
          on_event = function(ev) if ev.type == "guardrail" then events[#events + 1] = ev end end,
          input_guardrails = { { name = "no_secrets", run = function(input)
            -- waits until the model call is at the mock: they run at once
            seen_in_flight = wait_for(function() return m:stats().in_flight == 1 end)
            if input:find("password") then return false, "the input holds a password" end
            return true
          end } } }
        local ok, err = pcall(a.run, a, "my password is hunter2")
        assert.is_false(ok)
        assert.is_true(seen_in_flight)
        assert.is_true(ah.error.is(err, "guardrail"), tostring(err))
        assert.same({ "no_secrets", "input", "the input holds a password" }, { err.guardrail, err.stage, err.reason })
        assert.equal(1, err.turn)
        assert.is_not_nil(err.conversation)
        assert.matches("input guardrail no_secrets tripped", err.message)
        assert.is_true(wait_for(function() return m:stats().in_flight == 0 end)) -- the call was cancelled
        assert.equal(1, #events)
        assert.is_true(events[1].tripped)
        local row = mem:run(err.conversation)
        assert.equal("failed", row.status)
        assert.matches("the input holds a password", row.error)
        local roles = {}
        for i, h in ipairs(mem:history(err.conversation)) do roles[i] = h.role .. (h.name and (":" .. h.name) or "") end
        assert.same({ "user", "event:guardrail" }, roles) -- no answer stored
        -- resumed: the same refusal, no model call
        local before = m:stats().requests.total
        ok, err = pcall(a.run, a, nil, { conversation = err.conversation })
        assert.is_true(ah.error.is(err, "guardrail"), tostring(err))
        assert.equal(before, m:stats().requests.total)
        -- continued: the refused input is not sent again
        local fast = ah.agent.new { name = "g", provider = m:provider(kind), memory = db }
        local r = fast:run("what time is it", { conversation = err.conversation })
        assert.equal("Answer to: what time is it", r.text)
        assert.is_nil(m:last().body:find("hunter2", 1, true))
        assert.equal("done", mem:run(err.conversation).status)
        db:close()
      end)
    end)

    it("passes an input that every guardrail accepts, and trips on a guardrail that raises", function()
      task.run(function()
        local a = ah.agent.new { name = "g", provider = m:provider(kind), input_guardrails = {
          function(input) task.sleep(0.01) return #input < 100 end,
          { name = "polite", run = function(input) if input:find("stupid") then return "impolite" end end },
        } }
        assert.equal("Answer to: hello there", a:run("hello there").text)
        local ok, err = pcall(a.run, a, "you stupid bot")
        assert.is_true(ah.error.is(err, "guardrail"), tostring(err))
        assert.same({ "polite", "impolite" }, { err.guardrail, err.reason })
        local b = ah.agent.new { name = "g", provider = m:provider(kind), input_guardrails = {
          function() error("classifier down") end } }
        ok, err = pcall(b.run, b, "hello")
        assert.is_true(ah.error.is(err, "guardrail"), tostring(err))
        assert.equal("input guardrail 1", err.guardrail)
        assert.equal("the guardrail failed: classifier down", err.reason)
      end)
    end)

    it("checks the final answer with output guardrails before it is stored", function()
      task.run(function()
        local db = memdb()
        local mem = ah.memory.open(db)
        local a = ah.agent.new { name = "g", provider = m:provider(kind), memory = db, output_guardrails = {
          { name = "no_leaks", run = function(text, ctx)
            assert.equal("g", ctx.agent.name)
            if text:find("internal") then return false, "mentions internal systems" end
          end } } }
        local r = a:run("public question")
        assert.equal("Answer to: public question", r.text)
        local ok, err = pcall(a.run, a, "internal question")
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "guardrail"), tostring(err))
        assert.same({ "output", "no_leaks", 1 }, { err.stage, err.guardrail, err.turn })
        assert.equal("failed", mem:run(err.conversation).status)
        for _, h in ipairs(mem:history(err.conversation)) do assert.not_equal("assistant", h.role) end
        db:close()
      end)
    end)
  end)

  describe("streamed events (" .. kind .. ")", function()
    local m
    setup(function() m = mockllm.start { rules = RULES, chunk = 4 } end)
    teardown(function() m:stop() end)

    it("delivers text_delta and tool_call_delta events", function()
      task.run(function()
        local text, args, names, streamed = {}, {}, {}, {}
        local a = ah.agent.new { name = "s", provider = m:provider(kind), stream = true,
          tools = { { name = "lookup", run = function(x) return "result for " .. x.query end } },
          on_event = function(ev)
            if ev.type == "text_delta" then text[#text + 1] = ev.text
            elseif ev.type == "tool_call_delta" then
              args[ev.index] = (args[ev.index] or "") .. ev.arguments
              names[ev.index] = ev.name
              assert.is_string(ev.call_id)
            end
          end }
        local r = a:run("please look it up", { stream = function(d) streamed[#streamed + 1] = d end })
        assert.matches("^Found: result for please look it up", r.text)
        assert.is_true(#text > 3) -- in pieces of 4 bytes
        assert.equal(r.text, table.concat(text))
        assert.equal(r.text, table.concat(streamed))
        assert.same({ "lookup" }, names)
        local call = r.messages[2].tool_calls[1]
        assert.same(call.arguments, require("agenthost").json.decode(args[1]))
        assert.is_true(#args[1] > 4)
      end)
    end)
  end)
end
