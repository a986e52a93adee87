-- agenthost.mcp against the fixture server (tests/support/mcp_server.lua)
-- over stdio and over Streamable HTTP: the handshake, paging, tool calls,
-- the server's notifications and requests, timeouts and cancellation that
-- reach the server, many calls at once, and hostile servers (garbage,
-- huge lines, death mid-call, silence) that must give a clear error and
-- never hang.

local ah = require "agenthost"
local mcp = require "agenthost.mcp"
local spec = require "support.spec"
local helpers = require "support.proc"
local task = ah.task

local fails = spec.fails
local FIXTURE = "tests/support/mcp_server.lua"

local function run(fn) return task.run(fn) end

local function stdio(mode, opts)
  opts = opts or {}
  opts.cmd = helpers.bin
  opts.args = { FIXTURE, mode }
  opts.timeout = opts.timeout or 10
  return mcp.stdio(opts)
end

local function reaped()
  assert.is_true(spec.eventually(function() return ah.proc.stats().running == 0 end),
    "servers still running: " .. ah.proc.stats().running)
end

local function state(c)
  return c:call_tool("state").structuredContent
end

-- The behaviour both transports share; connect(opts) makes a client.
local function shared(connect)
  it("turns every malformed answer into a protocol error naming what was wrong", function()
    run(function()
      local c <close> = connect()
      local cases = {
        error_message_table = "'tools/call' answered with a malformed error: error.message must be a string, got object",
        error_code_string = "'tools/call' answered with a malformed error: error.code must be an integer, got string",
        batch_string_error = "'tools/call' answered with a malformed error: error must be an object, got string",
        result_string = "tools/call: the result must be an object, got string",
        content_not_list = "tools/call: content must be a list, got string",
        content_item_number = "tools/call: content%[1%] must be an object, got number",
        is_error_string = "tools/call: isError must be a boolean, got string",
      }
      for name, want in pairs(cases) do
        local ok, err = pcall(c.call_tool, c, name)
        assert.is_false(ok, name)
        assert.is_true(ah.error.is(err, "protocol"), name .. ": " .. tostring(err))
        assert.matches(want, err.message)
        assert.is_nil(err.message:find("table: 0x", 1, true))
        assert.is_nil(err.message:find("nil (code nil)", 1, true))
      end
      -- the session survives a malformed answer
      assert.equal("still here", c:call_tool("echo", { text = "still here" }).content[1].text)
    end)
  end)

  it("runs the handshake and pages through the tools", function()
    run(function()
      local c <close> = connect()
      assert.equal(mcp.PROTOCOL_VERSION, c.protocol_version)
      assert.equal("fixture", c.server_info.name)
      assert.equal("A server for tests.", c.instructions)
      assert.is_table(c.capabilities.tools)
      local tools = c:list_tools()
      local names = {}
      for i, t in ipairs(tools) do names[i] = t.name end
      assert.same({ "echo", "add", "fail", "chatty", "state", "garbage", "huge", "die", "hang" }, names)
      assert.same({ "text" }, tools[1].inputSchema.required)
      assert.is_true(state(c).initialized)
    end)
  end)

  it("calls tools: text, structured content, tool errors and JSON-RPC errors", function()
    run(function()
      local c <close> = connect()
      local r = c:call_tool("echo", { text = "hello" })
      assert.same({ { type = "text", text = "hello" } }, r.content)
      assert.is_false(r.isError)
      assert.equal(5, c:call_tool("add", { a = 2, b = 3 }).structuredContent.sum)
      local f = c:call_tool("fail")
      assert.is_true(f.isError)
      assert.equal("it went wrong", f.content[1].text)
      local ok, err = pcall(c.call_tool, c, "nope")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "mcp"))
      assert.equal(-32602, err.code)
      assert.matches("unknown tool: nope", err.message)
      assert.same({}, c:ping())
    end)
  end)

  it("hands notifications over and answers the server's requests", function()
    run(function()
      local seen = {}
      local c <close> = connect { on_notification = function(method, params)
        seen[#seen + 1] = method .. (params and params.data and (" " .. params.data) or "")
      end }
      local progress = {}
      local r = c:call_tool("chatty", {}, { on_progress = function(done, total, message)
        progress[#progress + 1] = string.format("%g/%g %s", done, total, message)
      end })
      assert.equal("done", r.content[1].text)
      assert.same({ "1/2 half way" }, progress)
      assert.same({ "notifications/progress", "notifications/message working on it",
                    "notifications/tools/list_changed" }, seen)
      assert.is_true(c.tools_changed)
      c:list_tools()
      assert.is_false(c.tools_changed)
      local st = state(c)
      assert.equal(1, st.pongs)   -- its ping was answered
      assert.equal(1, st.refused) -- sampling is refused with "method not found"
    end)
  end)

  it("runs many calls at once", function()
    local got = run(function()
      local c <close> = connect()
      local items = {}
      for i = 1, 40 do items[i] = i end
      return task.map(items, function(i) return c:call_tool("echo", { text = "n" .. i }).content[1].text end)
    end)
    for i = 1, 40 do assert.equal("n" .. i, got[i]) end
  end)

  it("times out a call and tells the server", function()
    run(function()
      local c <close> = connect()
      local before = #state(c).cancelled
      local ok, err = pcall(c.call_tool, c, "hang", {}, { timeout = 0.2 })
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "timeout"))
      assert.matches("'tools/call' got no answer within 0.2 s", err.message)
      assert.equal("after", c:call_tool("echo", { text = "after" }).content[1].text)
      local cancelled = state(c).cancelled
      assert.equal(before + 1, #cancelled)
      assert.equal("timeout", cancelled[#cancelled].reason)
    end)
  end)

  it("sends notifications/cancelled when the calling task is cancelled", function()
    run(function()
      local hanging = task.event()
      local c <close> = connect { on_notification = function(_, params)
        if params and params.data == "hanging" then hanging:set() end
      end }
      local before = #state(c).cancelled
      local t = task.spawn(function() return c:call_tool("hang") end)
      hanging:wait()
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      local cancelled = state(c).cancelled
      assert.equal(before + 1, #cancelled)
      assert.equal("cancelled", cancelled[#cancelled].reason)
    end)
  end)

  it("turns the server's tools into agent tools", function()
    run(function()
      local c <close> = connect()
      local tools = mcp.tools(c, { prefix = "fx_", only = { "echo", "fail" } })
      assert.equal(2, #tools)
      assert.equal("fx_echo", tools[1].name)
      assert.equal("Echoes its text.", tools[1].description)
      assert.equal("object", tools[1].parameters.type)
      local text, r = tools[1].run { text = "via agent" }
      assert.equal("via agent", text)
      assert.is_false(r.isError)
      local ok, err = pcall(tools[2].run, {})
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "tool"))
      assert.equal("it went wrong", err.message)
    end)
  end)
end

describe("mcp.check_message", function()
  it("checks one raw answer without a server, raising only structured errors", function()
    assert.same({}, mcp.check_message('{"jsonrpc":"2.0","id":1,"result":{}}', "ping"))
    local r = mcp.check_message('{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"x"}]}}', "tools/call")
    assert.is_false(r.isError)
    local cases = {
      { "not json", "protocol", "not JSON" },
      { "[]", "protocol", "not a JSON%-RPC 2.0 response" },
      { '{"jsonrpc":"2.0","id":1}', "protocol", "not a JSON%-RPC 2.0 response" },
      { '{"jsonrpc":"2.0","id":1,"result":{"tools":[1]}}', "protocol", "tools%[1%] must be an object, got number" },
      { '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":7}]}}', "protocol", "tools%[1%]%.name must be" },
      { '{"jsonrpc":"2.0","id":1,"result":{"tools":"x"}}', "protocol", "tools must be a list, got string" },
      { '{"jsonrpc":"2.0","id":1,"result":{"tools":[],"nextCursor":5}}', "protocol", "nextCursor must be a string" },
      { '{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":{}}}', "protocol", "error%.message must be a string" },
      { '[{"jsonrpc":"2.0","id":1,"error":"x"}]', "protocol", "error must be an object, got string" },
      { '{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}', "protocol", "error%.code must be an integer" },
      { '{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}', "protocol", "both result and error" },
      { '{"jsonrpc":"2.0","id":1,"error":{"code":-5,"message":"nope"}}', "mcp", "failed: nope %(code %-5%)" },
      { '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":null}}', "protocol", "protocolVersion must be a string, got null" },
    }
    for _, case in ipairs(cases) do
      local method = case[1]:find("protocolVersion", 1, true) and "initialize" or
        (case[1]:find("tools", 1, true) and "tools/list" or "tools/call")
      local ok, e = pcall(mcp.check_message, case[1], method)
      assert.is_false(ok, case[1])
      assert.is_true(ah.error.is(e, case[2]), case[1] .. ": " .. tostring(e))
      assert.matches(case[3], e.message)
    end
  end)
end)

describe("mcp over stdio", function()
  shared(function(opts) return stdio(nil, opts) end)

  it("turns a malformed tools/list into a protocol error", function()
    run(function()
      local c <close> = stdio("--hostile")
      local ok, err = pcall(c.list_tools, c)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "protocol"), tostring(err))
      assert.matches("tools/list: tools%[1%] must be an object, got number", err.message)
      ok, err = pcall(mcp.tools, c)
      assert.is_true(ah.error.is(err, "protocol"), tostring(err))
    end)
  end)

  it("passes the reading on when the caller reading for the others gives up", function()
    run(function()
      for _ = 1, 4 do
        local c <close> = stdio()
        -- a reads for both; b's answer comes only after a has timed out
        -- (the fixture answers "later" once it is told of a cancellation)
        local a = task.spawn(function() return pcall(c.call_tool, c, "hang", {}, { timeout = 0.1 }) end)
        local b = task.spawn(function() return c:call_tool("later", {}, { timeout = 5 }) end)
        assert.is_false((a:join()))
        local ok, res = b:result()
        assert.is_true(ok, tostring(res))
        assert.equal("later", res.content[1].text)
      end
    end)
  end)

  it("skips lines that are not JSON-RPC", function()
    run(function()
      local c <close> = stdio()
      assert.equal("after garbage", c:call_tool("garbage").content[1].text)
    end)
  end)

  it("gives a clear error when the server only speaks garbage", function()
    -- Long enough for the server's first line to come before it, even
    -- under ASan on a busy machine.
    local err = fails("timeout", function() stdio("--garbage", { timeout = 1 }) end)
    assert.matches("'initialize' got no answer within 1 s; 1 line from the server was not JSON%-RPC " ..
      "%(last: 'garbage in reply to", err.message)
    run(reaped)
  end)

  it("times out a server that never answers, and ends it", function()
    local err = fails("timeout", function() stdio("--silent", { timeout = 0.3 }) end)
    assert.matches("'initialize' got no answer", err.message)
    run(reaped)
  end)

  it("fails every call once the server wrote a line past max_line", function()
    run(function()
      local c <close> = stdio(nil, { max_line = 100000 })
      local ok, err = pcall(c.call_tool, c, "huge", { bytes = 300000 })
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "too_large"), tostring(err))
      assert.matches("longer than max_line %(100000 bytes%)", err.message)
      ok, err = pcall(c.call_tool, c, "echo", { text = "x" })
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "too_large"))
      reaped()
    end)
  end)

  it("reports a server that dies mid-call, with its exit code and stderr", function()
    run(function()
      -- The server has the hanging call before it is told to die (else the
      -- hanging call could be written to a server already gone).
      local hanging = task.event()
      local c <close> = stdio(nil, { on_notification = function(_, params)
        if params and params.data == "hanging" then hanging:set() end
      end })
      local waiting = task.spawn(function() return c:call_tool("hang") end)
      hanging:wait()
      local ok, err = pcall(c.call_tool, c, "die")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "io"))
      assert.matches("the server closed its output %(it exited with code 3%)", err.message)
      assert.matches("dying as asked", err.message)
      -- every other call fails the same way, now and later
      local ok2, err2 = waiting:result()
      assert.is_false(ok2)
      assert.is_true(ah.error.is(err2, "io"))
      assert.matches("exited with code 3", err2.message)
      ok, err = pcall(c.call_tool, c, "echo", { text = "x" })
      assert.is_false(ok)
      assert.matches("exited with code 3", err.message)
    end)
  end)

  it("closes the server's stdin on close, and the server exits", function()
    run(function()
      local c = stdio()
      c:close()
      reaped()
      local ok, err = pcall(c.call_tool, c, "echo", { text = "x" })
      assert.is_false(ok)
      assert.matches("the client is closed", err.message)
    end)
  end)

  it("names a server command that does not exist", function()
    local err = fails("invalid_argument", function() mcp.stdio { cmd = "no-such-mcp-server" } end)
    assert.matches("command 'no%-such%-mcp%-server' not found", err.message)
    assert.matches("expected {cmd",
      fails("invalid_argument", function() mcp.stdio { args = {} } end).message)
  end)
end)

local has_socket = pcall(require, "socket")

describe("mcp over Streamable HTTP", function()
  if not has_socket then
    pending("needs luasocket for the fixture's HTTP mode (make deps installs lua-socket)")
    return
  end

  local srv, url

  setup(function()
    run(function()
      -- The fixture waits in a blocking accept(), where the SIGTERM of
      -- close() never reaches its loop: it is ended by the SIGKILL that
      -- follows, after a short grace rather than the default 2 s.
      srv = ah.proc.spawn { cmd = helpers.bin, args = { FIXTURE, "--http" }, kill_grace = 0.1 }
      local line = srv:read_line()
      url = "http://127.0.0.1:" .. assert(line and line:match("^port=(%d+)$"), "no port from the fixture") .. "/mcp"
    end)
  end)

  teardown(function()
    if srv then
      srv:close()
      run(function() srv:wait() end)
    end
  end)

  local function connect(opts)
    opts = opts or {}
    opts.url = url
    opts.timeout = opts.timeout or 10
    return mcp.http(opts)
  end

  shared(connect)

  it("keeps the session id and sends it with the protocol version", function()
    run(function()
      local c <close> = connect { headers = { ["x-extra"] = "1" } }
      assert.matches("^session%-%d+$", c.session_id)
      -- the fixture refuses calls without both headers
      assert.equal("ok", c:call_tool("echo", { text = "ok" }).content[1].text)
    end)
  end)

  it("reports a body that is not JSON-RPC", function()
    run(function()
      local c <close> = connect()
      local ok, err = pcall(c.call_tool, c, "garbage")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "io"))
      assert.matches("had no JSON%-RPC response; 1 line from the server was not JSON%-RPC " ..
        "%(last: 'this is not JSON'%)", err.message)
    end)
  end)

  it("reports a server that drops the connection mid-call", function()
    run(function()
      local c <close> = connect()
      local ok, err = pcall(c.call_tool, c, "die")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "connect") or ah.error.is(err, "protocol"), tostring(err))
      assert.equal("still", c:call_tool("echo", { text = "still" }).content[1].text)
    end)
  end)

  it("gives the HTTP status of an endpoint that is not MCP", function()
    local err = fails("http", function() mcp.http { url = url:gsub("/mcp$", "/other"), timeout = 5 } end)
    assert.equal(404, err.status)
    assert.matches("HTTP 404", err.message)
  end)
end)

describe("mcp.stdio and mcp.http together", function()
  it("serve one list of agent tools", function()
    if not has_socket then return pending("needs luasocket") end
    run(function()
      local srv <close> = ah.proc.spawn { cmd = helpers.bin, args = { FIXTURE, "--http" } }
      local port = srv:read_line():match("port=(%d+)")
      local a <close> = stdio()
      local b <close> = mcp.http { url = "http://127.0.0.1:" .. port .. "/mcp" }
      local tools = {}
      for _, t in ipairs(mcp.tools(a, { prefix = "local_", only = { "echo" } })) do tools[#tools + 1] = t end
      for _, t in ipairs(mcp.tools(b, { prefix = "remote_", only = { "add" } })) do tools[#tools + 1] = t end
      assert.equal("local_echo", tools[1].name)
      assert.equal("remote_add", tools[2].name)
      assert.equal("hi", tools[1].run { text = "hi" })
      assert.equal("7", tools[2].run { a = 3, b = 4 })
    end)
  end)
end)
