-- agenthost.llm.openai: the OpenAI Chat Completions dialect (also spoken
-- by Ollama, llama.cpp, vLLM and most OpenAI-compatible servers).
--
-- POST {base_url}/chat/completions with "authorization: Bearer KEY".  The
-- neutral messages and tools (docs/llm.md) become Chat Completions ones:
-- an assistant turn's calls go in `tool_calls` (content null when it has
-- no text), tool results are `tool` messages.  Replies are read from
-- choices[0]; streamed chunks (stream_options.include_usage, ending in
-- [DONE]) are reassembled, tool calls by their index.  Unknown fields and
-- events are ignored.

local common = require "agenthost.llm.common"

local v, tab, str, int = common.v, common.tab, common.str, common.int
local null = common.null

local M = {
  name = "openai",
  default_base_url = "https://api.openai.com/v1",
  path = "/chat/completions",
  key_env = "OPENAI_API_KEY",
}

function M.auth_headers(key)
  if not key or key == "" then return {} end
  return { authorization = "Bearer " .. key }
end

local function bad(msg)
  error({ invalid = msg }, 0)
end

local function message(m, i)
  local role = m.role
  if role == "system" or role == "user" then
    return { role = role, content = m.content or "" }
  elseif role == "assistant" then
    local out = { role = "assistant" }
    local calls = m.tool_calls
    if type(calls) == "table" and #calls > 0 then
      out.tool_calls = {}
      for k, c in ipairs(calls) do
        out.tool_calls[k] = {
          id = c.id, type = "function",
          ["function"] = { name = c.name, arguments = common.arguments_text(c) },
        }
      end
      out.content = (m.content ~= nil and m.content ~= "") and m.content or null
    else
      out.content = m.content or ""
    end
    return out
  elseif role == "tool" then
    if type(m.tool_call_id) ~= "string" then bad("messages[" .. i .. "]: a tool message needs tool_call_id") end
    return { role = "tool", tool_call_id = m.tool_call_id, content = common.content_text(m.content) }
  end
  bad("messages[" .. i .. "].role must be system, user, assistant or tool")
end

local function tool_choice(choice)
  if choice == nil then return nil end
  if choice == "auto" or choice == "none" or choice == "required" then return choice end
  if choice == "any" then return "required" end
  if type(choice) == "table" and type(choice.name) == "string" then
    return { type = "function", ["function"] = { name = choice.name } }
  end
  bad('tool_choice must be "auto", "none", "required" or {name = "tool"}')
end

-- The request body (a table) for a chat request `req` to provider `p`.
function M.request(p, req)
  local messages = {}
  if req.system then messages[1] = { role = "system", content = req.system } end
  for i, m in ipairs(req.messages) do messages[#messages + 1] = message(m, i) end
  local body = {
    model = req.model or p.model,
    messages = messages,
    temperature = req.temperature,
    max_tokens = req.max_tokens or p.max_tokens,
    stop = req.stop,
  }
  -- tool_choice is checked always, but sent only with tools: the API
  -- refuses it alone.
  local choice = tool_choice(req.tool_choice)
  if req.tools and #req.tools > 0 then
    body.tool_choice = choice
    body.tools = {}
    for k, t in ipairs(req.tools) do
      body.tools[k] = { type = "function", ["function"] = {
        name = t.name, description = t.description, parameters = common.schema(t.parameters) } }
    end
    if req.parallel_tool_calls ~= nil then body.parallel_tool_calls = req.parallel_tool_calls end
  end
  if req.output then
    body.response_format = { type = "json_schema", json_schema = {
      name = common.output_name(req.output), schema = common.schema(req.output.schema),
      description = req.output.description, strict = req.output.strict } }
  end
  if req.stream then
    body.stream = true
    body.stream_options = { include_usage = true }
  end
  return body
end

-- An id for a tool call the server sent without one: unique in this
-- process, so that results, approvals and stored history never mix up two
-- calls (ids like call_1 would repeat in every reply).
local made_up = 0
local function call_id()
  made_up = made_up + 1
  return string.format("call_ah%d", made_up)
end

local FINISH = { stop = "stop", tool_calls = "tool_calls", function_call = "tool_calls",
                 length = "length", content_filter = "error" }

local function usage_of(u)
  u = tab(u)
  if not u then return {} end
  return { input_tokens = int(u.prompt_tokens), output_tokens = int(u.completion_tokens) }
end

-- Function arguments are a JSON string; a server that sends an object is
-- forgiven.
local function args_text(a)
  a = v(a)
  if type(a) == "table" then return common.encode(a) end
  if type(a) == "string" then return a end
  return nil
end

-- The error an error object in a body stands for (a 200 or a stream may
-- carry one too).
function M.error_info(body)
  local e = tab(body) and tab(body.error)
  if not e then
    if tab(body) and str(body.error) then return { message = str(body.error) } end
    return nil
  end
  return { type = str(e.type), message = str(e.message), code = str(e.code) }
end

-- The result of a non-streamed reply.
function M.decode(body, what)
  local choice = tab(body.choices) and tab(body.choices[1])
  if not choice then
    error(common.protocol_error(M.name, what, "the reply has no choices"), 0)
  end
  local msg = tab(choice.message) or {}
  local calls = {}
  for _, tc in ipairs(tab(msg.tool_calls) or {}) do
    tc = tab(tc)
    if tc then
      local fn = tab(tc["function"]) or {}
      calls[#calls + 1] = common.call(str(tc.id) or call_id(), str(fn.name), args_text(fn.arguments))
    end
  end
  local reason = str(choice.finish_reason)
  return common.result(str(msg.content) or "", calls, reason, FINISH, usage_of(body.usage), body)
end

-- ---- streaming --------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- The state of one streamed reply.  tool_deltas collects the pieces of
-- tool calls fed since the provider last took them: {index (the call's
-- place in the reply, from 1), id, name, arguments (the piece)}.
function M.stream(what)
  return setmetatable({ what = what, text = {}, calls = {}, by_index = {}, raw = {},
                        tool_deltas = {}, started = false, done = false }, Stream)
end

function Stream:tool_delta(tc)
  local index = int(tc.index) or self.last_index or 0
  local id = str(tc.id)
  if id == "" then id = nil end
  local slot = self.by_index[index]
  -- A new id at an index already in use starts another call (servers that
  -- number every call of a parallel batch 0).
  local new = false
  if not slot or (id and slot.id and id ~= slot.id) then
    slot = { id = id, name = {}, args = {}, ordinal = #self.calls + 1 }
    self.calls[#self.calls + 1] = slot
    self.by_index[index] = slot
    new = true
  end
  self.last_index = index
  slot.id = slot.id or id
  local fn = tab(tc["function"])
  local piece
  if fn then
    local name = str(fn.name)
    if name and name ~= "" then slot.name[#slot.name + 1] = name end
    local args = args_text(fn.arguments)
    if args and args ~= "" then
      slot.args[#slot.args + 1] = args
      self.started = true
      piece = args
    end
  end
  if new or piece then
    self.tool_deltas[#self.tool_deltas + 1] = { index = slot.ordinal, id = slot.id,
      name = table.concat(slot.name), arguments = piece or "" }
  end
end

-- feed(event) -> the text delta it carries, or nil.  Raises the error an
-- error chunk carries and a protocol error for a chunk that is not JSON.
function Stream:feed(ev)
  if ev.data == "[DONE]" then
    self.done = true
    return nil
  end
  local chunk = common.event_data(ev, M.name, self.what)
  if not chunk then return nil end
  local info = M.error_info(chunk)
  if info or ev.event == "error" then common.raise(info, M.name, self.what, ev.data:sub(1, 200)) end
  self.raw[#self.raw + 1] = chunk
  if tab(chunk.usage) then self.usage = usage_of(chunk.usage) end
  local text
  for _, choice in ipairs(tab(chunk.choices) or {}) do
    choice = tab(choice)
    if choice and (int(choice.index) or 0) == 0 then
      local delta = tab(choice.delta)
      if delta then
        local content = str(delta.content)
        if content and content ~= "" then
          self.text[#self.text + 1] = content
          self.started = true
          text = (text or "") .. content
        end
        for _, tc in ipairs(tab(delta.tool_calls) or {}) do
          if tab(tc) then self:tool_delta(tc) end
        end
      end
      local reason = str(choice.finish_reason)
      if reason then self.reason = reason end
    end
  end
  return text
end

-- The result, once the stream has ended.  A stream that ends with neither
-- [DONE] nor a finish reason was cut short.
function Stream:finish()
  if not self.done and not self.reason then
    error(common.protocol_error(M.name, self.what, "the stream ended before [DONE]", true), 0)
  end
  local calls = {}
  for i, slot in ipairs(self.calls) do
    calls[i] = common.call(slot.id or call_id(), table.concat(slot.name), table.concat(slot.args))
  end
  return common.result(table.concat(self.text), calls, self.reason, FINISH, self.usage, self.raw)
end

return M
