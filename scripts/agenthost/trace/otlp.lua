-- agenthost.trace.otlp: finished spans sent to an OpenTelemetry collector
-- over OTLP/HTTP with the JSON encoding.
--
--   local otlp = require "agenthost.trace.otlp"
--   local settings = otlp.from_env(os.getenv)   -- nil when no endpoint is set
--   local ex = otlp.new(settings)
--   ex:push(span)  ex:flush([timeout])  ex:stats()
--
-- The standard variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the URL, used
-- as is) or OTEL_EXPORTER_OTLP_ENDPOINT (a base URL, to which /v1/traces is
-- appended); OTEL_EXPORTER_OTLP_(TRACES_)HEADERS ("k=v,k2=v2", values
-- percent-decoded, the signal's own list overriding the general one);
-- OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT (ms per request, 10000);
-- OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (http/json; http/protobuf is sent
-- as JSON, which collectors take on the same path; grpc is refused);
-- OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; OTEL_TRACES_EXPORTER
-- (none, or a list without otlp, turns export off); and the batch span
-- processor's OTEL_BSP_MAX_QUEUE_SIZE (2048), OTEL_BSP_SCHEDULE_DELAY
-- (ms, 5000), OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512), OTEL_BSP_EXPORT_TIMEOUT
-- (ms, 30000: one batch's time, retries included).
--
-- push() never waits: it puts the span on a bounded queue (a full queue
-- drops the span and counts it) and wakes the exporter, a background task
-- that runs only while there is something to send.  A batch leaves when it
-- is full, when a trace's root span has finished (so a finished run is
-- exported at once and a program's exit is not held up), or after the
-- schedule delay.  A batch that fails with 429, 502, 503 or 504, or with a
-- retryable transport error (connection refused, timeout), is retried with
-- exponential backoff and jitter, after Retry-After when the collector
-- sends one, within the export timeout and at most max_attempts times;
-- then, or at once for any other status, its spans are dropped and
-- counted.  The first failure is reported on stderr (once until an export
-- succeeds again; headers are never printed).

local core = require "agenthost.core"
local json = core.json

local M = {}

local function bad(msg)
  core.error.raise("invalid_argument", msg)
end

-- ---- settings from the environment -------------------------------------------------

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- "k=v,k2=v2" (W3C baggage-like, values percent-encoded) -> {k = v, ...}.
local function parse_list(text, var)
  local out = {}
  if not text or trim(text) == "" then return out end
  local n = 0
  for item in (text .. ","):gmatch("([^,]*),") do
    n = n + 1
    if trim(item) ~= "" then
      local k, v = item:match("^([^=]*)=(.*)$")
      if not k or trim(k) == "" then
        -- The entry is not shown: it may hold a secret.
        bad(string.format("%s: entry %d is not key=value (expected key=value pairs " ..
          "separated by commas, values percent-encoded)", var, n))
      end
      out[unescape(trim(k))] = unescape(trim(v))
    end
  end
  return out
end
M.parse_list = parse_list

local function number_var(getenv, names, default)
  for _, name in ipairs(names) do
    local v = getenv(name)
    if v and trim(v) ~= "" then
      local n = tonumber(trim(v))
      if not n or n < 0 then bad(name .. " must be a number >= 0, not '" .. v .. "'") end
      return n
    end
  end
  return default
end

local function var(getenv, name)
  local v = getenv(name)
  if v and trim(v) ~= "" then return trim(v) end
  return nil
end

-- The traces URL from the two endpoint variables (nil when neither is set).
function M.endpoint(getenv)
  local traces = var(getenv, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
  if traces then return traces end
  local base = var(getenv, "OTEL_EXPORTER_OTLP_ENDPOINT")
  if not base then return nil end
  if base:sub(-1) == "/" then return base .. "v1/traces" end
  return base .. "/v1/traces"
end

-- from_env(getenv) -> the exporter's settings, or nil when export is off.
function M.from_env(getenv)
  local which = var(getenv, "OTEL_TRACES_EXPORTER")
  if which then
    local otlp = false
    for w in which:gmatch("[^,%s]+") do if w == "otlp" then otlp = true end end
    if not otlp then return nil end
  end
  local url = M.endpoint(getenv)
  if not url then return nil end
  local protocol = var(getenv, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or
    var(getenv, "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/json"
  if protocol ~= "http/json" and protocol ~= "http/protobuf" then
    bad("OTEL_EXPORTER_OTLP_PROTOCOL=" .. protocol .. " is not supported: agenthost exports " ..
      "OTLP/HTTP with JSON (set http/json, or leave it unset)")
  end
  local headers = parse_list(getenv("OTEL_EXPORTER_OTLP_HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS")
  for k, v in pairs(parse_list(getenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
                               "OTEL_EXPORTER_OTLP_TRACES_HEADERS")) do
    headers[k] = v
  end
  local resource = parse_list(getenv("OTEL_RESOURCE_ATTRIBUTES"), "OTEL_RESOURCE_ATTRIBUTES")
  local service = var(getenv, "OTEL_SERVICE_NAME")
  if service then resource["service.name"] = service end
  return {
    url = url, headers = headers, resource = resource,
    timeout = number_var(getenv, { "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT" },
      10000) / 1000,
    max_queue = math.floor(number_var(getenv, { "OTEL_BSP_MAX_QUEUE_SIZE" }, 2048)),
    delay = number_var(getenv, { "OTEL_BSP_SCHEDULE_DELAY" }, 5000) / 1000,
    batch = math.floor(number_var(getenv, { "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" }, 512)),
    export_timeout = number_var(getenv, { "OTEL_BSP_EXPORT_TIMEOUT" }, 30000) / 1000,
  }
end

-- ---- the JSON encoding --------------------------------------------------------------------

local function any_value(v)
  local t = type(v)
  if t == "string" then return { stringValue = v }
  elseif t == "boolean" then return { boolValue = v }
  elseif t == "number" then
    if math.type(v) == "integer" then return { intValue = tostring(v) } end
    if v ~= v or v == math.huge or v == -math.huge then return { stringValue = tostring(v) } end
    return { doubleValue = v }
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local values = {}
      for i = 1, #v do values[i] = any_value(v[i]) end
      return { arrayValue = (#values > 0) and { values = values } or {} }
    end
    local kvs = {}
    for k, x in pairs(v) do kvs[#kvs + 1] = { key = tostring(k), value = any_value(x) } end
    table.sort(kvs, function(a, b) return a.key < b.key end)
    return { kvlistValue = { values = kvs } }
  end
  return { stringValue = tostring(v) }
end
M.any_value = any_value

-- A list of KeyValue, sorted by key; nil when empty (JSON leaves it out).
local function key_values(attrs)
  if type(attrs) ~= "table" then return nil end
  local kvs = {}
  for k, v in pairs(attrs) do kvs[#kvs + 1] = { key = tostring(k), value = any_value(v) } end
  if #kvs == 0 then return nil end
  table.sort(kvs, function(a, b) return a.key < b.key end)
  return kvs
end

local function otlp_span(sp)
  local s = {
    traceId = sp.trace_id, spanId = sp.span_id, parentSpanId = sp.parent_id,
    name = sp.name, kind = sp.span_kind,
    startTimeUnixNano = tostring(sp.start_ns), endTimeUnixNano = tostring(sp.end_ns),
    attributes = key_values(sp.attributes),
  }
  if sp.events and #sp.events > 0 then
    local evs = {}
    for i, e in ipairs(sp.events) do
      evs[i] = { timeUnixNano = tostring(e.time_ns), name = e.name,
                 attributes = key_values(e.attributes) }
    end
    s.events = evs
  end
  if sp.status and sp.status ~= 0 then
    s.status = { code = sp.status, message = sp.status_message }
  end
  return s
end

-- encode(spans, resource_attributes) -> the body of an
-- ExportTraceServiceRequest, one resource and one scope ("agenthost").
function M.encode(spans, resource)
  local list = {}
  for i, sp in ipairs(spans) do list[i] = otlp_span(sp) end
  return json.encode {
    resourceSpans = { {
      resource = { attributes = key_values(resource) },
      scopeSpans = { { scope = { name = "agenthost" }, spans = list } },
    } },
  }
end

-- ---- the exporter ----------------------------------------------------------------------------

local RETRYABLE = { [429] = true, [502] = true, [503] = true, [504] = true }
M.RETRYABLE = RETRYABLE

local Exporter = {}
Exporter.__index = Exporter

local function check_url(url)
  if type(url) ~= "string" or not url:lower():match("^https?://[^/]") then
    bad("the OTLP traces endpoint must be an http:// or https:// URL, not " ..
      string.format("%q", tostring(url)) ..
      " (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318, for example)")
  end
end

local function positive(v, name, default)
  if v == nil then return default end
  if type(v) ~= "number" or v <= 0 then bad("trace otlp: " .. name .. " must be a number > 0") end
  return v
end

-- new(settings) -> exporter.  settings: url, headers, resource, timeout
-- (s), max_queue, batch, delay (s), export_timeout (s), max_attempts (5),
-- initial_backoff (s, 0.5), max_backoff (s, 8); and, for tests, request
-- (function(opts) -> response), sleep (function(seconds)) and random
-- (function() -> [0, 1)).
function M.new(s)
  if type(s) ~= "table" then bad("trace otlp: the settings must be a table") end
  check_url(s.url)
  local headers = { ["content-type"] = "application/json" }
  for k, v in pairs(s.headers or {}) do
    if type(k) ~= "string" or type(v) ~= "string" then
      bad("trace otlp: headers must be a table of name = value strings")
    end
    headers[k] = v
  end
  local resource = { ["service.name"] = "unknown_service:agenthost",
                     ["telemetry.sdk.name"] = "agenthost", ["telemetry.sdk.language"] = "lua" }
  for k, v in pairs(s.resource or {}) do resource[k] = v end
  local ex = setmetatable({
    url = s.url, headers = headers, resource = resource,
    timeout = positive(s.timeout, "timeout", 10),
    max_queue = math.floor(positive(s.max_queue, "max_queue", 2048)),
    batch = math.floor(positive(s.batch, "batch", 512)),
    delay = positive(s.delay, "delay", 5),
    export_timeout = positive(s.export_timeout, "export_timeout", 30),
    max_attempts = math.floor(positive(s.max_attempts, "max_attempts", 5)),
    initial_backoff = positive(s.initial_backoff, "initial_backoff", 0.5),
    max_backoff = positive(s.max_backoff, "max_backoff", 8),
    request = s.request or core._http.request,
    sleep = s.sleep or core.task.sleep,
    random = s.random or math.random,
    -- the queue: a ring of spans from head to head + len - 1
    q = {}, head = 1, len = 0,
    -- spans pushed and taken so far, and the count pushed when a root
    -- span or a flush asked for everything queued to go at once
    pushed = 0, taken = 0, mark = 0,
    running = false, sending = 0,
    wake = core.task.event(), idle = {},
    counts = { exported = 0, dropped = 0, dropped_queue_full = 0, rejected = 0,
               batches = 0, failed_batches = 0, retries = 0 },
    last_error = nil, reported = false,
  }, Exporter)
  if ex.batch > ex.max_queue then ex.batch = ex.max_queue end
  return ex
end

local function trace_mod() return require "agenthost.trace" end

-- Puts a finished span on the queue; never waits.
function Exporter:push(sp)
  if self.len >= self.max_queue then
    self.counts.dropped = self.counts.dropped + 1
    self.counts.dropped_queue_full = self.counts.dropped_queue_full + 1
    return false
  end
  self.q[(self.head + self.len - 1) % self.max_queue + 1] = sp
  self.len = self.len + 1
  self.pushed = self.pushed + 1
  if sp.is_root then self.mark = self.pushed end
  if sp.is_root or self.len >= self.batch then self.wake:set() end
  if not self.running then
    self.running = true
    trace_mod().raw_task("detach")(self.work, self)
  end
  return true
end

local function take(self, n)
  n = math.min(n, self.len)
  local out = {}
  for i = 1, n do
    local idx = (self.head + i - 2) % self.max_queue + 1
    out[i] = self.q[idx]
    self.q[idx] = nil
  end
  self.head = (self.head + n - 1) % self.max_queue + 1
  self.len = self.len - n
  self.taken = self.taken + n
  return out
end

local function report(self, msg)
  self.last_error = msg
  if self.reported then return end
  self.reported = true
  io.stderr:write("agenthost.trace: OTLP export to ", self.url, " failed: ", msg,
    " (spans are dropped and counted while it fails; see trace.stats())\n")
end

local function drop(self, n, msg)
  self.counts.dropped = self.counts.dropped + n
  self.counts.failed_batches = self.counts.failed_batches + 1
  report(self, msg)
end

-- Retry-After in seconds (a delay; an HTTP date is not used), or nil.
local function retry_after(headers)
  local v = headers and headers["retry-after"]
  local n = v and tonumber(v)
  if n and n >= 0 then return n end
  return nil
end

-- The backoff before attempt+1: initial * 2^(attempt-1), at most
-- max_backoff, times a random factor in [0.5, 1).
function Exporter:backoff(attempt)
  local d = math.min(self.max_backoff, self.initial_backoff * 2 ^ (attempt - 1))
  return d * (0.5 + 0.5 * self.random())
end

-- Sends one batch, retrying what may succeed later; returns true when the
-- collector took it.
function Exporter:send(batch)
  local n = #batch
  local body = M.encode(batch, self.resource)
  local started = core.clock()
  local attempt = 0
  while true do
    attempt = attempt + 1
    local ok, res = pcall(self.request, { method = "POST", url = self.url, headers = self.headers,
                                          body = body, timeout = self.timeout })
    local wait, why
    if ok then
      local st = res.status
      if st >= 200 and st <= 299 then
        local rejected = 0
        local okj, j = pcall(json.decode, res.body or "")
        if okj and type(j) == "table" and type(j.partialSuccess) == "table" then
          rejected = math.tointeger(tonumber(j.partialSuccess.rejectedSpans or 0)) or 0
          if rejected > 0 then
            report(self, "the collector rejected " .. rejected .. " spans: " ..
              tostring(j.partialSuccess.errorMessage or ""))
          end
        end
        self.counts.rejected = self.counts.rejected + rejected
        self.counts.exported = self.counts.exported + n - rejected
        self.counts.batches = self.counts.batches + 1
        self.reported = false
        return true
      end
      why = "HTTP status " .. tostring(st)
      if not RETRYABLE[st] then
        local text = type(res.body) == "string" and res.body:sub(1, 200) or ""
        drop(self, n, why .. (text ~= "" and (": " .. text) or ""))
        return false
      end
      wait = retry_after(res.headers)
    else
      why = tostring(res)
      if not (type(res) == "table" and res.retryable) then
        drop(self, n, why)
        return false
      end
    end
    if attempt >= self.max_attempts then
      drop(self, n, why .. " (after " .. attempt .. " attempts)")
      return false
    end
    wait = wait or self:backoff(attempt)
    if core.clock() - started + wait > self.export_timeout then
      drop(self, n, why .. " (the export timeout leaves no time to retry)")
      return false
    end
    self.counts.retries = self.counts.retries + 1
    self.sleep(wait)
  end
end

-- The exporter's task: runs while the queue holds spans.
function Exporter.work(self)
  local timeout = trace_mod().raw_task("timeout")
  while self.len > 0 do
    if self.taken >= self.mark and self.len < self.batch then
      pcall(timeout, self.delay, self.wake.wait, self.wake)
    end
    self.wake:clear()
    local batch = take(self, self.batch)
    self.sending = #batch
    local ok, err = pcall(self.send, self, batch)
    self.sending = 0
    if not ok then
      drop(self, #batch, tostring(err))
      if core.error.is(err, "cancelled") then break end
    end
  end
  self.running = false
  for i, ev in ipairs(self.idle) do
    self.idle[i] = nil
    ev:set()
  end
end

-- Waits until the queue is empty and nothing is being sent; true, or
-- false when timeout seconds passed first.
function Exporter:flush(timeout)
  if not self.running and self.len == 0 then return true end
  self.mark = self.pushed
  self.wake:set()
  local ev = core.task.event()
  self.idle[#self.idle + 1] = ev
  if not timeout then
    ev:wait()
    return true
  end
  return (pcall(trace_mod().raw_task("timeout"), timeout, ev.wait, ev))
end

-- {queued, sending, exported, dropped, dropped_queue_full, rejected,
--  batches, failed_batches, retries, last_error}
function Exporter:stats()
  local c = self.counts
  return { queued = self.len, sending = self.sending, exported = c.exported, dropped = c.dropped,
           dropped_queue_full = c.dropped_queue_full, rejected = c.rejected, batches = c.batches,
           failed_batches = c.failed_batches, retries = c.retries, last_error = self.last_error,
           url = self.url }
end

return M
