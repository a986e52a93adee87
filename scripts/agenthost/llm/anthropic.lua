-- agenthost.llm.anthropic: the Anthropic Messages dialect.
--
-- POST {base_url}/v1/messages with x-api-key and anthropic-version
-- 2023-06-01.  The neutral messages (docs/llm.md) become Messages ones:
-- system messages join the top-level `system`, an assistant turn's calls
-- are tool_use blocks, tool results are tool_result blocks (with is_error)
-- in a user message, and consecutive messages of one role are merged into
-- one.  max_tokens is required by the API and defaults to 1024.  Streamed
-- events (message_start, content_block_start/delta/stop, message_delta
-- with cumulative usage, message_stop, ping, error) are reassembled;
-- unknown events, blocks and fields are ignored.

local common = require "agenthost.llm.common"

local v, tab, str, int = common.v, common.tab, common.str, common.int

local M = {
  name = "anthropic",
  default_base_url = "https://api.anthropic.com",
  path = "/v1/messages",
  key_env = "ANTHROPIC_API_KEY",
  version = "2023-06-01",
  default_max_tokens = 1024,
}

function M.auth_headers(key)
  local h = { ["anthropic-version"] = M.version }
  if key and key ~= "" then h["x-api-key"] = key end
  return h
end

local function bad(msg)
  error({ invalid = msg }, 0)
end

-- Content as blocks: a string is one text block (none when empty); a table
-- is taken to be blocks already.
local function blocks(content)
  if type(content) == "table" then return content end
  if content == nil or content == "" then return {} end
  return { { type = "text", text = tostring(content) } }
end

local function messages(list, system)
  local out = {}
  local function push(role, items)
    if #items == 0 then return end
    local last = out[#out]
    if not last or last.role ~= role then
      last = { role = role, content = {} }
      out[#out + 1] = last
    end
    for _, b in ipairs(items) do last.content[#last.content + 1] = b end
  end
  for i, m in ipairs(list) do
    local role = m.role
    if role == "system" then
      system[#system + 1] = common.content_text(m.content)
    elseif role == "user" then
      push("user", blocks(m.content))
    elseif role == "assistant" then
      local items = blocks(m.content)
      for _, c in ipairs(type(m.tool_calls) == "table" and m.tool_calls or {}) do
        items[#items + 1] = { type = "tool_use", id = c.id, name = c.name,
                              input = common.arguments_table(c) }
      end
      push("assistant", items)
    elseif role == "tool" then
      if type(m.tool_call_id) ~= "string" then bad("messages[" .. i .. "]: a tool message needs tool_call_id") end
      push("user", { { type = "tool_result", tool_use_id = m.tool_call_id,
                       content = common.content_text(m.content),
                       is_error = m.is_error and true or nil } })
    else
      bad("messages[" .. i .. "].role must be system, user, assistant or tool")
    end
  end
  return out
end

local function tool_choice(choice, parallel)
  if choice == nil and parallel ~= false then return nil end
  local out
  if choice == nil or choice == "auto" then
    out = { type = "auto" }
  elseif choice == "none" then
    out = { type = "none" }
  elseif choice == "required" or choice == "any" then
    out = { type = "any" }
  elseif type(choice) == "table" and type(choice.name) == "string" then
    out = { type = "tool", name = choice.name }
  else
    bad('tool_choice must be "auto", "none", "required" or {name = "tool"}')
  end
  if parallel == false and out.type ~= "none" then out.disable_parallel_tool_use = true end
  return out
end

-- The tool an output request is answered with: the schema itself when it
-- describes an object (a tool's input is one), else an object whose
-- `value` holds it.
local function output_tool(o)
  local schema = common.schema(o.schema)
  local wrapped = not common.object_schema(schema)
  if wrapped then
    schema = { type = "object", properties = { value = schema }, required = { "value" },
               additionalProperties = false }
  end
  return { name = common.output_name(o), input_schema = schema,
           description = o.description or "Give your final answer with this tool." }, wrapped
end

function M.request(p, req)
  local system = {}
  if req.system then system[1] = req.system end
  local body = {
    model = req.model or p.model,
    max_tokens = req.max_tokens or p.max_tokens or M.default_max_tokens,
    messages = messages(req.messages, system),
    temperature = req.temperature,
    stop_sequences = req.stop,
  }
  if #system > 0 then body.system = table.concat(system, "\n\n") end
  if req.output then
    -- The answer is a forced tool: that tool alone when there are no
    -- others, else any tool (the model may still call the others first).
    local tools = {}
    for k, t in ipairs(req.tools or {}) do
      tools[k] = { name = t.name, description = t.description, input_schema = common.schema(t.parameters) }
    end
    tools[#tools + 1] = output_tool(req.output)
    body.tools = tools
    if #tools == 1 then
      body.tool_choice = { type = "tool", name = tools[1].name }
    else
      body.tool_choice = { type = "any" }
    end
    if req.parallel_tool_calls == false then body.tool_choice.disable_parallel_tool_use = true end
  elseif req.tools and #req.tools > 0 then
    body.tools = {}
    for k, t in ipairs(req.tools) do
      body.tools[k] = { name = t.name, description = t.description, input_schema = common.schema(t.parameters) }
    end
    body.tool_choice = tool_choice(req.tool_choice, req.parallel_tool_calls)
  else
    -- Checked, but not sent: the API refuses tool_choice without tools.
    tool_choice(req.tool_choice)
  end
  if req.stream then body.stream = true end
  return body
end

local FINISH = { end_turn = "stop", stop_sequence = "stop", pause_turn = "stop",
                 tool_use = "tool_calls", max_tokens = "length",
                 model_context_window_exceeded = "length", refusal = "error" }

-- Usage fields as reported; later reports (message_delta's, cumulative)
-- replace earlier ones field by field.
local function merge_usage(into, u)
  u = tab(u)
  if not u then return into end
  into = into or {}
  for _, k in ipairs { "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens" } do
    local n = int(u[k])
    if n then into[k] = n end
  end
  return into
end

function M.error_info(body)
  local e = tab(body) and tab(body.error)
  if not e then return nil end
  return { type = str(e.type), message = str(e.message) }
end

-- A tool_use block's input: an object (or, from a broken server, the JSON
-- text of one).
local function input_text(input)
  input = v(input)
  if type(input) == "string" then return input end
  if type(input) == "table" then return common.encode(input) end
  return ""
end

-- The answer an output tool's input holds, as JSON text.
local function output_text(input, req)
  local _, wrapped = output_tool(req.output)
  if type(input) == "string" then
    if not wrapped then return input end
    local value = common.decode(input)
    if type(value) ~= "table" then return input end
    input = value
  end
  if wrapped and type(input) == "table" then
    local x = input.value
    if x == nil then return "null" end
    return common.encode(x)
  end
  return common.encode(input)
end

function M.decode(body, what, req)
  local out_name = req and req.output and common.output_name(req.output)
  local content = tab(body.content)
  if not content then
    error(common.protocol_error(M.name, what, "the reply has no content"), 0)
  end
  local text, calls = {}, {}
  local answer
  for _, b in ipairs(content) do
    b = tab(b)
    if b and b.type == "text" then
      text[#text + 1] = str(b.text) or ""
    elseif b and b.type == "tool_use" and out_name and str(b.name) == out_name and not answer then
      answer = output_text(v(b.input), req)
    elseif b and b.type == "tool_use" then
      local c = common.call(str(b.id) or ("toolu_" .. (#calls + 1)), str(b.name), input_text(b.input))
      if type(v(b.input)) == "table" then c.arguments, c.error = v(b.input), nil end
      calls[#calls + 1] = c
    end
  end
  local reason = str(body.stop_reason)
  if answer and #calls == 0 and reason == "tool_use" then reason = "end_turn" end
  return common.result(answer or table.concat(text), calls, reason, FINISH, merge_usage(nil, body.usage), body)
end

-- ---- streaming --------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- The state of one streamed reply (tool_deltas: as in the openai
-- dialect).  With an output request, the output tool's input arrives as
-- text deltas.
function M.stream(what, req)
  return setmetatable({ what = what, text = {}, blocks = {}, order = {}, raw = {},
                        tool_deltas = {}, ncalls = 0, req = req,
                        out_name = req and req.output and common.output_name(req.output),
                        started = false, done = false }, Stream)
end

function Stream:feed(ev)
  local msg = common.event_data(ev, M.name, self.what)
  if not msg then return nil end
  self.raw[#self.raw + 1] = msg
  local kind = str(msg.type) or ev.event
  if kind == "error" then
    common.raise(M.error_info(msg), M.name, self.what, ev.data:sub(1, 200))
  elseif kind == "message_start" then
    local m = tab(msg.message)
    if m then self.usage = merge_usage(self.usage, m.usage) end
  elseif kind == "content_block_start" then
    local index = int(msg.index) or #self.order
    local cb = tab(msg.content_block) or {}
    local block = { type = str(cb.type), id = str(cb.id), name = str(cb.name), parts = {}, input = v(cb.input) }
    if not self.blocks[index] then self.order[#self.order + 1] = index end
    self.blocks[index] = block
    if block.type == "tool_use" then
      if self.out_name and block.name == self.out_name and not self.answer then
        block.output = true
        self.answer = block
      else
        self.ncalls = self.ncalls + 1
        block.ordinal = self.ncalls
        self.tool_deltas[#self.tool_deltas + 1] = { index = block.ordinal, id = block.id,
          name = block.name or "", arguments = "" }
      end
    end
    local initial = block.type == "text" and str(cb.text)
    if initial and initial ~= "" then
      self.text[#self.text + 1] = initial
      self.started = true
      return initial
    end
  elseif kind == "content_block_delta" then
    local d = tab(msg.delta) or {}
    local block = self.blocks[int(msg.index) or -1]
    if d.type == "text_delta" then
      local t = str(d.text)
      if t and t ~= "" then
        self.text[#self.text + 1] = t
        self.started = true
        return t
      end
    elseif d.type == "input_json_delta" and block then
      local piece = str(d.partial_json)
      if piece and piece ~= "" then
        block.parts[#block.parts + 1] = piece
        self.started = true
        if block.output then return piece end
        if block.ordinal then
          self.tool_deltas[#self.tool_deltas + 1] = { index = block.ordinal, id = block.id,
            name = block.name or "", arguments = piece }
        end
      end
    end
  elseif kind == "message_delta" then
    local d = tab(msg.delta)
    if d and str(d.stop_reason) then self.reason = str(d.stop_reason) end
    self.usage = merge_usage(self.usage, msg.usage)
  elseif kind == "message_stop" then
    self.done = true
  end
  -- ping, content_block_stop and unknown events carry nothing to keep.
  return nil
end

function Stream:finish()
  if not self.done and not self.reason then
    error(common.protocol_error(M.name, self.what, "the stream ended before message_stop", true), 0)
  end
  table.sort(self.order)
  local calls = {}
  local answer
  for _, index in ipairs(self.order) do
    local b = self.blocks[index]
    if b.output then
      local raw = table.concat(b.parts)
      if raw == "" and type(b.input) == "table" then raw = input_text(b.input) end
      answer = output_text(raw, self.req)
    elseif b.type == "tool_use" then
      local raw = table.concat(b.parts)
      -- Servers that send the whole input at the start send no deltas.
      if raw == "" and type(b.input) == "table" and next(b.input) ~= nil then raw = input_text(b.input) end
      calls[#calls + 1] = common.call(b.id or ("toolu_" .. (#calls + 1)), b.name, raw)
    end
  end
  local reason = self.reason
  if answer and #calls == 0 and reason == "tool_use" then reason = "end_turn" end
  return common.result(answer or table.concat(self.text), calls, reason, FINISH, self.usage, self.raw)
end

return M
