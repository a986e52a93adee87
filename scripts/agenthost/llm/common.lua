-- agenthost.llm.common: what the two dialects share.  JSON helpers (on
-- ah.json) that read JSON null as nil, the tool call a model asked for
-- (arguments decoded, or the raw text and an error when they are not a
-- JSON object), the final result of a chat, and the structured errors of a
-- provider, classified as retryable or not.  Relies on agenthost.core.

local core = require "agenthost.core"
local retry = require "agenthost.llm.retry"
local json = core.json

local M = {}

local null = core.null
M.null = null

-- v(x): x, or nil when x is JSON null.
local function v(x)
  if x == null then return nil end
  return x
end
M.v = v

-- A table field of a decoded JSON value, or nil.
function M.tab(x)
  x = v(x)
  if type(x) == "table" then return x end
  return nil
end

-- A string field, or nil.
function M.str(x)
  x = v(x)
  if type(x) == "string" then return x end
  return nil
end

-- An integer field, or nil: a float with an integral value (a server may
-- write 71.0) becomes the integer, any other float is rounded down.
function M.int(x)
  x = v(x)
  if type(x) ~= "number" or x ~= x then return nil end
  return math.tointeger(x) or math.floor(x)
end

M.encode = json.encode

-- decode(text) -> value, or nil and the reason (ah.json.decode's message).
function M.decode(text)
  local ok, value = pcall(json.decode, text)
  if ok then return value end
  return nil, type(value) == "table" and tostring(value.message) or tostring(value)
end

-- A call the model made.  `raw` is the arguments' JSON text; empty text
-- (a tool without parameters) is an empty object.  Arguments that are not
-- a JSON object leave `arguments` nil and say why in `error`.
function M.call(id, name, raw)
  raw = raw or ""
  local c = { id = id, name = name or "", raw_arguments = raw }
  if raw:match("^%s*$") then
    c.arguments = {}
  elseif not raw:match("^%s*{") then
    c.error = "arguments are not a JSON object"
  else
    local value, why = M.decode(raw)
    if type(value) == "table" then
      c.arguments = value
    else
      c.error = "arguments are not valid JSON: " .. tostring(why)
    end
  end
  return c
end

-- The arguments of a call in history as JSON text: the model's own text
-- when the call carries it, else the arguments encoded.
function M.arguments_text(c)
  if type(c.raw_arguments) == "string" and c.raw_arguments ~= "" and c.error == nil then
    return c.raw_arguments
  end
  if type(c.arguments) == "string" then return c.arguments end
  return json.encode(c.arguments or {})
end

-- The arguments of a call in history as a table (for dialects that carry
-- them as a JSON object).
function M.arguments_table(c)
  if type(c.arguments) == "table" then return c.arguments end
  local text = type(c.arguments) == "string" and c.arguments or c.raw_arguments
  if type(text) == "string" then
    local value = M.decode(text)
    if type(value) == "table" then return value end
  end
  return {}
end

-- A tool's JSON Schema: an object schema by default.  An empty `required`
-- list is dropped, because an empty Lua table encodes as {} (an object,
-- unless it is marked with ah.json.array), which is not a valid
-- `required`.
function M.schema(params)
  if params == nil then return { type = "object", properties = {} } end
  if type(params) == "table" and type(params.required) == "table" and next(params.required) == nil then
    local copy = {}
    for k, val in pairs(params) do copy[k] = val end
    copy.required = nil
    return copy
  end
  return params
end

-- ---- structured output ------------------------------------------------------

M.OUTPUT_NAME = "final_answer"

-- The name of the output tool of an output request.
function M.output_name(o)
  return o.name or M.OUTPUT_NAME
end

-- Whether a schema describes objects only (what a tool's input must be).
function M.object_schema(s)
  return type(s) == "table" and s.type == "object"
end

-- The text of a tool result: tables are sent as JSON.
function M.content_text(content)
  if content == nil then return "" end
  if type(content) == "table" then return json.encode(content) end
  return tostring(content)
end

-- The result of a chat.  `reason` is the server's finish reason, which
-- `finish_map` turns into one of stop, tool_calls, length, error (an
-- unknown reason is stop); a reply with tool calls whose server said
-- "stop" (some OpenAI-compatible servers do) ends in tool_calls.  id and
-- model are the reply's id and the model that answered, when the server
-- names them.
function M.result(text, calls, reason, finish_map, usage, raw, id, model)
  local finish = finish_map[reason] or (reason and "stop")
  if #calls > 0 and (finish == nil or finish == "stop") then finish = "tool_calls" end
  return {
    text = text,
    tool_calls = calls,
    finish = finish or "stop",
    finish_reason = reason,
    usage = usage or {},
    raw = raw,
    id = id,
    model = model,
    -- Set by the provider once the call is done (room made here).
    attempts = nil, retries = nil, time_to_first_token = nil,
  }
end

-- ---- redaction -----------------------------------------------------------

M.REDACTED = "[redacted]"
-- Secrets shorter than this are not searched for: they would mangle
-- ordinary words ("mock", a test's "k") and are no real keys.
M.MIN_SECRET = 8

-- The user:password of every URL in text replaced.
function M.redact_urls(text)
  return (text:gsub("(%a[%w+.-]*://)[^/@%s\"']*@", "%1" .. M.REDACTED .. "@"))
end

local function add(list, s)
  if type(s) == "string" and #s >= M.MIN_SECRET then list[#list + 1] = s end
end

-- redactor{secret, ..., urls = {url, ...}, headers = {name = value}} ->
-- function(text) -> text with every secret, the credentials of the URLs
-- and of any URL in it, and the values of the headers that carry
-- credentials replaced by [redacted].  The one helper the library uses
-- for its messages, errors, events and logs.
function M.redactor(o)
  local list = {}
  for _, s in ipairs(o) do add(list, s) end
  for _, u in ipairs(o.urls or {}) do
    local user, pass = u:match("^%a[%w+.-]*://([^/@:]*):?([^/@]*)@")
    if user then add(list, pass); add(list, user .. ":" .. pass) end
    for name, q in u:gmatch("[?&]([%w_.-]*)=([^&#]*)") do
      name = name:lower()
      if name:find("key") or name:find("token") or name:find("secret") or name:find("sig") then
        add(list, q)
      end
    end
  end
  for name, value in pairs(o.headers or {}) do
    local n = tostring(name):lower()
    if type(value) == "string" and (n:find("auth") or n:find("key") or n:find("token")
        or n:find("secret") or n == "cookie") then
      add(list, value)
      add(list, value:match("^%S+%s+(.+)$"))
    end
  end
  table.sort(list, function(x, y) return #x > #y end) -- longest first
  local pats = {}
  for i, s in ipairs(list) do pats[i] = s:gsub("%p", "%%%0") end
  return function(text)
    if type(text) ~= "string" then return text end
    text = M.redact_urls(text)
    for _, pat in ipairs(pats) do text = text:gsub(pat, M.REDACTED) end
    return text
  end
end

-- Redacts every string of v (a structured error, an event) in place,
-- nested tables included; returns v.  A string is returned redacted.
function M.redact_value(v, redact, seen)
  if type(v) == "string" then return redact(v) end
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return v end
  seen[v] = true
  for k, x in pairs(v) do
    if type(x) == "string" then v[k] = redact(x)
    elseif type(x) == "table" then M.redact_value(x, redact, seen) end
  end
  return v
end

-- ---- errors ---------------------------------------------------------------

-- The status an error type of either dialect stands for, for errors that
-- come without one (in a stream, or a 200 carrying an error body).
local TYPE_STATUS = {
  invalid_request_error = 400, authentication_error = 401, invalid_api_key = 401,
  permission_error = 403, not_found_error = 404, request_too_large = 413,
  rate_limit_error = 429, rate_limit_exceeded = 429, requests = 429, tokens = 429,
  api_error = 500, server_error = 500, timeout_error = 504,
  overloaded_error = 529, overloaded = 529,
}

-- api_error{provider, what, status, headers, type, message, code, body}
-- -> a structured error.  The kind is rate_limited (429), overloaded (529
-- or an overloaded_error), else http; retryable as retry.should_retry
-- says (so x-should-retry is honoured).
function M.api_error(e)
  local status = e.status or TYPE_STATUS[e.type or ""] or TYPE_STATUS[e.code or ""]
  local kind = "http"
  if status == 429 then
    kind = "rate_limited"
  elseif status == 529 or e.type == "overloaded_error" then
    kind = "overloaded"
  end
  local retryable = false
  if status then retryable = retry.should_retry(status, e.headers) end
  local parts = { e.provider .. " " .. e.what .. ":" }
  if e.status then parts[#parts + 1] = tostring(e.status) end
  if e.type then parts[#parts + 1] = e.type end
  if e.message then parts[#parts + 1] = e.message end
  if not e.status and not e.type and not e.message then parts[#parts + 1] = "error" end
  return core.error.new(kind, table.concat(parts, " "), {
    status = status, retryable = retryable, type = e.type, code = e.code,
    headers = e.headers, body = e.body, provider = e.provider,
  })
end

-- The JSON object a stream event's data holds, or nil for an event
-- without data; raises a protocol error for data that is not one.
function M.event_data(ev, provider, what)
  local data = ev.data
  if data == nil or data == "" then return nil end
  local value, why = M.decode(data)
  if type(value) ~= "table" then
    error(M.protocol_error(provider, what, "a stream event is not a JSON object: " ..
      (why or data:sub(1, 80))), 0)
  end
  return value
end

-- Raises the API error `info` ({type, message, code} as a dialect read it
-- from an error body or event) describes.
function M.raise(info, provider, what, fallback)
  info = info or { message = fallback }
  info.provider, info.what = provider, what
  error(M.api_error(info), 0)
end

-- A protocol error: a reply that is not what the dialect says.  A stream
-- cut short is retryable (while nothing of it was delivered); a malformed
-- reply is not.
function M.protocol_error(provider, what, message, retryable)
  return core.error.new("protocol", provider .. " " .. what .. ": " .. message,
    { retryable = retryable or false, provider = provider })
end

return M
