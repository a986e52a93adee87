-- agenthost.mcp.http: the Streamable HTTP transport of an MCP client.
-- Every message is POSTed to the server's endpoint with "accept:
-- application/json, text/event-stream"; a request is answered with one
-- JSON body or with a stream of server-sent events, which may carry the
-- server's notifications and requests before the answer, and which a call
-- reads only until its answer is in.  The Mcp-Session-Id the server gives
-- is kept in c.session_id and sent with every later request, and so is
-- c.protocol_version; close() sends DELETE.  There is no standing
-- connection and no GET stream: each call reads its own response.
--
-- check(opts) and open(c, opts) make the transport object described in
-- agenthost.mcp.rpc (send, roundtrip and close; it has nothing to drop at
-- once, so no broken).  Relies on agenthost (ah.http.stream and its SSE
-- parser, task.timeout, structured errors) and on the client's side of
-- that interface.

local ah = require "agenthost"
local rpc = require "agenthost.mcp.rpc"
local task = ah.task

local json = rpc.json
local err, misuse, excerpt = rpc.err, rpc.misuse, rpc.excerpt

local M = {}

local Http = {}
Http.__index = Http

-- check(opts) -> the endpoint's URL, the client's name unless opts.name
-- is given; raises invalid_argument for options that name no endpoint.
function M.check(opts)
  if type(opts) ~= "table" or type(opts.url) ~= "string" then
    misuse("mcp.http: expected {url = \"http://host:port/mcp\"}")
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    misuse("mcp.http: headers must be a table of name = value")
  end
  return opts.url
end

-- open(c, opts) -> the transport of client c.  Nothing is connected yet:
-- every message is a request of its own.
function M.open(c, opts)
  return setmetatable({
    c = c,
    url = opts.url,
    headers = opts.headers or {},
    max_line = opts.max_line or rpc.DEFAULT_MAX_LINE,
    -- The transfer's own limit: 5 s past the client's timeout, so that
    -- a call's timeout normally ends it first.
    http_timeout = c.timeout + 5,
  }, Http)
end

-- The headers of every request: the caller's, then the protocol's.
function Http:request_headers()
  local c = self.c
  local h = {}
  for k, v in pairs(self.headers) do h[k] = v end
  h["content-type"] = "application/json"
  h["accept"] = "application/json, text/event-stream"
  if c.session_id then h["mcp-session-id"] = c.session_id end
  if c.protocol_version then h["mcp-protocol-version"] = c.protocol_version end
  return h
end

-- POSTs one message and hands every message of the answer to dispatch;
-- returns when the answer is read (or, with `until_slot`, once that slot
-- has its message).
function Http:post(body, until_slot)
  local c = self.c
  local ok, s = pcall(ah.http.stream, {
    method = "POST", url = self.url, headers = self:request_headers(), body = body,
    timeout = self.http_timeout, max_body = self.max_line,
  })
  if not ok then
    local e = s
    if ah.error.is(e, "cancelled") or ah.error.is(e, "timeout") then error(e, 0) end
    error(err(e.kind or "io", "mcp " .. c.name .. ": " .. tostring(e.message or e), { retryable = e.retryable }), 0)
  end
  local stream <close> = s
  local status = s.status
  local sid = s.headers["mcp-session-id"]
  if sid and sid ~= "" and not c.session_id then c.session_id = sid end
  if status == 202 or status == 204 then return end
  if status == 404 and c.session_id then
    local e = err("io", "mcp " .. c.name .. ": the server ended the session (HTTP 404); connect again")
    c:_fail(e)
    error(e, 0)
  end
  if status < 200 or status > 299 then
    local chunk = s:read() or ""
    error(err("http", string.format("mcp %s: HTTP %d from %s: %s", c.name, status, self.url, excerpt(chunk)),
      { status = status, retryable = status == 429 or status >= 500 }), 0)
  end
  local ctype = (s.headers["content-type"] or ""):lower()
  if ctype:find("text/event-stream", 1, true) then
    local parser = ah.http.sse_parser(self.max_line)
    while not (until_slot and until_slot.msg) do
      local chunk = s:read()
      if not chunk then break end
      local okf, events = pcall(parser.feed, parser, chunk)
      if not okf then
        error(err("too_large", "mcp " .. c.name .. ": an event from the server is larger than max_line"), 0)
      end
      for _, ev in ipairs(events) do
        if (ev.event == "message" or ev.event == "") and ev.data ~= "" then c:_receive(ev.data) end
      end
    end
  elseif ctype:find("json", 1, true) then
    local parts = {}
    for chunk in s do parts[#parts + 1] = chunk end
    c:_receive(table.concat(parts))
  elseif body ~= nil and until_slot then
    local chunk = s:read() or ""
    error(err("io", string.format("mcp %s: the server answered with content-type '%s': %s",
      c.name, ctype, excerpt(chunk))), 0)
  end
end

function Http:send(data)
  self:post(data, nil)
end

function Http:roundtrip(msg, slot)
  local c = self.c
  slot.sent = true
  self:post(json.encode(msg), slot)
  if not slot.msg then
    error(err("io", string.format("mcp %s: the server's answer to '%s' had no JSON-RPC response%s",
      c.name, msg.method, c:_ignored_note(slot.ignored))), 0)
  end
  return slot.msg
end

function Http:close()
  if not self.c.session_id then return end
  local h = self:request_headers()
  h["content-type"] = nil
  pcall(task.timeout, 5, ah.http.request, {
    method = "DELETE", url = self.url, headers = h, timeout = 5,
  })
end

return M
