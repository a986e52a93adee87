-- An MCP server for the specs (tests/mcp_spec.lua), run by build/agenthost:
--
--   agenthost tests/support/mcp_server.lua            stdio (newline-delimited JSON-RPC)
--   agenthost tests/support/mcp_server.lua --http     Streamable HTTP on 127.0.0.1, ephemeral
--                                                     port, announced as "port=N" on stdout
--   agenthost tests/support/mcp_server.lua --silent   stdio, never answers anything
--   agenthost tests/support/mcp_server.lua --garbage  stdio, answers everything with garbage
--   agenthost tests/support/mcp_server.lua --hostile  stdio, tools/list answers {"tools":[1]}
--
-- The same handler serves both transports.  Its tools, paged two to a
-- tools/list page, are well-behaved (echo, add, fail, chatty, state)
-- or hostile (garbage, huge, die, hang), so that the specs can drive every
-- path of the client from one process.  The HTTP mode needs luasocket; it
-- answers one connection at a time with "Connection: close", and keeps the
-- connections of hung requests open without blocking the others.

local json = require("agenthost").json

local VERSIONS = { ["2025-11-25"] = true, ["2025-06-18"] = true, ["2025-03-26"] = true }

local mode = arg[1] or "--stdio"

local TOOLS = {
  { name = "echo", description = "Echoes its text.",
    inputSchema = { type = "object", properties = { text = { type = "string" } }, required = { "text" } } },
  { name = "add", description = "Adds two numbers.",
    inputSchema = { type = "object", properties = { a = { type = "number" }, b = { type = "number" } } } },
  { name = "fail", description = "Always reports a tool error.",
    inputSchema = { type = "object" } },
  { name = "chatty", description = "Logs, pings the client, then answers.",
    inputSchema = { type = "object" } },
  { name = "state", description = "What the server saw: initialized, answers to its requests, cancellations.",
    inputSchema = { type = "object" } },
  { name = "garbage", description = "Writes garbage before its answer.",
    inputSchema = { type = "object" } },
  { name = "huge", description = "Answers with a line of `bytes` bytes.",
    inputSchema = { type = "object", properties = { bytes = { type = "number" } } } },
  { name = "die", description = "Exits in the middle of the call.",
    inputSchema = { type = "object" } },
  { name = "hang", description = "Says it is hanging, then never answers.",
    inputSchema = { type = "object" } },
}

local state = { cancelled = {}, initialized = false, pongs = 0, refused = 0 }
-- Unlisted tools whose answers are malformed JSON-RPC or MCP, each the raw
-- line the server sends (%s is the request id, as JSON).
local MALFORMED = {
  error_message_table = '{"jsonrpc":"2.0","id":%s,"error":{"code":-32000,"message":{"text":"hidden"}}}',
  error_code_string = '{"jsonrpc":"2.0","id":%s,"error":{"code":"E42","message":"bad code"}}',
  batch_string_error = '[{"jsonrpc":"2.0","id":%s,"error":"it broke"}]',
  result_string = '{"jsonrpc":"2.0","id":%s,"result":"done"}',
  content_not_list = '{"jsonrpc":"2.0","id":%s,"result":{"content":"just text"}}',
  content_item_number = '{"jsonrpc":"2.0","id":%s,"result":{"content":[1]}}',
  is_error_string = '{"jsonrpc":"2.0","id":%s,"result":{"content":[],"isError":"yes"}}',
}

-- A call of the unlisted tool "later" is answered only once the client has
-- cancelled some other request (so its answer comes after another call of
-- the client has given up).
local later

local function text(s) return { content = { { type = "text", text = s } } } end

local function log(s) io.stderr:write("fixture: ", s, "\n") io.stderr:flush() end

-- Handles one message; `out` takes the messages to send (in order) and
-- returns false to stop.  Returns "hang" for a request never answered and
-- "die" for one that kills the server.
local function handle(msg, out)
  local id, method, params = msg.id, msg.method, msg.params or {}
  if method == nil then
    if id == "s1" and msg.result then state.pongs = state.pongs + 1 end
    if id == "s2" and msg.error and msg.error.code == -32601 then state.refused = state.refused + 1 end
    return
  end
  if id == nil then
    if method == "notifications/initialized" then state.initialized = true end
    if method == "notifications/cancelled" then
      state.cancelled[#state.cancelled + 1] = { id = params.requestId, reason = params.reason }
      log("cancelled " .. tostring(params.requestId) .. ": " .. tostring(params.reason))
      if later then
        out { jsonrpc = "2.0", id = later, result = text("later") }
        later = nil
      end
    end
    return
  end
  local function reply(result) out { jsonrpc = "2.0", id = id, result = result } end
  local function fail(code, message)
    out { jsonrpc = "2.0", id = id, error = { code = code, message = message } }
  end
  if method == "initialize" then
    local v = params.protocolVersion
    reply {
      protocolVersion = VERSIONS[v] and v or "2025-06-18",
      capabilities = { tools = { listChanged = true }, logging = {} },
      serverInfo = { name = "fixture", version = "1.0" },
      instructions = "A server for tests.",
    }
  elseif method == "ping" then
    reply {}
  elseif method == "tools/list" and mode == "--hostile" then
    out(string.format('{"jsonrpc":"2.0","id":%s,"result":{"tools":[1]}}', json.encode(id)))
  elseif method == "tools/list" then
    local start = tonumber(params.cursor or "1") or 1
    local page = {}
    for i = start, math.min(start + 1, #TOOLS) do page[#page + 1] = TOOLS[i] end
    local result = { tools = page }
    if start + 2 <= #TOOLS then result.nextCursor = tostring(start + 2) end
    reply(result)
  elseif method == "tools/call" then
    local name, a = params.name, params.arguments or {}
    if MALFORMED[name] then
      out(string.format(MALFORMED[name], json.encode(id)))
    elseif name == "echo" then
      reply(text(tostring(a.text)))
    elseif name == "add" then
      local r = text(string.format("%.14g", a.a + a.b))
      r.structuredContent = { sum = a.a + a.b }
      reply(r)
    elseif name == "fail" then
      local r = text("it went wrong")
      r.isError = true
      reply(r)
    elseif name == "chatty" then
      local token = type(params._meta) == "table" and params._meta.progressToken
      if token then
        out { jsonrpc = "2.0", method = "notifications/progress",
              params = { progressToken = token, progress = 1, total = 2, message = "half way" } }
      end
      out { jsonrpc = "2.0", method = "notifications/message",
            params = { level = "info", data = "working on it" } }
      out { jsonrpc = "2.0", method = "notifications/tools/list_changed" }
      out { jsonrpc = "2.0", id = "s1", method = "ping" }
      out { jsonrpc = "2.0", id = "s2", method = "sampling/createMessage", params = {} }
      reply(text("done"))
    elseif name == "state" then
      local r = text("state")
      r.structuredContent = state
      reply(r)
    elseif name == "garbage" then
      out("this is not JSON")
      out("{\"jsonrpc\": \"2.0\", \"id\": ")
      out("[1, 2, 3]")
      reply(text("after garbage"))
    elseif name == "huge" then
      out(string.rep("x", math.tointeger(a.bytes) or 1000))
      reply(text("after huge"))
    elseif name == "die" then
      return "die"
    elseif name == "later" then
      later = id
    elseif name == "hang" then
      out { jsonrpc = "2.0", method = "notifications/message", params = { level = "info", data = "hanging" } }
      return "hang"
    else
      fail(-32602, "unknown tool: " .. tostring(name))
    end
  else
    fail(-32601, "method not found: " .. tostring(method))
  end
end

-- stdio ------------------------------------------------------------------------

local function serve_stdio()
  local function out(m)
    io.stdout:write(type(m) == "string" and m or json.encode(m), "\n")
    io.stdout:flush()
  end
  for line in io.lines() do
    if mode == "--silent" then
      log("ignoring " .. #line .. " bytes")
    elseif mode == "--garbage" then
      out("garbage in reply to " .. #line .. " bytes")
    else
      local ok, msg = pcall(json.decode, line)
      if not ok then
        out { jsonrpc = "2.0", id = json.null, error = { code = -32700, message = "parse error" } }
      elseif handle(msg, out) == "die" then
        log("dying as asked")
        os.exit(3)
      end
    end
  end
end

-- Streamable HTTP ----------------------------------------------------------------

local function serve_http()
  local socket = require "socket"
  -- A backlog for every connection of the specs' bursts (luasocket's
  -- default of 32 drops the rest of a burst of 40, whose clients then
  -- wait a second to send their SYN again).
  local server = assert(socket.bind("127.0.0.1", 0, 128))
  local _, port = server:getsockname()
  io.stdout:write("port=", port, "\n")
  io.stdout:flush()
  local session, hung, n = nil, {}, 0

  local function respond(c, status, headers, body)
    local lines = { "HTTP/1.1 " .. status, "Connection: close" }
    for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
    lines[#lines + 1] = "Content-Length: " .. #(body or "")
    c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or ""))
    c:close()
  end

  while true do
    local c = server:accept()
    c:settimeout(5)
    local line = c:receive("*l")
    local method, path = (line or ""):match("^(%u+) (%S+)")
    local headers = {}
    while true do
      local h = c:receive("*l")
      if not h or h == "" then break end
      local k, v = h:match("^([^:]+):%s*(.*)$")
      if k then headers[k:lower()] = v end
    end
    local body = ""
    local len = tonumber(headers["content-length"] or "0")
    if len and len > 0 then body = c:receive(len) or "" end
    if path ~= "/mcp" then
      respond(c, "404 Not Found", {}, "")
    elseif method == "GET" then
      respond(c, "405 Method Not Allowed", { Allow = "POST, DELETE" }, "")
    elseif method == "DELETE" then
      if session and headers["mcp-session-id"] == session then
        log("session " .. session .. " deleted")
        session = nil
        respond(c, "200 OK", {}, "")
      else
        respond(c, "404 Not Found", {}, "")
      end
    elseif method ~= "POST" then
      respond(c, "405 Method Not Allowed", {}, "")
    elseif not (headers["accept"] or ""):find("text/event-stream", 1, true)
        or not (headers["accept"] or ""):find("application/json", 1, true) then
      respond(c, "406 Not Acceptable", {}, "")
    else
      local ok, msg = pcall(json.decode, body)
      if not ok or type(msg) ~= "table" then
        respond(c, "400 Bad Request", { ["Content-Type"] = "application/json" },
          json.encode { jsonrpc = "2.0", id = json.null, error = { code = -32700, message = "parse error" } })
      elseif msg.method ~= "initialize" and headers["mcp-session-id"] ~= session then
        respond(c, (headers["mcp-session-id"] and "404 Not Found" or "400 Bad Request"), {}, "no such session")
      elseif msg.method ~= "initialize" and not VERSIONS[headers["mcp-protocol-version"] or ""] then
        respond(c, "400 Bad Request", {}, "missing or unsupported MCP-Protocol-Version")
      else
        local sent = {}
        local function out(m) sent[#sent + 1] = type(m) == "string" and m or json.encode(m) end
        local what = handle(msg, out)
        local extra = {}
        if msg.method == "initialize" then
          n = n + 1
          session = "session-" .. n
          extra["Mcp-Session-Id"] = session
        end
        if what == "hang" then
          -- The stream starts, says what the handler sent, and stays open.
          local events = {}
          for i, m in ipairs(sent) do events[i] = "data: " .. m .. "\n\n" end
          c:send("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" ..
            table.concat(events))
          hung[#hung + 1] = c
        elseif what == "die" then
          c:close()
        elseif msg.id == nil then
          respond(c, "202 Accepted", {}, "")
        elseif msg.params and msg.params.name == "garbage" then
          extra["Content-Type"] = "application/json"
          respond(c, "200 OK", extra, "this is not JSON")
        elseif msg.method == "tools/call" then
          -- An event stream: whatever the handler sent, one event each.
          extra["Content-Type"] = "text/event-stream"
          local events = { ": a comment\n\n" }
          for i, m in ipairs(sent) do
            events[#events + 1] = "id: " .. i .. "\nevent: message\ndata: " .. m .. "\n\n"
          end
          respond(c, "200 OK", extra, table.concat(events))
        else
          extra["Content-Type"] = "application/json"
          respond(c, "200 OK", extra, sent[#sent])
        end
      end
    end
  end
end

if mode == "--http" then serve_http() else serve_stdio() end
