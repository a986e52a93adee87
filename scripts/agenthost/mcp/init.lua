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
-- JSON-RPC 2.0 over two transports: stdio (one message a line, on a
-- process started with ah.proc.spawn; agenthost.mcp.stdio) and Streamable
-- HTTP (each message POSTed; a request is answered with one JSON body or
-- with a stream of server-sent events that may carry the server's
-- notifications and requests first; agenthost.mcp.http).  The JSON-RPC
-- session both share (request ids, the calls in flight, the server's
-- messages) and what a transport must provide are in agenthost.mcp.rpc;
-- this module adds the MCP calls, the handshake, the constructors and the
-- agent tools.  Any number of tasks may call one client at once, and no
-- background task is started.
--
-- Errors are structured: kind "mcp" for a JSON-RPC error answer (with
-- code and data), "protocol" for an answer that is malformed (a field
-- missing or of the wrong type; the message names it), "timeout", "cancelled", "too_large", "io" when the
-- server went away or spoke something that is not JSON-RPC, "http" for an
-- HTTP status that is not a success, "invalid_argument" for misuse.  When a
-- call is cancelled or times out the server is sent notifications/cancelled.

local ah = require "agenthost"
local rpc = require "agenthost.mcp.rpc"
local stdio = require "agenthost.mcp.stdio"
local http = require "agenthost.mcp.http"

local json = rpc.json
local err, misuse = rpc.err, rpc.misuse

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

-- Checking what a server sent ------------------------------------------------------
--
-- Every result is checked before it is used: a field of the wrong type
-- raises a "protocol" error naming the call and the field, never a Lua
-- error from deep inside the client.

local typename = rpc.typename

local is_list = ah.tools.is_array

-- v with JSON null read as absent.
local function opt(v)
  if v == json.null then return nil end
  return v
end

-- The checks of each call's result: check(r) returns nil when r is well
-- formed, or what is wrong with it.  They may normalise r (null fields
-- dropped, defaults set).
local CHECKS = {}

CHECKS["initialize"] = function(r)
  if type(r.protocolVersion) ~= "string" then
    return "protocolVersion must be a string, got " .. typename(r.protocolVersion)
  end
  for _, k in ipairs { "capabilities", "serverInfo" } do
    r[k] = opt(r[k])
    if r[k] ~= nil and type(r[k]) ~= "table" then return k .. " must be an object, got " .. typename(r[k]) end
  end
  r.instructions = opt(r.instructions)
  if r.instructions ~= nil and type(r.instructions) ~= "string" then
    return "instructions must be a string, got " .. typename(r.instructions)
  end
end

CHECKS["tools/list"] = function(r)
  if not is_list(r.tools) then return "tools must be a list, got " .. typename(r.tools) end
  for i, t in ipairs(r.tools) do
    if type(t) ~= "table" then return string.format("tools[%d] must be an object, got %s", i, typename(t)) end
    if type(t.name) ~= "string" or t.name == "" then
      return string.format("tools[%d].name must be a non-empty string, got %s", i, typename(t.name))
    end
    for _, k in ipairs { "description", "title" } do
      t[k] = opt(t[k])
      if t[k] ~= nil and type(t[k]) ~= "string" then
        return string.format("tools[%d].%s must be a string, got %s", i, k, typename(t[k]))
      end
    end
    t.inputSchema = opt(t.inputSchema)
    if t.inputSchema ~= nil and type(t.inputSchema) ~= "table" then
      return string.format("tools[%d].inputSchema must be an object, got %s", i, typename(t.inputSchema))
    end
  end
  r.nextCursor = opt(r.nextCursor)
  if r.nextCursor ~= nil and type(r.nextCursor) ~= "string" then
    return "nextCursor must be a string, got " .. typename(r.nextCursor)
  end
end

CHECKS["tools/call"] = function(r)
  r.content = opt(r.content) or {}
  if not is_list(r.content) then return "content must be a list, got " .. typename(r.content) end
  for i, p in ipairs(r.content) do
    if type(p) ~= "table" then return string.format("content[%d] must be an object, got %s", i, typename(p)) end
    if type(p.type) ~= "string" then
      return string.format("content[%d].type must be a string, got %s", i, typename(p.type))
    end
  end
  r.isError = opt(r.isError)
  if r.isError ~= nil and type(r.isError) ~= "boolean" then
    return "isError must be a boolean, got " .. typename(r.isError)
  end
  r.isError = r.isError == true
  r.structuredContent = opt(r.structuredContent)
end

-- check_result(name, method, r) -> r checked (see CHECKS) for the call
-- `method` of client `name`; raises a "protocol" error otherwise.  Pure.
function M.check_result(name, method, r)
  if type(r) ~= "table" then
    error(rpc.protocol(name, string.format("%s: the result must be an object, got %s", method, typename(r))), 0)
  end
  local check = CHECKS[method]
  local wrong = check and check(r)
  if wrong then error(rpc.protocol(name, method .. ": " .. wrong), 0) end
  return r
end
local check_result = M.check_result

-- check_message(raw, method [, name]) -> the result of one raw message
-- from a server, read as the answer to `method` (initialize, tools/list,
-- tools/call, ...): decoded, its JSON-RPC envelope and its result checked.
-- Raises a structured error ("protocol" for anything malformed, "mcp" for
-- an error answer) and nothing else.  It needs no server, no client and no
-- task: the entry point for fuzzing what a server may send.
function M.check_message(raw, method, name)
  name = name or "fuzz"
  if type(raw) ~= "string" then rpc.misuse("mcp.check_message: raw must be a string") end
  local ok, msg = pcall(json.decode, raw)
  if not ok then error(rpc.protocol(name, "a message that is not JSON: " .. rpc.excerpt(raw, 80)), 0) end
  if type(msg) == "table" and msg[1] ~= nil then msg = msg[1] end -- a batch: its first answer
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" or msg.id == nil
      or (msg.result == nil and msg.error == nil) then
    error(rpc.protocol(name, "a message that is not a JSON-RPC 2.0 response: " .. rpc.excerpt(raw, 80)), 0)
  end
  return check_result(name, method, rpc.answer(name, method, msg))
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
    local r = check_result(self.name, "tools/list",
      self:request("tools/list", cursor and { cursor = cursor } or nil, opts))
    for _, t in ipairs(r.tools) do
      tools[#tools + 1] = t
    end
    cursor = r.nextCursor
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
  return check_result(self.name, "tools/call",
    self:request("tools/call", { name = name, arguments = args or {} }, opts))
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
  local ok, e = pcall(check_result, c.name, "initialize", r)
  if not ok then
    c:close()
    error(e, 0)
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
  local c = rpc.new(opts.name or name, opts)
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
      local what = p.mimeType or p.uri
      parts[#parts + 1] = string.format("[%s%s]", tostring(p.type),
        type(what) == "string" and (" " .. what) or "")
    end
  end
  if #parts == 0 and r.structuredContent ~= nil then
    return json.encode(r.structuredContent)
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
