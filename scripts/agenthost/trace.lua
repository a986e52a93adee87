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
-- the current span is kept per coroutine in a weak table; a child puts its
-- entry back when it ends (a to-be-closed value, so an error or a
-- cancellation does it too), since the scheduler reuses the threads of
-- finished tasks and gather and race run their first function in the
-- calling task.
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
-- returns it (traceparent returns nil), it may be a to-be-closed value
-- (closing it does nothing), and nothing allocates.
local NOOP = setmetatable({ noop = true }, { __close = function() end })
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
-- make_current is false; attributes: its table of attributes (made by the
-- caller with room for the ones it will set, so that it rarely grows).
-- The span table is made whole in one constructor: a span costs what its
-- fields need and no rehash.
local function new_span(name, kind, span_kind, parent, make_current, store, attributes)
  local co = running()
  if parent == nil then parent = current[co] end
  local trace_id, parent_id, run, conversation, is_root
  if parent then
    trace_id, parent_id, conversation = parent.trace_id, parent.span_id, parent.conversation
    -- The run (invoke_agent span) the span belongs to, for handoffs.
    if not parent.remote then run = parent.kind == "agent" and parent or parent.run end
    -- A remote parent (a traceparent from elsewhere) names no store.
    store = store or parent.store or (parent.remote and cfg.store) or nil
    is_root = parent.remote or nil
  else
    trace_id, is_root = new_trace_id(), true
    store = store or cfg.store
  end
  local cur = make_current ~= false
  local sp = setmetatable({
    name = name, kind = kind, span_kind = span_kind, span_id = new_span_id(), start_ns = now_ns(),
    end_ns = nil, attributes = attributes or {}, status = UNSET, trace_id = trace_id,
    parent_id = parent_id, run = run, store = store, conversation = conversation, is_root = is_root,
    co = cur and co or nil, prev = cur and current[co] or nil,
  }, Span)
  counts.started = counts.started + 1
  if cur then current[co] = sp end
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
  self.run = nil -- a finished span keeps no other span alive
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
-- the agent loop already has, and returns NOOP while tracing is off.  The
-- spans may be to-be-closed values (`local sp <close> = trace.turn(n)`):
-- leaving the block by an error (a cancellation included) ends the span
-- with that error, the way its _end function would; leaving it normally
-- ends a span not ended yet.

-- invoke_agent: one run of an agent.  store: the agent's memory (or its
-- database): the run's spans are stored there.  progress: a table whose
-- turns and usage fields hold the run's figures so far (the loop's own
-- record of the run), read when the span ends without a result (as a
-- to-be-closed value, or by agent_end with none).
function M.agent(name, conversation, store, agent_id, progress)
  if not M.on then return NOOP end
  if conversation ~= nil then conversation = tostring(conversation) end
  local sp = new_span("invoke_agent " .. tostring(name), "agent", M.INTERNAL, nil, nil,
    store_of(store), {
      ["gen_ai.operation.name"] = "invoke_agent", ["gen_ai.agent.name"] = name,
      ["gen_ai.agent.id"] = agent_id ~= nil and tostring(agent_id) or nil,
      ["gen_ai.conversation.id"] = conversation,
      ["gen_ai.usage.input_tokens"] = nil, ["gen_ai.usage.output_tokens"] = nil,
      ["agenthost.agent.turns"] = nil,
    })
  sp.progress = progress
  if conversation ~= nil then sp.conversation = conversation end
  return sp
end

-- The end of a run: result {turns, usage = {input_tokens, output_tokens}}
-- (the run's result; nil: the span's progress table).  The handoff
-- stretch still open ends with it.
function M.agent_end(sp, result, err)
  if sp == NOOP then return end
  if result == nil then result = sp.progress end
  sp.progress = nil -- the loop's record of the run is not kept with the span
  if type(result) == "table" then
    local u = result.usage
    if type(u) == "table" then
      sp:set("gen_ai.usage.input_tokens", u.input_tokens)
      sp:set("gen_ai.usage.output_tokens", u.output_tokens)
    end
    sp:set("agenthost.agent.turns", result.turns)
  end
  local h = sp.handoff
  if h then
    sp.handoff = nil
    h:finish(err)
  end
  sp:finish(err)
end

-- A turn of the loop: one model call and the tool calls it asked for.
-- agent: the name of the agent taking the turn; messages: the
-- conversation as the loop holds it before the turn (its list of
-- messages), from which the turn's place in the whole conversation is
-- counted (agenthost.conversation.turn: the number of model answers before
-- it, plus one), which is how the timeline finds the stored messages of
-- the turn when a conversation spans several runs.
function M.turn(number, agent, messages)
  if not M.on then return NOOP end
  local answers
  if type(messages) == "table" then
    answers = 1
    for i = 1, #messages do
      local m = messages[i]
      if type(m) == "table" and m.role == "assistant" then answers = answers + 1 end
    end
  end
  return new_span("turn " .. tostring(number), "turn", M.INTERNAL, nil, nil, nil, {
    ["agenthost.turn.number"] = number, ["gen_ai.agent.name"] = agent,
    ["agenthost.conversation.turn"] = answers,
  })
end

-- chat: one model call.  model: the model's name, or the provider itself
-- (an agenthost.llm provider, or any table with model and kind fields);
-- provider: gen_ai.provider.name ("openai", ...).
function M.chat(model, provider)
  if not M.on then return NOOP end
  if type(model) == "table" then
    provider = provider or model.kind
    model = model.model
  elseif type(model) == "userdata" then
    model = nil
  end
  return new_span(model ~= nil and ("chat " .. tostring(model)) or "chat", "chat", M.CLIENT,
    nil, nil, nil, {
      ["gen_ai.operation.name"] = "chat", ["gen_ai.request.model"] = model,
      ["gen_ai.provider.name"] = provider,
      ["gen_ai.usage.input_tokens"] = nil, ["gen_ai.usage.output_tokens"] = nil,
      ["gen_ai.response.finish_reasons"] = nil, ["gen_ai.response.id"] = nil,
      ["gen_ai.response.model"] = nil, ["agenthost.chat.retries"] = nil,
    })
end

-- One-item arrays of finish reasons, shared by the spans that have the
-- same reason (a handful of distinct ones; beyond 32, each span gets its own).
local reasons, nreasons = {}, 0

local function reason_list(reason)
  reason = tostring(reason)
  local r = reasons[reason]
  if r then return r end
  r = { reason }
  if nreasons < 32 then
    nreasons = nreasons + 1
    reasons[reason] = r
  end
  return r
end

local function int_or_nil(v)
  return math.type(v) == "integer" and v or nil
end

-- The end of a model call, from the provider's result {usage =
-- {input_tokens, output_tokens}, finish_reason (or finish), id, model,
-- retries, time_to_first_token (seconds), raw}, or from its error err
-- (whose attempts give the retries).  opts {retries, time_to_first_token}
-- overrides what the result says.
function M.chat_end(sp, resp, err, opts)
  if sp == NOOP then return end
  local retries, ttft
  if type(resp) == "table" then
    local u = resp.usage
    if type(u) == "table" then
      sp:set("gen_ai.usage.input_tokens", u.input_tokens)
      sp:set("gen_ai.usage.output_tokens", u.output_tokens)
    end
    local reason = resp.finish_reason or resp.finish
    if reason ~= nil then sp:set("gen_ai.response.finish_reasons", reason_list(reason)) end
    local raw = type(resp.raw) == "table" and resp.raw or nil
    local id = resp.id or (raw and raw.id)
    local model = resp.model or (raw and raw.model)
    if type(id) == "string" then sp:set("gen_ai.response.id", id) end
    if type(model) == "string" then sp:set("gen_ai.response.model", model) end
    retries, ttft = int_or_nil(resp.retries), resp.time_to_first_token
  elseif type(err) == "table" then
    local n = int_or_nil(err.attempts)
    if n then retries = n - 1 end
  end
  if type(opts) == "table" then
    if opts.retries ~= nil then retries = opts.retries end
    if opts.time_to_first_token ~= nil then ttft = opts.time_to_first_token end
  end
  sp:set("agenthost.chat.retries", retries)
  if type(ttft) == "number" then sp:set("agenthost.chat.time_to_first_token", ttft) end
  sp:finish(err)
end

-- execute_tool: one tool call {id, name, arguments, raw_arguments}.
function M.tool(call)
  if not M.on then return NOOP end
  local name, id, bytes
  if type(call) == "table" then
    name, id = call.name, call.id
    if type(call.raw_arguments) == "string" then bytes = #call.raw_arguments end
  end
  return new_span("execute_tool " .. tostring(name), "tool", M.INTERNAL, nil, nil, nil, {
    ["gen_ai.operation.name"] = "execute_tool", ["gen_ai.tool.name"] = name,
    ["gen_ai.tool.type"] = "function", ["gen_ai.tool.call.id"] = id,
    ["agenthost.tool.arguments_bytes"] = bytes, ["error.type"] = nil,
  })
end

-- The end of a tool call: res {is_error, content, error} (what the tool
-- registry returns).  A result marked is_error (sent back to the model)
-- marks the span as failed: error.type is the kind of the error the tool
-- raised when it raised a structured one (timeout, ...), else
-- "tool_error" (a failing tool, invalid arguments, a call not approved);
-- the status message is the text the model was sent.
function M.tool_end(sp, res, err)
  if sp == NOOP then return end
  if err == nil and type(res) == "table" and res.is_error then
    local e = res.error
    sp:set("error.type", type(e) == "table" and type(e.kind) == "string" and e.kind or "tool_error")
    local c = res.content
    sp:set_status("error", type(c) == "string" and c:sub(1, 1024) or "the tool failed")
  end
  sp:finish(err)
end

-- A handoff from one agent to another, called where the run hands the
-- conversation on.  The span is the stretch of the run that the agent
-- handed to has the conversation: a child of the run's invoke_agent span
-- (a sibling of the turns before it, whichever span is current when it is
-- called) and current from then on, so that the target's turns are its
-- children.  It ends at the next handoff of the run (whose span is its
-- sibling) or with the run (trace.agent_end); finishing it earlier is
-- allowed.  Outside a run's span it is a point in time under the current
-- span.  call_id: the id of the model's transfer call.
function M.handoff(from, to, call_id)
  if not M.on then return NOOP end
  local co = running()
  local cur = current[co]
  local run = cur and (cur.kind == "agent" and cur or cur.run)
  if run and run.end_ns then run = nil end
  local before = run and run.handoff
  if before then before:finish() end
  local sp = new_span("handoff " .. tostring(to), "handoff", M.INTERNAL, run or nil, false, nil, {
    ["agenthost.handoff.from"] = from, ["agenthost.handoff.to"] = to, ["gen_ai.tool.call.id"] = call_id,
  })
  if not run then return sp:finish() end
  run.handoff = sp
  sp.co, sp.prev = co, run
  current[co] = sp
  return sp
end

-- A guardrail check; stage "input" or "output".  Its end:
-- trace.guardrail_end(sp, verdict), where a verdict (nil when the check
-- passed, else {reason}) marks a trip: agenthost.guardrail.triggered,
-- error.type "guardrail" and the reason as the status message.
function M.guardrail(name, stage)
  if not M.on then return NOOP end
  return new_span("guardrail " .. tostring(name), "guardrail", M.INTERNAL, nil, nil, nil, {
    ["agenthost.guardrail.name"] = name, ["agenthost.guardrail.stage"] = stage,
    ["agenthost.guardrail.triggered"] = nil, ["error.type"] = nil,
  })
end

function M.guardrail_end(sp, verdict, err)
  if sp == NOOP then return end
  sp:set("agenthost.guardrail.triggered", verdict ~= nil)
  if verdict ~= nil and err == nil then
    sp:set("error.type", "guardrail")
    local why = type(verdict) == "table" and verdict.reason or verdict
    sp:set_status("error", why ~= nil and tostring(why):sub(1, 1024) or "tripped")
  end
  sp:finish(err)
end

-- What closing a span (<close>) does: the end function of its kind.
local closers = { agent = M.agent_end, chat = M.chat_end, tool = M.tool_end,
                  guardrail = M.guardrail_end }

function Span.__close(sp, err)
  if sp.end_ns then return end
  local fn = closers[sp.kind]
  if fn then fn(sp, nil, err) else sp:finish(err) end
end

-- ---- following the task ------------------------------------------------------------------

-- Puts back the running coroutine's current span when a traced child
-- ends: nil on a thread of its own (which the scheduler may reuse), the
-- caller's span when gather or race ran the function in the calling task.
local Restore = { __close = function(r) current[r.co] = r.prev end }

local function in_span(sp, fn, ...)
  local co = running()
  local _ <close> = setmetatable({ co = co, prev = current[co] }, Restore)
  current[co] = sp
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
  if store ~= nil and type(store) ~= "userdata" and
      not (type(store) == "table" and type(store.post) == "function") then
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
