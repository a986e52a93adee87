-- support_team.lua: a triage agent and two specialists.  The triage agent
-- reads each question and hands the conversation (with its history) to the
-- billing or the technical specialist, who answers it with their own
-- tools; an input guardrail refuses questions that carry a card number.
-- Every message is stored with the agent that wrote it, so a conversation
-- continued later goes straight to the specialist that has it.
--
--   agenthost scripts/examples/support_team.lua [--memory PATH] [QUESTION...]
--
-- The model comes from the environment (see agenthost.config); with none
-- set, the bundled offline mock model answers (its built-in rules know
-- this team).  Memory defaults to var/support.db.  Without questions it
-- asks three: one for billing, one for tech, and one the guardrail
-- refuses.  For each it prints the route (the handoffs), the agent that
-- answered and the answer.  Exit status 0 when every question was
-- answered or refused as expected, 1 otherwise.

local ah = require "agenthost"

local args = { ... }
local memory_path = "var/support.db"
local questions = {}
local i = 1
while i <= #args do
  if args[i] == "--memory" then
    memory_path = args[i + 1] or error("--memory needs a path")
    i = i + 2
  else
    questions[#questions + 1] = args[i]
    i = i + 1
  end
end
local default_questions = #questions == 0
if default_questions then
  questions = {
    "I was charged twice on invoice INV-2291, can I get a refund?",
    "The app shows an error and crashes when I open settings.",
    "Please charge my card 4111 1111 1111 1111 again.",
  }
end

local dir = memory_path:match("^(.*)/[^/]*$")
if dir and dir ~= "" then
  local r = ah.proc.run { cmd = "mkdir", args = { "-p", dir } }
  if r.code ~= 0 then error("cannot create " .. dir .. ": " .. r.stderr) end
end

local provider, about = ah.config.provider()
io.stderr:write(about, "\n")
local mem = ah.memory.open(memory_path)

-- The route of each run, from its events.
local route = {}
local function on_event(ev)
  if ev.type == "handoff" then route[#route + 1] = ev.from .. " -> " .. ev.to end
end

local lookup_invoice = {
  name = "lookup_invoice",
  description = "Looks up an invoice by its number or a description of it.",
  parameters = { type = "object", required = { "query" }, additionalProperties = false,
                 properties = { query = { type = "string", minLength = 1, maxLength = 400 } } },
  run = function(a)
    local number = a.query:match("INV%-%d+") or "INV-0000"
    return string.format("invoice %s: 49.00 EUR, paid twice on 2024-05-02", number)
  end,
}

local billing = ah.agent.new {
  name = "billing", provider = provider, memory = mem, on_event = on_event,
  description = "Invoices, charges, payments and refunds.",
  system = "You are the billing specialist of a software company. Look invoices up before you " ..
    "answer; answer in two sentences.",
  tools = { lookup_invoice },
}

local tech = ah.agent.new {
  name = "tech", provider = provider, memory = mem, on_event = on_event,
  description = "Crashes, errors, slowness and outages.",
  system = "You are the tech specialist of a software company. Check the host's metrics, then " ..
    "say what to do next in two sentences.",
  tools = { (require "metrics") },
}

-- A card number is 13 to 19 digits, maybe in groups.
local function no_card_numbers(input)
  local digits = input:gsub("[%s%-]", ""):match("%d%d%d%d%d%d%d%d%d%d%d%d%d+")
  if digits and #digits >= 13 and #digits <= 19 then
    return false, "the question holds what looks like a card number; never send one"
  end
  return true
end

local triage = ah.agent.new {
  name = "triage", provider = provider, memory = mem, on_event = on_event,
  system = "You are the triage agent of a software company's support. Hand billing questions " ..
    "to billing and technical ones to tech; answer anything else yourself.",
  handoffs = { billing, tech },
  input_guardrails = { { name = "no_card_numbers", run = no_card_numbers } },
}

local failures = 0
for n, q in ipairs(questions) do
  route = {}
  print(string.format("Q%d: %s", n, q))
  local ok, r = pcall(triage.run, triage, q)
  if ok then
    print(string.format("  route: %s", #route > 0 and table.concat(route, ", ") or "triage"))
    print(string.format("  %s answered (conversation %d, %d turns): %s", r.agent, r.conversation, r.turns, r.text))
  elseif ah.error.is(r, "guardrail") then
    print(string.format("  refused by %s: %s (conversation %d)", r.guardrail, r.reason, r.conversation))
    if not (default_questions and n == 3) then failures = failures + 1 end
  else
    print("  failed: " .. tostring(r))
    failures = failures + 1
  end
end

-- What is left to resume (after a crash, say): unfinished conversations.
local open = mem:conversations { agent = "triage", state = "running" }
print(string.format("unfinished conversations of triage: %d", #open))

mem:close()
ah.config.stop_mock()
if failures > 0 then os.exit(1) end
