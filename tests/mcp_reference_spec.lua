-- agenthost.mcp against the official reference server,
-- @modelcontextprotocol/server-everything, over stdio and Streamable HTTP.
-- Optional: it runs only when the package is installed where it is looked
-- for (MCP_EVERYTHING=path/to/dist/index.js, or the global node_modules)
-- and node is on PATH; otherwise it prints why it was skipped and defines
-- no test (so the run's counts stay honest).  It never
-- installs anything and never reaches the network.

local ah = require "agenthost"
local mcp = require "agenthost.mcp"
local spec = require "support.spec"
local task = ah.task

local function exists(path)
  local f = path and io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function find_server()
  local candidates = {
    os.getenv("MCP_EVERYTHING"),
    "/usr/local/lib/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    "/usr/lib/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
  }
  for _, p in ipairs(candidates) do
    if p and p ~= "" and exists(p) then return p end
  end
end

local function has_node()
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    if exists(dir .. "/node") then return true end
  end
  return false
end

local server = find_server()

describe("mcp with the reference server", function()
  if not (server and has_node()) then
    local reason = "skipped: @modelcontextprotocol/server-everything is not installed " ..
      "(npm install -g @modelcontextprotocol/server-everything, or set MCP_EVERYTHING to its dist/index.js)"
    io.stderr:write("# ", reason, "\n")
    return
  end

  local function check(c)
    assert.equal("2025-11-25", c.protocol_version)
    local names = {}
    for _, t in ipairs(c:list_tools()) do names[t.name] = true end
    assert.is_true(names.echo)
    assert.equal("Echo: hi", c:call_tool("echo", { message = "hi" }).content[1].text)
    local ok, err = pcall(c.call_tool, c, "trigger-long-running-operation", { duration = 10, steps = 5 },
      { timeout = 0.5 })
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "timeout"))
    assert.equal("Echo: after", c:call_tool("echo", { message = "after" }).content[1].text)
  end

  it("works over stdio", function()
    task.run(function()
      local c <close> = mcp.stdio { cmd = "node", args = { server, "stdio" }, timeout = 30 }
      check(c)
    end)
  end)

  it("works over Streamable HTTP", function()
    task.run(function()
      local port = tostring(20000 + (os.time() % 20000))
      local srv <close> = ah.proc.spawn { cmd = "node", args = { server, "streamableHttp" },
                                         env = { PORT = port }, stdout = "null" }
      local c
      assert.is_true(spec.eventually(function()
        local ok, r = pcall(mcp.http, { url = "http://127.0.0.1:" .. port .. "/mcp", timeout = 30 })
        if ok then c = r end
        return ok
      end), "the reference server did not come up: " .. srv:stderr())
      check(c)
      c:close()
    end)
  end)
end)
