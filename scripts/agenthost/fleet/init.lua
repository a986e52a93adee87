-- agenthost.fleet: durable runs on PostgreSQL, shared by worker processes on
-- any number of machines (docs/fleet.md).
--
--   local fleet = ah.fleet.open{ db = "postgres://...", name = "ops" }
--   local id = fleet:submit("triage", { ticket = 42 }, { key = "ticket-42" })
--   local result = fleet:wait(id, { timeout = 60 })
--   fleet:status(id)  fleet:cancel(id)  fleet:list{ state = "running" }
--   fleet:send(id, "approval", { ok = true })
--   fleet:serve{ concurrency = 1000, handlers = { triage = function(run, input) ... end } }
--
-- This file is the client side (open, submit, wait, status, list, cancel,
-- send, limits) and the notification hub that wait and serve share;
-- agenthost.fleet.worker is serve, agenthost.fleet.sql holds every
-- statement.  It relies on ah.pg (a pool with query/exec/first,
-- transaction and listen) and on ah.json for the JSON it stores.
--
-- Values given to the fleet (inputs, step results, run results, event
-- payloads) are stored as JSON: strings, numbers, booleans, and tables that
-- are arrays or have string keys.  What a caller reads back is the decoded
-- JSON: numbers keep their type and digits (an integer id comes back the
-- integer it was, 71.0 a float), JSON null inside a table is ah.null.

local ah = require "agenthost.core"
local json = ah.json
local sql = require "agenthost.fleet.sql"
local task = ah.task

local M = {}
local Fleet = {}
Fleet.__index = Fleet
M.Fleet = Fleet

local TERMINAL = { done = true, failed = true, dead = true, cancelled = true }
M.TERMINAL = TERMINAL

local function raise(kind, msg, fields)
  error(ah.error.new(kind, msg, fields), 3)
end

local function bad(fn, msg)
  error(ah.error.new("invalid_argument", fn .. ": " .. msg), 3)
end

-- NULL from the binding (ah.null, or nil).
local function null(v)
  return v == nil or v == ah.null
end
M.null = null

-- The largest JSON text the fleet stores for one value (an input, a
-- result, a step's output, an event's payload): they are rows read on
-- every resume, not a place for bulk data.
M.MAX_VALUE = 8 * 1024 * 1024

local function too_large(fn, what, n)
  error(ah.error.new("too_large", string.format("%s: %s is %d bytes of JSON, more than the " ..
    "%d the fleet stores; keep bulk data elsewhere and pass a reference", fn, what, n,
    M.MAX_VALUE)), 4)
end
M.too_large = too_large

-- JSON text of v; a value that JSON cannot hold raises invalid_argument
-- naming what was given, one past MAX_VALUE too_large.
local function encode(v, fn, what)
  if v == nil then return "null" end
  local ok, s = pcall(json.encode, v)
  if not ok then
    bad(fn, what .. " must be a JSON value (strings, numbers, booleans, arrays, " ..
      "string-keyed tables): " .. tostring(type(s) == "table" and s.message or s))
  end
  if #s > M.MAX_VALUE then too_large(fn, what, #s) end
  return s
end
M.encode = encode

-- The value of JSON text (the fleet's columns are read as text): nil for
-- NULL and for JSON null at the top.
local function decode(s)
  if null(s) then return nil end
  local v = json.decode(s)
  if v == ah.null then return nil end
  return v
end
M.decode = decode

-- The same for JSON that may be null inside (a step's outputs).
function M.decode_raw(s)
  return json.decode(s)
end

local NAME = "^[a-z][a-z0-9_]*$"

-- ah.fleet.open{db = URL or an ah.pg pool, name = "default", schema =,
-- pool_size = 8, poll = 1, create = true}: the fleet's tables (schema
-- "fleet_<name>"), created when missing (create = false only reads).  A fleet opened from a URL owns its pool and closes
-- it in close(); one opened on a pool shares it (transactions, memory).
function M.open(opts)
  if type(opts) ~= "table" then bad("ah.fleet.open", "expected a table {db =, name =}") end
  local name = opts.name or "default"
  if type(name) ~= "string" or not name:match(NAME) or #name > 40 then
    bad("ah.fleet.open", "name must be lower-case letters, digits and '_' (at most 40), " ..
      "starting with a letter")
  end
  local schema = opts.schema or ("fleet_" .. name)
  if type(schema) ~= "string" or not schema:match(NAME) or #schema > 48 then
    bad("ah.fleet.open", "schema must be lower-case letters, digits and '_', starting with a letter")
  end
  local poll = opts.poll or 1
  if type(poll) ~= "number" or poll <= 0 then bad("ah.fleet.open", "poll must be a number > 0") end
  local db, owned = opts.db, false
  if type(db) == "string" then
    local size = opts.pool_size or 8
    if math.type(size) ~= "integer" or size < 2 then
      bad("ah.fleet.open", "pool_size must be an integer >= 2 (a worker listens on one connection)")
    end
    if not ah.pg then
      error(ah.error.new("invalid_argument", "ah.fleet.open: this agenthost was built " ..
        "without the PostgreSQL binding (ah.pg)"), 2)
    end
    db, owned = ah.pg.pool { url = db, size = size }, true
  elseif type(db) ~= "table" and type(db) ~= "userdata" then
    bad("ah.fleet.open", "db must be a PostgreSQL URL or an ah.pg pool")
  end
  local ident = '"' .. schema .. '"'
  local q = {}
  for k, v in pairs(sql) do
    if type(v) == "string" then q[k] = sql.render(v, ident) end
  end
  local self = setmetatable({
    db = db, owned = owned, name = name, schema = schema, q = q, poll = poll,
    new_channel = schema .. "_new", run_channel = schema .. "_run",
    hub = nil,
  }, Fleet)
  local ok, err = true, nil
  if opts.create ~= false then ok, err = pcall(M.migrate, self) end
  if not ok then
    if owned then pcall(db.close, db) end
    error(err, 0)
  end
  return self
end

-- Creates the schema when missing, under an advisory lock so that workers
-- starting together do not race; a schema of a newer version is refused.
function M.migrate(self)
  self.db:transaction(function(tx)
    tx:query(sql.lock_schema, "agenthost.fleet:" .. self.schema)
    for _, ddl in ipairs(sql.schema) do tx:exec(sql.render(ddl, '"' .. self.schema .. '"')) end
    local row = tx:first(self.q.version)
    if row == nil or null(row) then
      tx:exec(self.q.set_version, sql.VERSION)
    elseif row.version > sql.VERSION then
      raise("invalid_argument", string.format("ah.fleet.open: schema %s is at version %d, " ..
        "newer than this agenthost's %d; upgrade agenthost", self.schema, row.version, sql.VERSION))
    end
  end)
end

function Fleet:close()
  if self.hub then self.hub:stop() end
  if self.owned then self.db:close() end
end

-- ---- notifications -------------------------------------------------------------
--
-- One listener per fleet object, on both channels, shared by every wait and
-- by serve.  Subscribers register a function for a payload ("done:12",
-- "cancel:12", "event:12") or for every payload of a channel; the hub runs
-- while it has users and closes its listeners when the last one leaves.
-- Notifications are a wake-up only: every waiter also re-reads the database
-- on its own period, so a notification lost (a listener reconnecting)
-- delays, and never loses, anything.

local Hub = {}
Hub.__index = Hub

function Fleet:_hub()
  local hub = self.hub
  if hub then return hub end
  hub = setmetatable({ fleet = self, users = 0, by_payload = {}, by_channel = {},
                       tasks = {}, listeners = {} }, Hub)
  self.hub = hub
  return hub
end

function Hub:dispatch(channel, payload, missed)
  if missed then
    -- The listener's connection was replaced and notifications sent
    -- meanwhile are lost: every subscriber is woken to read again.
    for _, set in pairs(self.by_payload) do
      for fn in pairs(set) do fn("missed") end
    end
    local fns = self.by_channel[channel]
    if fns then for fn in pairs(fns) do fn("missed") end end
    return
  end
  local fns = self.by_payload[payload]
  if fns then for fn in pairs(fns) do fn(payload) end end
  fns = self.by_channel[channel]
  if fns then for fn in pairs(fns) do fn(payload) end end
end

function Hub:start()
  self.users = self.users + 1
  if self.users > 1 then return end
  local fleet = self.fleet
  for _, ch in ipairs { fleet.new_channel, fleet.run_channel } do
    local l = fleet.db:listen(ch)
    self.listeners[#self.listeners + 1] = l
    -- Detached: the hub belongs to the fleet object, not to the task that
    -- first needed it; stop() cancels it when the last user leaves.
    local t
    task.detach(function()
      t = task.current()
      self.tasks[#self.tasks + 1] = t
      while true do
        local ok, n = pcall(l.recv, l)
        if not ok then
          if task.current():cancelled() then return end
          -- The listener failed (a lost connection it could not get back);
          -- the users' periodic reads carry on without it.
          io.stderr:write("agenthost.fleet: the listener on ", ch, " failed: ",
            tostring(n), "\n")
          return
        end
        if n then self:dispatch(n.channel or ch, n.payload or "", n.missed) end
      end
    end)
  end
end

function Hub:stop(force)
  if not force then
    self.users = self.users - 1
    if self.users > 0 then return end
  end
  self.users = 0
  for _, t in ipairs(self.tasks) do t:cancel() end
  for _, l in ipairs(self.listeners) do
    if l.close then pcall(l.close, l) end
  end
  self.tasks, self.listeners = {}, {}
end

function Hub:on(payload, fn)
  local set = self.by_payload[payload]
  if not set then set = {} self.by_payload[payload] = set end
  set[fn] = true
end

function Hub:off(payload, fn)
  local set = self.by_payload[payload]
  if not set then return end
  set[fn] = nil
  if next(set) == nil then self.by_payload[payload] = nil end
end

function Hub:on_channel(channel, fn)
  local set = self.by_channel[channel] or {}
  self.by_channel[channel] = set
  set[fn] = true
end

function Hub:off_channel(channel, fn)
  local set = self.by_channel[channel]
  if set then set[fn] = nil end
end

M.Hub = Hub

-- ---- submitting ----------------------------------------------------------------

local function check_id(fn, id)
  if math.type(id) ~= "integer" or id < 1 then bad(fn, "the run id must be an integer >= 1") end
end

-- fleet:submit(kind, input [, {key =, tx =, priority = 0, delay = 0,
-- max_attempts = 5}]) -> run id.  With a key, submitting again returns the
-- run the key first made (whatever its input); with tx (an ah.pg
-- transaction of the fleet's database) the run exists iff tx commits.
function Fleet:submit(kind, input, opts)
  local fn = "fleet:submit"
  if type(kind) ~= "string" or kind == "" then bad(fn, "kind must be a non-empty string") end
  if opts ~= nil and type(opts) ~= "table" then bad(fn, "the options must be a table") end
  opts = opts or {}
  local key = opts.key
  if key ~= nil and (type(key) ~= "string" or key == "") then
    bad(fn, "key must be a non-empty string")
  end
  local priority = opts.priority or 0
  if math.type(priority) ~= "integer" then bad(fn, "priority must be an integer") end
  local delay = opts.delay or 0
  if type(delay) ~= "number" or delay < 0 then bad(fn, "delay must be a number of seconds >= 0") end
  local max_attempts = opts.max_attempts or 5
  if math.type(max_attempts) ~= "integer" or max_attempts < 1 then
    bad(fn, "max_attempts must be an integer >= 1")
  end
  local json = encode(input, fn, "the input")
  local db = opts.tx or self.db
  local row = db:first(self.q.submit, kind, key or ah.null, json, priority, delay + 0.0,
    max_attempts, self.new_channel)
  if row and not null(row) then return row.id end
  -- The key exists: the run it made (committed, or being committed by a
  -- concurrent submitter, which this statement waited for).
  row = db:first(self.q.submit_existing, key)
  if row == nil or null(row) then
    raise("conflict", fn .. ": the key " .. key .. " is being submitted by a transaction " ..
      "that rolled back; submit again", { retryable = true })
  end
  return row.id
end

-- ---- reading -------------------------------------------------------------------

local function run_row(r)
  if r == nil or null(r) then return nil end
  local out = {}
  for k, v in pairs(r) do
    if not null(v) then out[k] = v end
  end
  out.input = decode(out.input)
  out.result = decode(out.result)
  out.error = decode(out.error)
  return out
end

-- fleet:status(id) -> {id, kind, key, state, attempts, max_attempts,
-- worker, input, result, error, created_at, run_at, started_at,
-- finished_at, lease_until (epoch seconds)} or nil when there is no such run.
function Fleet:status(id)
  check_id("fleet:status", id)
  return run_row(self.db:first(self.q.status, id))
end

-- fleet:steps(id) -> the checkpoints of a run, in the order they were stored.
function Fleet:steps(id)
  check_id("fleet:steps", id)
  local out = {}
  for i, r in ipairs(self.db:query(self.q.steps_of, id)) do
    out[i] = { name = r.name, output = decode(r.output), token = r.token, created_at = r.created_at }
  end
  return out
end

-- fleet:list{state =, kind =, after = 0, limit = 100} -> runs in id order
-- (after: the last id of the previous page).
function Fleet:list(opts)
  local fn = "fleet:list"
  if opts ~= nil and type(opts) ~= "table" then bad(fn, "the options must be a table") end
  opts = opts or {}
  if opts.state ~= nil and type(opts.state) ~= "string" then bad(fn, "state must be a string") end
  if opts.kind ~= nil and type(opts.kind) ~= "string" then bad(fn, "kind must be a string") end
  local limit = opts.limit or 100
  if math.type(limit) ~= "integer" or limit < 1 then bad(fn, "limit must be an integer >= 1") end
  local after = opts.after or 0
  if math.type(after) ~= "integer" then bad(fn, "after must be an integer (a run id)") end
  local rows = self.db:query(self.q.list, opts.state or ah.null, opts.kind or ah.null, after, limit)
  local out = {}
  for i, r in ipairs(rows) do out[i] = run_row(r) end
  return out
end

-- The error fleet:wait raises for a run that ended without a result.
local function run_error(row)
  local e = row.error or {}
  local kind = row.state == "cancelled" and "run_cancelled" or "run_failed"
  local msg = string.format("run %d (%s) %s after %d attempt(s)", row.id, row.kind,
    row.state == "cancelled" and "was cancelled"
      or row.state == "dead" and "failed on every attempt" or "failed",
    row.attempts or 0)
  if type(e) == "table" and e.message then
    msg = msg .. ": " .. (e.kind and (tostring(e.kind) .. ": ") or "") .. tostring(e.message)
  end
  return ah.error.new(kind, msg, { run = row.id, state = row.state, cause = e,
                                   retryable = false })
end

-- fleet:wait(id [, {timeout =}]) -> the run's result.  Raises run_failed
-- (state failed or dead; err.cause is the run's last error), run_cancelled,
-- or timeout (the run goes on).  Woken by the run's notification; reads
-- the run again every `poll` seconds in case one was missed.
function Fleet:wait(id, opts)
  local fn = "fleet:wait"
  check_id(fn, id)
  if opts ~= nil and type(opts) ~= "table" then bad(fn, "the options must be a table") end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    bad(fn, "timeout must be a number of seconds >= 0")
  end
  local deadline = timeout and ah.clock() + timeout
  local hub = self:_hub()
  local ev = task.event()
  local key = "done:" .. id
  local function wake() ev:set() end
  hub:on(key, wake)
  hub:start()
  local ok, a, b = pcall(function()
    while true do
      ev:clear()
      local row = run_row(self.db:first(self.q.status, id))
      if not row then raise("not_found", fn .. ": there is no run " .. id) end
      if row.state == "done" then return true, row.result end
      if TERMINAL[row.state] then return false, run_error(row) end
      local left = deadline and deadline - ah.clock()
      if left and left <= 0 then
        raise("timeout", string.format("%s: run %d is still %s after %g s", fn, id,
          row.state, timeout), { retryable = true, run = id, state = row.state })
      end
      local span = math.min(left or self.poll, self.poll)
      pcall(task.timeout, span, ev.wait, ev)
    end
  end)
  hub:off(key, wake)
  hub:stop()
  if not ok then error(a, 0) end
  if not a then error(b, 0) end
  return b
end

-- fleet:cancel(id) -> the run's state after it: "cancelled" for a run
-- that was waiting; "running" for one whose worker is being told (its task
-- is cancelled, then it ends "cancelled"); nil when it had already ended.
function Fleet:cancel(id)
  check_id("fleet:cancel", id)
  local row = self.db:first(self.q.cancel, id, self.run_channel)
  if row == nil or null(row) then return nil end
  return row.state
end

-- fleet:send(id, name, payload [, {tx =}]): delivers an event to a run;
-- run:wait_event(name) takes it (now, or whenever the run waits for it).
-- Events of one name are taken oldest first, each once.
function Fleet:send(id, name, payload, opts)
  local fn = "fleet:send"
  check_id(fn, id)
  if type(name) ~= "string" or name == "" then bad(fn, "the event name must be a non-empty string") end
  local json = encode(payload, fn, "the payload")
  local function send(tx)
    local r = tx:first(self.q.send_lock, id)
    if r == nil or null(r) then raise("not_found", fn .. ": there is no run " .. id) end
    if TERMINAL[r.state] then
      raise("invalid_argument", string.format("%s: run %d has ended (%s); it takes no events",
        fn, id, r.state))
    end
    tx:first(self.q.send, id, name, json, self.run_channel, self.new_channel)
  end
  if opts and opts.tx then return send(opts.tx) end
  self.db:transaction(send)
end

-- fleet:limit(kind, n): at most n runs of kind run at once across the
-- fleet (nil removes the limit).  Workers hear of it at once.
function Fleet:limit(kind, n)
  local fn = "fleet:limit"
  if type(kind) ~= "string" or kind == "" then bad(fn, "kind must be a non-empty string") end
  if n == nil then
    self.db:query(self.q.clear_limit, kind, self.new_channel)
    return
  end
  if math.type(n) ~= "integer" or n < 0 then bad(fn, "the limit must be an integer >= 0 or nil") end
  self.db:query(self.q.set_limit, kind, n, self.new_channel)
end

-- fleet:serve{...}: see agenthost.fleet.worker.
function Fleet:serve(opts)
  return require("agenthost.fleet.worker").serve(self, opts)
end

-- fleet:report() -> what `agenthost fleet status` prints, as a table.
function Fleet:report()
  local db, q = self.db, self.q
  local out = { states = {}, kinds = {}, workers = {} }
  for _, r in ipairs(db:query(q.report_states)) do out.states[r.state] = r.n end
  local queue = db:first(q.report_queue)
  out.queue = { due = queue.due, delayed = queue.delayed, waiting = queue.waiting,
                oldest_due_s = not null(queue.oldest_due_s) and queue.oldest_due_s or nil }
  for i, r in ipairs(db:query(q.report_kinds)) do
    out.kinds[i] = { kind = r.kind, queued = r.queued, running = r.running,
                     max_running = not null(r.max_running) and r.max_running or nil }
  end
  for i, r in ipairs(db:query(q.report_workers)) do
    out.workers[i] = { id = r.id, host = r.host, pid = r.pid, kinds = r.kinds,
                       concurrency = r.concurrency, heartbeat_age = r.heartbeat_age,
                       alive = r.alive, leases = r.leases,
                       next_expiry = not null(r.next_expiry) and r.next_expiry or nil }
  end
  out.orphans = db:first(q.report_orphans).n
  return out
end

return M
