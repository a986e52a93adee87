-- agenthost.agent's multi-agent parts against the mock model, in both
-- dialects: handoffs (transfer_to_<name> tools, the history handed over,
-- who wrote each message, r.agent, a continued or resumed conversation
-- staying with the agent that has it) and agents as tools (the sub-run a
-- conversation of its own linked to the call, its events under the
-- calling run, cancelled with it, resumed rather than started again).

local ah = require "agenthost"
local mockllm = require "support.mockllm"
local proc = require "support.proc"
local json = require("agenthost").json
local task = ah.task

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local RULES = { rules = {
  { system = "triage", when = "user", match = { "invoice", "refund" }, tool_calls = { { name = "transfer_to_billing" } } },
  { system = "triage", when = "user", match = { "crash", "bug" }, tool_calls = { { name = "transfer_to_tech" } } },
  { system = "billing", when = "tool", match = "Transferred to billing", reply = "Billing here: your refund is on its way." },
  { system = "billing", when = "user", reply = "Billing again: {{user}}" },
  { system = "tech", when = "tool", reply = "Tech here: please send the logs." },
  { system = "triage", reply = "Triage: how can I help?" },
  { system = "lead", when = "user", tool_calls = { { name = "researcher", arguments = { input = "facts about {{user}}" } } } },
  { system = "lead", when = "tool", reply = "Lead: {{tool_results}}" },
  { system = "researcher", reply = "Research on {{user}}" },
} }

local n = 0
local function memdb()
  n = n + 1
  return require("support.backend").db(string.format("%s/multi%d.sqlite", dir, n))
end

local function team(p, db, events)
  local function on_event(ev) if events then events[#events + 1] = ev end end
  local billing = ah.agent.new { name = "billing", provider = p, memory = db, on_event = on_event,
    description = "Invoices, refunds and charges.", system = "You are the billing specialist." }
  local tech = ah.agent.new { name = "tech", provider = p, memory = db, on_event = on_event,
    description = "Crashes and bugs.", system = "You are the tech specialist." }
  local triage = ah.agent.new { name = "triage", provider = p, memory = db, on_event = on_event,
    system = "You are the triage agent.", handoffs = { billing, tech } }
  billing.handoffs = { triage } -- a cycle: made after both exist
  return triage, billing, tech
end

for _, kind in ipairs(mockllm.DIALECTS) do
  describe("handoffs (" .. kind .. ")", function()
    local m
    setup(function() m = mockllm.start { rules = RULES } end)
    teardown(function() m:stop() end)

    it("hands the conversation with its history to the target, who answers", function()
      task.run(function()
        local db = memdb()
        local events = {}
        local triage = team(m:provider(kind), db, events)
        local r = triage:run("I want a refund for my invoice")
        assert.equal("Billing here: your refund is on its way.", r.text)
        assert.equal("billing", r.agent)
        assert.equal(2, r.turns)
        local handoffs = {}
        for _, ev in ipairs(events) do
          if ev.type == "handoff" then handoffs[#handoffs + 1] = ev end
        end
        assert.equal(1, #handoffs)
        assert.same({ "triage", "billing", "transfer_to_billing" },
          { handoffs[1].from, handoffs[1].to, handoffs[1].call.name })
        -- the billing agent's request: its own system prompt, the whole history
        local body = json.decode(m:last().body)
        local system = kind == "openai" and body.messages[1].content or body.system
        assert.equal("You are the billing specialist.", system)
        assert.matches("refund for my invoice", m:last().body)
        assert.matches("transfer_to_billing", m:last().body)
        local mem = ah.memory.open(db)
        local writers = {}
        for i, row in ipairs(mem:history(r.conversation, { events = false })) do writers[i] = row.role .. ":" .. row.agent end
        assert.same({ "user:triage", "assistant:triage", "tool:triage", "assistant:billing" }, writers)
        local row = mem:run(r.conversation)
        assert.same({ "triage", "billing", "done" }, { row.agent, row.current_agent, row.status })
        db:close()
      end)
    end)

    it("continues and resumes a conversation with the agent that has it", function()
      task.run(function()
        local db = memdb()
        local triage = team(m:provider(kind), db)
        local r = triage:run("the app has a crash")
        assert.equal("tech", r.agent)
        -- A new triage object (as after a restart) resumes: the stored answer.
        local triage2 = team(m:provider(kind), db)
        local again = triage2:run(nil, { conversation = r.conversation })
        assert.equal("Tech here: please send the logs.", again.text)
        assert.equal("tech", again.agent)
        assert.equal(0, again.turns)
        -- A billing conversation continued through triage goes to billing.
        local b = triage2:run("refund please")
        local more = triage2:run("and the invoice number?", { conversation = b.conversation })
        assert.equal("billing", more.agent)
        assert.equal("Billing again: and the invoice number?", more.text)
        assert.equal(1, more.turns)
        -- An agent that cannot reach the holder says so.
        local lone = ah.agent.new { name = "lone", provider = m:provider(kind), memory = db }
        local ok, err = pcall(lone.run, lone, "hi", { conversation = b.conversation })
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches("is with agent billing", err.message)
        assert.equal("done", ah.memory.open(db):run(b.conversation).status) -- a refused resume changes nothing
        db:close()
      end)
    end)
  end)

  describe("agents as tools (" .. kind .. ")", function()
    local m
    setup(function() m = mockllm.start { rules = RULES } end)
    teardown(function() m:stop() end)

    it("runs the sub-agent as a conversation of its own, linked to the call", function()
      task.run(function()
        local db = memdb()
        local events = {}
        local researcher = ah.agent.new { name = "researcher", provider = m:provider(kind),
          system = "You are the researcher.", description = "Finds facts." }
        local lead = ah.agent.new { name = "lead", provider = m:provider(kind), memory = db,
          system = "You are the lead.", tools = { researcher:as_tool() },
          on_event = function(ev) events[#events + 1] = ev end }
        local r = lead:run("tides")
        assert.equal("Lead: Research on facts about tides", r.text)
        local mem = ah.memory.open(db)
        local subs = mem:conversations { parent = r.conversation }
        assert.equal(1, #subs)
        assert.same({ "researcher", "done" }, { subs[1].agent, subs[1].status })
        local call = r.messages[2].tool_calls[1]
        assert.equal(call.id, subs[1].parent_call)
        assert.same({ "facts about tides" }, { mem:history(subs[1].id)[1].content })
        -- the sub-run's events reach the lead's handler, marked with the call
        local sub_events = 0
        for _, ev in ipairs(events) do
          if ev.agent == "researcher" then
            sub_events = sub_events + 1
            assert.same({ conversation = r.conversation, call_id = call.id }, { conversation = ev.parent.conversation, call_id = ev.parent.call_id })
            assert.equal(subs[1].id, ev.conversation)
          end
        end
        assert.is_true(sub_events >= 4) -- run_start, turn_start, model_start, model_response, ...
        db:close()
      end)
    end)

    it("cancels the sub-run with the caller, and resumes it instead of starting another", function()
      task.run(function()
        local db = memdb()
        local slow = m:provider(kind, { headers = { ["x-mock-stream"] = "first_byte_ms=5000" } })
        local researcher = ah.agent.new { name = "researcher", provider = slow, system = "You are the researcher." }
        local lead = ah.agent.new { name = "lead", provider = m:provider(kind), memory = db,
          system = "You are the lead.", tools = { researcher:as_tool() } }
        local t = task.spawn(lead.run, lead, "tides")
        for _ = 1, 400 do
          if m:stats().in_flight == 1 and #ah.memory.open(db):conversations { agent = "researcher" } == 1 then break end
          task.sleep(0.005)
        end
        assert.equal(1, m:stats().in_flight)
        t:cancel()
        local ok, err = t:result()
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
        for _ = 1, 400 do
          if m:stats().in_flight == 0 then break end
          task.sleep(0.005)
        end
        assert.equal(0, m:stats().in_flight)
        local mem = ah.memory.open(db)
        local sub
        for _ = 1, 400 do
          sub = mem:conversations { agent = "researcher" }[1]
          if sub.status == "failed" then break end
          task.sleep(0.005)
        end
        assert.equal("failed", sub.status)
        -- resumed with a fast researcher: the same sub-conversation goes on
        local researcher2 = ah.agent.new { name = "researcher", provider = m:provider(kind), system = "You are the researcher." }
        local lead2 = ah.agent.new { name = "lead", provider = m:provider(kind), memory = db,
          system = "You are the lead.", tools = { researcher2:as_tool() } }
        local r = lead2:run(nil, { conversation = err.conversation })
        assert.equal("Lead: Research on facts about tides", r.text)
        assert.equal(1, #mem:conversations { agent = "researcher" })
        assert.equal("done", mem:run(sub.id).status)
        db:close()
      end)
    end)
  end)
end
