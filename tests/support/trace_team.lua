-- A team of real agents (agenthost.agent) for the specs and the benchmark
-- of tracing, with the mock model's rules that drive it: one run of the
-- lead goes through every step the agent loop traces.
--
--   local team = require "support.trace_team"
--   local m = mockllm.start { rules = team.RULES }
--   local lead = team.new { provider = p, memory = db }   -- agent = a copy of agenthost.agent, ...
--   local r = lead:run(team.QUESTION)
--
-- The run of lead: turn 1, lead's input guardrail (no_forbidden) checks
-- the input while the model asks for three tools at once: lookup p99,
-- lookup missing (which fails: no such key), and researcher (the agent
-- researcher as a tool, a sub-run of one turn); turn 2, the model hands
-- the conversation to closer (transfer_to_closer); turn 3, closer
-- answers, and its output guardrail (plain_answer) checks the answer.
-- An input with "forbidden" in it trips no_forbidden in turn 1.
--
-- team.new{provider, memory, agent (the agent module, default
-- agenthost.agent), barrier (default true: the lookups wait until both
-- have started, so that they provably run at once), on_event} -> lead,
-- researcher, closer.

local ah = require "agenthost"

local M = {}

M.QUESTION = "Why is p99 latency up since the deploy?"
M.ANSWER = "Closing: the deploy added GC pauses; roll it back."

M.RULES = { rules = {
  { system = "lead agent", when = "user", tool_calls = {
    { name = "lookup", arguments = { key = "p99" } },
    { name = "lookup", arguments = { key = "missing" } },
    { name = "researcher", arguments = { input = "causes of: {{user}}" } } } },
  { system = "lead agent", when = "tool", tool_calls = { { name = "transfer_to_closer" } } },
  { system = "the closer", when = "tool", reply = M.ANSWER },
  { system = "the researcher", reply = "Research: GC pauses went up after the deploy." },
} }

-- The spans of one run of the lead, by name (a name may repeat).
M.SPANS = {
  "invoke_agent lead", "turn 1", "guardrail no_forbidden", "chat mock-1",
  "execute_tool lookup", "execute_tool lookup", "execute_tool researcher",
  "invoke_agent researcher", "turn 1", "chat mock-1",
  "turn 2", "chat mock-1", "handoff closer", "turn 3", "chat mock-1", "guardrail plain_answer",
}

local VALUES = { p99 = "p99 = 840 ms (was 210 ms)" }

local function lookup_tool(barrier)
  local started, both = 0, nil
  return {
    name = "lookup", description = "Reads a value of the monitoring system by its key.",
    parameters = { type = "object", required = { "key" }, additionalProperties = false,
                   properties = { key = { type = "string" } } },
    run = function(args)
      if barrier then
        -- The two lookups of a turn wait for each other: each has started
        -- before either ends.
        if started == 0 then both = ah.task.event() end
        started = started + 1
        local ev = both
        if started == 2 then
          started = 0
          ev:set()
        else
          ah.task.timeout(10, ev.wait, ev) -- an error, not a hang, if the other never comes
        end
      end
      local v = VALUES[args.key]
      if not v then error(ah.error.new("not_found", "no such key: " .. args.key)) end
      return v
    end,
  }
end

function M.new(o)
  local agent = o.agent or ah.agent
  local p, mem = o.provider, o.memory
  local researcher = agent.new { name = "researcher", provider = p, memory = mem, on_event = o.on_event,
    system = "You are the researcher: find causes." }
  local closer = agent.new { name = "closer", provider = p, memory = mem, on_event = o.on_event,
    description = "Writes the final answer.", system = "You are the closer: answer in one sentence.",
    output_guardrails = { { name = "plain_answer", run = function(text)
      if text:find("forbidden", 1, true) then return false, "the answer says forbidden" end
      return true
    end } } }
  local lead = agent.new { name = "lead", provider = p, memory = mem, on_event = o.on_event,
    system = "You are the lead agent: gather evidence, then hand over.",
    tools = { lookup_tool(o.barrier ~= false),
              researcher:as_tool { description = "Ask the researcher." } },
    handoffs = { closer },
    input_guardrails = { { name = "no_forbidden", run = function(input)
      if input:find("forbidden", 1, true) then return false, "the input says forbidden" end
      return true
    end } } }
  return lead, researcher, closer
end

return M
