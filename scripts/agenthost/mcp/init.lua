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
-- code and data), "timeout", "cancelled", "too_large", "io" when the
-- server went away or spoke something that is not JSON-RPC, "http" for an
-- HTTP status that is not a success, "invalid_argument" for misuse.  When a
-- call is cancelled or times out the server is sent notifications/cancelled.

local ah = require "agenthost"
local rpc = require "agenthost.mcp.rpc"
local stdio = require "agenthost.mcp.stdio"
local http = require "agenthost.mcp.http"

local cjson = rpc.json
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
