-- The mock LLM server (tests/support/mockllm.c, docs/mockllm.md) through
-- ah.http: both dialects, whole and streamed, the rules, every fault,
-- /search, /stats and /reset, and the requests it refuses.

local ah = require "agenthost"
local json = require("agenthost").json
local mock = require "support.mockllm"
local http, task = ah.http, ah.task

local m

setup(function() m = mock.start() end)
teardown(function() if m then m:stop() end end)

local OA, AN = "/v1/chat/completions", "/v1/messages"

local function openai_tools(...)
  local t = {}
  for i, name in ipairs({ ... }) do
    t[i] = { type = "function", ["function"] = { name = name, parameters = { type = "object" } } }
  end
  return t
end

local function anthropic_tools(...)
  local t = {}
  for i, name in ipairs({ ... }) do t[i] = { name = name, input_schema = { type = "object" } } end
  return t
end

local function an_headers(extra)
  local h = { ["x-api-key"] = "k", ["anthropic-version"] = "2023-06-01" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

-- POSTs body (a table) to the server m (or srv) at path.
local function post(path, body, headers, srv, opts)
  srv = srv or m
  return task.run(function()
    local o = { method = "POST", url = srv.base .. path, json = body, headers = headers or {} }
    for k, v in pairs(opts or {}) do o[k] = v end
    return http.request(o)
  end)
end

-- POSTs body and collects the server-sent events: a list of {event, data,
-- json} (json nil when data is not JSON), the stream's status and an error
-- raised while reading, if any.
local function stream(path, body, headers, srv)
  srv = srv or m
  body.stream = true
  return task.run(function()
    local events = {}
    local ok, err = pcall(function()
      for ev in http.sse { method = "POST", url = srv.base .. path, body = json.encode(body),
                           headers = headers or {} } do
        local okj, j = pcall(json.decode, ev.data)
        events[#events + 1] = { event = ev.event, data = ev.data, json = okj and j or nil }
      end
    end)
    return events, not ok and err or nil
  end)
end

local function user(text) return { { role = "user", content = text } } end

-- The text and the tool calls an OpenAI stream adds up to.
local function oa_assemble(events)
  local text, calls, finish, usage = {}, {}, nil, nil
  for _, ev in ipairs(events) do
    local j = ev.json
    if j and j.choices then
      local ch = j.choices[1]
      if ch then
        if type(ch.delta.content) == "string" then text[#text + 1] = ch.delta.content end
        for _, tc in ipairs(type(ch.delta.tool_calls) == "table" and ch.delta.tool_calls or {}) do
          local c = calls[tc.index + 1]
          if not c then
            assert.is_string(tc.id, "the first delta of a call carries its id")
            assert.equal("", tc["function"].arguments)
            c = { id = tc.id, name = tc["function"].name, args = {} }
            calls[tc.index + 1] = c
          else
            assert.is_nil(tc.id, "only the first delta of a call carries its id")
            assert.is_nil(tc["function"].name)
          end
          c.args[#c.args + 1] = tc["function"].arguments
        end
        if ch.finish_reason ~= json.null then finish = ch.finish_reason end
      end
      if type(j.usage) == "table" then usage = j.usage end
    end
  end
  for _, c in ipairs(calls) do c.args = table.concat(c.args) end
  return table.concat(text), calls, finish, usage
end

-- The blocks an Anthropic stream adds up to.
local function an_assemble(events)
  local blocks, stop, usage = {}, nil, nil
  for _, ev in ipairs(events) do
    local j = ev.json
    assert.equal(ev.event, j and j.type, "event name and data type agree")
    if j.type == "content_block_start" then
      blocks[j.index + 1] = { type = j.content_block.type, name = j.content_block.name,
                              id = j.content_block.id, parts = {} }
    elseif j.type == "content_block_delta" then
      local b = blocks[j.index + 1]
      b.parts[#b.parts + 1] = j.delta.text or j.delta.partial_json
    elseif j.type == "message_delta" then
      stop, usage = j.delta.stop_reason, j.usage
    end
  end
  for _, b in ipairs(blocks) do b.text = table.concat(b.parts) end
  return blocks, stop, usage
end

local function types(events)
  local t = {}
  for i, ev in ipairs(events) do t[i] = ev.event end
  return t
end

describe("mockllm OpenAI dialect", function()
  it("answers text with the chat.completion shape and usage", function()
    local r = post(OA, { model = "gpt-test", messages = user("hello there") })
    assert.equal(200, r.status)
    local j = r.json
    assert.equal("chat.completion", j.object)
    assert.truthy(j.id:match("^chatcmpl%-"))
    assert.equal("gpt-test", j.model)
    assert.equal("assistant", j.choices[1].message.role)
    assert.truthy(j.choices[1].message.content:match("^Hello! I am the ops assistant"))
    assert.equal("stop", j.choices[1].finish_reason)
    assert.is_nil(j.choices[1].message.tool_calls)
    assert.is_true(j.usage.prompt_tokens > 0 and j.usage.completion_tokens > 0)
    assert.equal(j.usage.prompt_tokens + j.usage.completion_tokens, j.usage.total_tokens)
  end)

  it("calls metrics and web_search in parallel for a latency question", function()
    local r = post(OA, { messages = user("Why is checkout latency so high?"),
                         tools = openai_tools("metrics", "web_search", "memory_recall") })
    local msg = r.json.choices[1].message
    assert.equal("tool_calls", r.json.choices[1].finish_reason)
    assert.equal(json.null, msg.content)
    assert.equal(2, #msg.tool_calls)
    assert.equal("metrics", msg.tool_calls[1]["function"].name)
    assert.equal("web_search", msg.tool_calls[2]["function"].name)
    for _, tc in ipairs(msg.tool_calls) do
      assert.truthy(tc.id:match("^call_"))
      assert.equal("function", tc.type)
    end
    assert.equal("{}", msg.tool_calls[1]["function"].arguments)
    assert.same({ query = "Why is checkout latency so high?" },
      json.decode(msg.tool_calls[2]["function"].arguments))
    assert.are_not.equal(msg.tool_calls[1].id, msg.tool_calls[2].id)
  end)

  it("adds memory_recall when asked about before, and only calls offered tools", function()
    local r = post(OA, { messages = user("Was the error spike like the previous one?"),
                         tools = openai_tools("metrics", "web_search", "memory_recall") })
    local names = {}
    for i, tc in ipairs(r.json.choices[1].message.tool_calls) do names[i] = tc["function"].name end
    assert.same({ "metrics", "web_search", "memory_recall" }, names)

    -- Template values in arguments are cut to 200 bytes.
    r = post(OA, { messages = user("latency " .. string.rep("é", 300)), tools = openai_tools("web_search") })
    local q = json.decode(r.json.choices[1].message.tool_calls[1]["function"].arguments).query
    assert.equal(200, #q)
    assert.truthy(utf8.len(q))

    r = post(OA, { messages = user("Why is latency high?"), tools = openai_tools("metrics") })
    assert.equal(1, #r.json.choices[1].message.tool_calls)
    r = post(OA, { messages = user("Why is latency high?") })
    assert.equal("stop", r.json.choices[1].finish_reason)
    assert.truthy(r.json.choices[1].message.content:match("^I can look into"))
  end)

  it("answers with a quote from the tool results once they are in", function()
    local r = post("/chat/completions", { messages = {
      { role = "system", content = "You are an ops assistant." },
      { role = "user", content = "Why is latency high?" },
      { role = "assistant", content = json.null, tool_calls = { { id = "call_1", type = "function",
        ["function"] = { name = "metrics", arguments = "{}" } } } },
      { role = "tool", tool_call_id = "call_1", content = "p99 latency 870ms on api-gateway" },
      { role = "tool", tool_call_id = "call_2", content = { { type = "text", text = "search: pool exhaustion" } } },
    }, tools = openai_tools("metrics") })
    local text = r.json.choices[1].message.content
    assert.equal("stop", r.json.choices[1].finish_reason)
    assert.truthy(text:find("p99 latency 870ms on api-gateway | search: pool exhaustion", 1, true))
  end)

  it("streams text that adds up to the whole reply, in chunks, ending with [DONE]", function()
    local whole = post(OA, { messages = user("hello") }).json.choices[1].message.content
    local events, err = stream(OA, { messages = user("hello"), stream_options = { include_usage = true } },
                               { ["x-mock-stream"] = "chunk=5" })
    assert.is_nil(err)
    assert.equal("[DONE]", events[#events].data)
    local first = events[1].json.choices[1].delta
    assert.equal("assistant", first.role)
    local text, calls, finish, usage = oa_assemble(events)
    assert.equal(whole, text)
    assert.equal(0, #calls)
    assert.equal("stop", finish)
    assert.is_true(usage.completion_tokens > 0)
    -- Every chunk but the usage one carries usage: null; that one has no choices.
    local usage_chunk = events[#events - 1].json
    assert.same({}, usage_chunk.choices)
    for i = 1, #events - 2 do
      assert.equal("chat.completion.chunk", events[i].json.object)
      assert.equal(json.null, events[i].json.usage)
      local c = events[i].json.choices[1].delta.content
      if type(c) == "string" then assert.is_true(#c <= 5) end
    end
    -- Without include_usage there is no usage at all.
    events = stream(OA, { messages = user("hello") })
    for i = 1, #events - 1 do assert.is_nil(events[i].json.usage) end
  end)

  it("streams tool calls with the id and name on the first delta and the arguments in pieces", function()
    local events = stream(OA, { messages = user("latency is bad again, like before"),
                                tools = openai_tools("metrics", "memory_recall") },
                          { ["x-mock-stream"] = "chunk=3" })
    local _, calls, finish = oa_assemble(events)
    assert.equal("tool_calls", finish)
    assert.equal(2, #calls)
    assert.equal("metrics", calls[1].name)
    assert.equal("memory_recall", calls[2].name)
    assert.same({ query = "latency is bad again, like before" }, json.decode(calls[2].args))
    local pieces = 0
    for _, ev in ipairs(events) do
      local d = ev.json and ev.json.choices and ev.json.choices[1] and ev.json.choices[1].delta
      if d and d.tool_calls and d.tool_calls[1]["function"].arguments ~= "" then pieces = pieces + 1 end
    end
    assert.is_true(pieces > 2 * 4, "arguments come in many pieces")
  end)

  it("cuts the reply at max_tokens with finish_reason length", function()
    local r = post(OA, { messages = user("hello"), max_tokens = 2 })
    assert.equal("length", r.json.choices[1].finish_reason)
    assert.equal(8, #r.json.choices[1].message.content)
    local _, _, finish = oa_assemble(stream(OA, { messages = user("hello"), max_completion_tokens = 2 }))
    assert.equal("length", finish)
  end)

  it("refuses bad requests with an OpenAI error body", function()
    local r = post(OA, { messages = {} })
    assert.equal(400, r.status)
    assert.equal("invalid_request_error", r.json.error.type)
    r = task.run(function()
      return http.request { method = "POST", url = m.base .. OA, body = "{\"messages\": [" }
    end)
    assert.equal(400, r.status)
    assert.truthy(r.json.error.message:match("not valid JSON"))
    r = task.run(function() return http.get(m.base .. OA) end)
    assert.equal(405, r.status)
    r = post(OA, { messages = { { content = "no role" } } })
    assert.equal(400, r.status)
  end)

  it("lists its model", function()
    local r = task.run(function() return http.get(m.base .. "/v1/models") end)
    assert.equal("list", r.json.object)
    assert.equal("mock-1", r.json.data[1].id)
  end)
end)

describe("mockllm Anthropic dialect", function()
  it("answers text with the message shape and usage", function()
    local r = post(AN, { model = "claude-test", max_tokens = 100, system = "be brief",
                         messages = user("hello") }, an_headers())
    assert.equal(200, r.status)
    local j = r.json
    assert.equal("message", j.type)
    assert.truthy(j.id:match("^msg_"))
    assert.equal("claude-test", j.model)
    assert.equal("text", j.content[1].type)
    assert.truthy(j.content[1].text:match("^Hello!"))
    assert.equal("end_turn", j.stop_reason)
    assert.equal(json.null, j.stop_sequence)
    assert.is_true(j.usage.input_tokens > 0 and j.usage.output_tokens > 0)
  end)

  it("answers a latency question with tool_use blocks", function()
    local r = post(AN, { max_tokens = 100, messages = user("p99 latency spiked"),
                         tools = anthropic_tools("metrics", "web_search") }, an_headers())
    local j = r.json
    assert.equal("tool_use", j.stop_reason)
    assert.equal(2, #j.content)
    for i, name in ipairs({ "metrics", "web_search" }) do
      assert.equal("tool_use", j.content[i].type)
      assert.equal(name, j.content[i].name)
      assert.truthy(j.content[i].id:match("^toolu_"))
    end
    assert.same({}, j.content[1].input)
    assert.same({ query = "p99 latency spiked" }, j.content[2].input)
  end)

  it("quotes tool_result content, as a string or as text blocks", function()
    local r = post(AN, { max_tokens = 100, tools = anthropic_tools("metrics", "web_search"), messages = {
      { role = "user", content = { { type = "text", text = "why is it slow?" } } },
      { role = "assistant", content = {
        { type = "tool_use", id = "toolu_1", name = "metrics", input = {} },
        { type = "tool_use", id = "toolu_2", name = "web_search", input = {} } } },
      { role = "user", content = {
        { type = "tool_result", tool_use_id = "toolu_1", content = "cpu at 97% on db-1" },
        { type = "tool_result", tool_use_id = "toolu_2", is_error = true,
          content = { { type = "text", text = "search failed" } } } } },
    } }, an_headers())
    assert.equal("end_turn", r.json.stop_reason)
    assert.truthy(r.json.content[1].text:find("cpu at 97% on db-1 | search failed", 1, true))
  end)

  it("streams the events in order, with a ping, adding up to the whole reply", function()
    local body = { max_tokens = 100, messages = user("was latency this bad before?"),
                   tools = anthropic_tools("metrics", "memory_recall") }
    local events, err = stream(AN, body, an_headers { ["x-mock-stream"] = "chunk=4" })
    assert.is_nil(err)
    local t = types(events)
    assert.equal("message_start", t[1])
    assert.equal("content_block_start", t[2])
    assert.equal("ping", t[3])
    assert.equal("message_delta", t[#t - 1])
    assert.equal("message_stop", t[#t])
    assert.truthy(events[1].json.message.id:match("^msg_"))
    assert.is_true(events[1].json.message.usage.input_tokens > 0)
    local blocks, stop, usage = an_assemble(events)
    assert.equal("tool_use", stop)
    assert.is_true(usage.output_tokens > 0)
    assert.equal(2, #blocks)
    assert.equal("memory_recall", blocks[2].name)
    assert.equal("", blocks[2].parts[1], "the first partial_json is empty")
    assert.same({ query = "was latency this bad before?" }, json.decode(blocks[2].text))

    events = stream(AN, { max_tokens = 100, messages = user("hello") }, an_headers())
    blocks, stop = an_assemble(events)
    assert.equal("end_turn", stop)
    assert.equal("text", blocks[1].type)
    assert.truthy(blocks[1].text:match("^Hello!"))
  end)

  it("cuts the reply at max_tokens with stop_reason max_tokens", function()
    local r = post(AN, { max_tokens = 1, messages = user("hello") }, an_headers())
    assert.equal("max_tokens", r.json.stop_reason)
    assert.equal(4, #r.json.content[1].text)
  end)

  it("refuses requests without anthropic-version or max_tokens", function()
    local r = post(AN, { max_tokens = 10, messages = user("hi") }, { ["x-api-key"] = "k" })
    assert.equal(400, r.status)
    assert.equal("error", r.json.type)
    assert.equal("invalid_request_error", r.json.error.type)
    r = post(AN, { messages = user("hi") }, an_headers())
    assert.equal(400, r.status)
    assert.truthy(r.json.error.message:match("max_tokens"))
  end)
end)

describe("mockllm options and rules", function()
  it("checks the API key in both dialects when given one", function()
    local s <close> = mock.start { api_key = "sekrit" }
    local body = { max_tokens = 10, messages = user("hello") }
    assert.equal(401, post(OA, body, {}, s).status)
    assert.equal("invalid_api_key", post(OA, body, { authorization = "Bearer nope" }, s).json.error.code)
    assert.equal(200, post(OA, body, { authorization = "Bearer sekrit" }, s).status)
    local r = post(AN, body, an_headers(), s)
    assert.equal(401, r.status)
    assert.equal("authentication_error", r.json.error.type)
    assert.equal(200, post(AN, body, an_headers { ["x-api-key"] = "sekrit" }, s).status)
  end)

  it("answers from a rules file: when, match, all, templates and fallthrough", function()
    local s <close> = mock.start { model = "house-model", chunk = 1, rules = { rules = {
      { when = "tool", reply = "tools said {{tool_results}}" },
      { match = { "deploy", "rollback" }, all = { "prod" }, reply = "{{model}} ships {{user}}" },
      { match = "lookup", tool_calls = { { name = "kv", arguments = { key = "{{subject}}", n = 3, deep = { true, json.null } } } } },
      { match = "héllo", reply = "héllo wörld ✓" },
    } } }
    local function text(msgs, tools)
      local r = post(OA, { messages = msgs, tools = tools }, {}, s)
      return r.json.choices[1].message, r.json.model
    end
    local msg, model = text(user("deploy to PROD now"))
    assert.equal("house-model", model)
    assert.equal("house-model ships deploy to PROD now", msg.content)
    assert.equal("I am a mock model and have no rule for that.", text(user("deploy to staging")).content)
    -- A rule whose only calls are to tools not offered does not match.
    assert.equal("I am a mock model and have no rule for that.", text(user("lookup x")).content)
    msg = text(user("lookup x"), openai_tools("kv"))
    assert.same({ key = "lookup x", n = 3, deep = { true, json.null } },
      json.decode(msg.tool_calls[1]["function"].arguments))
    -- chunk=1 never splits a UTF-8 sequence.
    local events = stream(OA, { messages = user("HÉLLO? héllo") }, {}, s)
    local pieces = {}
    for _, ev in ipairs(events) do
      local d = ev.json and ev.json.choices and ev.json.choices[1] and ev.json.choices[1].delta
      if d and type(d.content) == "string" and d.content ~= "" then pieces[#pieces + 1] = d.content end
    end
    assert.equal("héllo wörld ✓", table.concat(pieces))
    assert.equal(utf8.len("héllo wörld ✓"), #pieces)
    for _, p in ipairs(pieces) do assert.equal(1, utf8.len(p)) end
  end)

  it("exits 0 when stopped with a stream in flight", function()
    local s = mock.start { delay_ms = 20 }
    local spec = require "support.spec"
    local ok, err = pcall(task.run, function()
      local t = task.spawn(function()
        for _ in http.sse { method = "POST", url = s.base .. OA,
                            body = json.encode { messages = user("hello"), stream = true },
                            headers = { ["x-mock-stream"] = "chunk=1;delay_ms=1000" } } do
        end
      end)
      assert.is_true(spec.eventually(function() return s:stats().in_flight == 1 end))
      assert.equal(0, s:stop())
      t:join()
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "connect"), tostring(err))
  end)

  it("refuses to start on a bad rules file, saying why", function()
    for _, rules in ipairs({
      { rules = { { matches = "x", reply = "y" } } },
      { rules = { { match = "x" } } },
      { rules = { { when = "system", reply = "y" } } },
      { rules = { { tool_calls = { { arguments = {} } } } } },
      { rules = { { system = 3, reply = "y" } } },
      { nope = true },
    }) do
      local ok, err = pcall(mock.start, { rules = rules })
      assert.is_false(ok)
      assert.truthy(tostring(err):match("rule") or tostring(err):match("rules"), tostring(err))
    end
    local ok, err = pcall(mock.start, { rules_file = "/nonexistent/rules.json" })
    assert.is_false(ok)
    assert.truthy(tostring(err):match("No such file"))
  end)
end)

describe("mockllm answers of a required form", function()
  local srv
  setup(function()
    srv = mock.start { rules = { rules = {
      { system = "weather", match = "Lyon", json = { city = "{{user}}", temp_c = 21 } },
      { system = "weather", json = { city = "somewhere" } },
      { match = "look", tool_calls = { { name = "lookup", arguments = { q = "{{user}}" } } } },
      { reply = "plain" },
    } } }
  end)
  teardown(function() srv:stop() end)

  local SCHEMA = { type = "object", properties = {
    n = { type = "integer", minimum = 3 }, tags = { type = "array", minItems = 2, items = { type = "string", maxLength = 4 } },
    unit = { type = "string", enum = { "c", "f" } }, ok = { type = "boolean" }, none = { type = "null" },
    name = { type = "string", minLength = 3, maxLength = 5 } } }

  it("matches rules on the system prompt of either dialect", function()
    local r = post(OA, { model = "m", messages = { { role = "system", content = "You report the weather." },
      { role = "user", content = "Lyon?" } } }, nil, srv)
    assert.same({ city = "Lyon?", temp_c = 21 }, json.decode(r.json.choices[1].message.content))
    r = post(AN, { model = "m", max_tokens = 50, system = "You report the weather.",
      messages = { { role = "user", content = "Lyon?" } } }, an_headers(), srv)
    assert.same({ city = "Lyon?", temp_c = 21 }, json.decode(r.json.content[1].text))
    r = post(OA, { model = "m", messages = { { role = "user", content = "Lyon?" } } }, nil, srv)
    assert.equal("plain", r.json.choices[1].message.content) -- no system prompt: not the weather rules
  end)

  it("answers a response_format json_schema request with a value generated from the schema", function()
    local r = post(OA, { model = "m", messages = { { role = "user", content = "generate" } },
      response_format = { type = "json_schema", json_schema = { name = "x", schema = SCHEMA } } }, nil, srv)
    local v = json.decode(r.json.choices[1].message.content)
    assert.same({ n = 3, tags = { "gene", "gene" }, unit = "c", ok = true, name = "gener" },
      { n = v.n, tags = v.tags, unit = v.unit, ok = v.ok, name = v.name })
    assert.equal(json.null, v.none)
  end)

  it("answers a forced tool with a call to it, in both dialects, streamed too", function()
    local r = post(AN, { model = "m", max_tokens = 50, messages = { { role = "user", content = "abc" } },
      tools = { { name = "final_answer", input_schema = SCHEMA }, { name = "lookup", input_schema = { type = "object" } } },
      tool_choice = { type = "tool", name = "final_answer" } }, an_headers(), srv)
    assert.equal(1, #r.json.content)
    assert.equal("final_answer", r.json.content[1].name)
    assert.equal(3, r.json.content[1].input.n)
    assert.equal("tool_use", r.json.stop_reason)
    -- "look" matches the lookup rule, but the request forces final_answer
    r = post(OA, { model = "m", messages = { { role = "user", content = "look" } },
      tools = { { type = "function", ["function"] = { name = "lookup", parameters = { type = "object" } } },
                { type = "function", ["function"] = { name = "final_answer", parameters = SCHEMA } } },
      tool_choice = { type = "function", ["function"] = { name = "final_answer" } } }, nil, srv)
    assert.equal("final_answer", r.json.choices[1].message.tool_calls[1]["function"].name)
    -- tool_choice any / required with no rule calls: final_answer when offered
    local events = stream(AN, { model = "m", max_tokens = 50, messages = { { role = "user", content = "zz" } },
      tools = { { name = "lookup", input_schema = { type = "object" } }, { name = "final_answer", input_schema = SCHEMA } },
      tool_choice = { type = "any" } }, an_headers(), srv)
    local started
    for _, ev in ipairs(events) do
      if ev.event == "content_block_start" then started = ev.json.content_block.name end
    end
    assert.equal("final_answer", started)
    r = post(OA, { model = "m", messages = { { role = "user", content = "look" } }, tool_choice = "required",
      tools = { { type = "function", ["function"] = { name = "lookup", parameters = { type = "object" } } } } }, nil, srv)
    assert.equal("lookup", r.json.choices[1].message.tool_calls[1]["function"].name)
  end)
end)

describe("mockllm faults", function()
  before_each(function() m:reset() end)

  it("answers 429 with the retry headers asked for, in both dialects", function()
    local r = post(OA, { messages = user("hello") },
                   { ["x-mock-fault"] = "429;retry_after=2;retry_after_ms=1500;should_retry=false" })
    assert.equal(429, r.status)
    assert.equal("2", r.headers["retry-after"])
    assert.equal("1500", r.headers["retry-after-ms"])
    assert.equal("false", r.headers["x-should-retry"])
    assert.equal("rate_limit_exceeded", r.json.error.code)
    assert.truthy(r.headers["x-request-id"])
    r = post(AN, { max_tokens = 5, messages = user("hello") }, an_headers { ["x-mock-fault"] = "429" })
    assert.equal(429, r.status)
    assert.is_nil(r.headers["retry-after"])
    assert.same("rate_limit_error", r.json.error.type)
    assert.truthy(r.headers["request-id"])
  end)

  it("answers 500 and 529 overloaded", function()
    local r = post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "500" })
    assert.equal(500, r.status)
    assert.equal("server_error", r.json.error.type)
    r = post(AN, { max_tokens = 5, messages = user("hello") }, an_headers { ["x-mock-fault"] = "529" })
    assert.equal(529, r.status)
    assert.same({ type = "error", error = { type = "overloaded_error", message = "Overloaded" } }, r.json)
    r = post(AN, { max_tokens = 5, messages = user("hello") }, an_headers { ["x-mock-fault"] = "500" })
    assert.equal("api_error", r.json.error.type)
  end)

  it("fails only the first N requests with times=N, until a reset", function()
    local h = { ["x-mock-fault"] = "429;times=2" }
    local codes = {}
    for i = 1, 4 do codes[i] = post(OA, { messages = user("hello") }, h).status end
    assert.same({ 429, 429, 200, 200 }, codes)
    -- Another header value counts on its own.
    assert.equal(500, post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "500;times=1" }).status)
    m:reset()
    assert.equal(429, post(OA, { messages = user("hello") }, h).status)
    assert.equal(1, m:stats().faults["429"])
  end)

  it("breaks a stream midway with an error event in both dialects", function()
    local events, err = stream(OA, { messages = user("hello") },
                               { ["x-mock-fault"] = "midstream;after=1", ["x-mock-stream"] = "chunk=4" })
    assert.is_nil(err)
    local text = oa_assemble(events)
    assert.equal(4, #text)
    assert.equal("server_error", events[#events].json.error.type)
    for _, ev in ipairs(events) do assert.are_not.equal("[DONE]", ev.data) end

    events = stream(AN, { max_tokens = 50, messages = user("hello") },
                    an_headers { ["x-mock-fault"] = "midstream" })
    local t = types(events)
    assert.equal("error", t[#t])
    assert.equal("overloaded_error", events[#events].json.error.type)
    local deltas = 0
    for _, name in ipairs(t) do
      assert.are_not.equal("message_stop", name)
      if name == "content_block_delta" then deltas = deltas + 1 end
    end
    assert.equal(2, deltas)
    assert.equal(500, post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "midstream" }).status)
  end)

  it("resets the connection at once, or after some deltas", function()
    local ok, err = pcall(post, OA, { messages = user("hello") }, { ["x-mock-fault"] = "reset" })
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "connect"), tostring(err))
    local events
    events, err = stream(OA, { messages = user("hello") }, { ["x-mock-fault"] = "reset;after=2" })
    assert.is_true(ah.error.is(err, "connect"), tostring(err))
    assert.is_true(#events <= 3)
    ok, err = pcall(post, OA, { messages = user("hello") }, { ["x-mock-fault"] = "reset;after=1" })
    assert.is_false(ok)
    -- libcurl sends a request again, once, when a connection it reused dies
    -- before any byte of the response: the first reset may count twice.
    local resets = m:stats().faults.reset
    assert.is_true(resets == 3 or resets == 4, "resets: " .. resets)
    -- The server is fine afterwards.
    assert.equal(200, post(OA, { messages = user("hello") }).status)
  end)

  it("sends malformed JSON, whole and in a stream", function()
    local r = post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "malformed" })
    assert.equal(200, r.status)
    assert.is_nil(r.json)
    assert.truthy(r.json_error)
    for _, path in ipairs({ OA, AN }) do
      local events = stream(path, { max_tokens = 50, messages = user("hello") },
                            an_headers { ["x-mock-fault"] = "malformed" })
      local bad = 0
      for _, ev in ipairs(events) do
        if ev.data ~= "[DONE]" and ev.json == nil then bad = bad + 1 end
      end
      assert.equal(1, bad)
      assert.truthy(events[#events].data == "[DONE]" or events[#events].event == "message_stop")
    end
  end)

  it("delays the first byte past a client's timeout", function()
    local ok, err = pcall(post, OA, { messages = user("hello") }, { ["x-mock-fault"] = "slow;ms=5000" },
                          nil, { timeout = 0.2 })
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "timeout"), tostring(err))
    assert.equal(1, m:stats().faults.slow)
    -- A short delay is only a delay, here set per request.
    local r = post(OA, { messages = user("hello") }, { ["x-mock-stream"] = "first_byte_ms=20" })
    assert.equal(200, r.status)
  end)

  it("gives tool calls whose arguments are not JSON", function()
    local r = post(OA, { messages = user("latency?"), tools = openai_tools("metrics") },
                   { ["x-mock-fault"] = "bad_args" })
    local args = r.json.choices[1].message.tool_calls[1]["function"].arguments
    assert.is_string(args)
    assert.is_false(pcall(json.decode, args))
    -- A text reply gets a call to the first offered tool.
    r = post(AN, { max_tokens = 50, messages = user("hello"), tools = anthropic_tools("notes") },
             an_headers { ["x-mock-fault"] = "bad_args" })
    assert.equal("tool_use", r.json.stop_reason)
    assert.equal("notes", r.json.content[2].name)
    assert.is_string(r.json.content[2].input)
    local blocks = an_assemble(stream(AN, { max_tokens = 50, messages = user("slow api"),
                                            tools = anthropic_tools("metrics") },
                                      an_headers { ["x-mock-fault"] = "bad_args" }))
    assert.equal("metrics", blocks[1].name)
    assert.is_false(pcall(json.decode, blocks[1].text))
  end)

  it("refuses an unknown fault or pacing header", function()
    local r = post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "explode" })
    assert.equal(400, r.status)
    r = post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "429;times=x" })
    assert.equal(400, r.status)
    r = post(OA, { messages = user("hello") }, { ["x-mock-stream"] = "chunk=0" })
    assert.equal(400, r.status)
    assert.equal(0, m:stats().faults.total)
  end)
end)

describe("mockllm /search", function()
  local function search(q, extra, headers)
    return task.run(function()
      local url = m.base .. "/search?format=json&q=" .. q .. (extra or "")
      return http.request { url = url, headers = headers }
    end)
  end

  it("gives the same SearxNG-shaped results for the same query", function()
    local a, b = search("db+pool+latency"), search("db+pool+latency")
    assert.equal(200, a.status)
    assert.equal(a.body, b.body)
    assert.equal("db pool latency", a.json.query)
    assert.equal(5, #a.json.results)
    for _, res in ipairs(a.json.results) do
      assert.truthy(res.url:match("^https://[%w.]+example%.com/"))
      assert.truthy(res.content:find("db pool latency", 1, true))
      assert.is_string(res.title)
    end
    assert.are_not.equal(a.body, search("cache+misses").body)
    assert.equal(2, #search("x", "&count=2").json.results)
  end)

  it("refuses a missing query and takes faults", function()
    assert.equal(400, search("").status)
    assert.equal(400, search("x", "&count=99").status)
    assert.equal(429, search("x", nil, { ["x-mock-fault"] = "429;retry_after=1" }).status)
    assert.truthy(search("x", nil, { ["x-mock-fault"] = "malformed" }).json_error)
  end)
end)

describe("mockllm /stats, /reset and /last", function()
  it("counts requests per endpoint, streams and faults, and zeroes them on reset", function()
    m:reset()
    post(OA, { messages = user("hello") })
    post(AN, { max_tokens = 5, messages = user("hello") }, an_headers())
    stream(OA, { messages = user("hello") })
    post(OA, { messages = user("hello") }, { ["x-mock-fault"] = "500" })
    task.run(function() http.get(m.base .. "/search?q=a") end)
    local s = m:stats()
    assert.same({ total = 5, chat_completions = 3, messages = 1, search = 1, models = 0 }, s.requests)
    assert.equal(1, s.streams)
    assert.equal(1, s.faults.total)
    assert.equal(1, s.faults["500"])
    assert.equal(0, s.in_flight)
    assert.equal(1, s.max_in_flight)
    m:reset()
    s = m:stats()
    assert.equal(0, s.requests.total)
    assert.equal(0, s.faults.total)
    assert.equal(0, s.max_in_flight)
  end)

  it("counts the requests in flight and their high-water mark", function()
    m:reset()
    local n = 8
    task.run(function()
      local tasks = {}
      for i = 1, n do
        tasks[i] = task.spawn(function()
          http.request { method = "POST", url = m.base .. OA, json = { messages = user("hello") },
                         headers = { ["x-mock-fault"] = "slow;ms=30000" } }
        end)
      end
      local spec = require "support.spec"
      assert.is_true(spec.eventually(function() return m:stats().in_flight == n end))
      for _, t in ipairs(tasks) do t:cancel() end
      assert.is_true(spec.eventually(function() return m:stats().in_flight == 0 end))
    end)
    local s = m:stats()
    assert.equal(n, s.max_in_flight)
    assert.equal(n, s.faults.slow)
  end)

  it("keeps the last chat request", function()
    post(AN, { max_tokens = 7, system = "sys", messages = user("remember me") }, an_headers())
    local last = m:last()
    assert.equal("/v1/messages", last.path)
    assert.equal("2023-06-01", last.headers["anthropic-version"])
    local body = json.decode(last.body)
    assert.equal("sys", body.system)
    assert.equal(7, body.max_tokens)
  end)
end)
