-- The Lua-level fuzzer: the decoders of untrusted input written in Lua,
-- fed mutated input, must return or raise a structured error (ah.error),
-- never a raw Lua error ("attempt to index a nil value").
--
--   lua5.4 tests/fuzz/lua_fuzz.lua [--cases N] [--seed S] [--mutate-schemas]
--
-- Without options it is the regression run of make test: seed 1 and a
-- few thousand cases per target, the same every time.  make fuzz runs it
-- longer with a seed from the clock; a failure prints the seed, the
-- target and the input, so that it can be replayed.
--
-- The targets, each one TAP line:
--   openai, anthropic  a whole reply body through the provider's
--                      decode_reply (scripts/agenthost/llm/init.lua), and
--                      a stream of SSE events through dialect.stream():feed
--                      and :finish
--   mcp                one raw message from a server through an MCP
--                      client's _receive (scripts/agenthost/mcp/rpc.lua),
--                      which must never raise
--   validate           tools.validate(schema, value) on mutated values, which
--                      returns true or nil and a message, and on mutated
--                      schemas (one case in four; every case with
--                      --mutate-schemas), which it may also refuse with an
--                      invalid_argument error, never a raw Lua error
--
-- Inputs are built from seed documents shaped like real traffic, mutated
-- structurally (values swapped for values of other types, keys dropped or
-- added, arrays where objects belong) and then, sometimes, as bytes
-- (truncated, a byte changed), which reaches the not-JSON paths.

local ah = require "agenthost"
local json = ah.json
local llm = require "agenthost.llm"
local rpc = require "agenthost.mcp.rpc"
local tools = require "agenthost.tools"

local cases, seed, mutate_schemas = 3000, 1, false
do
  local i = 1
  while arg[i] do
    if arg[i] == "--cases" then cases = assert(tonumber(arg[i + 1]), "--cases N"); i = i + 2
    elseif arg[i] == "--seed" then seed = assert(tonumber(arg[i + 1]), "--seed S"); i = i + 2
    elseif arg[i] == "--mutate-schemas" then mutate_schemas = true; i = i + 1
    else error("lua_fuzz.lua: unknown option " .. arg[i]) end
  end
end

local rnd = math.random
math.randomseed(seed)

-- ---- mutation -------------------------------------------------------------

local null = json.null
local WORDS = { "", "text", "tool_use", "tool_calls", "function", "stop", "error", "2.0",
                "message_start", "content_block_delta", "input_json_delta", "text_delta",
                "{", "{\"a\":", "[DONE]", "\0", "\u{1F600}", "\xff\xfe", "id", "index",
                "notifications/progress", "ping", "roots/list", "object", "string" }

local function leaf()
  local r = rnd(9)
  if r == 1 then return null
  elseif r == 2 then return rnd(2) == 1
  elseif r == 3 then return rnd(-3, 1000)
  elseif r == 4 then return ({ 0.5, -1e308, 1e308, 2^53, -0.0, 1e-300 })[rnd(6)]
  elseif r == 5 then return WORDS[rnd(#WORDS)]
  elseif r == 6 then return string.rep("x", rnd(0, 300))
  elseif r == 7 then return {}
  elseif r == 8 then return { leaf() }
  else return json.array() end
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

-- Mutates the decoded document v in place (or returns a replacement).
local function mutate(v, depth)
  depth = depth or 0
  if type(v) ~= "table" or depth > 6 then
    if rnd(3) == 1 then return leaf() end
    return v
  end
  if rnd(12) == 1 then return leaf() end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local r = rnd(10)
    if r == 1 then v[k] = nil
    elseif r == 2 then v[k] = leaf()
    else v[k] = mutate(v[k], depth + 1) end
  end
  if rnd(6) == 1 then
    if #v > 0 then v[#v + 1] = copy(v[rnd(#v)]) else v[WORDS[rnd(#WORDS)]] = leaf() end
  end
  return v
end

-- JSON with the keys of objects in order (ah.json follows the order of
-- pairs, which changes from one process to the next), so that a seed
-- makes the same texts every time.
local function encode(v, out)
  local t = type(v)
  if v == nil or v == null then out[#out + 1] = "null"
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "number" then
    out[#out + 1] = math.type(v) == "integer" and tostring(v) or string.format("%.17g", v)
  elseif t == "string" then
    out[#out + 1] = '"' .. v:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif #v > 0 or getmetatable(v) then
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then out[#out + 1] = "," end
      encode(v[i], out)
    end
    out[#out + 1] = "]"
  else
    local keys, by = {}, {}
    for k in pairs(v) do
      keys[#keys + 1] = tostring(k)
      by[tostring(k)] = k
    end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      encode(k, out)
      out[#out + 1] = ":"
      encode(v[by[k]], out)
    end
    out[#out + 1] = "}"
  end
  return out
end

-- The JSON text of a mutated copy of doc, sometimes mutated as bytes.
local function text_of(doc)
  local s = table.concat(encode(mutate(copy(doc)), {}))
  local r = rnd(10)
  if r == 1 and #s > 0 then
    s = s:sub(1, rnd(0, #s - 1))
  elseif r == 2 and #s > 0 then
    local i = rnd(#s)
    s = s:sub(1, i - 1) .. string.char(rnd(0, 255)) .. s:sub(i + 1)
  elseif r == 3 then
    s = WORDS[rnd(#WORDS)]
  end
  return s
end

-- ---- checks ---------------------------------------------------------------

local failures = {}
local raised = {} -- structured errors per target: the inputs it refused

-- Records a failure of target unless err is a structured error.
local function structured(target, ok, err, input)
  if ok then return true end
  if ah.error.is(err) then
    raised[target] = (raised[target] or 0) + 1
    return true
  end
  failures[target] = failures[target] or
    string.format("raised %s (%s) for input %q", type(err), tostring(err), input)
  return false
end

-- ---- seed documents ---------------------------------------------------------

local OPENAI_REPLY = {
  id = "chatcmpl-1", object = "chat.completion",
  choices = { { index = 0, finish_reason = "tool_calls", message = {
    role = "assistant", content = "Hello",
    tool_calls = { { id = "call_1", type = "function",
                     ["function"] = { name = "get", arguments = "{\"q\":\"x\"}" } } } } } },
  usage = { prompt_tokens = 5, completion_tokens = 7 },
}
local OPENAI_EVENTS = {
  { choices = { { index = 0, delta = { role = "assistant", content = "He" } } } },
  { choices = { { index = 0, delta = { tool_calls = { { index = 0, id = "call_1",
      ["function"] = { name = "get", arguments = "{\"q\"" } } } } } } },
  { choices = { { index = 0, delta = { tool_calls = { { index = 0,
      ["function"] = { arguments = ":1}" } } } } } } },
  { choices = { { index = 0, delta = {}, finish_reason = "stop" } } },
  { usage = { prompt_tokens = 1, completion_tokens = 2 }, choices = {} },
  { error = { type = "server_error", message = "boom" } },
}
local ANTHROPIC_REPLY = {
  id = "msg_1", type = "message", role = "assistant", stop_reason = "tool_use",
  content = { { type = "text", text = "Hi" },
              { type = "tool_use", id = "toolu_1", name = "get", input = { q = "x" } } },
  usage = { input_tokens = 3, output_tokens = 4 },
}
local ANTHROPIC_EVENTS = {
  { type = "message_start", message = { usage = { input_tokens = 3 } } },
  { type = "content_block_start", index = 0, content_block = { type = "text", text = "" } },
  { type = "content_block_delta", index = 0, delta = { type = "text_delta", text = "Hi" } },
  { type = "content_block_start", index = 1,
    content_block = { type = "tool_use", id = "toolu_1", name = "get", input = {} } },
  { type = "content_block_delta", index = 1,
    delta = { type = "input_json_delta", partial_json = "{\"q\":1}" } },
  { type = "message_delta", delta = { stop_reason = "end_turn" }, usage = { output_tokens = 2 } },
  { type = "message_stop" },
  { type = "error", error = { type = "overloaded_error", message = "busy" } },
}
local MCP_MESSAGES = {
  { jsonrpc = "2.0", id = 1, result = { tools = { { name = "t", inputSchema = {} } } } },
  { jsonrpc = "2.0", id = 2, error = { code = -32601, message = "nope" } },
  { jsonrpc = "2.0", method = "notifications/progress", params = { progressToken = 1, progress = 1, total = 2 } },
  { jsonrpc = "2.0", method = "notifications/tools/list_changed" },
  { jsonrpc = "2.0", id = 9, method = "ping" },
  { jsonrpc = "2.0", id = "r", method = "roots/list" },
  { { jsonrpc = "2.0", id = 1, result = {} }, { jsonrpc = "2.0", method = "x" } },
}
local SCHEMAS = {
  { type = "object", properties = {
      q = { type = "string", minLength = 1, maxLength = 10 },
      n = { type = "integer", minimum = 0, maximum = 10, exclusiveMaximum = 11 },
      tags = { type = "array", items = { type = "string", enum = { "a", "b" } }, minItems = 0, maxItems = 3 },
      mode = { anyOf = { { const = "x" }, { type = "number" } } },
      sub = { type = "object", additionalProperties = false, required = { "k" },
              properties = { k = { type = { "string", "null" } } } } },
    required = { "q" } },
  { oneOf = { { type = "boolean" }, { type = "array", items = { type = "object" } } } },
}
local VALUES = {
  { q = "hi", n = 3, tags = { "a" }, mode = "x", sub = { k = "v" } },
  { true, { { a = 1 } } },
}

-- ---- targets --------------------------------------------------------------

local function provider(kind)
  return llm.provider { kind = kind, base_url = "http://127.0.0.1:9", model = "m", api_key = "k" }
end

local function events_of(list, kind)
  local evs = {}
  for i = 1, rnd(1, 6) do
    local ev = { data = text_of(list[rnd(#list)]) }
    if kind == "anthropic" and rnd(2) == 1 then ev.event = WORDS[rnd(#WORDS)] end
    if rnd(15) == 1 then ev.data = nil end
    if rnd(15) == 1 then ev.data = "[DONE]" end
    evs[i] = ev
  end
  return evs
end

local function dialect_target(kind, reply, events)
  local p = provider(kind)
  return function()
    local body = text_of(reply)
    local ok, err = pcall(p.decode_reply, p, body)
    structured(kind, ok, err, body)
    local st = p.dialect.stream("POST fuzz")
    local evs = events_of(events, kind)
    for _, ev in ipairs(evs) do
      ok, err = pcall(st.feed, st, ev)
      if not structured(kind, ok, err, tostring(ev.data)) or not ok then return end
    end
    ok, err = pcall(st.finish, st)
    structured(kind, ok, err, "(end of stream)")
  end
end

local function mcp_target()
  local c = rpc.new("fuzz", {})
  c._transport = { send = function() end }
  return function()
    c._dead = nil
    for id = 1, 2 do
      c._pending[id] = { id = id, ev = { set = function() end },
                         on_progress = function() error("progress handler fails") end }
    end
    c._pending.r = nil
    local raw = text_of(MCP_MESSAGES[rnd(#MCP_MESSAGES)])
    local ok, err = pcall(c._receive, c, raw)
    if not ok then
      failures.mcp = failures.mcp or string.format("_receive raised %s for %q", tostring(err), raw)
    end
  end
end

local function validate_target()
  return function()
    local i = rnd(#SCHEMAS)
    local mutated = mutate_schemas or rnd(4) == 1
    local schema = mutated and mutate(copy(SCHEMAS[i])) or SCHEMAS[i]
    local raw = text_of(VALUES[i])
    local okd, value = pcall(json.decode, raw)
    if not okd then value = raw end
    local ok, res, msg = pcall(tools.validate, schema, value)
    if ok and res == nil then raised.validate = (raised.validate or 0) + 1 end
    if not ok and mutated and ah.error.is(res, "invalid_argument") then
      raised.validate = (raised.validate or 0) + 1
    elseif not ok then
      failures.validate = failures.validate or string.format(
        "validate raised %s for schema %s, value %q", tostring(res),
        (pcall(json.encode, schema)) and json.encode(schema) or "?", raw)
    elseif not (res == true or (res == nil and type(msg) == "string")) then
      failures.validate = failures.validate or string.format(
        "validate returned %s, %s for value %q", tostring(res), tostring(msg), raw)
    end
  end
end

local targets = {
  { "openai", dialect_target("openai", OPENAI_REPLY, OPENAI_EVENTS) },
  { "anthropic", dialect_target("anthropic", ANTHROPIC_REPLY, ANTHROPIC_EVENTS) },
  { "mcp", mcp_target() },
  { "validate", validate_target() },
}

-- The MCP client writes handler failures to stderr; keep the TAP readable.
local stderr = io.stderr
io.stderr = io.open("/dev/null", "w") or stderr

local bad = 0
print("1.." .. #targets)
for n, t in ipairs(targets) do
  local name, run = t[1], t[2]
  for _ = 1, cases do
    run()
    if failures[name] then break end
  end
  if failures[name] then
    bad = bad + 1
    print(string.format("not ok %d - lua fuzz %s (seed %d)", n, name, seed))
    print("# " .. failures[name]:gsub("\n", "\n# "))
  else
    print(string.format("ok %d - lua fuzz %s: %d cases, %d refused with a structured error (seed %d)",
      n, name, cases, raised[name] or 0, seed))
  end
end
io.stderr = stderr
os.exit(bad == 0 and 0 or 1)
