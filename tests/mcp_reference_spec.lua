-- agenthost.mcp against the official reference server,
-- @modelcontextprotocol/server-everything, over stdio and Streamable HTTP.
-- The server is an npm package of tests/support (make deps installs it
-- with `npm ci` from the lockfile; MCP_EVERYTHING=path/to/dist/index.js
-- names another copy).  Without it, or without node, the spec fails.  Its
-- HTTP transport listens on a fixed port on every interface; the spec
-- preloads tests/support/loopback_listen.cjs so that it listens on
-- 127.0.0.1, on an ephemeral port.

local ah = require "agenthost"
local mcp = require "agenthost.mcp"
local spec = require "support.spec"
local task = ah.task

local server = os.getenv("MCP_EVERYTHING")
if not server or server == "" then
  server = "tests/support/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
end

describe("mcp with the reference server", function()
  it("is installed, with node", function()
    local f = io.open(server)
    assert(f, server .. " is missing: run make deps (npm ci in tests/support)")
    f:close()
    assert.are.equal(0, ah.task.run(function()
      return ah.proc.run({ cmd = "node", args = { "--version" } }).code
    end), "node does not run")
  end)

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
      local srv <close> = ah.proc.spawn { cmd = "node",
        args = { "-r", "./tests/support/loopback_listen.cjs", server, "streamableHttp" },
        stdout = "null" }
      local port
      assert.is_true(spec.eventually(function()
        port = srv:stderr():match("loopback%-port=(%d+)")
        return port ~= nil
      end, 30), "the reference server did not come up: " .. srv:stderr())
      local c <close> = mcp.http { url = "http://127.0.0.1:" .. port .. "/mcp", timeout = 30 }
      check(c)
    end)
  end)
end)
