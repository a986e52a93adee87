-- agenthost.agent: the agent loop (docs/agent.md).  The model decides, the
-- tools it chose run concurrently, every message is persisted as it
-- happens, and the loop repeats until the model answers or the run has
-- made max_turns model calls.
--
--   local agent = require "agenthost.agent"
--   local a = agent.new{ name = "ops", provider = p, system = "...",
--                        tools = { web_search, metrics },   -- or a tools.registry
--                        memory = db,                       -- an ah.store db or agenthost.memory
--                        max_turns = 10, tool_concurrency = 8,
--                        context = { max_tokens = 8000, strategy = "trim" },
--                        output = schema, handoffs = { b, c },
--                        input_guardrails = { fn }, output_guardrails = { fn },
--                        on_event = function(ev) end }
--   local r = a:run("Analyze system performance anomalies")
--   -- r = {text, output, agent, turns, usage, messages, conversation, run}
--   a:run(nil, { conversation = r.conversation })   -- resume
--
-- The provider is anything with p:chat{messages, tools, system, stream,
-- on_tool_delta, output} returning {text, tool_calls = {{id, name,
-- arguments, error}}, usage} (agenthost.llm's providers).  Messages are in
-- the neutral shape: {role = "user"|"assistant"|"tool", content,
-- tool_calls (assistant), tool_call_id, name and is_error (tool)}, with
-- `agent` (who wrote it) and, on assistant messages, `usage`.
--
-- Persistence makes runs resumable: the input, each model answer (with
-- its tool calls) and each tool result are committed before the loop goes
-- on, so a run interrupted at any point resumes from its last stored
-- message and never runs a tool whose result was stored.  What the model
-- is sent is a function of the stored conversation alone (the context
-- window, the corrections of invalid structured answers, the agent that
-- has the conversation), so a resumed run sends exactly what the live one
-- would have.
--
-- Every step emits an event (run, turn, model call, tool call, handoff,
-- guardrail, context, deltas) to the run's on_event and to the observers
-- of agent.observe, each with the run id, the conversation, the agent, the
-- turn, ah.clock() time, durations on the events that end a step, and the
-- calling run for a sub-run.
--
-- The same steps are spans (agenthost.trace, docs/observability.md): each
-- is one line naming the trace module, next to the step's event, and the
-- spans that end with a step are to-be-closed values, so that an error or
-- a cancellation ends them too.  While tracing is off those lines return
-- the inert span and allocate nothing (tests/trace_core_spec.lua counts
-- it against this file with those lines removed).

local ah = require "agenthost.core"
local tools_mod = require "agenthost.tools"
local memory_mod = require "agenthost.memory"
local llm_common = require "agenthost.llm.common"
local trace = require "agenthost.trace"
local task = ah.task

local M = {}
local Agent = {}
Agent.__index = Agent

M.DEFAULT_MAX_TURNS = 10
M.DEFAULT_OUTPUT_RETRIES = 2
M.DEFAULT_KEEP_LAST = 4
M.SUMMARY_PROMPT = "You condense conversations. Summarize the conversation below so that it can " ..
  "be continued from the summary alone: keep every fact, name, number, decision, tool result " ..
  "and open question that matters. Reply with the summary only."

local function bad(msg, level)
  error(ah.error.new("invalid_argument", "agent: " .. msg), (level or 2) + 1)
end

-- ---- settings -------------------------------------------------------------------

local function is_agent(x) return getmetatable(x) == Agent end
M.is_agent = is_agent

local function check_count(v, what, min)
  if v ~= nil and (math.type(v) ~= "integer" or v < min) then
    bad(what .. " must be an integer >= " .. min, 4)
  end
end

-- context = {max_tokens, strategy = "trim" | "summarize", keep_last,
-- provider, summary_tokens, summary_prompt}
local function check_context(c, where)
  if c == nil then return nil end
  if type(c) ~= "table" then bad(where .. "context must be a table {max_tokens =, strategy =, keep_last =}", 3) end
  check_count(c.max_tokens, where .. "context.max_tokens", 1)
  if c.max_tokens == nil then bad(where .. "context needs max_tokens, the budget of each request's input", 3) end
  local s = c.strategy or "trim"
  if s ~= "trim" and s ~= "summarize" then bad(where .. 'context.strategy must be "trim" or "summarize"', 3) end
  check_count(c.keep_last, where .. "context.keep_last", 0)
  check_count(c.summary_tokens, where .. "context.summary_tokens", 1)
  if c.provider ~= nil and type(c.provider) ~= "table" and type(c.provider) ~= "userdata" then
    bad(where .. "context.provider must be an LLM provider", 3)
  end
  if c.summary_prompt ~= nil and type(c.summary_prompt) ~= "string" then
    bad(where .. "context.summary_prompt must be a string", 3)
  end
  return {
    max_tokens = c.max_tokens, strategy = s, keep_last = c.keep_last or M.DEFAULT_KEEP_LAST,
    provider = c.provider, summary_prompt = c.summary_prompt or M.SUMMARY_PROMPT,
    summary_tokens = c.summary_tokens or math.max(64, c.max_tokens // 8),
  }
end

local function check_output(o, where)
  if o == nil then return nil end
  if type(o) ~= "table" then bad(where .. "output must be a JSON Schema (a table)", 3) end
  local ok, err = pcall(tools_mod.check_schema, o)
  if not ok then bad(where .. "output: " .. tostring(err.message or err), 3) end
  return o
end

local function check_guardrails(list, what)
  if list == nil then return {} end
  if type(list) ~= "table" then bad(what .. " must be a list of functions or {name =, run =}", 3) end
  local out = {}
  local default = what:gsub("s$", ""):gsub("_", " ") -- "input guardrail"
  for i, g in ipairs(list) do
    if type(g) == "function" then
      out[i] = { name = default .. " " .. i, run = g }
    elseif type(g) == "table" and type(g.run) == "function" and
        (g.name == nil or type(g.name) == "string") then
      out[i] = { name = g.name or (default .. " " .. i), run = g.run }
    else
      bad(what .. "[" .. i .. "] must be a function or {name =, run = function}", 3)
    end
  end
  return out
end

-- agent.new{name, description, provider, system, tools, memory, max_turns,
--           tool_concurrency, on_event, stream, context, output,
--           output_retries, handoffs, input_guardrails, output_guardrails}
function M.new(cfg)
  if type(cfg) ~= "table" then bad("expected a table of settings") end
  if type(cfg.name) ~= "string" or cfg.name == "" then bad("name must be a non-empty string") end
  if type(cfg.provider) ~= "table" and type(cfg.provider) ~= "userdata" then
    bad("provider must be an LLM provider (agenthost.llm.provider{...})")
  end
  if cfg.description ~= nil and type(cfg.description) ~= "string" then bad("description must be a string") end
  if cfg.system ~= nil and type(cfg.system) ~= "string" then bad("system must be a string") end
  local reg = cfg.tools
  if reg == nil or (type(reg) == "table" and getmetatable(reg) == nil) then
    reg = tools_mod.registry(reg or {})
  end
  local mem = cfg.memory
  if memory_mod.is_database(mem) then mem = memory_mod.open(mem) end
  local max_turns = cfg.max_turns or M.DEFAULT_MAX_TURNS
  local conc = cfg.tool_concurrency or 8
  if math.type(max_turns) ~= "integer" or max_turns < 1 then bad("max_turns must be an integer >= 1") end
  if math.type(conc) ~= "integer" or conc < 1 then bad("tool_concurrency must be an integer >= 1") end
  if cfg.on_event ~= nil and type(cfg.on_event) ~= "function" then bad("on_event must be a function") end
  local stream = cfg.stream
  if stream ~= nil and type(stream) ~= "boolean" and type(stream) ~= "function" then
    bad("stream must be a boolean or a function (called with each text delta)")
  end
  local retries = cfg.output_retries or M.DEFAULT_OUTPUT_RETRIES
  if math.type(retries) ~= "integer" or retries < 0 then bad("output_retries must be an integer >= 0") end
  local handoffs = cfg.handoffs or {}
  if type(handoffs) ~= "table" then bad("handoffs must be a list of agents") end
  for i, h in ipairs(handoffs) do
    if not is_agent(h) then bad("handoffs[" .. i .. "] must be an agent (agent.new{...})") end
  end
  local self = setmetatable({
    name = cfg.name, description = cfg.description, provider = cfg.provider, system = cfg.system,
    tools = reg, memory = mem, max_turns = max_turns, tool_concurrency = conc,
    on_event = cfg.on_event, stream = stream, context = check_context(cfg.context, ""),
    output = check_output(cfg.output, ""), output_retries = retries, handoffs = handoffs,
    input_guardrails = check_guardrails(cfg.input_guardrails, "input_guardrails"),
    output_guardrails = check_guardrails(cfg.output_guardrails, "output_guardrails"),
    pending = {}, decided = {}, seq = 0,
  }, Agent)
  M.transfer_name(self) -- its name must make a tool name
  return self
end

-- The tool name that hands a conversation to agent b: transfer_to_ and
-- its name, other characters than letters, digits, _ and - turned into _.
function M.transfer_name(b)
  local n = "transfer_to_" .. b.name:gsub("[^%w_%-]", "_")
  if #n > 64 then bad("the agent name " .. b.name .. " is too long for a handoff tool (at most 52 bytes)", 3) end
  return n
end

-- ---- events ---------------------------------------------------------------------

local observers = {}

-- agent.observe(fn) -> a function that removes it.  fn(ev) gets every
-- event of every run of every agent, after the run's own on_event.
function M.observe(fn)
  if type(fn) ~= "function" then bad("observe needs a function") end
  observers[#observers + 1] = fn
  return function()
    for i, f in ipairs(observers) do
      if f == fn then table.remove(observers, i) return end
    end
  end
end

-- The provider's redaction of its key and URL credentials (llm.common
-- redactor), or none for a provider that has no such function.
local function redactor(p)
  local r = type(p) == "table" and rawget(p, "redact")
  if type(r) == "function" then return r end
  return function(s) return s end
end

-- A handler that fails is reported and the run goes on, except for errors
-- that must unwind it: a cancellation (the run's task was cancelled while
-- the handler waited in it) and an error marked `unwind = true` (raised on
-- purpose to stop the run from a handler; the fleet's `parked` and
-- `lease_lost` are).  Those end the run as if raised at its await point.
local function call_handler(fn, ev, redact)
  local ok, err = pcall(fn, ev)
  if not ok then
    if ah.error.is(err, "cancelled") or (ah.error.is(err) and err.unwind == true) then
      error(err, 0)
    end
    io.stderr:write("agenthost.agent: an on_event handler failed: ", redact(tostring(err)), "\n")
  end
end

-- Whether anything listens to the run's events.
local function listened(run)
  return run.handler ~= nil or observers[1] ~= nil
end

local function emit(run, ev)
  if not listened(run) then return end
  ev.agent = ev.agent or run.cur.name
  ev.run = run.id
  ev.conversation = run.conversation
  ev.time = ah.clock()
  if ev.turn == nil and run.turns > 0 then ev.turn = run.turns end
  ev.parent = run.parent_event
  local redact = redactor(run.cur.provider)
  -- An error event carries a provider's error: redacted again here, in
  -- case a provider wrapper raised it unredacted.
  if ev.error ~= nil then ev.error = llm_common.redact_value(ev.error, redact) end
  if run.handler then call_handler(run.handler, ev, redact) end
  for _, fn in ipairs(observers) do call_handler(fn, ev, redact) end
end

-- a:approve(call_id, ok): decides a call of a tool that needs approval.
-- Returns true when a call was waiting; a decision for a call not made yet
-- is kept for it.
function Agent:approve(call_id, ok)
  local p = self.pending[call_id]
  self.decided[call_id] = ok and true or false
  if p then
    p:set()
    return true
  end
  return false
end

-- ---- the conversation as stored -------------------------------------------------

local function has_calls(m)
  return m.role == "assistant" and type(m.tool_calls) == "table" and #m.tool_calls > 0
end

-- The message that tells the model its structured answer was invalid
-- (derived from the stored answer, so a resumed run sends it too).
local function correction(m)
  return { role = "user", agent = m.agent, derived = true, content =
    "Your answer is not valid: " .. m.output_error .. ". Reply again with only the JSON " ..
    "value that matches the required schema." }
end

-- Puts the tool results that follow msgs[i] (an assistant message with
-- calls) in the order of its calls: results are stored as they finish,
-- and both the live and a resumed run send them in call order.
local function order_results(msgs, i)
  local calls = msgs[i].tool_calls
  local rank = {}
  for k, c in ipairs(calls) do rank[c.id] = rank[c.id] or k end
  local j = i + 1
  while msgs[j] and msgs[j].role == "tool" do j = j + 1 end
  local run = {}
  for k = i + 1, j - 1 do run[#run + 1] = { m = msgs[k], at = k } end
  table.sort(run, function(x, y)
    local rx, ry = rank[x.m.tool_call_id] or math.huge, rank[y.m.tool_call_id] or math.huge
    if rx ~= ry then return rx < ry end
    return x.at < y.at
  end)
  for k, e in ipairs(run) do msgs[i + k] = e.m end
end

-- The tool calls of the last assistant message that have no result yet.
local function unanswered(msgs)
  local last
  for i = #msgs, 1, -1 do
    if msgs[i].role == "assistant" then last = i break end
  end
  if not last or not has_calls(msgs[last]) then return {} end
  local answered = {}
  for i = last + 1, #msgs do
    if msgs[i].role == "tool" and msgs[i].tool_call_id then answered[msgs[i].tool_call_id] = true end
  end
  local out = {}
  for _, c in ipairs(msgs[last].tool_calls) do
    if not answered[c.id] then out[#out + 1] = c end
  end
  return out, last
end

-- Rebuilds a conversation from memory: the messages the model sees (in
-- the order it sees them), the summary of what the window no longer
-- holds, the agent that has it, and whether its last input was refused by
-- a guardrail.
local function load(run, conversation)
  local mem = run.memory
  local row = mem:run(conversation)
  if not row then
    error(ah.error.new("invalid_argument", "agent: there is no conversation " ..
      tostring(conversation) .. " in this agent's memory"), 0)
  end
  local msgs, summary, holder, refused = {}, nil, row.agent, nil
  for _, r in ipairs(mem:history(conversation)) do
    local data = type(r.data) == "table" and r.data or {}
    if r.role == "event" then
      if r.name == "guardrail" and data.stage == "input" and msgs[#msgs] and msgs[#msgs].role == "user" then
        msgs[#msgs] = nil
        refused = data
      end
    elseif r.role == "summary" then
      summary = { text = r.content, upto = data.upto, usage = data.usage }
      refused = nil
    else
      refused = nil
      local m = { role = r.role, content = r.content, name = r.name, tool_call_id = r.tool_call_id,
                  agent = r.agent }
      if r.role == "tool" then
        m.is_error = data.is_error == true
        m.handoff = data.handoff
        if data.handoff then holder = data.handoff end
      elseif r.role == "assistant" then
        if type(data.tool_calls) == "table" and #data.tool_calls > 0 then m.tool_calls = data.tool_calls end
        m.usage, m.context, m.output_error, m.output = data.usage, data.context, data.output_error, data.output
      end
      msgs[#msgs + 1] = m
      if m.output_error then msgs[#msgs + 1] = correction(m) end
    end
  end
  for i, m in ipairs(msgs) do
    if has_calls(m) then order_results(msgs, i) end
  end
  return msgs, summary, holder, refused, row
end

-- Stores m (committed before returning) and adds it to the run's messages.
local function record(run, m, data)
  local msgs = run.msgs
  msgs[#msgs + 1] = m
  if m.output_error then msgs[#msgs + 1] = correction(m) end
  if not run.memory then return end
  run.memory:append(run.conversation, { role = m.role, content = m.content, name = m.name,
    tool_call_id = m.tool_call_id, agent = m.agent, data = data })
end

local function assistant_data(m)
  local data = {}
  if m.tool_calls then
    local calls = {}
    for i, c in ipairs(m.tool_calls) do
      calls[i] = { id = c.id, name = c.name, arguments = c.arguments,
                   raw_arguments = c.raw_arguments, error = c.error }
    end
    data.tool_calls = calls
  end
  data.usage, data.context, data.output_error = m.usage, m.context, m.output_error
  if m.output then data.output = true end
  if next(data) == nil then return nil end
  return data
end

-- ---- agents of a run ------------------------------------------------------------

-- The agent called name among a and those it can hand off to (directly or
-- through others).
local function find_agent(a, name)
  local seen, queue = { [a] = true }, { a }
  local i = 1
  while queue[i] do
    local x = queue[i]
    if x.name == name then return x end
    for _, h in ipairs(x.handoffs or {}) do
      if is_agent(h) and not seen[h] then
        seen[h] = true
        queue[#queue + 1] = h
      end
    end
    i = i + 1
  end
  return nil
end

-- The handoff tools of agent a: {tool name -> target}, and their list.
local function handoff_tools(a)
  local by, list = {}, {}
  for i, b in ipairs(a.handoffs or {}) do
    if not is_agent(b) then bad("agent " .. a.name .. ": handoffs[" .. i .. "] is not an agent", 4) end
    local n = M.transfer_name(b)
    if not by[n] then
      by[n] = b
      list[#list + 1] = { name = n, parameters = { type = "object", properties = {} },
        description = "Hand the conversation to " .. b.name .. ", who continues it" ..
          (b.description and (": " .. b.description) or ".") }
    end
  end
  return by, list
end

local function tool_list(a)
  local list = a.tools:list()
  local _, hs = handoff_tools(a)
  for _, t in ipairs(hs) do
    if a.tools:get(t.name) then
      bad("agent " .. a.name .. " has a tool named " .. t.name .. ", the name of a handoff", 5)
    end
    list[#list + 1] = t
  end
  return list
end

-- ---- tokens and the context window ----------------------------------------------

-- Estimates are on the high side (a token per three bytes of the message
-- as the wire carries it, framing and escaping included), so that a
-- window that fits by the estimate fits in fact; where the provider has
-- reported usage, it is used instead (see window()).
local function estimate_text(s)
  if s == nil then return 0 end
  if type(s) ~= "string" then s = llm_common.content_text(s) end
  return (#s + 2) // 3
end

local function quoted_len(s)
  if type(s) ~= "string" then s = llm_common.content_text(s) end
  local _, escapes = s:gsub('["\\\n]', "")
  return #s + escapes
end

local function estimate(m)
  local bytes = 48 + quoted_len(m.content or "") + #(m.tool_call_id or "") + #(m.name or "")
  for _, c in ipairs(has_calls(m) and m.tool_calls or {}) do
    bytes = bytes + 72 + #(c.id or "") + #(c.name or "") + quoted_len(llm_common.arguments_text(c))
  end
  local n = (bytes + 2) // 3
  local u = m.role == "assistant" and type(m.usage) == "table" and m.usage.output_tokens
  if math.type(u) == "integer" and u + 8 > n then n = u + 8 end
  return n
end
M.estimate = estimate

local SUMMARY_HEAD = "Summary of the earlier conversation:\n"

local function summary_message(s)
  return { role = "user", content = SUMMARY_HEAD .. s.text, summary = true }
end

-- What a request costs besides its messages (system prompt, tools, the
-- framing): from the last reply of this agent whose usage is known, its
-- reported input tokens less the estimate of the messages it was sent;
-- else an estimate.
local function overhead(msgs, a, tools)
  for i = #msgs, 1, -1 do
    local m = msgs[i]
    if m.role == "assistant" and m.agent == a.name and type(m.context) == "table" and
        type(m.usage) == "table" and math.type(m.usage.input_tokens) == "integer" then
      return math.max(0, m.usage.input_tokens - (m.context.sent or 0))
    end
  end
  local ok, t = pcall(ah.json.encode, tools or {})
  return 16 + estimate_text(a.system) + (ok and estimate_text(t) or 0)
end

-- The start of the unit msgs[i] belongs to: a tool result belongs to the
-- assistant message whose call it answers.
local function unit_start(msgs, i)
  while i > 1 and msgs[i].role == "tool" do i = i - 1 end
  return i
end

-- The window to send: {messages}, its estimated tokens, and, when the
-- oldest messages must be folded into a summary, the index of the last
-- one to fold.  base is the first message no summary covers.  A window
-- starts on a unit (a user message, or an assistant message with its
-- results) and, for trim, when that is not a user message, keeps the last
-- user message before it in front (the task the agent is working on), so
-- that every dialect gets a valid list.
local function window(run, a, tools, extra)
  local cfg = run.context
  local msgs = run.msgs
  local n = #msgs
  local base = run.summary and (run.summary.upto + 1) or 1
  local head = overhead(msgs, a, tools)
  local suffix = {}
  suffix[n + 1] = 0
  for i = n, base, -1 do suffix[i] = suffix[i + 1] + estimate(msgs[i]) end
  local function build(s, lead)
    local out = {}
    if lead then out[1] = lead end
    for i = s, n do out[#out + 1] = msgs[i] end
    return out
  end
  if not cfg then return build(base, run.summary and summary_message(run.summary)), 0 end
  local budget = cfg.max_tokens
  local keep = n + 1
  do
    local k = math.max(base, n - cfg.keep_last + 1)
    if k <= n then keep = unit_start(msgs, k) end
    if keep < base then keep = base end
    -- The last unit is always sent: a request needs a message.
    if n >= base and keep > unit_start(msgs, n) then keep = math.max(base, unit_start(msgs, n)) end
  end
  local function pin(s)
    if s > n or msgs[s].role == "user" then return nil end
    for i = s - 1, 1, -1 do
      if msgs[i].role == "user" and not msgs[i].summary then return msgs[i] end
    end
    return nil
  end
  local lead_cost = run.summary and estimate(summary_message(run.summary)) or 0
  local total = head + suffix[base] + lead_cost
  if total <= budget then
    return build(base, run.summary and summary_message(run.summary)), total - head, total
  end
  if cfg.strategy == "trim" then
    local lead = run.summary and summary_message(run.summary)
    for s = base, keep do
      if s == n + 1 or msgs[s].role ~= "tool" then
        local p = not lead and pin(s)
        local cost = head + suffix[s] + (lead and lead_cost or 0) + (p and estimate(p) or 0)
        if cost <= budget or s == keep then
          return build(s, lead or p or nil), cost - head, cost, s - base
        end
      end
    end
  end
  -- summarize: fold everything before the kept messages, or more, so that
  -- the window fits with a summary of summary_tokens.
  -- The last unit is never folded: a request must end with what the
  -- model answers.
  local assumed = cfg.summary_tokens * 4 // 3 + 16 + estimate_text(SUMMARY_HEAD)
  local last = unit_start(msgs, n)
  for s = math.max(keep, base + 1), last do
    if msgs[s].role ~= "tool" then
      local cost = head + suffix[s] + assumed
      if cost <= budget or s == last then
        return nil, cost - head, cost, s - base, s - 1
      end
    end
  end
  -- Nothing can be folded (the conversation past the summary is one
  -- unit): it is sent over budget.
  return build(base, run.summary and summary_message(run.summary)), total - head, total, 0
end

-- The text of msgs[from..to] for the summarizer.
local function transcript(run, from, to)
  local out = {}
  if run.summary then out[1] = "Summary so far:\n" .. run.summary.text .. "\n" end
  local function cut(s)
    s = s or ""
    if #s > 4000 then s = tools_mod.utf8_cut(s, 4000) .. " [...]" end
    return s
  end
  for i = from, to do
    local m = run.msgs[i]
    if m.role == "assistant" then
      local calls = {}
      for _, c in ipairs(has_calls(m) and m.tool_calls or {}) do
        calls[#calls + 1] = c.name .. "(" .. cut(llm_common.arguments_text(c)) .. ")"
      end
      out[#out + 1] = "assistant" .. (m.agent and (" (" .. m.agent .. ")") or "") .. ": " ..
        cut(m.content) .. (#calls > 0 and (" [called " .. table.concat(calls, ", ") .. "]") or "")
    elseif m.role == "tool" then
      out[#out + 1] = "result of " .. tostring(m.name) .. (m.is_error and " (error)" or "") .. ": " .. cut(m.content)
    else
      out[#out + 1] = m.role .. ": " .. cut(m.content)
    end
  end
  return table.concat(out, "\n")
end

local function add_usage(total, u)
  if type(u) ~= "table" then return end
  total.input_tokens = total.input_tokens + (math.tointeger(u.input_tokens) or 0)
  total.output_tokens = total.output_tokens + (math.tointeger(u.output_tokens) or 0)
end

-- Folds msgs[base..upto] (and the summary before them) into a new
-- summary, stored as a message of role "summary".
local function summarize(run, a, upto)
  local cfg = run.context
  local base = run.summary and (run.summary.upto + 1) or 1
  local p = cfg.provider or a.provider
  emit(run, { type = "model_start", purpose = "summary", folds = upto - base + 1 })
  local t0 = ah.clock()
  local span <close> = trace.chat(p):set("agenthost.chat.purpose", "summary")
  local ok, resp = pcall(p.chat, p, { system = cfg.summary_prompt, max_tokens = cfg.summary_tokens,
    messages = { { role = "user", content = transcript(run, base, upto) } } })
  trace.chat_end(span, ok and resp or nil, not ok and resp or nil)
  if not ok then
    emit(run, { type = "model_error", purpose = "summary", error = resp, duration = ah.clock() - t0 })
    error(resp, 0)
  end
  add_usage(run.usage, resp.usage)
  emit(run, { type = "model_response", purpose = "summary", response = resp, usage = resp.usage,
              duration = ah.clock() - t0 })
  run.summary = { text = resp.text or "", upto = upto, usage = resp.usage }
  if run.memory then
    run.memory:append(run.conversation, { role = "summary", content = run.summary.text, agent = a.name,
      data = { upto = upto, usage = resp.usage } })
  end
end

-- The messages of the next request, managing the context when it is set:
-- returns them and their estimated tokens (what the reply's usage is
-- anchored on).
local function request_messages(run, a, tools)
  local msgs, sent, total, dropped, fold = window(run, a, tools)
  if fold then
    -- A summary longer than assumed may leave the window over budget: it
    -- is folded again, at most twice more, and then sent as it is.
    for _ = 1, 3 do
      summarize(run, a, fold)
      msgs, sent, total, dropped, fold = window(run, a, tools)
      if not fold then break end
    end
    if fold then
      local base = run.summary.upto + 1
      msgs = { summary_message(run.summary) }
      for i = base, #run.msgs do msgs[#msgs + 1] = run.msgs[i] end
    end
    emit(run, { type = "context", strategy = "summarize", summarized = run.summary.upto, tokens = total,
                budget = run.context.max_tokens, over_budget = total > run.context.max_tokens or nil })
  elseif (dropped and dropped > 0) or (total and total > run.context.max_tokens) then
    emit(run, { type = "context", strategy = run.context.strategy, dropped = dropped or 0, tokens = total,
                budget = run.context.max_tokens, over_budget = total > run.context.max_tokens or nil })
  end
  return msgs, sent
end

-- ---- guardrails -----------------------------------------------------------------

-- Runs guardrail g on value: nil when it passes, else {name, reason}.  A
-- guardrail that raises trips (the run fails closed), except for the
-- run's own cancellation.
local function check_guard(run, g, stage, value, ctx)
  local t0 = ah.clock()
  local span <close> = trace.guardrail(g.name, stage)
  local ok, res, why = pcall(g.run, value, ctx)
  local cur = task.current()
  if not ok and cur and cur:cancelled() then error(res, 0) end
  local verdict
  if not ok then
    verdict = { name = g.name, reason = "the guardrail failed: " ..
      tools_mod.strip_positions(tostring(type(res) == "table" and res.message or res)), error = res }
  elseif res == false or res == nil and why ~= nil then
    verdict = { name = g.name, reason = why ~= nil and tostring(why) or "tripped" }
  elseif type(res) == "string" then
    verdict = { name = g.name, reason = res }
  end
  emit(run, { type = "guardrail", stage = stage, name = g.name, tripped = verdict ~= nil,
              reason = verdict and verdict.reason, duration = ah.clock() - t0 })
  trace.guardrail_end(span, verdict)
  return verdict
end

-- Stores the trip (an event, and the conversation failed) and raises.
local function trip(run, a, stage, verdict)
  local err = ah.error.new("guardrail", string.format("agent %s: %s guardrail %s tripped: %s",
    a.name, stage, verdict.name, verdict.reason),
    { guardrail = verdict.name, stage = stage, reason = verdict.reason })
  if run.memory then
    run.memory:append(run.conversation, { role = "event", name = "guardrail", agent = a.name,
      data = { stage = stage, name = verdict.name, reason = verdict.reason } })
  end
  error(err, 0)
end

local function guard_ctx(run, a)
  return { agent = a, conversation = run.conversation, run = run.id, messages = run.msgs,
           memory = run.memory }
end

-- Runs every guardrail of list on value at once; returns the first trip.
local function check_all(run, list, stage, value, ctx, on_trip)
  local first
  task.map(list, function(g)
    local v = check_guard(run, g, stage, value, ctx)
    if v and not first then
      first = v
      if on_trip then on_trip() end
    end
  end, { limit = #list })
  return first
end

-- ---- model calls ----------------------------------------------------------------

-- One call of a's model.
local function chat(a, req)
  local span <close> = trace.chat(a.provider)
  local resp = a.provider:chat(req)
  trace.chat_end(span, resp)
  return resp
end

-- Calls a's model with req.  The first call on a new input runs a's input
-- guardrails at the same time; a trip cancels the call.
local function call_model(run, a, req)
  local input = run.check_input
  run.check_input = nil
  if not input or #a.input_guardrails == 0 then return chat(a, req) end
  local mt = task.spawn(chat, a, req)
  local gt = task.spawn(check_all, run, a.input_guardrails, "input", input, guard_ctx(run, a),
    function() mt:cancel() end)
  local ok, resp = mt:result()
  if not ok and not ah.error.is(resp, "cancelled") then gt:cancel() end
  local gok, verdict = gt:result()
  if gok and verdict then trip(run, a, "input", verdict) end
  if not gok and not ah.error.is(verdict, "cancelled") then error(verdict, 0) end
  if not ok then error(resp, 0) end
  return resp
end

-- ---- tools ----------------------------------------------------------------------

local function stderr_tool_error(run, call, res)
  local redact = redactor(run.cur.provider)
  io.stderr:write(string.format("agenthost.agent: tool %s failed (agent %s, conversation %s, call %s):\n%s\n",
    tostring(call.name), run.cur.name, tostring(run.conversation), tostring(call.id),
    redact(res.traceback or tostring(res.error and (res.error.message or res.error) or res.content))))
end

local function set_waiting(run, delta)
  run.waiting = (run.waiting or 0) + delta
  if not run.memory then return end
  if delta > 0 and run.waiting == 1 then
    run.memory:set_status(run.conversation, "waiting_approval")
  elseif delta < 0 and run.waiting == 0 then
    run.memory:set_status(run.conversation, "running")
  end
end

local function run_tool(run, a, call)
  local tool = a.tools:get(call.name or "")
  local t0 = ah.clock()
  local span <close> = trace.tool(call)
  emit(run, { type = "tool_start", call = call, call_id = call.id,
              needs_approval = tool and tool.needs_approval or nil })
  local res
  local entry = run.entry
  local function decided() return a.decided[call.id] ~= nil or entry.decided[call.id] ~= nil end
  if tool and tool.needs_approval and not decided() then
    local ev = task.event()
    a.pending[call.id], entry.pending[call.id] = ev, ev
    set_waiting(run, 1)
    local ok, err = pcall(ev.wait, ev)
    a.pending[call.id], entry.pending[call.id] = nil, nil
    if not ok then error(err, 0) end
    set_waiting(run, -1)
  end
  if tool and tool.needs_approval and not (a.decided[call.id] or entry.decided[call.id]) then
    res = { is_error = true, content = "error: the user did not approve this call of " .. call.name }
  else
    res = a.tools:call(call, { agent = a, conversation = run.conversation, call = call,
                               memory = run.memory, run = run.id, _run = run })
  end
  a.decided[call.id], entry.decided[call.id] = nil, nil
  if res.error ~= nil then
    if listened(run) then
      emit(run, { type = "tool_error", call = call, call_id = call.id, error = res.error,
                  traceback = res.traceback })
    else
      stderr_tool_error(run, call, res)
    end
  end
  emit(run, { type = "tool_end", call = call, call_id = call.id, is_error = res.is_error == true,
              content = res.content, duration = ah.clock() - t0 })
  trace.tool_end(span, res)
  return res
end

-- Runs calls (the open calls of a's last turn) concurrently, at most
-- tool_concurrency at once, storing each result as soon as it is in; a
-- call of a handoff tool hands the conversation on (the first one; a
-- turn hands off once).  Returns the agent that has the conversation next.
local function run_calls(run, a, calls, at)
  local targets = handoff_tools(a)
  local handoff
  local results = task.map(calls, function(call)
    local target = targets[call.name or ""]
    local m = { role = "tool", tool_call_id = call.id, name = call.name, agent = a.name }
    if target then
      if not handoff then
        handoff = { to = target, call = call }
        m.content, m.is_error, m.handoff = "Transferred to " .. target.name .. ", who continues " ..
          "the conversation.", false, target.name
      else
        m.content, m.is_error = "error: only one handoff per turn; this one was not made", true
      end
    else
      local res = run_tool(run, a, call)
      m.content, m.is_error = res.content, res.is_error == true
    end
    if run.memory then
      local data
      if m.is_error or m.handoff then data = { is_error = m.is_error or nil, handoff = m.handoff } end
      run.memory:append(run.conversation, { role = "tool", content = m.content, name = m.name,
        tool_call_id = m.tool_call_id, agent = m.agent, data = data })
    end
    return m
  end, { limit = a.tool_concurrency })
  for _, m in ipairs(results) do run.msgs[#run.msgs + 1] = m end
  if at then order_results(run.msgs, at) end
  if handoff then
    emit(run, { type = "handoff", from = a.name, to = handoff.to.name, call = handoff.call,
                call_id = handoff.call.id })
    trace.handoff(a.name, handoff.to.name, handoff.call.id)
    if run.memory then run.memory:set_agent(run.conversation, handoff.to.name) end
    return handoff.to
  end
  return a
end

-- ---- the loop -------------------------------------------------------------------

local run_seq = 0

local function output_of(run, a)
  return run.output or a.output
end

-- The decoded and checked answer, or nil and what is wrong with it.
local function parse_output(schema, text)
  local value, why = llm_common.decode(text or "")
  if value == nil then
    return nil, "it is not JSON (" .. tostring(why):gsub("%.$", "") .. ")"
  end
  local ok, err = tools_mod.validate(schema, value, { root = "the answer", item = "field " })
  if not ok then return nil, err end
  return tools_mod.normalize(schema, value)
end

local function result(run, m, output)
  return { text = m.content, output = output, agent = m.agent or run.cur.name, turns = run.turns,
           usage = run.usage, messages = run.msgs, conversation = run.conversation, run = run.id }
end

-- One model call of the run and what follows it: the result when it was
-- the final answer, else nil.
local function turn(run)
  local a = run.cur
  run.turns = run.turns + 1
  local t_turn = ah.clock()
  local span <close> = trace.turn(run.turns, a.name, run.msgs)
  emit(run, { type = "turn_start" })
  local tools = tool_list(a)
  local msgs, sent = request_messages(run, a, tools)
  local schema = output_of(run, a)
  local req = { messages = msgs, tools = #tools > 0 and tools or nil, system = a.system,
                output = schema and { schema = schema } or nil }
  local stream = run.stream
  if stream then
    local fn = type(stream) == "function" and stream
    req.stream = function(delta)
      if fn then fn(delta) end
      emit(run, { type = "text_delta", text = delta })
    end
    req.on_tool_delta = function(d)
      emit(run, { type = "tool_call_delta", index = d.index, call_id = d.id, name = d.name,
                  arguments = d.arguments })
    end
  end
  emit(run, { type = "model_start", messages = #msgs, tools = #tools })
  local t0 = ah.clock()
  local ok, resp = pcall(call_model, run, a, req)
  if not ok then
    emit(run, { type = "model_error", error = resp, duration = ah.clock() - t0 })
    error(resp, 0)
  end
  add_usage(run.usage, resp.usage)
  emit(run, { type = "model_response", response = resp, usage = resp.usage, duration = ah.clock() - t0 })
  local calls = resp.tool_calls or {}
  local usage = type(resp.usage) == "table" and next(resp.usage) and resp.usage or nil
  local m = { role = "assistant", content = resp.text, agent = a.name, usage = usage,
              tool_calls = #calls > 0 and calls or nil,
              context = run.context and usage and { sent = sent } or nil }
  if #calls > 0 then
    record(run, m, assistant_data(m))
    run.cur = run_calls(run, a, calls, #run.msgs)
    emit(run, { type = "turn_end", duration = ah.clock() - t_turn })
    return nil
  end
  local value
  if schema then
    local why
    value, why = parse_output(schema, resp.text)
    if why then
      m.output_error = why
      record(run, m, assistant_data(m))
      run.output_failures = run.output_failures + 1
      emit(run, { type = "output_invalid", text = resp.text, reason = why, attempt = run.output_failures })
      emit(run, { type = "turn_end", duration = ah.clock() - t_turn })
      if run.output_failures > a.output_retries then
        error(ah.error.new("output_invalid", string.format(
          "agent %s: the answer does not match the output schema after %d tries: %s", a.name,
          run.output_failures, why), { text = resp.text, reason = why }), 0)
      end
      return nil
    end
    m.output = true
  end
  if #a.output_guardrails > 0 then
    local ctx = guard_ctx(run, a)
    ctx.output = value
    local verdict = check_all(run, a.output_guardrails, "output", resp.text, ctx)
    if verdict then trip(run, a, "output", verdict) end
  end
  record(run, m, assistant_data(m))
  emit(run, { type = "turn_end", final = true, duration = ah.clock() - t_turn })
  if run.memory then run.memory:finish_run(run.conversation, "done", resp.text) end
  return result(run, m, value)
end

local function new_run(self, opts)
  run_seq = run_seq + 1
  local parent = opts._parent
  local run = {
    id = string.format("run%d", run_seq), entry = self, cur = self, turns = 0, output_failures = 0,
    usage = { input_tokens = 0, output_tokens = 0 }, started = ah.clock(),
    memory = self.memory or opts._memory, handler = self.on_event or (parent and parent.handler),
    parent = parent, stream = opts.stream, context = self.context, output = opts.output,
    max_turns = opts.max_turns or self.max_turns,
  }
  if run.stream == nil then run.stream = self.stream end
  if run.stream == nil and parent then run.stream = parent.stream and true or nil end
  if opts.context ~= nil then run.context = check_context(opts.context, "run: ") end
  if parent then
    run.parent_event = { run = parent.run, conversation = parent.conversation, call_id = parent.call }
  end
  return run
end

local function check_run_opts(input, opts)
  if type(opts) ~= "table" then bad("run's options must be a table {conversation =, ...}", 3) end
  if input ~= nil and type(input) ~= "string" then bad("the input must be a string", 3) end
  local s = opts.stream
  if s ~= nil and type(s) ~= "boolean" and type(s) ~= "function" then
    bad("stream must be a boolean or a function", 3)
  end
  check_count(opts.max_turns, "run: max_turns", 1)
  if opts.output ~= nil then check_output(opts.output, "run: ") end
end

-- Gives err (raised by a run) its conversation and turn, records the
-- failure and raises it.
local function fail(run, err)
  if not ah.error.is(err) then
    err = ah.error.new("runtime", "agent " .. run.cur.name .. ": " .. tostring(err), { cause = err })
  end
  if err.conversation == nil then err.conversation = run.conversation end
  if err.turn == nil then err.turn = run.turns end
  if err.agent == nil then err.agent = run.cur.name end
  -- A run refused before it began (a bad id, a conversation held by an
  -- agent this one cannot reach) changes nothing stored; nor does one
  -- unwound on purpose (`unwind = true`: whoever stopped it resumes it).
  local unwound = err.unwind == true
  if run.live and run.memory and run.conversation and not ah.error.is(err, "max_turns")
     and not unwound then
    if ah.error.is(err, "cancelled") then
      -- The write must not wait: the run is being cancelled.
      pcall(run.memory.post_finish_run, run.memory, run.conversation, "failed", nil, tostring(err))
    else
      pcall(run.memory.finish_run, run.memory, run.conversation, "failed", nil, tostring(err))
    end
  end
  if run.live then
    emit(run, { type = "error", error = err })
    emit(run, { type = "run_end",
                status = unwound and "stopped" or ah.error.is(err, "max_turns") and "max_turns" or "failed",
                error = err, turns = run.turns, usage = run.usage, duration = ah.clock() - run.started })
  end
  error(err, 0)
end

local function body(self, run, input, opts)
  local mem = run.memory
  local holder, refused
  if opts.conversation ~= nil then
    local id = memory_mod.id(opts.conversation, "agent: run")
    run.conversation = id
    if not mem then bad("resuming a conversation needs memory = a store or agenthost.memory", 4) end
    local row
    run.msgs, run.summary, holder, refused, row = load(run, id)
    local a = find_agent(self, holder)
    if not a then
      bad(string.format("conversation %d is with agent %s, which agent %s cannot hand off to; " ..
        "resume it with that agent", id, holder, self.name), 4)
    end
    run.cur = a
    run.row = row
  else
    if input == nil then bad("run needs an input, or a conversation to resume", 4) end
    run.msgs = {}
    if mem then
      local parent = run.parent
      run.conversation = mem:start_run(self.name, { goal = input,
        parent = parent and parent.conversation, parent_call = parent and parent.call })
    else
      self.seq = self.seq + 1
      run.conversation = self.seq
    end
  end
  run.live = true
  local span <close> = trace.agent(run.cur.name, run.conversation, mem, nil, run)
  emit(run, { type = "run_start", input = input, resumed = opts.conversation ~= nil or nil })
  local msgs = run.msgs
  local last = msgs[#msgs]
  if input == nil and refused then
    -- Resuming a conversation whose last input a guardrail refused: the
    -- same refusal, and no model call.
    local err = ah.error.new("guardrail", string.format("agent %s: %s guardrail %s tripped: %s",
      run.cur.name, refused.stage or "input", tostring(refused.name), tostring(refused.reason)),
      { guardrail = refused.name, stage = refused.stage, reason = refused.reason })
    error(err, 0)
  end
  if input == nil and last and last.role == "assistant" and not has_calls(last) and not last.output_error then
    -- A finished conversation: its answer, with no model call.
    local value
    if last.output then value = parse_output(output_of(run, find_agent(self, last.agent) or run.cur) or {}, last.content) end
    if mem then mem:finish_run(run.conversation, "done", last.content) end
    local r = result(run, last, value)
    emit(run, { type = "run_end", status = "done", turns = 0, usage = run.usage, duration = ah.clock() - run.started })
    return r
  end
  if run.row and run.row.status ~= "running" and run.row.status ~= "waiting_approval" then
    mem:set_status(run.conversation, "running")
  end
  -- A resumed run first finishes the tool calls its last turn left open:
  -- their results must follow the calls, before any new input.
  local open, at = unanswered(msgs)
  if #open > 0 then run.cur = run_calls(run, run.cur, open, at) end
  if input ~= nil then record(run, { role = "user", content = input, agent = run.cur.name }) end
  last = run.msgs[#run.msgs]
  if last and last.role == "user" and not last.derived then run.check_input = last.content end
  while true do
    if run.turns >= run.max_turns then
      last = run.msgs[#run.msgs]
      if mem then mem:finish_run(run.conversation, "max_turns") end
      error(ah.error.new("max_turns", string.format(
        "agent %s: no final answer after %d model calls in this run; resume with " ..
        "{conversation = %s} to give it %d more, or raise max_turns", run.cur.name, run.max_turns,
        tostring(run.conversation), run.max_turns), {
        partial = { text = last and last.role == "assistant" and last.content or nil,
                    turns = run.turns, usage = run.usage, messages = run.msgs,
                    conversation = run.conversation, agent = run.cur.name } }), 0)
    end
    local r = turn(run)
    if r then
      emit(run, { type = "run_end", status = "done", turns = run.turns, usage = run.usage,
                  duration = ah.clock() - run.started })
      return r
    end
  end
end

-- a:run(input [, {conversation = id, stream = fn | true, context =, output =,
-- max_turns =}]) -> {text, output, agent, turns, usage, messages,
-- conversation, run}
function Agent:run(input, opts)
  opts = opts or {}
  check_run_opts(input, opts)
  local run = new_run(self, opts)
  local ok, res = pcall(body, self, run, input, opts)
  if ok then return res end
  return fail(run, res)
end

-- a:as_tool{name =, description =, timeout =, needs_approval =} -> a tool
-- whose call runs this agent on the model's `input` as a conversation of
-- its own, linked to the calling conversation and call (memory: the
-- agent's, else the caller's), and returns its answer (its output when it
-- has an output schema).  The sub-run is a child of the tool call: it is
-- cancelled with it.  A call that resumes (its result was never stored)
-- resumes the sub-run's conversation instead of starting another.
function Agent:as_tool(opts)
  opts = opts or {}
  if type(opts) ~= "table" then bad("as_tool takes a table {name =, description =}") end
  local name = opts.name or self.name:gsub("[^%w_%-]", "_")
  local description = opts.description or self.description or ("Ask the agent " .. self.name .. ".")
  local agent_self = self
  return {
    name = name, description = description, timeout = opts.timeout or 600,
    needs_approval = opts.needs_approval,
    parameters = { type = "object", required = { "input" }, additionalProperties = false,
      properties = { input = { type = "string", description = "What to ask " .. self.name } } },
    run = function(args, ctx)
      local parent_run = ctx and ctx._run
      local mem = agent_self.memory or (ctx and ctx.memory)
      local parent = parent_run and {
        run = parent_run.id, conversation = parent_run.conversation, call = ctx.call and ctx.call.id,
        handler = parent_run.handler, stream = parent_run.stream,
      }
      local conversation
      if mem and parent and parent.call then
        local rows = mem:conversations { parent = parent.conversation, call = parent.call }
        if rows[1] then conversation = rows[1].id end
      end
      local r
      if conversation then
        r = agent_self:run(nil, { conversation = conversation, _parent = parent, _memory = mem })
      else
        r = agent_self:run(args.input, { _parent = parent, _memory = mem })
      end
      if r.output ~= nil then return r.output end
      return r.text
    end,
  }
end

return M
