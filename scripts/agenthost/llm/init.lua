-- agenthost.llm: chat model providers over ah.http (docs/llm.md).
--
--   local llm = require "agenthost.llm"          -- also ah.llm
--   local p = llm.provider{ kind = "openai", base_url = ..., model = ... }
--   local r = p:chat{ messages = {...}, tools = {...}, stream = function(delta) end }
--   r.text, r.tool_calls, r.finish, r.usage
--
-- One neutral shape of messages and tools is turned into each dialect's
-- (agenthost.llm.openai, agenthost.llm.anthropic); replies, streamed or
-- not, come back as one result shape.  A provider retries what is worth
-- retrying (agenthost.llm.retry) and keeps the limits it was given for
-- every task that uses it (agenthost.llm.limits).

local core = require "agenthost.core"
local http = require "agenthost.http"
local common = require "agenthost.llm.common"
local retry = require "agenthost.llm.retry"
local limits = require "agenthost.llm.limits"

local task = core.task
local clock = core.clock

local M = {}

M.dialects = {
  openai = require "agenthost.llm.openai",
  anthropic = require "agenthost.llm.anthropic",
}
M.retry, M.limits, M.common = retry, limits, common

M.DEFAULT_TIMEOUT = 600
M.DEFAULT_MAX_RETRIES = 2

local function invalid(msg, level)
  error(core.error.new("invalid_argument", msg), level + 1)
end

local function check_number(opts, name, min, integer)
  local x = opts[name]
  if x == nil then return nil end
  if type(x) ~= "number" or x ~= x or x < min or (integer and math.type(x) ~= "integer") then
    invalid(string.format("llm.provider: %s must be %s >= %s", name,
      integer and "an integer" or "a number", min), 3)
  end
  return x
end

local Provider = {}
Provider.__index = Provider

-- provider{kind, base_url, model, api_key, max_retries, max_concurrency,
--          requests_per_minute, tokens_per_minute, timeout,
--          connect_timeout, headers, max_tokens, endpoint, on_retry,
--          clock, sleep}
--
-- Every wait of a provider that is not I/O (a retry's delay, a rate
-- bucket's refill) goes through `sleep` and reads time from `clock`
-- (task.sleep and the loop clock by default), so that a caller can
-- observe or skip those waits; see agenthost.llm.limits for what a given
-- pair must keep to.
function M.provider(opts)
  if type(opts) ~= "table" then invalid("llm.provider: expected a table of options", 2) end
  local dialect = M.dialects[opts.kind]
  if not dialect then invalid('llm.provider: kind must be "openai" or "anthropic"', 2) end
  for _, name in ipairs { "base_url", "model", "api_key", "endpoint" } do
    if opts[name] ~= nil and type(opts[name]) ~= "string" then
      invalid("llm.provider: " .. name .. " must be a string", 2)
    end
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    invalid("llm.provider: headers must be a table of name = value", 2)
  end
  for _, name in ipairs { "on_retry", "clock", "sleep" } do
    if opts[name] ~= nil and type(opts[name]) ~= "function" then
      invalid("llm.provider: " .. name .. " must be a function", 2)
    end
  end
  local max_retries = check_number(opts, "max_retries", 0, true) or M.DEFAULT_MAX_RETRIES
  local max_concurrency = check_number(opts, "max_concurrency", 1, true)
  local rpm = check_number(opts, "requests_per_minute", 1e-9)
  local tpm = check_number(opts, "tokens_per_minute", 1e-9)
  local timeout = check_number(opts, "timeout", 1e-3) or M.DEFAULT_TIMEOUT
  local connect_timeout = check_number(opts, "connect_timeout", 1e-3)
  local max_tokens = check_number(opts, "max_tokens", 1, true)

  local base_url = (opts.base_url or dialect.default_base_url):gsub("/+$", "")
  local key = opts.api_key or os.getenv(dialect.key_env)
  local headers = dialect.auth_headers(key)
  headers["content-type"] = "application/json"
  for k, val in pairs(opts.headers or {}) do headers[k] = val end

  local url = opts.endpoint or (base_url .. dialect.path)
  local redact = common.redactor { key, urls = { url, base_url }, headers = headers }
  return setmetatable({
    redact = redact,
    kind = opts.kind, dialect = dialect, model = opts.model, base_url = base_url,
    url = url, what = redact("POST " .. url:gsub("//[^/@]*@", "//")),
    headers = headers, max_retries = max_retries, timeout = timeout,
    connect_timeout = connect_timeout, max_tokens = max_tokens, on_retry = opts.on_retry,
    sleep = opts.sleep or task.sleep,
    limits = limits.new { max_concurrency = max_concurrency, requests_per_minute = rpm,
                          tokens_per_minute = tpm, clock = opts.clock, sleep = opts.sleep },
    counts = { requests = 0, retries = 0 },
  }, Provider)
end

-- The error of a non-2xx reply, with what its body says.
function Provider:status_error(status, headers, text)
  local body = common.decode(text or "")
  local info = (type(body) == "table" and self.dialect.error_info(body)) or {}
  local message = info.message
  if not message and text and text ~= "" then message = text:sub(1, 200) end
  return common.api_error {
    provider = self.kind, what = self.what, status = status, headers = headers,
    type = info.type, code = info.code, message = message, body = text and text:sub(1, 4096),
  }
end

local function ok_status(status)
  return status >= 200 and status <= 299
end

-- The result of a whole (not streamed) reply body (`decoded` when ah.http
-- has decoded it already).
function Provider:decode_reply(text, decoded, req)
  local body, why = decoded, nil
  if body == nil then body, why = common.decode(text) end
  if type(body) ~= "table" then
    error(common.protocol_error(self.kind, self.what, "the reply is not a JSON object: " ..
      tostring(why or text:sub(1, 80))), 0)
  end
  local info = self.dialect.error_info(body)
  if info then common.raise(info, self.kind, self.what) end
  return self.dialect.decode(body, self.what, req)
end

function Provider:request_once(text, req)
  local res = http.request { method = "POST", url = self.url, headers = self.headers, body = text,
                             timeout = self.timeout, connect_timeout = self.connect_timeout }
  if not ok_status(res.status) then
    error(self:status_error(res.status, res.headers, res.body), 0)
  end
  return self:decode_reply(res.body, res.json, req)
end

local function read_all(stream, limit)
  local parts, n = {}, 0
  for chunk in stream do
    parts[#parts + 1] = chunk
    n = n + #chunk
    if limit and n > limit then break end
  end
  return table.concat(parts)
end

-- Streams one attempt.  state.started is set once content has arrived
-- (from then on a failure is not retried); state.in_callback while the
-- caller's functions run (their errors are their own): callback gets each
-- text delta, req.on_tool_delta each piece of a tool call's arguments.
function Provider:stream_once(text, callback, state, req)
  local it <close> = http.sse { method = "POST", url = self.url, headers = self.headers, body = text,
                                timeout = self.timeout, connect_timeout = self.connect_timeout }
  if not ok_status(it.status) then
    error(self:status_error(it.status, it.headers, read_all(it.stream, 65536)), 0)
  end
  local ctype = it.headers["content-type"] or ""
  if ctype:find("json", 1, true) then
    -- A server that does not stream answered with a whole reply.
    local res = self:decode_reply(read_all(it.stream), nil, req)
    if res.text ~= "" and callback then
      state.in_callback = true
      callback(res.text)
      state.in_callback = false
    end
    return res
  end
  local st = self.dialect.stream(self.what, req)
  state.stream = st
  local on_tool = req and req.on_tool_delta
  -- The stream is read to its end even after the end marker, so that the
  -- connection stays reusable.
  for ev in it do
    if not st.done then
      local delta = st:feed(ev)
      state.started = st.started
      if st.started and not state.first then state.first = clock() end
      if delta and callback then
        state.in_callback = true
        callback(delta)
        state.in_callback = false
      end
      local pieces = st.tool_deltas
      if pieces[1] then
        st.tool_deltas = {}
        if on_tool then
          state.in_callback = true
          for _, d in ipairs(pieces) do on_tool(d) end
          state.in_callback = false
        end
      end
    end
  end
  return st:finish()
end

function Provider:attempt(text, estimate, req, state)
  local permit <close> = self.limits:acquire(estimate)
  self.counts.requests = self.counts.requests + 1
  local res
  local stream = req.stream
  if stream then
    res = self:stream_once(text, type(stream) == "function" and stream or nil, state, req)
  else
    res = self:request_once(text, req)
  end
  self.limits:settle(permit, res.usage)
  return res
end

local function check_request(req)
  if type(req) ~= "table" then return "expected a table {messages = ..., ...}" end
  local msgs = req.messages
  if type(msgs) ~= "table" or #msgs == 0 then return "messages must be a non-empty array of messages" end
  for i, m in ipairs(msgs) do
    if type(m) ~= "table" or type(m.role) ~= "string" then
      return "messages[" .. i .. "] must be a table with a role"
    end
  end
  if req.tools ~= nil then
    if type(req.tools) ~= "table" then return "tools must be an array of {name, description, parameters}" end
    for i, t in ipairs(req.tools) do
      if type(t) ~= "table" or type(t.name) ~= "string" then return "tools[" .. i .. "] must be a table with a name" end
    end
  end
  local s = req.stream
  if s ~= nil and type(s) ~= "boolean" and type(s) ~= "function" then
    return "stream must be a function (called with each text delta) or a boolean"
  end
  if req.on_tool_delta ~= nil and type(req.on_tool_delta) ~= "function" then
    return "on_tool_delta must be a function"
  end
  local o = req.output
  if o ~= nil then
    if type(o) ~= "table" or type(o.schema) ~= "table" then
      return "output must be a table {schema = JSON Schema, name =, strict =}"
    end
    if o.name ~= nil and (type(o.name) ~= "string" or not o.name:match("^[%w_%-]+$") or #o.name > 64) then
      return "output.name must be 1 to 64 letters, digits, _ or -"
    end
    for _, t in ipairs(req.tools or {}) do
      if type(t) == "table" and t.name == common.output_name(o) then
        return "output.name " .. t.name .. " is also the name of a tool"
      end
    end
  end
  return nil
end

-- chat{messages, tools, tool_choice, system, temperature, max_tokens,
--      stop, model, stream, on_tool_delta, output, parallel_tool_calls, extra}
-- -> {text, tool_calls, finish, finish_reason, usage, id, model, raw,
--     attempts, retries, time_to_first_token}
--
-- attempts counts the requests sent for this call, retries the ones of
-- them that were retries (attempts - 1); time_to_first_token is, for a
-- streamed reply, the seconds from the call to the first piece of content
-- (text or a tool call's arguments), retries and waits for the limits
-- included, and nil for a reply that was not streamed.  A failed call's
-- error carries attempts too.
--
-- output = {schema, name, strict} asks for a final answer that is JSON
-- matching schema, in the dialect's own way (docs/llm.md); text is then
-- that JSON.  on_tool_delta(d) gets the pieces of streamed tool calls'
-- arguments, d = {index, id, name, arguments}.
function Provider:chat(req)
  local problem = check_request(req)
  if problem then invalid("chat: " .. problem, 2) end
  local ok, body = pcall(self.dialect.request, self, req)
  if not ok then
    if type(body) == "table" and body.invalid then invalid("chat: " .. body.invalid, 2) end
    error(body, 0)
  end
  if req.extra ~= nil then
    if type(req.extra) ~= "table" then invalid("chat: extra must be a table of request fields", 2) end
    for k, v in pairs(req.extra) do body[k] = v end
  end
  if type(body.model) ~= "string" then invalid("chat: no model (give one to llm.provider or to chat)", 2) end
  local encoded, text = pcall(common.encode, body)
  if not encoded then
    invalid("chat: the request cannot be encoded as JSON: " ..
      tostring(type(text) == "table" and text.message or text), 2)
  end
  local estimate = limits.estimate(#text)

  local started = clock()
  local attempt = 0
  while true do
    attempt = attempt + 1
    local state = {}
    local done, res = pcall(self.attempt, self, text, estimate, req, state)
    if done then
      res.attempts, res.retries = attempt, attempt - 1
      if state.first then res.time_to_first_token = state.first - started end
      return res
    end
    local err = res
    if state.in_callback then error(err, 0) end -- the caller's own error
    -- A reply may echo the key, a transport error the URL: every error
    -- that leaves the provider (raised or given to on_retry) is redacted.
    err = common.redact_value(err, self.redact)
    if not core.error.is(err) or core.error.is(err, "cancelled") then
      error(err, 0)
    end
    err.attempts = attempt
    if state.started then
      -- Part of the reply has been delivered: trying again would deliver
      -- it twice.
      err.partial = true
      error(err, 0)
    end
    if not err.retryable or attempt > self.max_retries then error(err, 0) end
    local delay = retry.delay(attempt, err.headers)
    self.counts.retries = self.counts.retries + 1
    if self.on_retry then self.on_retry(err, attempt, delay) end
    self.sleep(delay)
  end
end

-- {requests, retries, in_flight, max_in_flight}: requests sent (retries
-- included) and the high-water mark of requests in flight.
function Provider:stats()
  return { requests = self.counts.requests, retries = self.counts.retries,
           in_flight = self.limits.in_flight, max_in_flight = self.limits.max_in_flight }
end

return M
