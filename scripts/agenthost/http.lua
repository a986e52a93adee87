-- ah.http: HTTP for tasks.  request{...} waits (without blocking the loop)
-- and returns {status, headers, body}; see docs/http.md.
--
-- On top of the C request this adds JSON (`json = value` sends it encoded
-- by ah.json with content-type application/json; a JSON response is
-- decoded into res.json, or res.json_error says why it could not be) and
-- the get/post helpers.
--
-- While tracing is on (agenthost.trace), a request made inside a span
-- carries that span's W3C traceparent header (one the caller set is kept),
-- and with trace.enable{http = true} it gets a client span of its own.

local core = require "agenthost.core"
local json = core.json
local C = core._http

local M = {}

local function has_header(headers, name)
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return true end
  end
  return false
end

-- Copies opts with `json` turned into an encoded body and headers.
local function prepare(opts, what, accept)
  if type(opts) ~= "table" then
    core.error.raise("invalid_argument", what .. ": the options must be a table")
  end
  if opts.json == nil and not accept then return opts end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if opts.json ~= nil then
    local ok, body = pcall(json.encode, opts.json)
    if not ok then
      core.error.raise("invalid_argument", what .. ": json cannot be encoded: " ..
        tostring(type(body) == "table" and body.message or body))
    end
    if not has_header(headers, "content-type") then headers["content-type"] = "application/json" end
    o.body, o.json = body, nil
  end
  accept = accept or "application/json"
  if not has_header(headers, "accept") then headers["accept"] = accept end
  o.headers = headers
  return o
end

-- agenthost.trace's function(send, opts, what) while tracing is on: it
-- calls send(opts) with the trace's header added.  nil while off, so that
-- a request then costs one upvalue test.
local tracer = nil

function M._set_tracer(fn)
  tracer = fn
end

local function send(fn, o, what)
  if tracer then return tracer(fn, o, what) end
  return fn(o)
end

-- request{method, url, headers, body, json, timeout, connect_timeout,
--         max_body, follow_redirects} -> {status, headers, body [, json]}
function M.request(opts)
  local res = send(C.request, prepare(opts, "ah.http.request"), "request")
  local ctype = res.headers["content-type"]
  if ctype and ctype:find("json", 1, true) and #res.body > 0 then
    local ok, value = pcall(json.decode, res.body)
    if ok then res.json = value
    else res.json_error = tostring(type(value) == "table" and value.message or value) end
  end
  return res
end

-- stream{...} -> s once the status and headers are in: s.status,
-- s.headers, s:read() (the next chunk, nil at the end), s:close(); and
-- `for chunk in s do ... end`.  The transfer pauses while the reader is
-- busy, so a slow consumer holds at most about 64 KiB.
function M.stream(opts)
  return send(C.stream, prepare(opts, "ah.http.stream"), "stream")
end

-- sse{...} -> an iterator of server-sent events {event, data, id, retry};
-- it also has .status, .headers and :close().
function M.sse(opts)
  local s = send(C.stream, prepare(opts, "ah.http.sse", "text/event-stream"), "sse")
  local parser = C.sse_parser()
  local queue, qi = {}, 1
  local it = { status = s.status, headers = s.headers, stream = s }
  function it.close() s:close() end
  return setmetatable(it, {
    __call = function()
      while true do
        local ev = queue[qi]
        if ev then
          queue[qi] = nil
          qi = qi + 1
          return ev
        end
        local chunk = s:read()
        if not chunk then return nil end
        queue, qi = parser:feed(chunk), 1
      end
    end,
    __close = function() s:close() end,
  })
end

M.sse_parser = C.sse_parser

-- get(url [, opts])
function M.get(url, opts)
  local o
  if opts == nil then
    o = { url = url, method = "GET" }
  else
    o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.url, o.method = url, o.method or "GET"
  end
  return M.request(o)
end

-- post(url, body [, opts]): a string body is sent as is, a table as JSON.
function M.post(url, body, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url, o.method = url, o.method or "POST"
  if type(body) == "table" then o.json = body else o.body = body end
  return M.request(o)
end

M.has_header = has_header
M.stats = C.stats
M.configure = C.configure

return M
