-- agenthost.mcp.rpc: the JSON-RPC 2.0 session of an MCP client, shared by
-- both transports.  A client numbers its requests and keeps a pending slot
-- for each until its answer comes; it hands every message the server sends
-- to its owner (an answer to its slot, progress to the caller that asked
-- for it, notifications to on_notification) and answers the server's own
-- requests (ping, and roots/list when it has roots); once the connection
-- is broken or closed, every waiting and every later call fails with the
-- same error.  agenthost.mcp adds the MCP calls (ping, list_tools,
-- call_tool) to this class and runs the handshake.  Relies on agenthost
-- (task events and timeouts, structured errors, ah.json).
--
-- A transport module (agenthost.mcp.stdio, agenthost.mcp.http) has
-- check(opts), which raises invalid_argument for options it cannot use and
-- returns the client's name when opts.name is not given, and open(c, opts),
-- which starts what it needs and returns the transport of client c: an
-- object that the client keeps in c._transport and calls through these
-- methods:
--
--   t:send(data)            writes one encoded message without waiting
--                           for an answer; raises a structured error.
--   t:roundtrip(msg, slot)  sends the request msg (a table), sets
--                           slot.sent once it may have reached the server,
--                           and returns the answer once c:_receive has
--                           put it in slot.msg; raises otherwise.  It runs
--                           inside task.timeout, and its task may be
--                           cancelled at any wait.
--   t:close()               ends the session, waiting briefly at most.
--   t:broken()              optional: drops the connection at once, without
--                           waiting (the connection failed, or a <close>
--                           variable is unwinding an error).
--
-- In turn a transport uses of the client: c.name for its messages,
-- c:_send(msg) to encode and send, c:_receive(raw) for each raw message
-- from the server, c:_fail(e) when the connection is broken,
-- c:_ignored_note(since) for errors, c._dead (the error every call now
-- fails with, or nil), and c._pending: the slots of the calls in flight
-- by request id, each {id, ev, msg, sent, ignored, on_progress}, whose ev
-- is set when its answer came or the client failed.  A transport may keep
-- its own fields in a slot and set ev itself (stdio does, to pass on its
-- reading).

local ah = require "agenthost"
local json = ah.json
local task = ah.task

local M = {}

-- The codec of the client, its transports and agenthost.mcp.
M.json = json

M.DEFAULT_TIMEOUT = 60
-- The largest message a transport accepts unless given max_line.
M.DEFAULT_MAX_LINE = 16 << 20

-- err(kind, message [, fields]) -> a structured error (ah.error.new).
function M.err(kind, message, fields)
  return ah.error.new(kind, message, fields)
end
local err = M.err

-- misuse(message): raises invalid_argument, for a call the caller got wrong.
function M.misuse(message)
  error(err("invalid_argument", message), 3)
end
local misuse = M.misuse

-- s cut to n characters (200 by default) on one line, to quote in errors.
function M.excerpt(s, n)
  n = n or 200
  s = tostring(s)
  if #s > n then s = s:sub(1, n) .. "..." end
  return (s:gsub("[%c]", " "))
end
local excerpt = M.excerpt

-- protocol(name, message) -> the error for a server message that is
-- malformed: kind "protocol", naming the client and what was wrong.
function M.protocol(name, message)
  return err("protocol", string.format("mcp %s: %s", tostring(name), message))
end
local protocol = M.protocol

-- A JSON type name for messages: null is "null", a decoded array "array",
-- any other table "object".
function M.typename(v)
  if v == json.null then return "null" end
  if type(v) == "table" then return getmetatable(v) == json.array_mt and "array" or "object" end
  return type(v)
end
local typename = M.typename

-- answer(name, method, msg) -> the result of msg, the answer (a decoded
-- table with a result or an error) to the request `method` of client
-- `name`; raises kind "mcp" for a well-formed error answer and "protocol"
-- for one that is malformed.  Pure: no client, no I/O.
function M.answer(name, method, msg)
  if type(msg) ~= "table" then
    error(protocol(name, string.format("'%s' answered with a %s, not a JSON-RPC response", method, typename(msg))), 0)
  end
  local e = msg.error
  if e == nil then return msg.result end
  local function bad(what)
    error(protocol(name, string.format("'%s' answered with a malformed error: %s", method, what)), 0)
  end
  if msg.result ~= nil then bad("it has both result and error") end
  if type(e) ~= "table" then bad("error must be an object, got " .. typename(e)) end
  local code = type(e.code) == "number" and math.tointeger(e.code)
  if not code then bad("error.code must be an integer, got " .. typename(e.code)) end
  if type(e.message) ~= "string" then bad("error.message must be a string, got " .. typename(e.message)) end
  local data = e.data
  if data == json.null then data = nil end
  error(err("mcp", string.format("mcp %s: '%s' failed: %s (code %d)", name, method,
    excerpt(e.message, 1000), code), { code = code, data = data }), 0)
end
local answer = M.answer

local Client = {}
Client.__index = Client
M.Client = Client

-- Sends one message (a table) without waiting for an answer.
function Client:_send(msg)
  return self._transport:send(json.encode(msg))
end

-- Marks the client broken: every call waiting and every later call fails
-- with e.
function Client:_fail(e)
  if self._dead then return end
  self._dead = e
  for _, slot in pairs(self._pending) do slot.ev:set() end
  if self._transport.broken then self._transport:broken() end
end

-- What the server sent that was not JSON-RPC since `since` (a count of
-- such lines), for error messages.
function Client:_ignored_note(since)
  local n = self._ignored - (since or 0)
  if n <= 0 then return "" end
  return string.format("; %d line%s from the server %s not JSON-RPC (last: '%s')",
    n, n == 1 and "" or "s", n == 1 and "was" or "were", excerpt(self._last_ignored, 80))
end

-- Answers a request from the server.  ping is answered; roots/list when
-- the client was given roots; anything else gets "method not found".
function Client:_answer(msg)
  local reply = { jsonrpc = "2.0", id = msg.id }
  if msg.method == "ping" then
    reply.result = {}
  elseif msg.method == "roots/list" and self._roots then
    reply.result = { roots = self._roots }
  else
    reply.error = { code = -32601, message = "method not supported by this client: " .. tostring(msg.method) }
  end
  local ok, e = pcall(self._send, self, reply)
  if not ok and ah.error.is(e, "cancelled") then error(e, 0) end
end

-- Hands one decoded message (or batch) to whoever it is for; returns
-- false for what is not JSON-RPC.
function Client:_dispatch(msg)
  if type(msg) ~= "table" then return false end
  if msg[1] ~= nil then -- a batch (2025-03-26)
    local any = false
    for _, m in ipairs(msg) do any = self:_dispatch(m) or any end
    return any
  end
  if msg.jsonrpc ~= "2.0" then return false end
  if type(msg.method) == "string" then
    if msg.id ~= nil and msg.id ~= json.null then
      self:_answer(msg)
    else
      if msg.method == "notifications/tools/list_changed" then self.tools_changed = true end
      local p = type(msg.params) == "table" and msg.params or nil
      if msg.method == "notifications/progress" and p and p.progressToken ~= nil then
        local slot = self._pending[p.progressToken]
        if slot and slot.on_progress then
          local ok, e = pcall(slot.on_progress, p.progress, p.total, p.message)
          if not ok then io.stderr:write("mcp: on_progress failed: ", tostring(e), "\n") end
        end
      end
      if self._on_notification then
        local ok, e = pcall(self._on_notification, msg.method, msg.params, self)
        if not ok then io.stderr:write("mcp: on_notification failed: ", tostring(e), "\n") end
      end
    end
    return true
  end
  if msg.id ~= nil and (msg.result ~= nil or msg.error ~= nil) then
    local slot = self._pending[msg.id]
    if slot and not slot.msg then
      slot.msg = msg
      slot.ev:set()
    end
    return true -- without a slot: a late answer to a call given up on
  end
  return false
end

-- Decodes one raw message and dispatches it.
function Client:_receive(raw)
  local ok, msg = pcall(json.decode, raw)
  if not (ok and self:_dispatch(msg)) then
    self._ignored = self._ignored + 1
    self._last_ignored = raw
  end
end

-- request(method, params [, {timeout = s, on_progress = fn}]) -> result;
-- raises a structured error (kind "mcp" for an error answer).  With
-- on_progress the request carries a progress token and fn(progress, total,
-- message) is called for each notifications/progress about it.
function Client:request(method, params, opts)
  if type(method) ~= "string" then misuse("mcp: request: method must be a string") end
  opts = opts or {}
  if self._dead then error(self._dead, 2) end
  local id = self._next_id
  self._next_id = id + 1
  local slot = { ev = task.event(), id = id, ignored = self._ignored }
  if opts.on_progress ~= nil then
    if type(opts.on_progress) ~= "function" then
      misuse("mcp: on_progress must be a function(progress, total, message)")
    end
    local p = {}
    for k, v in pairs(params or {}) do p[k] = v end
    local meta = {}
    for k, v in pairs(p._meta or {}) do meta[k] = v end
    meta.progressToken = id
    p._meta, params = meta, p
    slot.on_progress = opts.on_progress
  end
  self._pending[id] = slot
  local msg = { jsonrpc = "2.0", id = id, method = method }
  if params ~= nil then msg.params = params end
  local timeout = opts.timeout or self.timeout
  local transport = self._transport
  local ok, res = pcall(task.timeout, timeout, transport.roundtrip, transport, msg, slot)
  self._pending[id] = nil
  if not ok then
    local e = res
    local given_up = ah.error.is(e, "cancelled") or ah.error.is(e, "timeout")
    if given_up and slot.sent and method ~= "initialize" and not self._dead then
      -- Tell the server to stop; a cancelled task may still wait briefly.
      pcall(task.timeout, 5, self._send, self, {
        jsonrpc = "2.0", method = "notifications/cancelled",
        params = { requestId = id, reason = ah.error.is(e, "timeout") and "timeout" or "cancelled" },
      })
    end
    if ah.error.is(e, "timeout") and not slot.msg then
      e = err("timeout", string.format("mcp %s: '%s' got no answer within %g s%s",
        self.name, method, timeout, self:_ignored_note(slot.ignored)), { retryable = true })
    end
    error(e, 0)
  end
  return answer(self.name, method, slot.msg or res)
end

-- notify(method, params): sends a notification.
function Client:notify(method, params)
  if self._dead then error(self._dead, 2) end
  local msg = { jsonrpc = "2.0", method = method }
  if params ~= nil then msg.params = params end
  self:_send(msg)
end

-- close(): ends the session (stdio: closes the server's stdin, then
-- SIGTERM and SIGKILL if it does not exit; HTTP: DELETE).  Idempotent.
function Client:close()
  if self._closed then return end
  self._closed = true
  if not self._dead then self._dead = err("io", "mcp " .. self.name .. ": the client is closed") end
  for _, slot in pairs(self._pending) do slot.ev:set() end
  self._transport:close()
end

-- As a <close> variable: close, or while an error unwinds the task (when
-- nothing may wait), end the session without waiting.
function Client:__close(e)
  if e == nil then return self:close() end
  if self._closed then return end
  self._closed = true
  if not self._dead then self._dead = err("io", "mcp " .. self.name .. ": the client is closed") end
  if self._transport.broken then self._transport:broken() end
end

-- new(name, opts) -> a client with no transport yet: the caller opens one
-- for it and sets c._transport before the first call.  Checks the options
-- every client has (timeout, on_notification).
function M.new(name, opts)
  if opts.timeout ~= nil and not (type(opts.timeout) == "number" and opts.timeout > 0) then
    misuse("mcp: timeout must be a number of seconds > 0")
  end
  if opts.on_notification ~= nil and type(opts.on_notification) ~= "function" then
    misuse("mcp: on_notification must be a function(method, params, client)")
  end
  return setmetatable({
    name = name,
    timeout = opts.timeout or M.DEFAULT_TIMEOUT,
    tools_changed = false,
    _pending = {},
    _next_id = 1,
    _ignored = 0,
    _on_notification = opts.on_notification,
    _roots = opts.roots,
  }, Client)
end

return M
