-- agenthost.trace (ah.trace): spans of what agents do, with OpenTelemetry's
-- ids and GenAI attribute names; stored with memory, exported over OTLP.
--
--   local trace = ah.trace
--   trace.enable { store = db_or_memory }   -- OTLP from the OTEL_* environment
--   local sp = trace.start("work", { kind = "span", attributes = { n = 1 } })
--   sp:set("key", value)  sp:add_event("name", attrs)  sp:finish([err])
--   trace.run("step", nil, fn, ...)         -- a span around fn, error marked
--   trace.current()  trace.traceparent()   trace.flush()  trace.stats()
--
-- A span started in a task becomes that task's current span until it
-- finishes; the next span started there is its child.  While tracing is on,
-- task.spawn, task.detach, task.gather, task.race, task.timeout (and so
-- task.map, which uses gather) start their children with the spawning
-- task's current span, so that the spans of concurrent tool calls nest
-- under the turn that started them.  This is done here, in Lua: the task
-- functions are wrapped while tracing is on and restored by disable(), and
-- the current span is kept per coroutine in a weak table; a child clears
-- its entry when it ends (a to-be-closed value, so an error or a
-- cancellation clears it too), since the scheduler reuses the threads of
-- finished tasks.
--
-- Cost when off: every function here returns at once, and start() and the
-- GenAI helpers return one shared inert span whose methods do nothing, so
-- instrumented code allocates nothing while tracing is off
-- (tests/trace_core_spec.lua counts it).  `trace.on` is a plain field for
-- code that would have to compute an attribute.
--
-- Finished spans go to the sinks: the store of their trace (the database of
-- the agent's memory, through db:post and the store's group commit:
-- agenthost.trace.store), the OTLP exporter when configured
-- (agenthost.trace.otlp), and on_span functions.  Nothing there waits.

local core = require "agenthost.core"
local task = core.task
local running = coroutine.running
local floor = math.floor
local fmt = string.format

local M = {}

M.on = false

-- OpenTelemetry's SpanKind values (the OTLP enum).
M.INTERNAL, M.SERVER, M.CLIENT, M.PRODUCER, M.CONSUMER = 1, 2, 3, 4, 5
-- Status codes (OTLP): unset, ok, error.
local UNSET, OK, ERROR = 0, 1, 2
M.STATUS_UNSET, M.STATUS_OK, M.STATUS_ERROR = UNSET, OK, ERROR

-- The settings of enable() and the counters of stats().
local cfg = {
  on_span = nil,      -- function(span) called with each finished span
  store = nil,        -- the default database of traces whose root names none
  exporter = nil,     -- the OTLP exporter (agenthost.trace.otlp), or nil
  http = false,       -- client spans for ah.http requests (traceparent always)
  proc = false,       -- spans for ah.proc.run and ah.proc.spawn
  db = false,         -- spans for db:exec and db:batch, events for db:post
}
local counts = { started = 0, finished = 0, stored = 0, sink_errors = 0 }

-- ---- ids and time ------------------------------------------------------------

-- splitmix64, seeded from /dev/urandom once: ids stay unique across
-- processes even when a script seeds math.random with a constant.
local rng

local function seed()
  local f = io.open("/dev/urandom", "rb")
  local b = f and f:read(16)
  if f then f:close() end
  if b and #b == 16 then
    local a, c = string.unpack("<i8i8", b)
    rng = a ~ (c << 1)
  else
    rng = math.random(math.mininteger, math.maxinteger) ~ floor(core.wallclock() * 1e6)
  end
end

local function next64()
  rng = rng + 0x9E3779B97F4A7C15
  local z = rng
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

local function new_span_id()
  local v = next64()
  if v == 0 then v = 1 end -- the all-zero id is invalid
  return fmt("%016x", v)
end

local function new_trace_id()
  local a, b = next64(), next64()
  if a == 0 and b == 0 then b = 1 end
  return fmt("%016x%016x", a, b)
end

-- Span times are Unix nanoseconds: the wall clock read once when tracing
-- is enabled, plus the monotonic clock since, so that durations never go
-- negative when the system clock steps.
local clock = core.clock
local base_ns, base_mono = 0, 0

local function now_ns()
  return base_ns + floor((clock() - base_mono) * 1e9)
end
M.now_ns = now_ns

-- ---- the current span of each coroutine --------------------------------------------

local current = setmetatable({}, { __mode = "k" })

function M.current()
  return current[running()]
end

-- ---- spans -------------------------------------------------------------------------

local Span = {}
Span.__index = Span
M.Span = Span

-- The inert span that start() returns while tracing is off: every method
-- returns it (traceparent returns nil), and nothing allocates.
local NOOP = { noop = true }
local function noop_self(self) return self end
for _, k in ipairs { "set", "add_event", "record_error", "set_status", "set_conversation", "finish" } do
  NOOP[k] = noop_self
end
function NOOP.traceparent() return nil end
M.NOOP = NOOP

local function store_of(v)
  if type(v) == "table" and v.db then return v.db end
  return v
end

-- A new span, child of parent (a span, or {trace_id =, span_id =} for a
-- remote parent), made current in the running coroutine unless
-- make_current is false.
local function new_span(name, kind, span_kind, parent, make_current, store)
  local co = running()
  if parent == nil then parent = current[co] end
  local sp = {
    name = name, kind = kind, span_kind = span_kind,
    span_id = new_span_id(), start_ns = now_ns(),
    attributes = {}, status = UNSET,
  }
  if parent then
    sp.trace_id = parent.trace_id
    sp.parent_id = parent.span_id
    -- A remote parent (a traceparent from elsewhere) names no store.
    sp.store = store or parent.store or (parent.remote and cfg.store) or nil
    sp.conversation = parent.conversation
    sp.is_root = parent.remote or nil
  else
    sp.is_root = true
    sp.trace_id = new_trace_id()
    sp.store = store or cfg.store
  end
  setmetatable(sp, Span)
  counts.started = counts.started + 1
  if make_current ~= false then
    sp.co, sp.prev = co, current[co]
    current[co] = sp
  end
  return sp
end

local function parse_traceparent(s)
  local v, t, p = s:match("^(%x%x)%-(%x+)%-(%x+)%-%x%x")
  if not v or v == "ff" or #t ~= 32 or #p ~= 16 then return nil end
  t, p = t:lower(), p:lower()
  if t == ("0"):rep(32) or p == ("0"):rep(16) then return nil end
  return { trace_id = t, span_id = p, remote = true }
end
M.parse_traceparent = parse_traceparent

-- trace.start(name [, opts]) -> span, current in the running task until
-- it finishes.  opts: kind (the timeline's category: "agent", "turn",
-- "chat", "tool", "handoff", "guardrail", "http", "db", "proc", "span";
-- default "span"), span_kind (trace.CLIENT ...; default INTERNAL),
-- attributes (a table, copied), parent (a span, a W3C traceparent string,
-- or false for a new trace; default the current span), current = false
-- (start it without making it current), store (the database of a new
-- trace: an ah.store database or an agenthost.memory), conversation (the
-- conversation id the timeline groups by; inherited by children).
function M.start(name, opts)
  if not M.on then return NOOP end
  if type(name) ~= "string" then
    core.error.raise("invalid_argument", "trace.start: name must be a string")
  end
  local parent, kind, span_kind, make_current, store
  if opts ~= nil then
    if type(opts) ~= "table" then
      core.error.raise("invalid_argument", "trace.start: the options must be a table")
    end
    parent = opts.parent
    if parent == NOOP then
      parent = nil
    elseif type(parent) == "string" then
      parent = parse_traceparent(parent) or false
    elseif parent ~= nil and parent ~= false and getmetatable(parent) ~= Span then
      core.error.raise("invalid_argument",
        "trace.start: parent must be a span, a traceparent string or false")
    end
    kind, span_kind = opts.kind, opts.span_kind
    make_current = opts.current
    store = store_of(opts.store)
  end
  local sp = new_span(name, kind or "span", span_kind or M.INTERNAL, parent, make_current, store)
  if opts then
    if opts.conversation ~= nil then sp.conversation = tostring(opts.conversation) end
    if type(opts.attributes) == "table" then
      for k, v in pairs(opts.attributes) do sp.attributes[k] = v end
    end
  end
  return sp
end

-- sp:set(key, value) -> sp.  Values are strings, numbers, booleans or
-- arrays of one of those; nil leaves the attribute unset.
function Span:set(key, value)
  if value ~= nil and not self.end_ns then self.attributes[key] = value end
  return self
end

-- sp:add_event(name [, attributes]) -> sp: a timestamped event on the span.
function Span:add_event(name, attrs)
  if self.end_ns then return self end
  local evs = self.events
  if not evs then
    evs = {}
    self.events = evs
  end
  evs[#evs + 1] = { name = tostring(name), time_ns = now_ns(), attributes = attrs }
  return self
end

-- The error.type of an error value: a structured error's kind, else the
-- name of its Lua type's failure.
local function error_type(err)
  if type(err) == "table" and type(err.kind) == "string" then return err.kind end
  return "error"
end

-- sp:record_error(err) -> sp: status error, error.type, and an
-- "exception" event with the message.
function Span:record_error(err)
  if self.end_ns then return self end
  self.status = ERROR
  local msg = type(err) == "table" and err.message or tostring(err)
  self.status_message = msg and tostring(msg):sub(1, 1024) or nil
  if self.attributes["error.type"] == nil then self.attributes["error.type"] = error_type(err) end
  self:add_event("exception", { ["exception.type"] = error_type(err),
                                ["exception.message"] = self.status_message })
  return self
end

-- sp:set_status("ok" | "error" [, message]) -> sp
function Span:set_status(status, message)
  if self.end_ns then return self end
  if status == "ok" then self.status = OK
  elseif status == "error" then
    self.status = ERROR
    self.status_message = message
    if self.attributes["error.type"] == nil then self.attributes["error.type"] = "error" end
  end
  return self
end

-- sp:set_conversation(id) -> sp: the conversation the span belongs to
-- (gen_ai.conversation.id; the timeline groups by it), for a span started
-- before the id was known.  Children started later inherit it.
function Span:set_conversation(id)
  if id == nil or self.end_ns then return self end
  self.conversation = tostring(id)
  self.attributes["gen_ai.conversation.id"] = self.conversation
  return self
end

-- The W3C traceparent of the span.
function Span:traceparent()
  return "00-" .. self.trace_id .. "-" .. self.span_id .. "-01"
end

local sink_failed -- reports one failing sink once
local span_store   -- agenthost.trace.store, loaded with the first stored span

local function emit(sp)
  counts.finished = counts.finished + 1
  local db = sp.store
  if db then
    span_store = span_store or require "agenthost.trace.store"
    span_store.write(db, sp)
    counts.stored = counts.stored + 1
  end
  local ex = cfg.exporter
  if ex then ex:push(sp) end
  local fn = cfg.on_span
  if fn then
    local ok, err = pcall(fn, sp)
    if not ok then
      counts.sink_errors = counts.sink_errors + 1
      if not sink_failed then
        sink_failed = true
        io.stderr:write("agenthost.trace: the on_span function failed: ", tostring(err), "\n")
      end
    end
  end
end

-- sp:finish([err]) -> sp: ends the span (once; later calls do nothing),
-- with err recorded as its error when given, and makes the span that was
-- current before it current again where it was current.
function Span:finish(err)
  if self.end_ns then return self end
  if err ~= nil then self:record_error(err) end
  self.end_ns = now_ns()
  local co = self.co
  if co then
    if current[co] == self then current[co] = self.prev end
    self.co, self.prev = nil, nil
  end
  emit(self)
  return self
end

-- trace.with(span, fn, ...) -> fn's results, with span current in the
-- running task while fn runs.
function M.with(sp, fn, ...)
  if not M.on or sp == nil or sp == NOOP then return fn(...) end
  local co = running()
  local prev = current[co]
  current[co] = sp
  local res = table.pack(pcall(fn, ...))
  current[co] = prev
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- trace.run(name, opts, fn, ...) -> fn's results, inside a span that
-- records fn's error (which is raised again).
function M.run(name, opts, fn, ...)
  if not M.on then return fn(...) end
  local sp = M.start(name, opts)
  local res = table.pack(pcall(fn, ...))
  if res[1] then
    sp:finish()
    return table.unpack(res, 2, res.n)
  end
  sp:finish(res[2])
  error(res[2], 0)
end

-- The traceparent header value of the current span, or nil.
function M.traceparent()
  local sp = M.on and current[running()]
  return sp and sp:traceparent() or nil
end

-- ---- GenAI spans (OpenTelemetry's gen_ai.* conventions) -------------------------------------
--
-- Each starts a span that is current until it finishes, takes only values
-- the agent loop already has, and returns NOOP while tracing is off.

-- invoke_agent: one run of an agent.  store: the agent's memory (or its
-- database); the run's trace is stored there when it is the trace's root.
function M.agent(name, conversation, store, agent_id)
  if not M.on then return NOOP end
  local sp = new_span("invoke_agent " .. tostring(name), "agent", M.INTERNAL, nil, nil,
    store_of(store))
  local a = sp.attributes
  a["gen_ai.operation.name"] = "invoke_agent"
  a["gen_ai.agent.name"] = name
  if agent_id ~= nil then a["gen_ai.agent.id"] = tostring(agent_id) end
  if conversation ~= nil then
    sp.conversation = tostring(conversation)
    a["gen_ai.conversation.id"] = sp.conversation
  end
  return sp
end

-- The end of a run: result {turns, usage = {input_tokens, output_tokens}}.
function M.agent_end(sp, result, err)
  if sp == NOOP then return end
  if type(result) == "table" then
    local u = result.usage
    if type(u) == "table" then
      sp:set("gen_ai.usage.input_tokens", u.input_tokens)
      sp:set("gen_ai.usage.output_tokens", u.output_tokens)
    end
    sp:set("agenthost.agent.turns", result.turns)
  end
  sp:finish(err)
end

-- A turn of the loop: one model call and the tool calls it asked for.
function M.turn(number)
  if not M.on then return NOOP end
  local sp = new_span("turn " .. tostring(number), "turn", M.INTERNAL)
  sp.attributes["agenthost.turn.number"] = number
  return sp
end

-- chat: one model call.  provider: gen_ai.provider.name ("openai", ...).
function M.chat(model, provider)
  if not M.on then return NOOP end
  local sp = new_span("chat " .. tostring(model), "chat", M.CLIENT)
  local a = sp.attributes
  a["gen_ai.operation.name"] = "chat"
  a["gen_ai.request.model"] = model
  a["gen_ai.provider.name"] = provider
  return sp
end

-- The end of a model call, from the provider's result {usage =
-- {input_tokens, output_tokens}, finish_reason, finish, raw = {id,
-- model}}; opts: {retries, time_to_first_token (seconds)}.
function M.chat_end(sp, resp, err, opts)
  if sp == NOOP then return end
  if type(resp) == "table" then
    local u = resp.usage
    if type(u) == "table" then
      sp:set("gen_ai.usage.input_tokens", u.input_tokens)
      sp:set("gen_ai.usage.output_tokens", u.output_tokens)
    end
    local reason = resp.finish_reason or resp.finish
    if reason ~= nil then sp:set("gen_ai.response.finish_reasons", { tostring(reason) }) end
    local raw = resp.raw
    if type(raw) == "table" then
      if type(raw.id) == "string" then sp:set("gen_ai.response.id", raw.id) end
      if type(raw.model) == "string" then sp:set("gen_ai.response.model", raw.model) end
    end
  end
  if type(opts) == "table" then
    sp:set("agenthost.chat.retries", opts.retries)
    sp:set("agenthost.chat.time_to_first_token", opts.time_to_first_token)
  end
  sp:finish(err)
end

-- execute_tool: one tool call {id, name, arguments, raw_arguments}.
function M.tool(call)
  if not M.on then return NOOP end
  local name = type(call) == "table" and call.name or nil
  local sp = new_span("execute_tool " .. tostring(name), "tool", M.INTERNAL)
  local a = sp.attributes
  a["gen_ai.operation.name"] = "execute_tool"
  a["gen_ai.tool.name"] = name
  a["gen_ai.tool.type"] = "function"
  if type(call) == "table" then
    a["gen_ai.tool.call.id"] = call.id
    local raw = call.raw_arguments
    if type(raw) == "string" then a["agenthost.tool.arguments_bytes"] = #raw end
  end
  return sp
end

-- The end of a tool call: res {is_error, content}; a result marked
-- is_error (sent back to the model) marks the span as failed with
-- error.type "tool_error".
function M.tool_end(sp, res, err)
  if sp == NOOP then return end
  if err == nil and type(res) == "table" and res.is_error then
    sp:set("error.type", "tool_error")
    local c = res.content
    sp:set_status("error", type(c) == "string" and c:sub(1, 1024) or "the tool failed")
  end
  sp:finish(err)
end

-- A handoff from one agent to another (the new agent's run is a child).
function M.handoff(from, to)
  if not M.on then return NOOP end
  local sp = new_span("handoff " .. tostring(to), "handoff", M.INTERNAL)
  sp.attributes["agenthost.handoff.from"] = from
  sp.attributes["agenthost.handoff.to"] = to
  return sp
end

-- A guardrail check; stage "input" or "output".  A tripped guardrail is
-- finished with an error (or sp:set("agenthost.guardrail.triggered", true)).
function M.guardrail(name, stage)
  if not M.on then return NOOP end
  local sp = new_span("guardrail " .. tostring(name), "guardrail", M.INTERNAL)
  sp.attributes["agenthost.guardrail.name"] = name
  sp.attributes["agenthost.guardrail.stage"] = stage
  return sp
end

-- ---- following the task ------------------------------------------------------------------

-- Clears the running coroutine's current span when a traced child ends.
local CLEAR = setmetatable({}, { __close = function() current[running()] = nil end })

local function in_span(sp, fn, ...)
  current[running()] = sp
  local _ <close> = CLEAR
  return fn(...)
end

local orig -- the task functions replaced while tracing is on

local function wrap_all(fns, from, to, sp)
  for i = from, to do
    local f = fns[i]
    if type(f) == "function" then
      fns[i] = function() return in_span(sp, f) end
    end
  end
  return fns
end

local function install_task_hooks()
  if orig then return end
  orig = { spawn = task.spawn, detach = task.detach, gather = task.gather,
           race = task.race, timeout = task.timeout }
  local o = orig
  task.spawn = function(fn, ...)
    if type(fn) ~= "function" then return o.spawn(fn, ...) end
    return o.spawn(in_span, current[running()] or false, fn, ...)
  end
  task.detach = function(fn, ...)
    if type(fn) ~= "function" then return o.detach(fn, ...) end
    return o.detach(in_span, current[running()] or false, fn, ...)
  end
  task.gather = function(...)
    local sp = current[running()]
    if not sp then return o.gather(...) end
    local n = select("#", ...)
    return o.gather(table.unpack(wrap_all({ ... }, 1, n, sp), 1, n))
  end
  task.race = function(...)
    local sp = current[running()]
    if not sp then return o.race(...) end
    local n = select("#", ...)
    return o.race(table.unpack(wrap_all({ ... }, 1, n, sp), 1, n))
  end
  task.timeout = function(seconds, fn, ...)
    local sp = current[running()]
    if not sp or type(fn) ~= "function" then return o.timeout(seconds, fn, ...) end
    return o.timeout(seconds, in_span, sp, fn, ...)
  end
end

local function remove_task_hooks()
  if not orig then return end
  for k, f in pairs(orig) do task[k] = f end
  orig = nil
end

-- The task functions as they are without tracing (for the exporter's own
-- background task, which must not inherit a span).
function M.raw_task(name)
  return (orig and orig[name]) or task[name]
end

-- ---- enable / disable ----------------------------------------------------------------------------

local function check_bool(opts, k)
  local v = opts[k]
  if v ~= nil and type(v) ~= "boolean" then
    core.error.raise("invalid_argument", "trace.enable: " .. k .. " must be true or false")
  end
  return v == true
end

-- trace.enable{store, otlp, on_span, http, proc, db} -> trace
--   store    an ah.store database or agenthost.memory: where traces go
--            whose root span names none (an agent's run names its memory)
--   otlp     nil: export when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set;
--            false: never; a table: the exporter's settings (docs/observability.md)
--   on_span  function(span) called with every finished span
--   http     client spans for ah.http requests (default false; traceparent
--            headers are sent from inside any span either way)
--   proc     spans for ah.proc.run / spawn (default false)
--   db       spans for db:exec / db:batch and events for db:post (default false)
-- Calling it again changes the settings.
function M.enable(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    core.error.raise("invalid_argument", "trace.enable: the options must be a table")
  end
  if opts.on_span ~= nil and type(opts.on_span) ~= "function" then
    core.error.raise("invalid_argument", "trace.enable: on_span must be a function")
  end
  local store = store_of(opts.store)
  if store ~= nil and type(store) ~= "userdata" then
    core.error.raise("invalid_argument",
      "trace.enable: store must be an ah.store database or an agenthost.memory")
  end
  local otlp = opts.otlp
  if otlp ~= nil and otlp ~= false and type(otlp) ~= "table" then
    core.error.raise("invalid_argument", "trace.enable: otlp must be false or a table of settings")
  end
  local exporter = cfg.exporter
  if otlp ~= false then
    local settings = otlp
    if settings == nil then settings = require("agenthost.trace.otlp").from_env(os.getenv) end
    if settings then exporter = require("agenthost.trace.otlp").new(settings) end
  else
    exporter = nil
  end
  cfg.http, cfg.proc, cfg.db = check_bool(opts, "http"), check_bool(opts, "proc"), check_bool(opts, "db")
  cfg.on_span, cfg.store, cfg.exporter = opts.on_span, store, exporter
  if not rng then seed() end
  if not M.on then
    base_ns = floor(core.wallclock() * 1e6) * 1000
    base_mono = clock()
  end
  if store then require("agenthost.trace.store").ensure(store) end
  install_task_hooks()
  require("agenthost.trace.hooks").install(M, cfg, current)
  M.on = true
  return M
end

-- trace.disable(): no new spans; spans already finished are still
-- exported (trace.flush waits for that).
function M.disable()
  if not M.on then return end
  M.on = false
  remove_task_hooks()
  require("agenthost.trace.hooks").remove()
end

-- trace.flush([timeout]): waits until the OTLP exporter's queue is empty
-- (sent or dropped); returns true, or false when timeout seconds passed.
function M.flush(timeout)
  local ex = cfg.exporter
  if not ex then return true end
  return ex:flush(timeout)
end

-- trace.stats() -> {on, started, finished, stored, sink_errors, export =
-- the exporter's counters or nil}
function M.stats()
  return { on = M.on, started = counts.started, finished = counts.finished,
           stored = counts.stored, sink_errors = counts.sink_errors,
           export = cfg.exporter and cfg.exporter:stats() or nil }
end

-- The exporter in use (for tests and metrics), or nil.
function M.exporter()
  return cfg.exporter
end

return M
