-- agenthost.llm: requests in each dialect's wire format, replies (plain and
-- streamed) from canned fixtures, retries and their delays, and the shared
-- limits.  End-to-end cases run against the HTTP test server
-- (tests/support/httpd.c), which serves a canned stream with /sse?raw= and
-- faults with /status/CODE, /reset and /delay, and against the mock LLM
-- server (tests/support/mockllm.c): both dialects, streamed and not, every
-- fault it injects, and the limits as the server sees them.
--
-- Retry delays and rate-limit waits run on a virtual clock
-- (tests/support/vclock.lua): the specs check the delays the provider
-- computes instead of spending them.  A few cases keep the loop clock, to
-- show that a provider given no clock really waits and that a cancel
-- stops the wait.

local ah = require "agenthost"
local json = require("agenthost").json
local httpd = require "support.httpd"
local fx = require "support.llm_fixtures"
local vclock = require "support.vclock"
local spec = require "support.spec"
local llm = ah.llm
local task = ah.task

local srv

setup(function() srv = httpd.start() end)
teardown(function() if srv then srv:stop() end end)

local run = task.run

-- A provider whose every request gets `reply` (a canned body or stream).
local function canned(kind, reply, opts)
  local o = { kind = kind, model = "m", api_key = "k",
              endpoint = srv.url("/sse?raw=" .. fx.query(reply)) }
  for k, v in pairs(opts or {}) do o[k] = v end
  return llm.provider(o)
end

local function at(path, kind, opts)
  local o = { kind = kind or "openai", model = "m", api_key = "k", endpoint = srv.url(path) }
  for k, v in pairs(opts or {}) do o[k] = v end
  return llm.provider(o)
end

-- Whether d is the backoff before retry number `attempt` (retry.backoff:
-- 0.5 s doubling, less up to a quarter of jitter).
local function is_backoff(d, attempt)
  local full = llm.retry.INITIAL_DELAY * 2 ^ (attempt - 1)
  return type(d) == "number" and d >= 0.75 * full and d <= full
end

local function fails(kind, fn)
  local ok, err = pcall(run, fn)
  assert.is_false(ok, "expected a " .. kind .. " error")
  assert.is_true(ah.error.is(err, kind), "expected kind " .. kind .. ", got " .. tostring(err))
  return err
end

local function server_requests()
  return run(function() return ah.http.get(srv.url("/stats")).json.requests end)
end

local user = { { role = "user", content = "hi" } }

local history = {
  { role = "system", content = "Be brief." },
  { role = "user", content = "How is p99?" },
  { role = "assistant", content = "", tool_calls = {
    { id = "c1", name = "metrics", arguments = { query = "p99" } },
    { id = "c2", name = "now", arguments = {} } } },
  { role = "tool", tool_call_id = "c1", content = { p99 = 120 } },
  { role = "tool", tool_call_id = "c2", content = "clock broken", is_error = true },
  { role = "user", content = "And now?" },
}

local tools = {
  { name = "metrics", description = "Reads a metric",
    parameters = { type = "object", properties = { query = { type = "string" } }, required = { "query" } } },
  { name = "now", description = "The time", parameters = { type = "object", properties = {}, required = {} } },
}

describe("agenthost.llm requests", function()
  it("are OpenAI chat completions: system first, calls with content null, tool messages", function()
    local p = llm.provider { kind = "openai", model = "gpt-x", api_key = "sk-1", base_url = "http://h/v1/" }
    assert.equal("http://h/v1/chat/completions", p.url)
    assert.equal("Bearer sk-1", p.headers.authorization)
    assert.equal("application/json", p.headers["content-type"])
    assert.is_nil(llm.provider { kind = "openai", api_key = "" }.headers.authorization)
    assert.is_nil(llm.provider { kind = "anthropic", api_key = "" }.headers["x-api-key"])
    local body = llm.dialects.openai.request(p, { system = "Top.", messages = history, tools = tools,
      tool_choice = { name = "metrics" }, temperature = 0.5, max_tokens = 99, stream = true })
    local wire = json.decode(json.encode(body))
    assert.equal("gpt-x", wire.model)
    assert.same({ role = "system", content = "Top." }, wire.messages[1])
    assert.same({ role = "system", content = "Be brief." }, wire.messages[2])
    local a = wire.messages[4]
    assert.equal("assistant", a.role)
    assert.equal(json.null, a.content)
    assert.same({ id = "c1", type = "function", ["function"] = { name = "metrics", arguments = '{"query":"p99"}' } },
      a.tool_calls[1])
    assert.equal("{}", a.tool_calls[2]["function"].arguments)
    assert.same({ role = "tool", tool_call_id = "c1", content = '{"p99":120}' }, wire.messages[5])
    assert.same({ role = "tool", tool_call_id = "c2", content = "clock broken" }, wire.messages[6])
    assert.same({ role = "user", content = "And now?" }, wire.messages[7])
    assert.same({ type = "function", ["function"] = { name = "metrics", description = "Reads a metric",
      parameters = { type = "object", properties = { query = { type = "string" } }, required = { "query" } } } },
      wire.tools[1])
    -- an empty `required` would encode as an object: it is left out
    assert.is_nil(wire.tools[2]["function"].parameters.required)
    assert.same({ type = "function", ["function"] = { name = "metrics" } }, wire.tool_choice)
    assert.equal(0.5, wire.temperature)
    assert.equal(99, wire.max_tokens)
    assert.is_true(wire.stream)
    assert.same({ include_usage = true }, wire.stream_options)
    for choice, want in pairs { auto = "auto", none = "none", required = "required", any = "required" } do
      assert.equal(want, llm.dialects.openai.request(p, { messages = user, tools = tools, tool_choice = choice }).tool_choice)
    end
    local plain = llm.dialects.openai.request(p, { messages = user })
    assert.is_nil(plain.stream)
    assert.is_nil(plain.tools)
    assert.is_nil(plain.tool_choice)
  end)

  it("are Anthropic messages: top-level system, tool_use, tool_result in a user turn", function()
    local p = llm.provider { kind = "anthropic", model = "claude-x", api_key = "ak-1", base_url = "http://h" }
    assert.equal("http://h/v1/messages", p.url)
    assert.equal("ak-1", p.headers["x-api-key"])
    assert.equal("2023-06-01", p.headers["anthropic-version"])
    assert.is_nil(p.headers.authorization)
    local body = llm.dialects.anthropic.request(p, { system = "Top.", messages = history, tools = tools,
      tool_choice = "required", stream = true })
    local wire = json.decode(json.encode(body))
    assert.equal("claude-x", wire.model)
    assert.equal(1024, wire.max_tokens)
    assert.equal("Top.\n\nBe brief.", wire.system)
    assert.equal(3, #wire.messages)
    assert.same({ role = "user", content = { { type = "text", text = "How is p99?" } } }, wire.messages[1])
    assert.same({ role = "assistant", content = {
      { type = "tool_use", id = "c1", name = "metrics", input = { query = "p99" } },
      { type = "tool_use", id = "c2", name = "now", input = {} } } }, wire.messages[2])
    assert.same({ role = "user", content = {
      { type = "tool_result", tool_use_id = "c1", content = '{"p99":120}' },
      { type = "tool_result", tool_use_id = "c2", content = "clock broken", is_error = true },
      { type = "text", text = "And now?" } } }, wire.messages[3])
    assert.same({ name = "metrics", description = "Reads a metric",
      input_schema = { type = "object", properties = { query = { type = "string" } }, required = { "query" } } },
      wire.tools[1])
    assert.same({ type = "any" }, wire.tool_choice)
    assert.is_true(wire.stream)
    assert.is_nil(wire.stream_options)
    local function choice(c, parallel)
      return llm.dialects.anthropic.request(p, { messages = user, tools = tools, tool_choice = c,
                                                 parallel_tool_calls = parallel }).tool_choice
    end
    assert.same({ type = "auto" }, choice("auto"))
    assert.same({ type = "none" }, choice("none"))
    assert.same({ type = "tool", name = "now" }, choice({ name = "now" }))
    assert.same({ type = "auto", disable_parallel_tool_use = true }, choice(nil, false))
    assert.is_nil(choice(nil))
    assert.equal(50, llm.dialects.anthropic.request(p, { messages = user, max_tokens = 50 }).max_tokens)
    -- the empty JSON object of a tool without arguments stays an object
    assert.matches('"input":{}', json.encode(body), 1, true)
  end)

  for _, kind in ipairs { "openai", "anthropic" } do
    it("carry the numbers of tool calls and results to the model exactly (" .. kind .. ")", function()
      local common = require "agenthost.llm.common"
      local p = llm.provider { kind = kind, model = "m", api_key = "k", base_url = "http://h" }
      local args = { order = 1234567890123456789, ratio = 0.1 + 0.2, whole = 71.0, n = 71 }
      local body = llm.dialects[kind].request(p, { messages = {
        { role = "user", content = "go" },
        { role = "assistant", content = "", tool_calls = { { id = "c1", name = "t", arguments = args } } },
        { role = "tool", tool_call_id = "c1", content = args },
      } })
      -- what chat sends: common.encode of the dialect's body
      local text = common.encode(body)
      for _, digits in ipairs { "1234567890123456789", "0.30000000000000004", "71.0" } do
        assert.truthy(text:find(digits, 1, true), digits .. " in " .. text)
      end
      local wire = ah.json.decode(text)
      local sent_args, sent_result
      if kind == "openai" then
        sent_args = ah.json.decode(wire.messages[2].tool_calls[1]["function"].arguments)
        sent_result = ah.json.decode(wire.messages[3].content)
      else
        sent_args = wire.messages[2].content[1].input
        sent_result = ah.json.decode(wire.messages[3].content[1].content)
      end
      for k, want in pairs(args) do
        for what, got in pairs { arguments = sent_args, result = sent_result } do
          assert.equal(want, got[k], what .. "." .. k)
          assert.equal(math.type(want), math.type(got[k]), what .. "." .. k)
        end
      end
    end)
  end

  it("are refused with invalid_argument when malformed, pointing at the caller", function()
    local p = llm.provider { kind = "openai", model = "m" }
    local function refused(req, pattern)
      local err = fails("invalid_argument", function() p:chat(req) end)
      assert.matches(pattern, err.message)
      return err
    end
    refused({}, "messages must be a non%-empty array")
    refused({ messages = { { content = "x" } } }, "messages%[1%] must be a table with a role")
    refused({ messages = { { role = "robot", content = "x" } } }, "role must be system, user, assistant or tool")
    refused({ messages = { { role = "tool", content = "x" } } }, "needs tool_call_id")
    refused({ messages = user, tool_choice = 3 }, "tool_choice must be")
    refused({ messages = user, stream = "yes" }, "stream must be a function")
    refused({ messages = user, tools = { {} } }, "tools%[1%] must be a table with a name")
    local nomodel = llm.provider { kind = "anthropic" }
    local err = fails("invalid_argument", function() nomodel:chat { messages = user } end)
    assert.matches("no model", err.message)
    for _, bad in ipairs {
      { kind = "gemini" }, { kind = "openai", max_retries = -1 }, { kind = "openai", max_concurrency = 0 },
      { kind = "openai", timeout = 0 }, { kind = "openai", base_url = 5 }, { kind = "openai", headers = "x" },
      { kind = "openai", sleep = 1 }, { kind = "openai", clock = {} },
    } do
      local ok, e = pcall(llm.provider, bad)
      assert.is_false(ok)
      assert.is_true(ah.error.is(e, "invalid_argument"), tostring(e))
    end
  end)
end)

describe("agenthost.llm replies", function()
  local function decode(kind, text)
    return llm.dialects[kind].decode(json.decode(text), "POST x")
  end

  local function feed(kind, text, deltas)
    local st = llm.dialects[kind].stream("POST x")
    for _, ev in ipairs(ah.http.sse_parser():feed(text)) do
      local d = st:feed(ev)
      if d and deltas then deltas[#deltas + 1] = d end
    end
    return st:finish(), st
  end

  for _, kind in ipairs { "openai", "anthropic" } do
    it("reads a " .. kind .. " text reply", function()
      local r = decode(kind, fx[kind].text)
      assert.equal("Hello there", r.text)
      assert.equal("stop", r.finish)
      assert.same({}, r.tool_calls)
      assert.equal(12, r.usage.input_tokens)
      assert.equal(3, r.usage.output_tokens)
      assert.equal("integer", math.type(r.usage.input_tokens))
      assert.is_table(r.raw)
    end)

    it("reads " .. kind .. " parallel tool calls, keeping arguments that are not JSON as raw text", function()
      local r = decode(kind, fx[kind].tools)
      assert.equal("tool_calls", r.finish)
      local a, b = r.tool_calls[1], r.tool_calls[2]
      assert.equal("metrics", a.name)
      assert.same({ query = "p99" }, a.arguments)
      assert.is_nil(a.error)
      assert.equal("web_search", b.name)
      assert.is_nil(b.arguments)
      assert.equal('{"query":', b.raw_arguments)
      assert.matches("not valid JSON", b.error)
    end)

    it("reassembles a " .. kind .. " stream: text deltas in order, parallel calls, usage, unknown events", function()
      local deltas = {}
      local r = feed(kind, fx[kind].stream, deltas)
      assert.same({ "Let me ", "check." }, deltas)
      assert.equal("Let me check.", r.text)
      assert.equal("tool_calls", r.finish)
      assert.equal(2, #r.tool_calls)
      assert.equal("metrics", r.tool_calls[1].name)
      assert.same({ query = "p99" }, r.tool_calls[1].arguments)
      assert.equal(30, r.usage.input_tokens)
      assert.equal(11, r.usage.output_tokens)
      assert.is_true(#r.raw > 3)
    end)

    it("raises a " .. kind .. " error event as a structured error", function()
      local st = llm.dialects[kind].stream("POST x")
      local ok, err = pcall(function()
        for _, ev in ipairs(ah.http.sse_parser():feed(fx[kind].stream_error)) do st:feed(ev) end
      end)
      assert.is_false(ok)
      assert.is_true(st.started)
      assert.is_true(err.retryable)
      if kind == "anthropic" then
        assert.is_true(ah.error.is(err, "overloaded"))
        assert.equal("overloaded_error", err.type)
      else
        assert.is_true(ah.error.is(err, "http"))
        assert.equal(500, err.status)
      end
    end)
  end

  it("makes up ids unique across replies for tool calls that came without one", function()
    local openai = ah.llm.dialects.openai
    local body = { choices = { { message = { tool_calls = {
      { type = "function", ["function"] = { name = "a", arguments = "{}" } },
      { type = "function", ["function"] = { name = "b", arguments = "{}" } } } },
      finish_reason = "tool_calls" } } }
    local r1, r2 = openai.decode(body, "test"), openai.decode(body, "test")
    local seen = {}
    for _, r in ipairs { r1, r2 } do
      for _, c in ipairs(r.tool_calls) do
        assert.is_nil(seen[c.id], "id " .. c.id .. " repeats")
        seen[c.id] = true
      end
    end
  end)

  it("tolerates OpenAI streams without usage, and tools without arguments", function()
    local r = feed("openai", fx.openai.stream_no_usage)
    assert.equal("ok", r.text)
    assert.equal("stop", r.finish)
    assert.same({}, r.usage)
    local s = feed("openai", fx.openai.stream)
    assert.equal("call_2", s.tool_calls[2].id)
    assert.same({ query = "latency" }, s.tool_calls[2].arguments)
    local a = feed("anthropic", fx.anthropic.stream)
    assert.equal("now", a.tool_calls[2].name)
    assert.same({}, a.tool_calls[2].arguments)
    assert.equal("toolu_2", a.tool_calls[2].id)
  end)

  it("starts a new call when a server reuses an index with another id", function()
    local r = feed("openai", fx.sse {
      [[{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"x","arguments":"{}"}}]}}]}]],
      [[{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"b","function":{"name":"y","arguments":"{\"n\":1}"}}]}}]}]],
      [[{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}]],
      "[DONE]" })
    assert.equal(2, #r.tool_calls)
    assert.equal("y", r.tool_calls[2].name)
    assert.same({ n = 1 }, r.tool_calls[2].arguments)
    -- a server that says "stop" with calls still ends in tool_calls
    assert.equal("tool_calls", r.finish)
    assert.equal("stop", r.finish_reason)
  end)

  it("turns streamed arguments that are not JSON into a call with an error", function()
    local r = feed("anthropic", fx.anthropic.stream_bad_json)
    assert.equal(1, #r.tool_calls)
    assert.equal('{"query": ', r.tool_calls[1].raw_arguments)
    assert.is_string(r.tool_calls[1].error)
    assert.is_nil(r.tool_calls[1].arguments)
  end)

  it("maps finish reasons and refuses streams cut short", function()
    local function reason(kind, text) return decode(kind, text).finish end
    assert.equal("length", reason("openai", fx.openai.text:gsub('"stop"', '"length"')))
    assert.equal("error", reason("openai", fx.openai.text:gsub('"stop"', '"content_filter"')))
    assert.equal("length", reason("anthropic", fx.anthropic.text:gsub('"end_turn"', '"max_tokens"')))
    assert.equal("stop", reason("anthropic", fx.anthropic.text:gsub('"end_turn"', '"stop_sequence"')))
    local ok, err = pcall(feed, "openai", fx.openai.stream_cut)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "protocol"))
    assert.is_true(err.retryable)
    local st = llm.dialects.openai.stream("POST x")
    local ok2, err2 = pcall(st.feed, st, { data = "{not json" })
    assert.is_false(ok2)
    assert.is_true(ah.error.is(err2, "protocol"))
  end)
end)

describe("agenthost.llm over HTTP", function()
  for _, kind in ipairs { "openai", "anthropic" } do
    it("chats with " .. kind .. ", streamed and not, to the same result", function()
      local plain, streamed, deltas = run(function()
        local deltas = {}
        local a = canned(kind, fx[kind].tools):chat { messages = user, tools = tools }
        local b = canned(kind, fx[kind].stream):chat { messages = user, tools = tools,
          stream = function(d) deltas[#deltas + 1] = d end }
        return a, b, deltas
      end)
      assert.equal("tool_calls", plain.finish)
      assert.equal(1, plain.attempts)
      assert.equal("Let me check.", table.concat(deltas))
      assert.equal(streamed.text, table.concat(deltas))
      assert.equal("metrics", streamed.tool_calls[1].name)
      assert.same(plain.tool_calls[1].arguments, streamed.tool_calls[1].arguments)
    end)

    it("raises a " .. kind .. " error mid-stream after the first delta, without retrying", function()
      local before = server_requests()
      local deltas = {}
      local err = fails(kind == "anthropic" and "overloaded" or "http", function()
        canned(kind, fx[kind].stream_error):chat { messages = user, stream = function(d) deltas[#deltas + 1] = d end }
      end)
      assert.is_true(err.partial)
      assert.equal(1, err.attempts)
      assert.same({ "Hel" }, deltas)
      assert.equal(1, server_requests() - before - 1)
    end)

    it("retries a " .. kind .. " error event that comes before any content", function()
      local before = server_requests()
      local retries = {}
      local vc = vclock.new()
      local err = fails(kind == "anthropic" and "overloaded" or "http", function()
        canned(kind, fx[kind].stream_error_first, {
          max_retries = 1, on_retry = function(e, n, d) retries[#retries + 1] = { e, n, d } end,
          clock = vc.clock, sleep = vc.sleep,
        }):chat { messages = user, stream = true }
      end)
      assert.is_nil(err.partial)
      assert.equal(2, err.attempts)
      assert.equal(1, #retries)
      assert.equal(1, retries[1][2])
      assert.is_true(is_backoff(retries[1][3], 1), "delay " .. tostring(retries[1][3]))
      assert.same({ retries[1][3] }, vc.slept)
      assert.equal(2, server_requests() - before - 1)
    end)
  end

  it("calls a stream function with nothing but text deltas, and stops at its error", function()
    local err = fails("invalid_argument", function()
      canned("openai", fx.openai.stream):chat { messages = user, stream = function()
        error(ah.error.new("invalid_argument", "consumer gave up"))
      end }
    end)
    assert.matches("consumer gave up", err.message)
    assert.is_nil(err.partial)
  end)

  it("honours retry-after (timed with the provider's clock) and counts attempts", function()
    local before = server_requests()
    local vc = vclock.new()
    local elapsed, err, delays = run(function()
      local delays = {}
      local p = at("/status/429", "anthropic", { max_retries = 2,
        on_retry = function(_, _, d) delays[#delays + 1] = d end, clock = vc.clock, sleep = vc.sleep })
      local t0 = vc.clock()
      local ok, e = pcall(p.chat, p, { messages = user })
      assert(not ok)
      return vc.clock() - t0, e, delays
    end)
    assert.is_true(ah.error.is(err, "rate_limited"), tostring(err))
    assert.equal(429, err.status)
    assert.equal(3, err.attempts)
    assert.same({ 1, 1 }, delays)
    assert.same({ 1, 1 }, vc.slept)
    assert.is_true(elapsed >= 2, "two retries after retry-after: 1 took only " .. elapsed .. " s")
    assert.equal(3, server_requests() - before - 1)
  end)

  it("retries 5xx with backoff and gives up after max_retries", function()
    for _, case in ipairs { { 500, "http" }, { 503, "http" }, { 529, "overloaded" }, { 408, "http" }, { 409, "http" } } do
      local before = server_requests()
      local vc = vclock.new()
      local err = fails(case[2], function()
        at("/status/" .. case[1], "openai", { max_retries = 1, clock = vc.clock, sleep = vc.sleep })
          :chat { messages = user, stream = true }
      end)
      assert.equal(case[1], err.status)
      assert.is_true(err.retryable)
      assert.equal(2, err.attempts)
      assert.equal(2, server_requests() - before - 1)
      assert.equal(1, #vc.slept)
      if case[1] == 503 then
        -- The test server sends retry-after: 1 with a 503.
        assert.equal(1, vc.slept[1])
      else
        assert.is_true(is_backoff(vc.slept[1], 1), case[1] .. " waited " .. tostring(vc.slept[1]))
      end
    end
  end)

  it("does not retry other statuses, and says what the server said", function()
    for _, status in ipairs { 400, 401, 404, 422 } do
      local before = server_requests()
      local err = fails("http", function() at("/status/" .. status):chat { messages = user } end)
      assert.equal(status, err.status)
      assert.is_false(err.retryable)
      assert.equal(1, err.attempts)
      assert.matches("status " .. status, err.message)
      assert.equal(1, server_requests() - before - 1)
    end
  end)

  it("retries a reset connection and a timeout, then raises them", function()
    local vc = vclock.new()
    local err = fails("connect", function()
      at("/reset", "openai", { max_retries = 1, clock = vc.clock, sleep = vc.sleep }):chat { messages = user }
    end)
    assert.equal(2, err.attempts)
    assert.equal(1, #vc.slept)
    assert.is_true(is_backoff(vc.slept[1], 1))
    local before = server_requests()
    local tc = vclock.new()
    local terr = fails("timeout", function()
      at("/delay?ms=3000", "anthropic", { max_retries = 1, timeout = 0.2, clock = tc.clock, sleep = tc.sleep })
        :chat { messages = user, stream = true }
    end)
    assert.equal(2, terr.attempts)
    assert.equal(1, #tc.slept)
    assert.is_true(is_backoff(tc.slept[1], 1))
    assert.equal(2, server_requests() - before - 1)
    fails("connect", function()
      llm.provider { kind = "openai", model = "m", base_url = "http://127.0.0.1:1", max_retries = 0 }:chat { messages = user }
    end)
  end)

  it("raises protocol errors for replies that are not JSON or not a completion", function()
    local err = fails("protocol", function() canned("openai", "{truncated"):chat { messages = user } end)
    assert.is_false(err.retryable)
    fails("protocol", function() canned("anthropic", "[1,2]"):chat { messages = user } end)
    fails("protocol", function() canned("openai", '{"object":"list"}'):chat { messages = user } end)
    local e2 = fails("rate_limited", function()
      canned("openai", '{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}',
        { max_retries = 0 }):chat { messages = user }
    end)
    assert.matches("slow down", e2.message)
  end)

  it("stops at once when its task is cancelled, retry waits included", function()
    run(function()
      -- The provider waits with task.sleep (no sleep given): the cancel
      -- comes while it waits out the first retry-after (1 s).
      local retrying = task.event()
      local p = at("/status/429", "openai", { max_retries = 5, on_retry = function() retrying:set() end })
      local h = task.spawn(function() return p:chat { messages = user } end)
      retrying:wait()
      assert.equal("waiting", h:status())
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.equal(0, p:stats().in_flight)
      -- A wait the cancel did not stop would have ended in a second
      -- request, counted before it is sent.
      assert.equal(1, p:stats().requests)
      assert.equal(1, p:stats().retries)
    end)
  end)
end)

describe("agenthost.llm.retry", function()
  local retry = llm.retry

  it("retries 408, 409, 429 and 5xx unless x-should-retry says otherwise", function()
    for _, s in ipairs { 408, 409, 429, 500, 502, 503, 504, 529 } do assert.is_true(retry.should_retry(s, {})) end
    for _, s in ipairs { 400, 401, 403, 404, 413, 422 } do assert.is_false(retry.should_retry(s, {})) end
    assert.is_false(retry.should_retry(503, { ["x-should-retry"] = "false" }))
    assert.is_true(retry.should_retry(400, { ["x-should-retry"] = "true" }))
  end)

  it("reads retry-after-ms, then retry-after in seconds or as an HTTP date, between 0 and 60 s", function()
    assert.equal(0.25, retry.retry_after { ["retry-after-ms"] = "250", ["retry-after"] = "9" })
    assert.equal(9, retry.retry_after { ["retry-after"] = "9" })
    assert.equal(1.5, retry.retry_after { ["retry-after"] = "1.5" })
    assert.equal(0, retry.retry_after { ["retry-after"] = "0" })
    assert.is_nil(retry.retry_after { ["retry-after"] = "61" })
    assert.is_nil(retry.retry_after { ["retry-after"] = "-1" })
    assert.is_nil(retry.retry_after { ["retry-after"] = "soon" })
    assert.is_nil(retry.retry_after {})
    local now = retry.http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    assert.equal(784111777, now)
    assert.equal(30, retry.retry_after({ ["retry-after"] = "Sun, 06 Nov 1994 08:50:07 GMT" }, now))
    assert.is_nil(retry.retry_after({ ["retry-after"] = "Sun, 06 Nov 1994 09:50:07 GMT" }, now))
  end)

  it("backs off from 0.5 s doubling to 8 s, with up to a quarter of jitter", function()
    assert.equal(0.5, retry.backoff(1, function() return 0 end))
    assert.equal(0.375, retry.backoff(1, function() return 1 end))
    assert.equal(2, retry.backoff(3, function() return 0 end))
    assert.equal(8, retry.backoff(5, function() return 0 end))
    assert.equal(8, retry.backoff(12, function() return 0 end))
    for attempt = 1, 8 do
      local d = retry.delay(attempt, nil)
      assert.is_true(d >= 0.375 * 2 ^ math.min(attempt - 1, 4) and d <= 0.5 * 2 ^ math.min(attempt - 1, 4))
    end
  end)
end)

describe("agenthost.llm.limits", function()
  local limits = llm.limits

  it("never lets more than max_concurrency requests be in flight", function()
    local peak = run(function()
      local l = limits.new { max_concurrency = 3 }
      local now, peak = 0, 0
      local items = {}
      for i = 1, 40 do items[i] = i end
      task.map(items, function()
        local permit <close> = l:acquire(1)
        now = now + 1
        peak = math.max(peak, now)
        task.sleep(0.001)
        now = now - 1
      end)
      assert.equal(0, l.in_flight)
      return peak
    end)
    assert.equal(3, peak)
  end)

  it("gives back what a cancelled waiter held, permits and the bucket's queue", function()
    run(function()
      local vc = vclock.new { manual = true }
      local l = limits.new { max_concurrency = 1, requests_per_minute = 60, clock = vc.clock, sleep = vc.sleep }
      local first = l:acquire(1)
      local waiting = task.spawn(function() local p <close> = l:acquire(1) end)
      task.yield()
      waiting:cancel()
      assert.is_true(ah.error.is(select(2, waiting:result()), "cancelled"))
      getmetatable(first).__close(first)
      assert.equal(0, l.in_flight)
      assert.equal(1, l.sem:available())
      -- A waiter for the empty bucket (60 a minute: one a second) is
      -- cancelled while it sleeps; the next one still gets its turn.
      l.rpm.level, l.rpm.stamp = 0, vc.clock()
      local emptied = l.rpm.stamp
      local sleeper = task.spawn(function() local p <close> = l:acquire(1) end)
      spec.settle(function() return vc:sleeping() == 1 end)
      assert.same({ 1 }, vc.slept)
      sleeper:cancel()
      assert.is_false((sleeper:result()))
      assert.equal(0, vc:sleeping())
      assert.equal(1, l.sem:available())
      assert.equal(1, l.rpm.lock:available())
      -- The next waiter sleeps out what is left of the second, and no more.
      local next_one = task.spawn(function() local p <close> = l:acquire(1) return vc.clock() end)
      spec.settle(function() return vc:sleeping() == 1 end)
      vc:advance(0.5)
      task.yield()
      assert.is_false(next_one:done())
      vc:advance(0.5)
      local got = next_one:join()
      assert.is_true(got - emptied >= 1 - 1e-3)
      assert.equal(1, l.sem:available())
    end)
  end)

  -- The bucket's waits, on a virtual clock (exactly what it asks for) and
  -- on the loop clock (that task.sleep really waits it), 10 times faster
  -- there.
  for _, how in ipairs { "virtual", "loop" } do
    it("spaces requests to requests_per_minute once the bucket is empty (" .. how .. " clock)", function()
      run(function()
        local vc = how == "virtual" and vclock.new() or nil
        local clock = vc and vc.clock or ah.clock
        local rpm = vc and 600 or 6000 -- 10 (100) a second, 600 (6000) at once
        local l = limits.new { requests_per_minute = rpm, clock = vc and vc.clock, sleep = vc and vc.sleep }
        local t0 = clock()
        if vc then
          for _ = 1, rpm do local p <close> = l:acquire(1) end
        else
          -- At once: the loop clock moves on while 6000 requests pass.
          l.rpm:take(rpm)
        end
        local times = {}
        for i = 1, 5 do
          local p <close> = l:acquire(1)
          times[i] = clock() - t0
        end
        local step = 60 / rpm
        for i = 1, 5 do
          assert.is_true(times[i] >= i * step - 1e-3, "request " .. (rpm + i) .. " came at " .. times[i] .. " s")
        end
        if vc then
          -- On a virtual clock nothing else takes time: each request waits
          -- a tenth of a second (a sleep is never shorter than a
          -- millisecond, which rounding may add).
          for i = 1, 5 do
            assert.is_true(times[i] <= i * step + 0.0011 * i, "request " .. (rpm + i) .. " came at " .. times[i] .. " s")
          end
        end
      end)
    end)
  end

  it("charges tokens_per_minute what the server reported", function()
    run(function()
      local vc = vclock.new()
      local l = limits.new { tokens_per_minute = 6000, clock = vc.clock, sleep = vc.sleep } -- 100 a second
      local p = l:acquire(100)
      l:settle(p, { input_tokens = 3000, output_tokens = 3000 })
      local t0 = vc.clock()
      local q <close> = l:acquire(100)
      local waited = vc.clock() - t0
      -- the bucket held 6000 - 6000; the next 100 tokens take a second to come
      assert.is_true(waited >= 1 - 1e-3, "waited only " .. waited .. " s")
      assert.is_true(waited <= 1 + 0.0011, "waited " .. waited .. " s")
    end)
  end)
end)

-- ---- against the mock LLM server (tests/support/mockllm.c, docs/mockllm.md)

describe("agenthost.llm against the mock LLM server", function()
  local mock = require "support.mockllm"
  local m

  local REPLY = "Hello from the mock: a reply long enough to come in many small deltas."
  local ASK = "p99 latency is slow again, like before"
  local rules = { rules = {
    { when = "tool", reply = "Results: {{tool_results}}" },
    { when = "user", match = "slow", tool_calls = {
      { name = "metrics", arguments = { query = "{{user}}" } },
      { name = "web_search", arguments = { query = "{{user}}" } },
      { name = "memory_recall", arguments = { query = "{{user}}" } } } },
    { reply = REPLY },
  } }

  setup(function() m = mock.start { chunk = 4, rules = rules } end)
  teardown(function() if m then m:stop() end end)
  before_each(function() m:reset() end)

  local function provider(kind, opts)
    local o = { kind = kind, model = "mock-1", api_key = "k",
                base_url = kind == "openai" and (m.base .. "/v1") or m.base }
    for k, v in pairs(opts or {}) do o[k] = v end
    return llm.provider(o)
  end

  -- A provider whose requests carry the fault `fault` (x-mock-fault).
  local function faulty(kind, fault, opts)
    local o = { headers = { ["x-mock-fault"] = fault } }
    for k, v in pairs(opts or {}) do o[k] = v end
    return provider(kind, o)
  end

  local ops_tools = {
    { name = "metrics", description = "Reads a metric", parameters = {
      type = "object", properties = { query = { type = "string" } }, required = { "query" } } },
    { name = "web_search", description = "Searches the web", parameters = {
      type = "object", properties = { query = { type = "string" } }, required = { "query" } } },
    { name = "memory_recall", description = "Recalls notes", parameters = {
      type = "object", properties = { query = { type = "string" } }, required = { "query" } } },
  }


  -- chat in a task; with stream, also the deltas it saw.
  local function chat(p, req, stream)
    return run(function()
      local deltas = {}
      if stream then req.stream = function(d) deltas[#deltas + 1] = d end end
      local r = p:chat(req)
      return r, deltas
    end)
  end

  local function chat_fails(kind, p, req, stream)
    local deltas = {}
    if stream then req.stream = function(d) deltas[#deltas + 1] = d end end
    local err = fails(kind, function() p:chat(req) end)
    return err, deltas
  end

  for _, kind in ipairs { "openai", "anthropic" } do
    for _, stream in ipairs { false, true } do
      local how = kind .. (stream and ", streamed" or "")

      it("gets text (" .. how .. ")", function()
        local r, deltas = chat(provider(kind), { messages = { { role = "user", content = "hello" } } }, stream)
        assert.equal(REPLY, r.text)
        assert.equal("stop", r.finish)
        assert.same({}, r.tool_calls)
        assert.is_true(r.usage.input_tokens > 0 and r.usage.output_tokens > 0)
        if stream then
          assert.equal(REPLY, table.concat(deltas))
          assert.is_true(#deltas > 10, "expected many deltas of 4 bytes, got " .. #deltas)
        end
      end)

      it("gets parallel tool calls (" .. how .. ")", function()
        local r = chat(provider(kind), { system = "You are an ops assistant.",
          messages = { { role = "user", content = ASK } }, tools = ops_tools }, stream)
        assert.equal("tool_calls", r.finish)
        assert.equal(3, #r.tool_calls)
        local ids = {}
        for i, name in ipairs { "metrics", "web_search", "memory_recall" } do
          local c = r.tool_calls[i]
          assert.equal(name, c.name)
          assert.same({ query = ASK }, c.arguments)
          assert.is_nil(c.error)
          assert.is_string(c.id)
          assert.is_nil(ids[c.id])
          ids[c.id] = true
        end
      end)

      it("sends tool results back in the dialect's shape (" .. how .. ")", function()
        local p = provider(kind)
        local first = chat(p, { messages = { { role = "user", content = ASK } }, tools = ops_tools })
        local history = { { role = "user", content = ASK },
                          { role = "assistant", content = first.text, tool_calls = first.tool_calls } }
        for i, c in ipairs(first.tool_calls) do
          history[#history + 1] = { role = "tool", tool_call_id = c.id, content = "result " .. i,
                                    is_error = i == 3 or nil }
        end
        local r = chat(p, { messages = history, tools = ops_tools }, stream)
        assert.equal("stop", r.finish)
        assert.equal("Results: result 1 | result 2 | result 3", r.text)
        local last = m:last()
        assert.equal(kind == "openai" and "/v1/chat/completions" or "/v1/messages", last.path)
        local body = json.decode(last.body)
        if kind == "openai" then
          assert.equal("Bearer k", last.headers.authorization)
          assert.equal(json.null, body.messages[2].content)
          assert.equal("function", body.messages[2].tool_calls[1].type)
          assert.equal("tool", body.messages[3].role)
          assert.equal(first.tool_calls[1].id, body.messages[3].tool_call_id)
          if stream then assert.is_true(body.stream_options.include_usage) end
        else
          assert.equal("k", last.headers["x-api-key"])
          assert.equal("2023-06-01", last.headers["anthropic-version"])
          assert.equal(1024, body.max_tokens)
          assert.equal(3, #body.messages)
          assert.equal("tool_use", body.messages[2].content[1].type)
          local results = body.messages[3].content
          assert.equal("user", body.messages[3].role)
          assert.equal("tool_result", results[1].type)
          assert.equal(first.tool_calls[1].id, results[1].tool_use_id)
          assert.is_true(results[3].is_error)
        end
      end)

      it("retries a 429 after its retry-after, timed with the provider's clock (" .. how .. ")", function()
        local retries = {}
        local vc = vclock.new()
        local p = faulty(kind, "429;times=1;retry_after=1", {
          on_retry = function(e, n, d) retries[#retries + 1] = { e = e, n = n, d = d } end,
          clock = vc.clock, sleep = vc.sleep })
        local t0 = vc.clock()
        local r = chat(p, { messages = { { role = "user", content = "hello" } } }, stream)
        local elapsed = vc.clock() - t0
        assert.equal(REPLY, r.text)
        assert.equal(2, r.attempts)
        assert.equal(1, #retries)
        assert.is_true(ah.error.is(retries[1].e, "rate_limited"))
        assert.equal(1, retries[1].d)
        assert.same({ 1 }, vc.slept)
        assert.is_true(elapsed >= 1, "the retry came " .. elapsed .. " s after the first attempt")
        local s = m:stats()
        assert.equal(1, s.faults["429"])
        assert.equal(2, s.requests.total)
      end)

      it("retries a 500 and a 529 with backoff, and gives up after max_retries (" .. how .. ")", function()
        local vc = vclock.new()
        local waits = { clock = vc.clock, sleep = vc.sleep }
        local r = chat(faulty(kind, "500;times=1", waits), { messages = { { role = "user", content = "hello" } } }, stream)
        assert.equal(REPLY, r.text)
        assert.equal(2, r.attempts)
        assert.equal(1, #vc.slept)
        assert.is_true(is_backoff(vc.slept[1], 1), "waited " .. tostring(vc.slept[1]))
        local r2 = chat(faulty(kind, "529;times=2;retry_after_ms=10", waits),
          { messages = { { role = "user", content = "hello" } } }, stream)
        assert.equal(3, r2.attempts)
        assert.same({ 0.01, 0.01 }, { vc.slept[2], vc.slept[3] })
        m:reset()
        local err = chat_fails("overloaded", faulty(kind, "529", { max_retries = 1, clock = vc.clock, sleep = vc.sleep }),
          { messages = { { role = "user", content = "hello" } } }, stream)
        assert.equal(529, err.status)
        assert.equal(2, err.attempts)
        assert.equal(2, m:stats().requests.total)
        assert.equal(4, #vc.slept)
        assert.is_true(is_backoff(vc.slept[4], 1), "waited " .. tostring(vc.slept[4]))
        m:reset()
        local e3 = chat_fails("http", faulty(kind, "500;should_retry=false", waits),
          { messages = { { role = "user", content = "hello" } } }, stream)
        assert.is_false(e3.retryable)
        assert.equal(1, e3.attempts)
        assert.equal(1, m:stats().requests.total)
        assert.equal(4, #vc.slept)
      end)

      it("retries a reset connection and a slow first byte (" .. how .. ")", function()
        -- libcurl itself retries a request whose reused connection was
        -- reset before any response: a server of its own, whose first
        -- connection is new, makes the retry the provider's.
        local fresh <close> = mock.start { rules = rules }
        local vc = vclock.new()
        local p = llm.provider { kind = kind, model = "mock-1", max_retries = 1,
          base_url = kind == "openai" and (fresh.base .. "/v1") or fresh.base,
          headers = { ["x-mock-fault"] = "reset;times=1" }, clock = vc.clock, sleep = vc.sleep }
        local r = chat(p, { messages = { { role = "user", content = "hello" } } }, stream)
        assert.equal(REPLY, r.text)
        assert.equal(2, r.attempts)
        assert.equal(1, fresh:stats().faults.reset)
        assert.equal(1, #vc.slept)
        local retried
        local slow = faulty(kind, "slow;ms=3000;times=1", { timeout = 0.3,
          on_retry = function(e) retried = e end, clock = vc.clock, sleep = vc.sleep })
        local r2 = chat(slow, { messages = { { role = "user", content = "hello" } } }, stream)
        assert.equal(REPLY, r2.text)
        assert.equal(2, r2.attempts)
        assert.is_true(ah.error.is(retried, "timeout"))
        assert.equal(2, #vc.slept)
        assert.is_true(is_backoff(vc.slept[2], 1), "waited " .. tostring(vc.slept[2]))
      end)

      it("keeps arguments that are not JSON as raw text with an error (" .. how .. ")", function()
        local r = chat(faulty(kind, "bad_args"), { messages = { { role = "user", content = ASK } }, tools = ops_tools }, stream)
        assert.is_true(#r.tool_calls >= 1)
        for _, c in ipairs(r.tool_calls) do
          assert.is_string(c.error)
          assert.is_nil(c.arguments)
          assert.is_true(#c.raw_arguments > 0)
        end
      end)
    end

    it("sends extra fields as they are, and tool_choice only with tools (" .. kind .. ")", function()
      local p = provider(kind)
      chat(p, { messages = { { role = "user", content = "hello" } }, tool_choice = "auto",
                extra = { seed = 7, metadata = { user_id = "u1" } } })
      local body = json.decode(m:last().body)
      assert.equal(7, body.seed)
      assert.same({ user_id = "u1" }, body.metadata)
      assert.is_nil(body.tool_choice)
      assert.is_nil(body.tools)
      chat(p, { messages = { { role = "user", content = "hello" } }, tools = ops_tools, tool_choice = "auto" })
      local with = json.decode(m:last().body)
      assert.same(kind == "openai" and "auto" or { type = "auto" }, with.tool_choice)
      local err = fails("invalid_argument", function() p:chat { messages = { { role = "user", content = "x" } }, extra = 1 } end)
      assert.matches("extra must be a table", err.message)
    end)

    it("raises an error mid-stream after the first delta, not retried (" .. kind .. ")", function()
      local err, deltas = chat_fails(kind == "anthropic" and "overloaded" or "http",
        faulty(kind, "midstream;after=2"), { messages = { { role = "user", content = "hello" } } }, true)
      assert.is_true(err.partial)
      assert.equal(1, err.attempts)
      assert.equal(2, #deltas)
      assert.equal(1, m:stats().requests.total)
    end)

    it("retries an error event that comes before any delta (" .. kind .. ")", function()
      local vc = vclock.new()
      local r = chat(faulty(kind, "midstream;after=0;times=1", { clock = vc.clock, sleep = vc.sleep }),
        { messages = { { role = "user", content = "hello" } } }, true)
      assert.equal(REPLY, r.text)
      assert.equal(2, r.attempts)
      assert.equal(1, #vc.slept)
      assert.is_true(is_backoff(vc.slept[1], 1), "waited " .. tostring(vc.slept[1]))
    end)

    it("raises a reset mid-stream as a partial connect error (" .. kind .. ")", function()
      local err, deltas = chat_fails("connect", faulty(kind, "reset;after=5", { headers = { ["x-mock-fault"] = "reset;after=5",
                                                 ["x-mock-stream"] = "delay_ms=5" } }),
        { messages = { { role = "user", content = "hello" } } }, true)
      assert.is_true(err.partial)
      assert.is_true(#deltas >= 1)
      assert.equal(1, m:stats().requests.total)
    end)

    it("raises malformed JSON as a protocol error (" .. kind .. ")", function()
      local err = chat_fails("protocol", faulty(kind, "malformed"), { messages = { { role = "user", content = "hello" } } })
      assert.is_false(err.retryable)
      assert.equal(1, err.attempts)
      local serr, deltas = chat_fails("protocol", faulty(kind, "malformed"),
        { messages = { { role = "user", content = "hello" } } }, true)
      assert.is_true(serr.partial)
      assert.equal(1, #deltas)
    end)

    it("is refused without the right key, and does not retry that (" .. kind .. ")", function()
      local locked <close> = mock.start { api_key = "sekrit", rules = rules }
      local function at_locked(key)
        return llm.provider { kind = kind, model = "mock-1", api_key = key,
                              base_url = kind == "openai" and (locked.base .. "/v1") or locked.base }
      end
      local r = chat(at_locked("sekrit"), { messages = { { role = "user", content = "hello" } } })
      assert.equal(REPLY, r.text)
      local err = fails("http", function() at_locked("wrong"):chat { messages = { { role = "user", content = "hello" } } } end)
      assert.equal(401, err.status)
      assert.equal(1, err.attempts)
      assert.is_false(err.retryable)
      assert.equal(kind == "openai" and "invalid_api_key" or "authentication_error", err.code or err.type)
    end)

    it("keeps N agents sharing a provider to k requests in flight (" .. kind .. ")", function()
      local p = provider(kind, { max_concurrency = 4, headers = { ["x-mock-stream"] = "delay_ms=2" } })
      local results = run(function()
        local agents = {}
        for i = 1, 40 do agents[i] = i end
        return task.map(agents, function(i)
          return p:chat { messages = { { role = "user", content = i % 2 == 0 and "hello" or ASK } },
                          tools = ops_tools, stream = i % 3 == 0 }
        end)
      end)
      assert.equal(40, #results)
      local s = m:stats()
      assert.equal(40, s.requests.total)
      assert.is_true(s.max_in_flight <= 4, "the mock saw " .. s.max_in_flight .. " requests in flight")
      assert.equal(4, p:stats().max_in_flight)
      assert.equal(0, p:stats().in_flight)
    end)

    -- The per-minute limits keep time with a virtual clock: the waits are
    -- what the buckets compute, and take no time.
    it("keeps requests_per_minute (" .. kind .. ")", function()
      -- A bucket of 120 refilled at 2 a second: 124 requests take at least 2 s.
      local vc = vclock.new()
      local p = provider(kind, { requests_per_minute = 120, clock = vc.clock, sleep = vc.sleep })
      local elapsed = run(function()
        local t0 = vc.clock()
        local items = {}
        for i = 1, 124 do items[i] = i end
        task.map(items, function() return p:chat { messages = { { role = "user", content = "hello" } } } end, { limit = 16 })
        return vc.clock() - t0
      end)
      assert.equal(124, m:stats().requests.total)
      assert.is_true(elapsed >= 2 - 1e-3, "124 requests at 120 a minute took only " .. elapsed .. " s")
      -- Four requests waited for the bucket, half a second each (a sleep
      -- is never shorter than a millisecond, which rounding may add).
      assert.is_true(#vc.slept >= 4 and elapsed <= 2 + 0.001 * #vc.slept, #vc.slept .. " waits, " .. elapsed .. " s")
    end)

    it("keeps tokens_per_minute, counting the usage the server reports (" .. kind .. ")", function()
      local msgs = { { role = "user", content = "hello" } }
      local one = chat(provider(kind), { messages = msgs })
      local u = one.usage.input_tokens + one.usage.output_tokens
      -- A bucket of 60 requests' tokens refills one request's worth a second.
      local limit = 60 * u
      local vc = vclock.new()
      local p = provider(kind, { tokens_per_minute = limit, clock = vc.clock, sleep = vc.sleep })
      local elapsed, used = run(function()
        local t0, used = vc.clock(), 0
        for _ = 1, 63 do
          local r = p:chat { messages = msgs }
          used = used + r.usage.input_tokens + r.usage.output_tokens
        end
        return vc.clock() - t0, used
      end)
      -- At most limit + rate * elapsed can pass, give or take the last
      -- request's output, charged only once it is known.
      local floor = (used - limit - u) / (limit / 60)
      assert.is_true(floor >= 1.9)
      assert.is_true(elapsed >= floor - 1e-3, used .. " tokens at " .. limit .. " a minute took only " .. elapsed .. " s")
    end)

    it("aborts a stream when its task is cancelled (" .. kind .. ")", function()
      run(function()
        local p = provider(kind, { headers = { ["x-mock-stream"] = "delay_ms=50" } })
        local got = task.event()
        local h = task.spawn(function()
          return p:chat { messages = { { role = "user", content = "hello" } }, stream = function() got:set() end }
        end)
        got:wait()
        h:cancel()
        local ok, err = h:result()
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "cancelled"))
        assert.equal(0, p:stats().in_flight)
        assert.is_true(require("support.spec").eventually(function() return m:stats().in_flight == 0 end))
      end)
    end)
  end

  -- The specs above skip the waits; this one has the provider wait with
  -- task.sleep, as it does unless told otherwise.
  it("waits out a retry's delay on the loop clock when given no sleep", function()
    local delays = {}
    local p = faulty("openai", "429;times=1;retry_after_ms=100",
      { on_retry = function(_, _, d) delays[#delays + 1] = d end })
    local t0 = run(ah.clock)
    local r = chat(p, { messages = { { role = "user", content = "hello" } } })
    local elapsed = run(ah.clock) - t0
    assert.equal(REPLY, r.text)
    assert.equal(2, r.attempts)
    assert.same({ 0.1 }, delays)
    -- Timers count whole milliseconds of the loop's clock.
    assert.is_true(elapsed >= 0.1 - 1e-3, "the retry came " .. elapsed .. " s after the first attempt")
  end)
end)

describe("agenthost.llm keeps secrets out of what it reports", function()
  local mock = require "support.mockllm"
  local agent = require "agenthost.agent"
  local m
  local KEY = "sk-test-SECRET-0123456789abcdef"

  setup(function() m = mock.start {} end)
  teardown(function() if m then m:stop() end end)

  -- Every string reachable from v (keys and values, nested tables).
  local function strings(v, out, seen)
    out, seen = out or {}, seen or {}
    if type(v) == "string" then out[#out + 1] = v
    elseif type(v) == "table" and not seen[v] then
      seen[v] = true
      for k, x in pairs(v) do strings(k, out, seen); strings(x, out, seen) end
    end
    return out
  end

  local function clean(v, secret, what)
    for _, s in ipairs(strings(v)) do
      assert.is_nil(s:find(secret, 1, true), what .. " holds the secret: " .. s)
    end
  end

  for _, kind in ipairs { "openai", "anthropic" } do
    it("redacts a key a 401 body echoes, in the error, its body and the retry hook (" .. kind .. ")", function()
      local seen = {}
      local p = llm.provider { kind = kind, model = "mock-1", api_key = KEY,
        base_url = kind == "openai" and (m.base .. "/v1") or m.base,
        headers = { ["x-mock-fault"] = "401", ["x-should-retry"] = "true" },
        max_retries = 1, on_retry = function(e) seen[#seen + 1] = e end,
        sleep = function() task.sleep(0) end }
      local err = fails("http", function() p:chat { messages = { { role = "user", content = "hi" } } } end)
      assert.equal(401, err.status)
      assert.matches("[redacted]", err.message, 1, true)
      clean(err, KEY, "the error")
      clean(tostring(err), KEY, "tostring(err)")
      for _, e in ipairs(seen) do clean(e, KEY, "the error given to on_retry") end
    end)

    it("redacts URL credentials and header secrets from transport errors (" .. kind .. ")", function()
      local p = llm.provider { kind = kind, model = "m", api_key = KEY, max_retries = 0,
        endpoint = "http://alice:pa55w0rd-xyz@127.0.0.1:1/v1/chat?token=" .. KEY,
        headers = { ["x-custom-auth"] = "Token hdr-SECRET-4242" } }
      local ok, err = pcall(run, function() return p:chat { messages = { { role = "user", content = "hi" } } } end)
      assert.is_false(ok)
      clean(err, "pa55w0rd-xyz", "the error")
      clean(err, KEY, "the error")
      clean(tostring(err), "pa55w0rd-xyz", "tostring(err)")
    end)
  end

  it("redact replaces keys and URL credentials with [redacted]", function()
    local r = llm.common.redactor { KEY, urls = { "https://u:p4ss-word@h/v1" } }
    assert.equal("key [redacted] at https://[redacted]@h/v1 and [redacted]",
      r("key " .. KEY .. " at https://u:p4ss-word@h/v1 and p4ss-word"))
    assert.equal("no secret here", r("no secret here"))
    assert.equal(llm.common.redact_urls("see http://[redacted]@x/y"),
      llm.common.redact_urls("see http://bob:hunter2@x/y"))
  end)

  it("puts no secret in an agent's error events nor in the error it raises", function()
    local p = llm.provider { kind = "openai", model = "mock-1", api_key = KEY, base_url = m.base .. "/v1",
      headers = { ["x-mock-fault"] = "401" }, max_retries = 0 }
    local events = {}
    local a = agent.new { name = "r", provider = p, on_event = function(ev) events[#events + 1] = ev end }
    local ok, err = pcall(run, function() return a:run("hello") end)
    assert.is_false(ok)
    clean(err, KEY, "the agent's error")
    assert.is_true(#events > 0)
    clean(events, KEY, "the agent's events")
  end)

  it("prints no URL password in config's description of the model", function()
    local config = require "agenthost.config"
    local saved = os.getenv
    os.getenv = function(n) -- luacheck: ignore
      if n == "AGENTHOST_BASE_URL" then return "http://bob:hunter2-secret@127.0.0.1:1/v1" end
      if n == "OPENAI_API_KEY" then return KEY end
      return saved(n)
    end
    local ok, p, about = pcall(config.provider)
    os.getenv = saved -- luacheck: ignore
    assert.is_true(ok, tostring(p))
    assert.is_nil(about:find("hunter2-secret", 1, true), about)
    assert.matches("http://[redacted]@127.0.0.1:1/v1", about, 1, true)
    local err = select(2, pcall(run, function() return p:chat { messages = { { role = "user", content = "x" } } } end))
    clean(err, "hunter2-secret", "the error")
    clean(err, KEY, "the error")
  end)
end)

describe("llm structured output and tool-call deltas", function()
  local mockllm = require "support.mockllm"
  local json = require("agenthost").json
  local m
  setup(function() m = mockllm.start { chunk = 3, rules = { rules = {
    { match = "look", tool_calls = { { name = "lookup", arguments = { query = "{{user}}" } } } },
    { reply = "plain" } } } } end)
  teardown(function() m:stop() end)

  for _, kind in ipairs(mockllm.DIALECTS) do
    it("asks for a JSON answer and gives it as text, whole and streamed (" .. kind .. ")", function()
      ah.task.run(function()
        local p = m:provider(kind)
        local schema = { type = "object", required = { "n" }, properties = { n = { type = "integer" } } }
        local r = p:chat { messages = { { role = "user", content = "count" } }, output = { schema = schema } }
        assert.same({ n = 1 }, json.decode(r.text))
        assert.same({}, r.tool_calls)
        assert.equal("stop", r.finish)
        local pieces = {}
        r = p:chat { messages = { { role = "user", content = "count" } }, output = { schema = schema, name = "answer" },
                     stream = function(d) pieces[#pieces + 1] = d end }
        assert.same({ n = 1 }, json.decode(r.text))
        assert.equal(r.text, table.concat(pieces))
        local body = json.decode(m:last().body)
        if kind == "openai" then
          assert.equal("answer", body.response_format.json_schema.name)
        else
          assert.same({ type = "tool", name = "answer" }, body.tool_choice)
        end
        -- a schema that is not an object (a tool input must be one in Anthropic's dialect)
        r = p:chat { messages = { { role = "user", content = "abc" } },
                     output = { schema = { type = "array", items = { type = "string" } } } }
        assert.same({ "abc" }, json.decode(r.text))
        if kind == "anthropic" then
          body = json.decode(m:last().body)
          assert.same({ "value" }, body.tools[1].input_schema.required)
        end
      end)
    end)

    it("gives the pieces of streamed tool calls to on_tool_delta (" .. kind .. ")", function()
      ah.task.run(function()
        local p = m:provider(kind)
        local deltas = {}
        local r = p:chat { messages = { { role = "user", content = "look up tides" } },
          tools = { { name = "lookup", parameters = { type = "object" } } }, stream = true,
          on_tool_delta = function(d) deltas[#deltas + 1] = d end }
        assert.equal(1, #r.tool_calls)
        local args = {}
        for _, d in ipairs(deltas) do
          assert.same({ 1, r.tool_calls[1].id, "lookup" }, { d.index, d.id, d.name })
          args[#args + 1] = d.arguments
        end
        assert.equal(r.tool_calls[1].raw_arguments, table.concat(args))
        assert.is_true(#deltas > 3)
      end)
    end)
  end

  it("refuses a malformed output request", function()
    ah.task.run(function()
      local p = m:provider("openai")
      for _, o in ipairs { "x", {}, { schema = {}, name = "bad name" } } do
        local ok, err = pcall(p.chat, p, { messages = { { role = "user", content = "x" } }, output = o })
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      end
      local ok, err = pcall(p.chat, p, { messages = { { role = "user", content = "x" } },
        tools = { { name = "final_answer" } }, output = { schema = {} } })
      assert.is_false(ok)
      assert.matches("also the name of a tool", err.message)
    end)
  end)
end)
