-- agenthost.agent: the agent loop.  The model decides, the tools it chose
-- run concurrently, every message is persisted as it happens, and the loop
-- repeats until the model answers or max_turns is reached.
--
--   local agent = require "agenthost.agent"
--   local a = agent.new{ name = "ops", provider = p, system = "...",
--                        tools = { web_search, metrics },   -- or a tools.registry
--                        memory = db,                       -- an ah.store db or agenthost.memory
--                        max_turns = 10, tool_concurrency = 8,
--                        on_event = function(ev) end }
--   local r = a:run("Analyze system performance anomalies")
--   -- r = {text, turns, usage = {input_tokens, output_tokens}, messages, conversation}
--   a:run(nil, { conversation = r.conversation })   -- resume an interrupted run
--
-- The provider is anything with p:chat{messages, tools, system, stream}
-- returning {text, tool_calls = {{id, name, arguments, error}}, usage}
-- (agenthost.llm's providers).  Messages are in the neutral shape:
-- {role = "user"|"assistant"|"tool", content, tool_calls (assistant),
-- tool_call_id, name and is_error (tool)}.
--
-- Persistence makes runs resumable: the user's input, each model answer
-- (with its tool calls) and each tool result are stored (committed) before
-- the loop goes on, so a run interrupted at any point resumes from its last
-- stored message and never runs a tool whose result was stored.  Events are
-- posted in the background.

local ah = require "agenthost.core"
local tools_mod = require "agenthost.tools"
local memory_mod = require "agenthost.memory"
local llm_common = require "agenthost.llm.common"
local task = ah.task

local M = {}
local Agent = {}
Agent.__index = Agent

local function bad(msg)
  error(ah.error.new("invalid_argument", "agent: " .. msg), 3)
end

-- agent.new{name, provider, system, tools, memory, max_turns, tool_concurrency, on_event}
function M.new(cfg)
  if type(cfg) ~= "table" then bad("expected a table of settings") end
  if type(cfg.name) ~= "string" or cfg.name == "" then bad("name must be a non-empty string") end
  if type(cfg.provider) ~= "table" and type(cfg.provider) ~= "userdata" then
    bad("provider must be an LLM provider (agenthost.llm.provider{...})")
  end
  local reg = cfg.tools
  if reg == nil or (type(reg) == "table" and getmetatable(reg) == nil) then
    reg = tools_mod.registry(reg or {})
  end
  local mem = cfg.memory
  if type(mem) == "userdata" then mem = memory_mod.open(mem) end
  local max_turns = cfg.max_turns or 10
  local conc = cfg.tool_concurrency or 8
  if math.type(max_turns) ~= "integer" or max_turns < 1 then bad("max_turns must be an integer >= 1") end
  if math.type(conc) ~= "integer" or conc < 1 then bad("tool_concurrency must be an integer >= 1") end
  if cfg.on_event ~= nil and type(cfg.on_event) ~= "function" then bad("on_event must be a function") end
  return setmetatable({
    name = cfg.name, provider = cfg.provider, system = cfg.system, tools = reg,
    memory = mem, max_turns = max_turns, tool_concurrency = conc,
    on_event = cfg.on_event, pending = {}, decided = {}, seq = 0,
  }, Agent)
end

-- The provider's redaction of its key and URL credentials (llm.common
-- redactor), or none for a provider that has no such function.
local function redactor(self)
  local p = self.provider
  local r = type(p) == "table" and rawget(p, "redact")
  if type(r) == "function" then return r end
  return function(s) return s end
end

function Agent:emit(ev)
  if not self.on_event then return end
  ev.agent = self.name
  -- An error event carries a provider's error: redacted again here, in
  -- case a provider wrapper raised it unredacted.
  if ev.error ~= nil then ev.error = llm_common.redact_value(ev.error, redactor(self)) end
  local ok, err = pcall(self.on_event, ev)
  if not ok then
    io.stderr:write("agenthost.agent: the on_event handler failed: ",
      redactor(self)(tostring(err)), "\n")
  end
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

-- ---- persistence ------------------------------------------------------------------

-- Stores a message (committed before returning) and adds it to msgs.
local function record(self, run, msgs, msg, usage)
  msgs[#msgs + 1] = msg
  if not self.memory then return end
  local data
  if msg.tool_calls and #msg.tool_calls > 0 then
    local calls = {}
    for i, c in ipairs(msg.tool_calls) do
      calls[i] = { id = c.id, name = c.name, arguments = c.arguments,
                   raw_arguments = c.raw_arguments, error = c.error }
    end
    data = { tool_calls = calls }
  end
  if usage then
    data = data or {}
    data.usage = usage
  end
  if msg.is_error then
    data = data or {}
    data.is_error = true
  end
  self.memory:append(run.conversation, { role = msg.role, content = msg.content,
    name = msg.name, tool_call_id = msg.tool_call_id, data = data })
end

-- Rebuilds a run's messages, turns and usage from memory.
local function load(self, conversation)
  if not self.memory then
    bad("resuming a conversation needs memory = a store or agenthost.memory")
  end
  if not self.memory:run(conversation) then
    error(ah.error.new("invalid_argument", "agent: there is no conversation " ..
      tostring(conversation)), 3)
  end
  local msgs, turns = {}, 0
  local usage = { input_tokens = 0, output_tokens = 0 }
  for _, row in ipairs(self.memory:history(conversation, { events = false })) do
    local data = type(row.data) == "table" and row.data or {}
    local m = { role = row.role, content = row.content, name = row.name,
                tool_call_id = row.tool_call_id, is_error = data.is_error or nil }
    if row.role == "assistant" then
      turns = turns + 1
      m.tool_calls = data.tool_calls
      if data.usage then
        usage.input_tokens = usage.input_tokens + (data.usage.input_tokens or 0)
        usage.output_tokens = usage.output_tokens + (data.usage.output_tokens or 0)
      end
    end
    msgs[#msgs + 1] = m
  end
  return msgs, turns, usage
end

-- The tool calls of the last assistant message that have no result yet.
local function unanswered(msgs)
  local last
  for i = #msgs, 1, -1 do
    if msgs[i].role == "assistant" then last = i break end
  end
  if not last or not msgs[last].tool_calls then return {} end
  local answered = {}
  for i = last + 1, #msgs do
    if msgs[i].role == "tool" and msgs[i].tool_call_id then answered[msgs[i].tool_call_id] = true end
  end
  local out = {}
  for _, c in ipairs(msgs[last].tool_calls) do
    if not answered[c.id] then out[#out + 1] = c end
  end
  return out
end

-- ---- the loop ------------------------------------------------------------------------

local function run_tool(self, run, call)
  local tool = self.tools:get(call.name or "")
  self:emit { type = "tool_start", conversation = run.conversation, turn = run.turns,
              call = call, needs_approval = tool and tool.needs_approval or nil }
  local res
  if tool and tool.needs_approval and self.decided[call.id] == nil then
    local ev = task.event()
    self.pending[call.id] = ev
    local ok, err = pcall(ev.wait, ev)
    self.pending[call.id] = nil
    if not ok then error(err, 0) end
  end
  if tool and tool.needs_approval and not self.decided[call.id] then
    res = { is_error = true, content = "error: the user did not approve this call of " .. call.name }
  else
    res = self.tools:call(call, { agent = self, conversation = run.conversation,
                                  call = call, memory = self.memory })
  end
  self.decided[call.id] = nil
  self:emit { type = "tool_end", conversation = run.conversation, turn = run.turns,
              call = call, is_error = res.is_error or nil, content = res.content }
  return res
end

-- Runs calls concurrently (at most tool_concurrency at once), storing each
-- result as soon as it is in; msgs gets them in the order of the calls.
local function run_tools(self, run, msgs, calls)
  local results = task.map(calls, function(call)
    local res = run_tool(self, run, call)
    local m = { role = "tool", tool_call_id = call.id, name = call.name,
                content = res.content, is_error = res.is_error }
    if self.memory then
      self.memory:append(run.conversation, { role = "tool", content = m.content, name = m.name,
        tool_call_id = m.tool_call_id, data = m.is_error and { is_error = true } or nil })
    end
    return m
  end, { limit = self.tool_concurrency })
  for _, m in ipairs(results) do msgs[#msgs + 1] = m end
end

local function add_usage(total, u)
  if type(u) ~= "table" then return end
  total.input_tokens = total.input_tokens + (u.input_tokens or 0)
  total.output_tokens = total.output_tokens + (u.output_tokens or 0)
end

-- a:run(input [, {conversation = id, stream = fn}]) -> {text, turns, usage,
-- messages, conversation}
function Agent:run(input, opts)
  opts = opts or {}
  if input ~= nil and type(input) ~= "string" then bad("the input must be a string") end
  local msgs, turns, usage
  local run = {}
  if opts.conversation ~= nil then
    run.conversation = opts.conversation
    msgs, turns, usage = load(self, opts.conversation)
  else
    if input == nil then bad("run needs an input, or a conversation to resume") end
    msgs, turns, usage = {}, 0, { input_tokens = 0, output_tokens = 0 }
    if self.memory then
      run.conversation = self.memory:start_run(self.name, { goal = input })
    else
      self.seq = self.seq + 1
      run.conversation = self.seq
    end
  end
  run.turns = turns
  -- A resumed run first finishes the tool calls its last turn left open:
  -- their results must follow the calls, before any new input.
  local open = unanswered(msgs)
  if #open > 0 then run_tools(self, run, msgs, open) end
  if input ~= nil then record(self, run, msgs, { role = "user", content = input }) end

  local tool_list = self.tools:list()
  while true do
    if run.turns >= self.max_turns then
      local last = msgs[#msgs]
      if self.memory then self.memory:finish_run(run.conversation, "max_turns") end
      local err = ah.error.new("max_turns", string.format(
        "agent %s: no final answer after %d turns; raise max_turns or resume with " ..
        "{conversation = %s}", self.name, self.max_turns, tostring(run.conversation)), {
        conversation = run.conversation,
        partial = { text = last and last.role == "assistant" and last.content or nil,
                    turns = run.turns, usage = usage, messages = msgs,
                    conversation = run.conversation } })
      self:emit { type = "error", conversation = run.conversation, error = err }
      error(err, 0)
    end
    run.turns = run.turns + 1
    self:emit { type = "turn_start", conversation = run.conversation, turn = run.turns }
    local ok, resp = pcall(self.provider.chat, self.provider, {
      messages = msgs, tools = #tool_list > 0 and tool_list or nil, system = self.system,
      stream = opts.stream })
    if not ok then
      self:emit { type = "error", conversation = run.conversation, turn = run.turns, error = resp }
      error(resp, 0)
    end
    add_usage(usage, resp.usage)
    self:emit { type = "model_response", conversation = run.conversation, turn = run.turns,
                response = resp }
    local calls = resp.tool_calls or {}
    record(self, run, msgs, { role = "assistant", content = resp.text,
                              tool_calls = #calls > 0 and calls or nil }, resp.usage)
    if #calls == 0 then
      self:emit { type = "turn_end", conversation = run.conversation, turn = run.turns, final = true }
      if self.memory then
        self.memory:finish_run(run.conversation, "done", resp.text)
      end
      return { text = resp.text, turns = run.turns, usage = usage, messages = msgs,
               conversation = run.conversation }
    end
    run_tools(self, run, msgs, calls)
    self:emit { type = "turn_end", conversation = run.conversation, turn = run.turns }
  end
end

return M
