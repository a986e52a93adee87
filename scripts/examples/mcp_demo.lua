-- An agent that uses tools from two MCP servers at once: one started as a
-- subprocess (stdio) and one reached over Streamable HTTP, plus the local
-- shell tool, all in one tool list.
--
--   agenthost scripts/examples/mcp_demo.lua
--       both servers are the test fixture (tests/support/mcp_server.lua):
--       no network, no npm; the HTTP one needs luasocket (make deps)
--   agenthost scripts/examples/mcp_demo.lua --reference
--       the official reference server, @modelcontextprotocol/server-everything,
--       over stdio and over Streamable HTTP on 127.0.0.1:PORT (3001, or
--       MCP_DEMO_PORT); needs node and the package: see docs/mcp.md
--
-- The "model" here is a small scripted planner (the LLM providers are a
-- separate part): it reads the tool list, picks calls by name, and runs
-- them concurrently; tool failures go back to it as results, as they would
-- go back to a model.

local ah = require "agenthost"
local mcp = require "agenthost.mcp"
local shell = require "shell"
local task = ah.task

local reference = arg[1] == "--reference"

-- The directory holding scripts/ and tests/, from this file's path.
local root = (debug.getinfo(1, "S").source:match("^@(.*)/scripts/examples/[^/]*$")) or "."
local bin = arg[-1] or "agenthost"

-- Servers ---------------------------------------------------------------------

local everything = os.getenv("MCP_EVERYTHING")   -- path to its dist/index.js, or nil for npx
local function everything_cmd(mode)
  if everything then return "node", { everything, mode } end
  return "npx", { "-y", "@modelcontextprotocol/server-everything", mode }
end

-- Starts the HTTP server and returns its URL once it listens.
local function start_http_server()
  if reference then
    local port = os.getenv("MCP_DEMO_PORT") or "3001"
    local cmd, args = everything_cmd("streamableHttp")
    local srv = ah.proc.spawn { cmd = cmd, args = args, env = { PORT = port }, stdout = "null" }
    return srv, "http://127.0.0.1:" .. port .. "/mcp"
  end
  local srv = ah.proc.spawn { cmd = bin, args = { root .. "/tests/support/mcp_server.lua", "--http" } }
  local line = srv:read_line() or ""
  local port = line:match("^port=(%d+)$")
  if not port then error("the HTTP fixture did not start: " .. srv:stderr()) end
  return srv, "http://127.0.0.1:" .. port .. "/mcp"
end

-- Connects, retrying while the server is still starting.
local function connect_http(url)
  local last
  for _ = 1, 300 do
    local ok, c = pcall(mcp.http, { url = url, name = "http server", timeout = 30 })
    if ok then return c end
    last = c
    if not ah.error.is(c, "connect") then break end
    task.sleep(0.1)
  end
  error(last, 0)
end

-- The planner -------------------------------------------------------------------

local function find(tools, suffix)
  for _, t in ipairs(tools) do
    if t.name:sub(-#suffix) == suffix then return t end
  end
end

-- Decides which calls to make from what the tools are called.
local function plan(tools)
  local calls = {}
  local echo = find(tools, "local_echo")
  if echo then
    local arg_name = echo.parameters.properties and echo.parameters.properties.message and "message" or "text"
    calls[#calls + 1] = { tool = echo, args = { [arg_name] = "hello from the stdio server" } }
  end
  local add = find(tools, "remote_add") or find(tools, "remote_get-sum")
  if add then calls[#calls + 1] = { tool = add, args = { a = 40, b = 2 } } end
  local fail = find(tools, "remote_fail")
  if fail then calls[#calls + 1] = { tool = fail, args = {} } end
  calls[#calls + 1] = { tool = find(tools, "shell"), args = { command = "uname", args = { "-s" } } }
  return calls
end

-- Runs a tool; an error becomes the text a model would be shown.
local function run_tool(call)
  local ok, text = pcall(call.tool.run, call.args)
  if ok then return { tool = call.tool.name, ok = true, output = text } end
  return { tool = call.tool.name, ok = false, output = tostring(text) }
end

-- The run -------------------------------------------------------------------------

local srv, url = start_http_server()
local cmd, args
if reference then cmd, args = everything_cmd("stdio")
else cmd, args = bin, { root .. "/tests/support/mcp_server.lua" } end

local local_server <close> = mcp.stdio { cmd = cmd, args = args, name = "stdio server", timeout = 60 }
local remote_server <close> = connect_http(url)
print(string.format("stdio server: %s %s (protocol %s)", local_server.server_info.name,
  tostring(local_server.server_info.version), local_server.protocol_version))
print(string.format("http server:  %s %s (protocol %s, session %s)", remote_server.server_info.name,
  tostring(remote_server.server_info.version), remote_server.protocol_version, tostring(remote_server.session_id)))

local tools = {}
for _, t in ipairs(mcp.tools(local_server, { prefix = "local_" })) do tools[#tools + 1] = t end
for _, t in ipairs(mcp.tools(remote_server, { prefix = "remote_" })) do tools[#tools + 1] = t end
tools[#tools + 1] = shell.new { allow = { "uname", "uptime" }, timeout = 10 }
print(#tools .. " tools available")

local calls = plan(tools)
local results = task.map(calls, run_tool, { limit = 4 })
for _, r in ipairs(results) do
  print(string.format("%-14s %s  %s", r.tool, r.ok and "ok   " or "error", (r.output:gsub("\n", " | "))))
end
print(ah.json.encode { tools = #tools, calls = #calls })

local_server:close()
remote_server:close()
srv:close()
srv:wait()
