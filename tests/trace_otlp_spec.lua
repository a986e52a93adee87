-- The OTLP/HTTP exporter (agenthost.trace.otlp): settings from the
-- standard OTEL_* variables, payloads checked against the official OTLP
-- protobuf definitions (tests/support/otlp_collector.js, which loads the
-- OpenTelemetry project's generated schema from npm), batching, retries
-- with backoff on retryable statuses, Retry-After, drops counted under a
-- dead collector with the queue bounded, and the counters in metrics.
--
-- Needs node and tests/support/node_modules (make deps); fails without.

local ah = require "agenthost"
local httpd = require "support.httpd"
local proc = require "support.proc"
local trace = ah.trace
local otlp = require "agenthost.trace.otlp"
local task = ah.task
local json = require("agenthost").json

local node = proc.which("node")
local SCHEMA = "tests/support/node_modules/@opentelemetry/otlp-transformer/build/src/generated/root.js"

local function need_tools()
  assert(node, "node is not on PATH (make deps installs nodejs)")
  assert(io.open(SCHEMA), SCHEMA .. " is missing: run make deps (npm ci in tests/support)")
end

local function start_collector()
  need_tools()
  return httpd.start { name = "otlp_collector", bin = "/usr/bin/env",
                       args = { "-u", "LD_PRELOAD", node, "tests/support/otlp_collector.js" } }
end

local function requests(srv)
  return ah.http.get(srv.url("/requests")).json
end

local function script(srv, replies)
  ah.http.post(srv.url("/script"), { replies = replies })
end

local function env(t) return function(k) return t[k] end end

-- An agent-shaped trace: a run, a turn with a model call and two tools at
-- once (one failing), with every kind of attribute value.
local function agent_trace()
  local run = trace.agent("ops", 7, nil)
  local turn = trace.turn(1)
  trace.chat_end(trace.chat("mock-1", "openai"), {
    usage = { input_tokens = 120, output_tokens = 33 }, finish_reason = "tool_calls",
    raw = { id = "chatcmpl-1", model = "mock-1" } }, nil, { retries = 1, time_to_first_token = 0.25 })
  task.gather(function()
    local t = trace.tool({ id = "c1", name = "metrics", raw_arguments = "{}" })
    t:add_event("progress", { done = 0.5, ok = true })
    trace.tool_end(t, { content = "{}" })
  end, function()
    trace.tool_end(trace.tool({ id = "c2", name = "shell" }), nil, ah.error.new("timeout", "slow"))
  end)
  turn:finish()
  trace.agent_end(run, { turns = 1, usage = { input_tokens = 120, output_tokens = 33 } })
end

describe("trace OTLP export", function()
  after_each(function() trace.disable() end)

  describe("settings from the environment", function()
    it("append /v1/traces to the general endpoint and take the traces endpoint as it is", function()
      assert.equal("http://c:4318/v1/traces",
        otlp.endpoint(env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318" }))
      assert.equal("http://c:4318/v1/traces",
        otlp.endpoint(env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318/" }))
      assert.equal("http://c:4318/base/v1/traces",
        otlp.endpoint(env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318/base" }))
      assert.equal("http://t:9/custom",
        otlp.endpoint(env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318",
                            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "http://t:9/custom" }))
      assert.is_nil(otlp.from_env(env {}))
    end)

    it("read headers (percent-decoded, the traces list overriding), service name, resource and batching", function()
      local s = otlp.from_env(env {
        OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318",
        OTEL_EXPORTER_OTLP_HEADERS = "Authorization=Basic%20abc%3D, x-a = 1 ,x-b=2",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS = "x-b=3",
        OTEL_SERVICE_NAME = "ops-agents",
        OTEL_RESOURCE_ATTRIBUTES = "deployment.environment=test,service.name=ignored",
        OTEL_EXPORTER_OTLP_TIMEOUT = "2500", OTEL_BSP_MAX_QUEUE_SIZE = "100",
        OTEL_BSP_SCHEDULE_DELAY = "250", OTEL_BSP_MAX_EXPORT_BATCH_SIZE = "20",
      })
      assert.equal("http://c:4318/v1/traces", s.url)
      assert.same({ Authorization = "Basic abc=", ["x-a"] = "1", ["x-b"] = "3" }, s.headers)
      assert.equal("ops-agents", s.resource["service.name"])
      assert.equal("test", s.resource["deployment.environment"])
      assert.equal(2.5, s.timeout)
      assert.equal(100, s.max_queue)
      assert.equal(0.25, s.delay)
      assert.equal(20, s.batch)
    end)

    it("turn export off with OTEL_TRACES_EXPORTER=none and refuse grpc and bad entries clearly", function()
      assert.is_nil(otlp.from_env(env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318",
                                        OTEL_TRACES_EXPORTER = "none" }))
      local ok, e = pcall(otlp.from_env, env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318",
                                               OTEL_EXPORTER_OTLP_PROTOCOL = "grpc" })
      assert.is_false(ok)
      assert.matches("grpc is not supported", e.message)
      ok, e = pcall(otlp.from_env, env { OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318",
                                         OTEL_EXPORTER_OTLP_HEADERS = "x=1,Bearer s3cr3t-token" })
      assert.is_false(ok)
      assert.matches("entry 2 is not key=value", e.message)
      assert.is_nil(e.message:find("s3cr3t", 1, true))
      ok, e = pcall(otlp.new, { url = "ftp://c/v1/traces" })
      assert.is_false(ok)
      assert.matches("must be an http:// or https:// URL", e.message)
    end)
  end)

  describe("payloads", function()
    local function check_file(text)
      need_tools()
      local path = os.tmpname()
      proc.write(path, text)
      local f = io.popen("env -u LD_PRELOAD " .. proc.quote(node) .. " tests/support/otlp_collector.js --check " ..
        proc.quote(path))
      local out = f:read("a")
      f:close()
      os.remove(path)
      return json.decode(out)
    end

    it("of agent-shaped spans are valid OTLP by the official protobuf schema", function()
      local got = {}
      trace.enable { otlp = false, on_span = function(s) got[#got + 1] = s end }
      task.run(agent_trace)
      local r = check_file(otlp.encode(got, { ["service.name"] = "svc" }))
      assert.same({}, r.errors)
      assert.is_true(r.valid)
      assert.equal(5, r.spans)
    end)

    it("that break the schema are refused by the same check (the check can fail)", function()
      local got = {}
      trace.enable { otlp = false, on_span = function(s) got[#got + 1] = s end }
      task.run(function() trace.start("x"):finish() end)
      local good = otlp.encode(got, { ["service.name"] = "svc" })
      assert.is_true(check_file(good).valid)
      local r = check_file((good:gsub('"kind":1', '"kind":1,"startTime":"1"')))
      assert.is_false(r.valid)
      assert.matches("startTime: not a field", r.errors[1])
      r = check_file((good:gsub('"traceId":"(%x+)"', '"traceId":"xyz"')))
      assert.is_false(r.valid)
      r = check_file((good:gsub('"service.name"', '"service"')))
      assert.is_false(r.valid)
    end)
  end)

  describe("to a collector", function()
    local srv
    before_each(function() srv = start_collector() end)
    after_each(function() srv:stop() end)

    it("sends a finished run at once, valid, with the configured headers and service name", function()
      local reqs
      task.run(function()
        trace.enable { otlp = { url = srv.url("/v1/traces"), headers = { authorization = "Bearer t0ken" },
                                resource = { ["service.name"] = "ops-test" }, delay = 60 } }
        agent_trace()
        -- The run's root span finished: the batch leaves without the 60 s delay.
        assert.is_true(trace.flush(10))
        reqs = requests(srv)
      end)
      assert.equal(1, #reqs)
      local r = reqs[1]
      assert.same({}, r.errors)
      assert.is_true(r.valid)
      assert.equal("/v1/traces", r.path)
      assert.equal(5, r.spans)
      assert.equal("Bearer t0ken", r.headers.authorization)
      assert.matches("^application/json", r.headers["content-type"])
      local attrs = {}
      for _, kv in ipairs(r.body.resourceSpans[1].resource.attributes) do attrs[kv.key] = kv.value.stringValue end
      assert.equal("ops-test", attrs["service.name"])
      assert.equal(5, trace.stats().export.exported)
    end)

    it("sends a real agent team's run, valid, every span of it", function()
      local mockllm = require "support.mockllm"
      local team = require "support.trace_team"
      local m <close> = mockllm.start { rules = team.RULES }
      local reqs
      task.run(function()
        trace.enable { otlp = { url = srv.url("/v1/traces"), delay = 60 } }
        local p = m:provider("anthropic", { headers = { ["x-mock-stream"] = "chunk=8" } })
        local lead = team.new { provider = p, on_event = function() end }
        lead:run(team.QUESTION, { stream = true })
        pcall(lead.run, lead, "a forbidden question")
        assert.is_true(trace.flush(10))
        reqs = requests(srv)
      end)
      local names, n = {}, 0
      for _, r in ipairs(reqs) do
        assert.is_true(r.valid, table.concat(r.errors, "; "))
        n = n + r.spans
        for _, name in ipairs(r.names) do names[name] = (names[name] or 0) + 1 end
      end
      assert.equal(#team.SPANS + 4, n) -- the refused run: its span, a turn, the guardrail, the model call
      assert.equal(2, names["invoke_agent lead"])
      assert.equal(2, names["guardrail no_forbidden"])
    end)

    it("batches: full batches leave at once, the rest with the root span", function()
      local reqs
      task.run(function()
        trace.enable { otlp = { url = srv.url("/v1/traces"), batch = 10, delay = 60 } }
        local root = trace.start("root")
        for i = 1, 25 do trace.start("child " .. i):finish() end
        root:finish()
        assert.is_true(trace.flush(10))
        reqs = requests(srv)
      end)
      local sizes = {}
      for i, r in ipairs(reqs) do
        assert.is_true(r.valid, table.concat(r.errors, "; "))
        sizes[i] = r.spans
      end
      assert.same({ 10, 10, 6 }, sizes)
      assert.equal("root", reqs[3].names[6])
    end)

    it("retries 503 and 429 with backoff, after Retry-After when given, then delivers", function()
      local slept, reqs, st = {}, nil, nil
      task.run(function()
        script(srv, { { status = 503 }, { status = 429, retry_after = 2 }, { status = 503 }, { status = 200 } })
        trace.enable { otlp = { url = srv.url("/v1/traces"), delay = 60, random = function() return 0 end,
                                sleep = function(s) slept[#slept + 1] = s end } }
        agent_trace()
        assert.is_true(trace.flush(10))
        reqs = requests(srv)
        st = trace.stats().export
      end)
      assert.equal(4, #reqs)
      for _, r in ipairs(reqs) do assert.is_true(r.valid) end
      assert.same(reqs[1].body, reqs[4].body)
      -- initial 0.5 s doubling per attempt, times the jitter factor (0.5 with
      -- random() = 0); the collector's Retry-After replaces the second
      assert.same({ 0.25, 2, 1.0 }, slept)
      assert.equal(3, st.retries)
      assert.equal(5, st.exported)
      assert.equal(0, st.dropped)
    end)

    it("drops a batch the collector refuses (400) without retrying, and counts it", function()
      local reqs, st
      task.run(function()
        script(srv, { { status = 400, body = { error = "bad" } } })
        trace.enable { otlp = { url = srv.url("/v1/traces"), delay = 60, sleep = function() error("no retry") end } }
        agent_trace()
        assert.is_true(trace.flush(10))
        reqs = requests(srv)
        st = trace.stats().export
      end)
      assert.equal(1, #reqs)
      assert.equal(5, st.dropped)
      assert.equal(1, st.failed_batches)
      assert.equal(0, st.exported)
      assert.matches("HTTP status 400", st.last_error)
    end)

    it("counts the spans a collector rejects in a partial success", function()
      local st
      task.run(function()
        script(srv, { { status = 200, body = { partialSuccess = { rejectedSpans = "2", errorMessage = "too old" } } } })
        trace.enable { otlp = { url = srv.url("/v1/traces"), delay = 60 } }
        agent_trace()
        assert.is_true(trace.flush(10))
        st = trace.stats().export
      end)
      assert.equal(2, st.rejected)
      assert.equal(3, st.exported)
    end)
  end)

  describe("with the collector down", function()
    it("drops and counts, keeps the queue bounded, never makes the agent wait, and shows it in metrics", function()
      local srv = start_collector()
      local url = srv.url("/v1/traces")
      srv:stop() -- nothing listens on the port any more: connections are refused
      local st, attempts, max_queued, resumed_during, m = nil, 0, 0, nil, nil
      task.run(function()
        trace.enable { otlp = { url = url, delay = 60, batch = 20, max_queue = 50, max_attempts = 3,
                                request = function(o)
                                  attempts = attempts + 1
                                  return ah._http.request(o)
                                end,
                                sleep = function() task.yield() end } }
        local ticks = 0
        local ticker = task.spawn(function() while true do ticks = ticks + 1; task.yield() end end)
        task.yield()
        local t0 = ticks
        for r = 1, 10 do
          local root = trace.start("run " .. r)
          for i = 1, 99 do trace.start("step " .. i):finish() end
          root:finish()
          local q = trace.exporter():stats().queued
          if q > max_queued then max_queued = q end
        end
        resumed_during = ticks - t0
        ticker:cancel()
        assert.is_true(trace.flush(30))
        st = trace.stats().export
        m = require("metrics").run({}, {})
      end)
      assert.equal(0, resumed_during) -- finishing 1,000 spans never yielded
      assert.is_true(max_queued <= 50)
      assert.equal(0, st.exported)
      assert.equal(1000, st.dropped)
      assert.is_true(st.dropped_queue_full >= 900)
      assert.equal(0, st.queued)
      assert.is_true(attempts >= 3 and attempts % 3 == 0, "attempts " .. attempts)
      assert.matches("connect", st.last_error)
      assert.equal(1000, m.trace.export.dropped)
      assert.is_true(m.trace.spans_finished >= 1000)
    end)
  end)
end)
