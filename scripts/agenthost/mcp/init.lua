-- agenthost.mcp: a Model Context Protocol client; see docs/mcp.md.
--
--   local mcp = require "agenthost.mcp"
--   local c = mcp.stdio { cmd = "npx", args = { "-y", "@modelcontextprotocol/server-everything" } }
--   local c = mcp.http { url = "http://127.0.0.1:3001/mcp", headers = { authorization = "Bearer ..." } }
--   c:list_tools()                       -- every tool, following nextCursor
--   c:call_tool("echo", { message = "hi" }) -- {content, isError, structuredContent}
--   local tools = mcp.tools(c)           -- agent tools {name, description, parameters, run}
--   c:close()
--
-- JSON-RPC 2.0 over two transports: stdio (one message a line, on a process
-- started with ah.proc.spawn) and Streamable HTTP (each message POSTed; a
-- request is answered with one JSON body or with a stream of server-sent
-- events that may carry the server's notifications and requests first).
-- The JSON-RPC session both share (request ids, the calls in flight, the
-- server's messages) is agenthost.mcp.rpc; this module adds the MCP calls,
-- the handshake and the agent tools.
--
-- There is no background task.  Over stdio, whichever caller is waiting
-- for an answer reads the server's output and hands each message to its
-- owner; when it has its own answer it passes the reading on to another
-- waiting caller.  So a client holds nothing that outlives its calls, and
-- the server's notifications and requests (ping) are handled while a call
-- is in progress.  Over HTTP each call reads its own response.
--
-- Errors are structured: kind "mcp" for a JSON-RPC error answer (with
-- code and data), "timeout", "cancelled", "too_large", "io" when the
-- server went away or spoke something that is not JSON-RPC, "http" for an
-- HTTP status that is not a success, "invalid_argument" for misuse.  When a
-- call is cancelled or times out the server is sent notifications/cancelled.

local ah = require "agenthost"
local rpc = require "agenthost.mcp.rpc"
local task = ah.task

local cjson = rpc.json
local err, misuse, excerpt = rpc.err, rpc.misuse, rpc.excerpt
local DEFAULT_MAX_LINE = rpc.DEFAULT_MAX_LINE
local new_client = rpc.new

local M = {}

M.PROTOCOL_VERSION = "2025-11-25"
-- Revisions this client accepts from a server, newest first.
M.SUPPORTED_VERSIONS = { "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05" }

local function supported(v)
  for _, s in ipairs(M.SUPPORTED_VERSIONS) do
    if s == v then return true end
  end
  return false
end

-- cjson decodes an empty JSON array as an empty table, which encodes back
-- as an object.  In a schema handed on to a model provider that matters
-- for `required`, where an empty list means the same as none: drop it.
local function tidy_schema(s)
  if type(s) ~= "table" then return s end
  for k, v in pairs(s) do
    if type(v) == "table" then
      if k == "required" and next(v) == nil then
        s[k] = nil
      else
        tidy_schema(v)
      end
    end
  end
  return s
end

-- The MCP calls, on the class of agenthost.mcp.rpc.
local Client = rpc.Client

function Client:ping(opts)
  return self:request("ping", nil, opts)
end

-- list_tools([opts]) -> every tool the server has, page after page.
function Client:list_tools(opts)
  local tools, cursor, pages = {}, nil, 0
  repeat
    local r = self:request("tools/list", cursor and { cursor = cursor } or nil, opts)
    for _, t in ipairs(type(r) == "table" and r.tools or {}) do
      tidy_schema(t.inputSchema)
      tools[#tools + 1] = t
    end
    cursor = type(r) == "table" and type(r.nextCursor) == "string" and r.nextCursor or nil
    pages = pages + 1
    if pages > 1000 then
      error(err("io", "mcp " .. self.name .. ": tools/list did not end after 1000 pages"), 2)
    end
  until not cursor
  self.tools_changed = false
  return tools
end

-- call_tool(name, args [, {timeout = s, on_progress = fn}]) -> {content, isError,
-- structuredContent}.  A tool that failed is a result with isError = true,
-- not an error.
function Client:call_tool(name, args, opts)
  if type(name) ~= "string" then misuse("mcp: call_tool: name must be a string") end
  if args ~= nil and type(args) ~= "table" then misuse("mcp: call_tool: args must be a table") end
  local r = self:request("tools/call", { name = name, arguments = args or {} }, opts)
  if type(r) ~= "table" then
    error(err("io", "mcp " .. self.name .. ": tools/call answered with something that is not a result"), 2)
  end
  r.content = r.content or {}
  r.isError = r.isError == true
  return r
end

-- The initialize handshake, then notifications/initialized.
local function initialize(c, opts)
  local info = opts.client_info or { name = "agenthost", version = ah.version }
  local capabilities = {}
  if opts.roots then capabilities.roots = { listChanged = false } end
  local r = c:request("initialize", {
    protocolVersion = M.PROTOCOL_VERSION,
    capabilities = capabilities,
    clientInfo = info,
  }, { timeout = opts.init_timeout or c.timeout })
  if type(r) ~= "table" or type(r.protocolVersion) ~= "string" then
    c:close()
    error(err("io", "mcp " .. c.name .. ": the initialize answer has no protocolVersion"), 0)
  end
  if not supported(r.protocolVersion) then
    c:close()
    error(err("io", string.format("mcp %s: the server speaks protocol %s, which this client does not (it speaks %s)",
      c.name, r.protocolVersion, table.concat(M.SUPPORTED_VERSIONS, ", "))), 0)
  end
  c.protocol_version = r.protocolVersion
  c.server_info = r.serverInfo or {}
  c.capabilities = r.capabilities or {}
  c.instructions = r.instructions
  c:notify("notifications/initialized")
  return c
end

-- stdio ------------------------------------------------------------------------

local stdio = {}

local Stdio = {}
Stdio.__index = Stdio

-- check(opts) -> the server's command line, the client's name unless
-- opts.name is given; raises invalid_argument for options that cannot
-- start a server.
function stdio.check(opts)
  if type(opts) ~= "table" or type(opts.cmd) ~= "string" then
    misuse("mcp.stdio: expected {cmd = \"program\", args = {...}}")
  end
  local words = { opts.cmd }
  for i, a in ipairs(opts.args or {}) do words[i + 1] = tostring(a) end
  return excerpt(table.concat(words, " "), 60)
end

-- open(c, opts) -> the transport of client c: the server started with
-- ah.proc.spawn.  A command that cannot be started raises here.
function stdio.open(c, opts)
  local t = setmetatable({
    c = c,
    max_line = opts.max_line or DEFAULT_MAX_LINE,
    exit_grace = opts.exit_grace or 2,
    -- True while one caller reads the server's output for every caller.
    reading = false,
  }, Stdio)
  t.proc = ah.proc.spawn {
    cmd = opts.cmd, args = opts.args, env = opts.env, cwd = opts.cwd,
    max_line = t.max_line, kill_grace = opts.kill_grace,
  }
  return t
end

function Stdio:send(data)
  local c = self.c
  local ok, e = pcall(self.proc.write, self.proc, data .. "\n")
  if not ok then
    if ah.error.is(e, "io") then
      e = err("io", string.format("mcp %s: cannot write to the server: %s%s",
        c.name, e.message, self:exit_note()))
      c:_fail(e)
    end
    error(e, 0)
  end
end

-- ", it exited with code N; its stderr ends: ..." when that is known.
function Stdio:exit_note()
  local p = self.proc
  local note = ""
  if p:status() == "exited" then
    local st = p:wait()
    note = st.signal and (" (it was killed by signal " .. st.signal .. ")")
      or (" (it exited with code " .. tostring(st.code) .. ")")
  end
  local tail = p:stderr():gsub("%s+$", "")
  if tail ~= "" then note = note .. "; its stderr ends: " .. excerpt(tail:sub(-300), 300) end
  return note
end

-- Reads and dispatches one line; raises a transport failure.
function Stdio:read_one()
  local c, p = self.c, self.proc
  local ok, line = pcall(p.read_line, p)
  if not ok then
    local e = line
    if ah.error.is(e, "too_large") then
      c:_fail(err("too_large", string.format("mcp %s: the server wrote a line longer than max_line (%d bytes)",
        c.name, self.max_line)))
      return
    end
    if ah.error.is(e, "cancelled") then error(e, 0) end
    c:_fail(err("io", "mcp " .. c.name .. ": reading from the server: " .. tostring(e)))
    return
  end
  if line == nil then
    -- The output ended: the server has exited or is about to.
    if p:status() ~= "exited" then
      -- Give it a moment to be reaped so the message can say how it ended.
      pcall(task.timeout, 1, p.wait, p)
    end
    c:_fail(err("io", string.format("mcp %s: the server closed its output%s",
      c.name, self:exit_note())))
    return
  end
  if line:sub(-1) == "\r" then line = line:sub(1, -2) end
  if line == "" then return end
  c:_receive(line)
end

-- Wakes a waiting caller (not `me`, and not one that has given up) to take
-- over the reading.
local function hand_off(c, me)
  for _, slot in pairs(c._pending) do
    if slot ~= me and not slot.msg and not slot.gone then
      slot.ev:set()
      return
    end
  end
end

-- One caller at a time reads the server's output and hands each answer to
-- its caller; the others wait on their slot's event.  A caller that leaves
-- (answered, failed, timed out, cancelled) passes the reading on.
function Stdio:roundtrip(msg, slot)
  local c = self.c
  c:_send(msg)
  slot.sent = true
  local ok, e = pcall(function()
    while not slot.msg do
      if c._dead then error(c._dead, 0) end
      if not self.reading then
        self.reading = true
        local read_ok, read_err = pcall(self.read_one, self)
        self.reading = false
        if not read_ok then error(read_err, 0) end
      else
        slot.ev:wait()
        slot.ev:clear()
      end
    end
  end)
  slot.gone = true
  if not self.reading then hand_off(c, slot) end
  if not ok then error(e, 0) end
  return slot.msg
end

function Stdio:broken()
  self.proc:close()
end

function Stdio:close()
  local p = self.proc
  p:close_stdin()
  -- The server should exit once its input ends; if not, end it.
  if not pcall(task.timeout, self.exit_grace, p.wait, p) then
    p:close()
    pcall(p.wait, p)
  end
end

-- Streamable HTTP -------------------------------------------------------------

local http = {}

local Http = {}
Http.__index = Http

-- check(opts) -> the endpoint's URL, the client's name unless opts.name
-- is given; raises invalid_argument for options that name no endpoint.
function http.check(opts)
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
function http.open(c, opts)
  return setmetatable({
    c = c,
    url = opts.url,
    headers = opts.headers or {},
    max_line = opts.max_line or DEFAULT_MAX_LINE,
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
  self:post(cjson.encode(msg), slot)
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

-- Connecting --------------------------------------------------------------------

-- Runs the handshake (within opts.init_timeout, or the client's timeout);
-- a failure closes what was opened.
local function start(c, opts)
  local ok, e = pcall(initialize, c, opts)
  if not ok then
    pcall(c.close, c)
    error(e, 0)
  end
  return c
end

-- A client of the server that transport (stdio or http) reaches with opts.
local function connect(transport, opts)
  local name = transport.check(opts)
  local c = new_client(opts.name or name, opts)
  c._transport = transport.open(c, opts)
  return start(c, opts)
end

-- mcp.stdio{cmd, args, env, cwd, timeout, init_timeout, max_line,
--           exit_grace, kill_grace, client_info, roots, on_notification}
function M.stdio(opts)
  return connect(stdio, opts)
end

-- mcp.http{url, headers, timeout, init_timeout, max_line, client_info,
--          roots, on_notification}
function M.http(opts)
  return connect(http, opts)
end

-- Agent tools ---------------------------------------------------------------------

-- The text of a tool result for a model: the text parts, and a note for
-- each part of another kind.
function M.result_text(r)
  local parts = {}
  for _, p in ipairs(r.content or {}) do
    if p.type == "text" then
      parts[#parts + 1] = tostring(p.text)
    elseif p.type == "resource" and type(p.resource) == "table" and p.resource.text then
      parts[#parts + 1] = tostring(p.resource.text)
    else
      parts[#parts + 1] = string.format("[%s%s]", tostring(p.type),
        p.mimeType and (" " .. p.mimeType) or (p.uri and (" " .. p.uri) or ""))
    end
  end
  if #parts == 0 and r.structuredContent ~= nil then
    return cjson.encode(r.structuredContent)
  end
  return table.concat(parts, "\n")
end

-- tools(c [, {prefix = "fs_", timeout = s, only = {names...}}]) -> a list
-- of agent tools {name, description, parameters, timeout, run}.  run(args)
-- returns the result's text (and the whole result); a result with isError
-- raises an error of kind "tool" carrying that text, so the agent can give
-- it back to the model.
function M.tools(c, opts)
  opts = opts or {}
  local only
  if opts.only then
    only = {}
    for _, n in ipairs(opts.only) do only[n] = true end
  end
  local list = {}
  for _, t in ipairs(c:list_tools()) do
    if not only or only[t.name] then
      local name = t.name
      list[#list + 1] = {
        name = (opts.prefix or "") .. name,
        description = t.description or t.title or name,
        parameters = t.inputSchema or { type = "object" },
        timeout = opts.timeout,
        mcp = { client = c, tool = t },
        run = function(args)
          local r = c:call_tool(name, args or {}, opts.timeout and { timeout = opts.timeout } or nil)
          local text = M.result_text(r)
          if r.isError then
            error(err("tool", text ~= "" and text or ("tool " .. name .. " failed"), { result = r }), 0)
          end
          return text, r
        end,
      }
    end
  end
  return list
end

return M
