-- agenthost.fleet.worker: fleet:serve, the worker side of the fleet.
--
--   fleet:serve{ handlers = { kind = fn(run, input) | {fn, max_attempts =,
--                backoff = {base =, factor =, max =}, limit =} },
--                concurrency = 100, lease = 10, heartbeat = lease / 3,
--                batch = 64, park_after = 60, writers = 2 }
--
-- One worker is one serve call: it claims due runs in batches (FOR UPDATE
-- SKIP LOCKED), runs each handler in a task of its own, and writes what
-- they do (step checkpoints, results) through batchers that put every
-- write waiting at that moment into one statement (group commit across
-- runs).  A heartbeat renews the leases of the runs it holds; a sweeper
-- takes back the runs of workers whose leases expired, waking up just when
-- the next lease expires.  LISTEN/NOTIFY wakes it when a run is submitted
-- or an event, a cancellation or a limit arrives; it also polls every
-- `poll` seconds, which is the safety net for a lost notification and the
-- resolution of delayed runs.
--
-- serve returns after fleet:stop() (graceful: no more claims, the running
-- handlers get `grace` seconds to finish, the rest are released) or raises
-- when its task is cancelled (SIGTERM under the agenthost command): then
-- every handler task is cancelled and every lease released at once, so
-- other workers resume those runs without waiting for the lease to expire.
--
-- Relies on agenthost.fleet (the client side and the notification hub)
-- and its sql module; every guarantee rests on the statements there.

local ah = require "agenthost.core"
local fleet_mod = require "agenthost.fleet"
local task = ah.task

local null, decode, decode_raw = fleet_mod.null, fleet_mod.decode, fleet_mod.decode_raw
local jencode = ah.json.encode
local jnull = ah.null

local M = {}

local function bad(msg)
  error(ah.error.new("invalid_argument", "fleet:serve: " .. msg), 3)
end

-- ---- the worker's identity ---------------------------------------------------------

local function read_first_line(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("l")
  f:close()
  return s
end

local function identity()
  local host = read_first_line("/proc/sys/kernel/hostname") or read_first_line("/etc/hostname")
    or "host"
  local stat = read_first_line("/proc/self/stat")
  local pid = stat and tonumber(stat:match("^(%d+)")) or 0
  return host, pid, string.format("%s:%d:%06x", host, pid, math.random(0, 0xffffff))
end

-- ---- batchers: group commit across runs -------------------------------------------
--
-- A batcher takes items from any number of tasks and hands every item
-- waiting at that moment to flush(items) in one call, in up to `writers`
-- concurrent flushes (so that a statement in flight does not hold back the
-- next batch).  flush sets item.ok (or item.err) on each; submit waits for
-- its item's outcome.  A flush that raises a retryable error (a lost
-- connection, a deadlock) is tried again, up to 5 times with backoff; any
-- other error fails the items of that batch alone.

local Batcher = {}
Batcher.__index = Batcher

local function batcher(name, flush, writers, max)
  return setmetatable({ name = name, flush = flush, writers = writers, max = max,
                        pending = {}, ev = task.event(), tasks = {}, closed = false }, Batcher)
end

function Batcher:submit(item)
  if self.closed then
    error(ah.error.new("cancelled", "agenthost.fleet: the worker is stopping"), 0)
  end
  item.done = task.event()
  local p = self.pending
  p[#p + 1] = item
  self.ev:set()
  item.done:wait()
  if item.err then error(item.err, 0) end
  return item
end

function Batcher:run()
  while true do
    self.ev:wait()
    local items = self.pending
    if #items > self.max then
      local rest = table.move(items, self.max + 1, #items, 1, {})
      for i = #items, self.max + 1, -1 do items[i] = nil end
      self.pending = rest
    else
      self.pending = {}
      self.ev:clear()
    end
    local tries = 0
    while true do
      tries = tries + 1
      local ok, err = pcall(self.flush, items)
      if ok then break end
      if task.current():cancelled() then
        for _, it in ipairs(items) do it.err = it.err or err it.done:set() end
        error(err, 0)
      end
      if not (type(err) == "table" and err.retryable) or tries >= 5 then
        for _, it in ipairs(items) do it.err = err end
        break
      end
      task.sleep(0.05 * tries)
    end
    for _, it in ipairs(items) do it.done:set() end
  end
end

function Batcher:start()
  for i = 1, self.writers do
    self.tasks[i] = task.spawn(self.run, self)
  end
end

function Batcher:stop()
  self.closed = true
  for _, t in ipairs(self.tasks) do t:cancel() end
  for _, it in ipairs(self.pending) do
    it.err = ah.error.new("cancelled", "agenthost.fleet: the worker is stopping")
    it.done:set()
  end
  self.pending = {}
end

-- ---- the run object a handler gets -------------------------------------------------

local Run = {}
Run.__index = Run
M.Run = Run

local function lease_lost(rec)
  rec.reason = rec.reason or "lost"
  return ah.error.new("lease_lost", string.format("run %d: this worker no longer holds the " ..
    "run (its lease expired and another worker took it, or it was released); the handler " ..
    "stops here", rec.id), { retryable = false, run = rec.id, unwind = true })
end

-- Raises when the run must stop here: cancelled through the fleet, its
-- lease lost, or the worker releasing it.  Checked at every step, sleep
-- and wait, so that a handler whose cancellation was swallowed (a pcall
-- that ignored it) still stops at its next durable operation.
local function check_live(rec)
  local r = rec.reason
  if r == nil then return end
  if r == "cancel" then
    error(ah.error.new("cancelled", string.format("run %d was cancelled", rec.id)), 0)
  elseif r == "release" then
    error(ah.error.new("cancelled", string.format("run %d is being released", rec.id)), 0)
  end
  error(lease_lost(rec), 0)
end

-- The name of the next use of `base` in this execution: the first is the
-- name itself, then "name#2", "name#3"...  A handler that runs its steps
-- in the same order every time gets the same names every time, which is
-- what lets a resumed run find its checkpoints.
local function next_name(run, base)
  local counts = run._counts
  local c = (counts[base] or 0) + 1
  counts[base] = c
  if c == 1 then return base end
  return base .. "#" .. c
end

local function check_name(fn, name)
  if type(name) ~= "string" or name == "" then
    error(ah.error.new("invalid_argument", fn .. ": the name must be a non-empty string"), 3)
  end
  if name:find("#", 1, true) or name:sub(1, 1) == "@" then
    error(ah.error.new("invalid_argument", fn .. ": the name " .. name .. " may not contain '#' " ..
      "or start with '@' (reserved for the names the fleet makes)"), 3)
  end
end

-- The stored outputs are JSON arrays of the values returned ([v1, ...]).
local function unpack_output(out)
  if type(out) ~= "table" then return out end
  local n = #out
  for i = 1, n do if out[i] == jnull then out[i] = nil end end
  return table.unpack(out, 1, n)
end

-- Stores a checkpoint of this run (json: the output's JSON text) and
-- waits until it is committed.  Raises lease_lost when the run is no
-- longer this worker's.
local function store(run, name, json)
  local rec = run._rec
  local w = run._w
  local item = w.steps:submit { run_id = rec.id, token = rec.token, name = name, json = json }
  if not item.ok then
    if item.duplicate then
      error(ah.error.new("invalid_argument", string.format("run %d: the step name %s was " ..
        "stored already by this attempt (two steps of one name running at once?)",
        rec.id, name)), 0)
    end
    error(lease_lost(rec), 0)
  end
end

-- run:step(name, fn, ...) -> fn's results.  A step whose checkpoint was
-- committed returns the stored results without calling fn; otherwise fn is
-- called as fn(..., key), where key = run.id .. ":" .. name (the name
-- made unique: "name#2" for its second use) identifies this step across
-- attempts so that what fn does outside can be made idempotent, and its
-- results are stored (committed) before step returns them.  The results
-- must be JSON values; what step returns is what was stored, decoded, the
-- same on the first execution as after a resume.
function Run:step(name, fn, ...)
  check_name("run:step", name)
  if type(fn) ~= "function" then
    error(ah.error.new("invalid_argument", "run:step: fn must be a function"), 2)
  end
  local rec = self._rec
  local sname = next_name(self, name)
  local cached = rec.steps and rec.steps[sname]
  if cached ~= nil then return unpack_output(cached) end
  check_live(rec)
  local n = select("#", ...)
  local out
  if n == 0 then
    out = table.pack(fn(self.id .. ":" .. sname))
  else
    local args = table.pack(...)
    args[n + 1] = self.id .. ":" .. sname
    out = table.pack(fn(table.unpack(args, 1, n + 1)))
  end
  check_live(rec)
  for i = 1, out.n do if out[i] == nil then out[i] = jnull end end
  out.n = nil
  local ok, json = pcall(jencode, out)
  if not ok then
    error(ah.error.new("invalid_argument", string.format("run:step %s: the results must be " ..
      "JSON values: %s", sname, tostring(type(json) == "table" and json.message or json))), 2)
  end
  if #json > fleet_mod.MAX_VALUE then fleet_mod.too_large("run:step " .. sname, "the result", #json) end
  store(self, sname, json)
  local stored = decode_raw(json)
  return unpack_output(stored)
end

-- The checkpoint `name` of this run, or nil.
local function cached(run, name)
  local steps = run._rec.steps
  return steps and steps[name]
end

-- Parks the run: it leaves this worker (its attempt given back) and is due
-- again after `delay` seconds, or, with event set, as soon as that event
-- is sent.  Then the handler is unwound with a `parked` error, which the
-- fleet recognises (a handler that catches it and goes on is stopped at
-- its next durable operation: the run is no longer this worker's).
local function park(run, delay, event)
  local rec, w = run._rec, run._w
  if event then
    local row
    w.fleet.db:transaction(function(tx)
      if null(tx:first(w.q.park_lock, rec.id, rec.token, w.id)) then return end
      row = tx:first(w.q.park_event, rec.id, rec.token, event, delay + 0.0)
    end)
    if row == nil or null(row) then error(lease_lost(rec), 0) end
    if row.due then w.fleet.db:query("SELECT pg_notify($1::text, 'new')", w.fleet.new_channel) end
  else
    local item = w.finishes:submit { id = rec.id, token = rec.token, state = "waiting",
                                     delay = delay, refund = true }
    if not item.ok then error(lease_lost(rec), 0) end
  end
  rec.parked = true
  rec.reason = rec.reason or "parked"
  error(ah.error.new("parked", string.format("run %d parked for %g s%s", rec.id, delay,
    event and (" or until event " .. event) or ""), { unwind = true }), 0)
end

-- run:sleep(seconds): a durable timer.  The wake-up time is stored at the
-- first call; a resumed run sleeps only what is left of it.  A sleep of
-- more than park_after seconds parks the run (it holds no worker while it
-- sleeps) and resumes it, on any worker, when the time comes.
function Run:sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
    error(ah.error.new("invalid_argument", "run:sleep: seconds must be a number >= 0"), 2)
  end
  local rec, w = self._rec, self._w
  local sname = next_name(self, "@sleep")
  local wake = cached(self, sname)
  if wake ~= nil then
    wake = wake[1]
  else
    check_live(rec)
    wake = w:db_now() + seconds
    store(self, sname, jencode { wake })
  end
  local left = wake - w:db_now()
  if left <= 0 then return end
  if left > w.park_after then park(self, left, nil) end
  task.sleep(left)
  check_live(rec)
end

-- run:wait_event(name [, {timeout =, park = true}]) -> the event's payload,
-- or nil and a timeout error once timeout seconds (counted from the first
-- wait, across resumes) have passed.  What it returned is a checkpoint: a
-- resumed run gets the same answer without waiting.  A wait longer than
-- park_after parks the run until the event is sent or the time is up
-- (park = false keeps it on this worker, e.g. inside a callback that
-- cannot unwind).
function Run:wait_event(name, opts)
  check_name("run:wait_event", name)
  if opts ~= nil and type(opts) ~= "table" then
    error(ah.error.new("invalid_argument", "run:wait_event: the options must be a table"), 2)
  end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error(ah.error.new("invalid_argument", "run:wait_event: timeout must be a number >= 0"), 2)
  end
  local may_park = not (opts and opts.park == false)
  local rec, w = self._rec, self._w
  local sname = next_name(self, "@event:" .. name)
  local got = cached(self, sname)
  local function answer(out)
    if out[2] == "timeout" then
      return nil, ah.error.new("timeout", string.format("run %d: no event %s within %g s",
        rec.id, name, out[3] or 0), { retryable = true })
    end
    return unpack_output(out)
  end
  if got ~= nil then return answer(got) end
  check_live(rec)
  local deadline
  if timeout then
    local dname = sname .. ":deadline"
    local d = cached(self, dname)
    if d ~= nil then
      deadline = d[1]
    else
      deadline = w:db_now() + timeout
      store(self, dname, jencode { deadline })
    end
  end
  local ev = task.event()
  rec.event_ev = ev
  while true do
    ev:clear()
    local row = w.fleet.db:first(w.q.take_event, rec.id, rec.token, name, sname, w.id)
    if row.owned == 0 then error(lease_lost(rec), 0) end
    if row.taken == 1 then
      rec.event_ev = nil
      local out = decode_raw(row.output)
      rec.steps = rec.steps or {}
      rec.steps[sname] = out
      return unpack_output(out)
    end
    local left = deadline and deadline - w:db_now()
    if left and left <= 0 then
      rec.event_ev = nil
      local out = { jnull, "timeout", timeout }
      store(self, sname, jencode(out))
      return answer(out)
    end
    if may_park and (left == nil or left > w.park_after) then
      rec.event_ev = nil
      park(self, left or 10 * 365 * 86400, name)
    end
    pcall(task.timeout, math.min(left or math.huge, 5 * w.poll), ev.wait, ev)
    check_live(rec)
  end
end

-- ---- the worker --------------------------------------------------------------------

local Worker = {}
Worker.__index = Worker

-- The database's clock (epoch seconds), estimated from the last answer
-- that carried it and the local monotonic clock since.
function Worker:db_now()
  return ah.clock() + self.clock_offset
end

function Worker:set_clock(db_now)
  if type(db_now) == "number" then self.clock_offset = db_now - ah.clock() end
end

local function item_json(fields)
  return jencode(fields)
end

-- Flushes step checkpoints: one statement for every item.  An item not in
-- the answer was not stored; the rare case of a retried flush whose first
-- try committed is told apart by reading the steps back.
local function flush_steps(w, items)
  local parts = {}
  for i, it in ipairs(items) do
    parts[i] = '{"run_id":' .. it.run_id .. ',"token":' .. it.token .. ',"name":' ..
      jencode(it.name) .. ',"output":' .. it.json .. '}'
  end
  local rows = w.db:query(w.q.steps, "[" .. table.concat(parts, ",") .. "]", w.id)
  local stored = {}
  for _, r in ipairs(rows) do stored[r.run_id .. "\0" .. r.name] = true end
  for _, it in ipairs(items) do
    if stored[it.run_id .. "\0" .. it.name] then
      it.ok = true
    else
      local r = w.db:first("SELECT s.token, r.token AS run_token, r.state, r.worker FROM " ..
        w.ident .. ".runs r LEFT JOIN " .. w.ident .. ".steps s ON s.run_id = r.id " ..
        "AND s.name = $2::text WHERE r.id = $1::bigint", it.run_id, it.name)
      if r and not null(r) and r.run_token == it.token and r.state == "running"
         and r.worker == w.id then
        if not null(r.token) and r.token == it.token then it.ok = true else it.duplicate = true end
      end
    end
  end
end

local function flush_finishes(w, items)
  local parts = {}
  for i, it in ipairs(items) do
    parts[i] = item_json { id = it.id, token = it.token, state = it.state,
      delay = it.delay or 0, refund = it.refund or false,
      waiting_for = it.waiting_for } :gsub("}$", function()
        return ',"result":' .. (it.result or "null") .. ',"error":' .. (it.error or "null") .. "}"
      end)
  end
  local rows = w.db:query(w.q.finish, "[" .. table.concat(parts, ",") .. "]",
    w.fleet.run_channel, w.fleet.new_channel, w.id)
  local done = {}
  for _, r in ipairs(rows) do done[r.id] = true end
  for _, it in ipairs(items) do it.ok = done[it.id] or false end
end

local function backoff_delay(h, attempts)
  local b = h.backoff
  local d = math.min(b.max, b.base * b.factor ^ math.max(attempts - 1, 0))
  return d / 2 + math.random() * d / 2
end

-- The error of a failed attempt, as stored: {kind, message, retryable,
-- traceback (cut to 4 KiB)}.
local function error_json(err)
  local e
  if type(err) == "table" then
    e = { kind = tostring(err.kind or "error"), message = tostring(err.message or err),
          retryable = err.retryable, traceback = err.traceback }
  else
    e = { kind = "error", message = tostring(err) }
  end
  if type(e.traceback) == "string" and #e.traceback > 4096 then
    e.traceback = e.traceback:sub(1, 4096)
  elseif type(e.traceback) ~= "string" then
    e.traceback = nil
  end
  if type(e.retryable) ~= "boolean" then e.retryable = nil end
  return jencode(e), e
end

-- Runs one claimed run: its handler in a child task, then the end of the
-- attempt written through the finish batcher.
function Worker:execute(rec)
  local h = self.handlers[rec.kind]
  local run = setmetatable({ id = rec.id, kind = rec.kind, key = rec.key, attempt = rec.attempts,
                             token = rec.token, fleet = self.fleet, _rec = rec, _w = self,
                             _counts = {} }, Run)
  local ok, input = pcall(decode, rec.input)
  local t = task.spawn(function()
    if not ok then error(ah.error.new("invalid_argument", "the run's input is not JSON: " ..
      tostring(input)), 0) end
    return h.fn(run, input)
  end)
  rec.task = t
  if rec.cancel_requested then rec.reason = "cancel" t:cancel() end
  local res = table.pack(pcall(t.result, t))
  -- res: true, ok, values... (t:result's pcall shape); false, err when
  -- this wrapper itself was cancelled (the worker stops at once).
  if not res[1] or self.hard_stop then
    if not res[1] then t:cancel() end
    return true
  end
  local fin
  local reason = rec.reason
  if rec.parked or reason == "lost" or reason == "parked" then
    fin = nil
  elseif res[2] and reason == nil then
    local vals = { table.unpack(res, 3, res.n) }
    local v = vals[1]
    local jok, json = pcall(jencode, v == nil and jnull or v)
    if jok and #json > fleet_mod.MAX_VALUE then
      jok, json = false, string.format("%d bytes of JSON, more than %d", #json, fleet_mod.MAX_VALUE)
    end
    if jok then
      fin = { state = "done", result = json }
    else
      fin = { state = "failed", error = jencode { kind = "invalid_argument",
        message = "the handler's result cannot be stored: " ..
          tostring(type(json) == "table" and json.message or json) } }
    end
  elseif reason == "cancel" then
    fin = { state = "cancelled", error = jencode { kind = "cancelled",
      message = "cancelled while it ran" } }
  elseif reason == "release" then
    fin = { state = "queued", refund = true, delay = 0 }
  else
    local json, e = error_json(res[3])
    if e.kind == "parked" then
      fin = nil
    elseif e.retryable == false and e.kind ~= "timeout" then
      fin = { state = "failed", error = json }
    elseif rec.attempts >= rec.max_attempts then
      fin = { state = "dead", error = json }
    else
      fin = { state = "queued", error = json, delay = backoff_delay(h, rec.attempts) }
    end
  end
  if fin then
    fin.id, fin.token = rec.id, rec.token
    local fok, err = pcall(self.finishes.submit, self.finishes, fin)
    if not fok and task.current():cancelled() then return true end
    if not fok and not self.hard_stop then
      io.stderr:write("agenthost.fleet: could not record the end of run ", rec.id, ": ",
        tostring(err), " (its lease will expire and another worker resumes it)\n")
    end
  end
end

function Worker:start_run(row)
  local rec = { id = row.id, kind = row.kind, key = not null(row.key) and row.key or nil,
                input = row.input, token = row.token, attempts = row.attempts,
                max_attempts = row.max_attempts, cancel_requested = row.cancel_requested,
                steps = not null(row.steps) and decode_raw(row.steps) or nil,
                lease_deadline = ah.clock() + self.lease }
  local old = self.held[rec.id]
  if old then old.reason = old.reason or "lost" if old.task then old.task:cancel() end end
  self.held[rec.id] = rec
  self.active = self.active + 1
  self.claimed = self.claimed + 1
  task.spawn(function()
    local ok, err = pcall(self.execute, self, rec)
    -- This task cancelled (the worker stops at once): serve releases every
    -- run still held, in one statement, so the run stays in the table.
    local keep = (ok and err == true) or (not ok and task.current():cancelled())
    if self.held[rec.id] == rec and not keep then self.held[rec.id] = nil end
    self.active = self.active - 1
    self.finished = self.finished + 1
    if self.backlog then self.wake:set() end
    if self.idle and self.active == 0 then self.idle:set() end
    if not ok and not keep then
      io.stderr:write("agenthost.fleet: run ", rec.id, ": ", tostring(err), "\n")
    end
  end)
end

-- One claim round: the kinds without a fleet-wide limit in one statement,
-- then each limited kind in a transaction of its own.  Returns how many
-- runs were claimed and whether as many as asked were (more may be due).
function Worker:claim(n)
  local got, full = 0, false
  local function take(rows)
    for _, row in ipairs(rows) do
      self:set_clock(row.db_now)
      self:start_run(row)
    end
    got = got + #rows
  end
  self.claims = self.claims + 1
  if #self.free_kinds > 0 then
    local rows = self.db:query(self.q.claim, self.free_kinds_json, n, self.id, self.lease + 0.0)
    take(rows)
    full = #rows >= n
  end
  for _, kind in ipairs(self.limited_kinds) do
    local left = n - got
    if left <= 0 then full = true break end
    local rows
    self.db:transaction(function(tx)
      local lim = tx:first(self.q.claim_limit_lock, kind)
      if lim == nil or null(lim) then rows = {} return end
      rows = tx:query(self.q.claim_limited, kind, left, self.id, self.lease + 0.0, lim.max_running)
    end)
    take(rows)
    if #rows >= left then full = true end
  end
  return got, full
end

function Worker:refresh_limits()
  local limited = {}
  for _, r in ipairs(self.db:query(self.q.limits)) do limited[r.kind] = r.max_running end
  local free, lim = {}, {}
  for _, kind in ipairs(self.kinds) do
    if limited[kind] then lim[#lim + 1] = kind else free[#free + 1] = kind end
  end
  self.free_kinds, self.limited_kinds = free, lim
  self.free_kinds_json = jencode(free)
end

-- The claim loop, in serve's own task (so that the runs it starts are
-- serve's children).  It claims when it has room for a batch (or is
-- idle), and otherwise waits for a notification, a slot, or the poll.
function Worker:claim_loop()
  local min_room = math.max(1, math.min(self.batch, self.concurrency // 4))
  while not self.stopping do
    self.wake:clear()
    if self.limits_dirty then
      self.limits_dirty = false
      local ok, err = pcall(self.refresh_limits, self)
      if not ok then self.limits_dirty = true self:warn("reading the limits", err) end
    end
    local room = self.concurrency - self.active
    local again = false
    if room >= min_room or (room > 0 and self.active == 0) then
      self.backlog = false
      local ok, got, full = pcall(self.claim, self, math.min(room, self.batch))
      if not ok then
        if task.current():cancelled() then error(got, 0) end
        self:warn("claiming", got)
        task.sleep(math.min(self.poll, 0.5))
      elseif full then
        again = self.active < self.concurrency
        self.backlog = true
      end
    elseif room < min_room then
      self.backlog = true
    end
    if not again and not self.stopping then
      pcall(task.timeout, self.poll, self.wake.wait, self.wake)
      if task.current():cancelled() then error(ah.error.new("cancelled", "serve cancelled"), 0) end
    end
  end
end

function Worker:warn(what, err)
  if self.quiet then return end
  io.stderr:write("agenthost.fleet: worker ", self.id, ": ", what, ": ", tostring(err), "\n")
end

-- Renews the leases of the runs held, every `heartbeat` seconds.  A run
-- missing from the answer is no longer this worker's (its task is
-- cancelled); one asked to cancel is cancelled; a run whose lease this
-- worker could not renew in time (the database out of reach) is given up
-- locally before another worker may take it.
function Worker:heartbeat_loop()
  while true do
    local started = ah.clock()
    local list, n = {}, 0
    for id, rec in pairs(self.held) do
      -- A run told to stop (cancelled, released) whose handler has not
      -- ended a lease later (it swallowed the cancellation and waits on
      -- something else) is renewed no more: its lease expires and the
      -- sweep ends or requeues it as the database says.
      if rec.reason and not rec.reason_at then rec.reason_at = started end
      if not rec.parked and not (rec.reason_at and started - rec.reason_at > self.lease) then
        n = n + 1
        list[n] = '{"id":' .. id .. ',"token":' .. rec.token .. '}'
      end
    end
    local ok, rows = pcall(self.db.query, self.db, self.q.heartbeat, self.id,
      "[" .. table.concat(list, ",") .. "]", self.lease + 0.0)
    if ok then
      local renewed = {}
      for _, r in ipairs(rows) do
        self:set_clock(r.db_now)
        if r.registered == 0 then self.reregister = true end
        if not null(r.id) then renewed[r.id] = r.cancel_requested end
      end
      for id, rec in pairs(self.held) do
        local c = renewed[id]
        if c ~= nil then
          rec.lease_deadline = started + self.lease
          if c and rec.reason == nil then
            rec.reason = "cancel"
            if rec.task then rec.task:cancel() end
          end
        elseif rec.lease_deadline < started + self.lease and not rec.parked and rec.reason == nil then
          -- Claimed before this heartbeat began and not renewed: taken away.
          rec.reason = "lost"
          if rec.task then rec.task:cancel() end
        end
      end
      if self.reregister then
        self.reregister = false
        pcall(self.db.query, self.db, self.q.register, self.id, self.host, self.pid,
          table.concat(self.kinds, ","), self.concurrency, self.lease + 0.0)
      end
    else
      if task.current():cancelled() then error(rows, 0) end
      self:warn("renewing the leases", rows)
      local now = ah.clock()
      for _, rec in pairs(self.held) do
        -- Given up a heartbeat before the lease runs out, so that this
        -- worker stops before another may start the same run.
        if rec.reason == nil and rec.lease_deadline - self.heartbeat < now then
          rec.reason = "lost"
          if rec.task then rec.task:cancel() end
        end
      end
    end
    task.sleep(math.max(0.01, self.heartbeat - (ah.clock() - started)))
  end
end

-- Takes back expired leases of any worker, coming back when the next
-- lease expires (at most `poll` seconds later), and re-reads the limits.
function Worker:sweep_loop()
  local rounds = 0
  while true do
    rounds = rounds + 1
    local ok, row = pcall(self.db.first, self.db, self.q.sweep, self.fleet.run_channel,
      self.fleet.new_channel)
    local wait = self.poll
    if ok then
      self.swept = self.swept + row.taken
      if not null(row.next_expiry) then
        wait = math.max(0.01, math.min(self.poll, row.next_expiry + 0.01))
      end
      if row.stale > 0 then pcall(self.db.exec, self.db, self.q.forget_workers) end
    else
      if task.current():cancelled() then error(row, 0) end
      self:warn("sweeping", row)
    end
    if rounds % 10 == 0 then self.limits_dirty = true end
    task.sleep(wait)
  end
end

-- The notifications: submissions and limits wake the claim loop;
-- cancellations and events reach the run they name.
function Worker:on_new(payload)
  if payload == "limits" then self.limits_dirty = true end
  self.wake:set()
end

function Worker:on_run(payload)
  if payload == "missed" then
    for _, rec in pairs(self.held) do
      if rec.event_ev then rec.event_ev:set() end
    end
    return
  end
  local what, id = payload:match("^(%a+):(%d+)$")
  if not what then return end
  local rec = self.held[tonumber(id)]
  if not rec then return end
  if what == "cancel" then
    if rec.reason == nil then
      rec.reason = "cancel"
      if rec.task then rec.task:cancel() end
    end
  elseif what == "event" then
    if rec.event_ev then rec.event_ev:set() end
  end
end

local function read_handlers(handlers)
  if type(handlers) ~= "table" or next(handlers) == nil then
    bad("handlers must be a table {kind = function(run, input) ... end}")
  end
  local out, kinds = {}, {}
  for kind, h in pairs(handlers) do
    if type(kind) ~= "string" or kind == "" then bad("handler kinds must be non-empty strings") end
    local spec = h
    if type(h) == "function" then spec = { h } end
    if type(spec) ~= "table" or type(spec[1] or spec.fn) ~= "function" then
      bad("the handler of " .. kind .. " must be a function or {fn, max_attempts =, backoff =, limit =}")
    end
    local b = spec.backoff or {}
    if type(b) == "number" then b = { base = b } end
    local backoff = { base = b.base or 1, factor = b.factor or 2, max = b.max or 300 }
    for k, v in pairs(backoff) do
      if type(v) ~= "number" or v < 0 then bad("backoff." .. k .. " of " .. kind .. " must be a number >= 0") end
    end
    if spec.limit ~= nil and (math.type(spec.limit) ~= "integer" or spec.limit < 0) then
      bad("limit of " .. kind .. " must be an integer >= 0")
    end
    out[kind] = { fn = spec[1] or spec.fn, backoff = backoff, limit = spec.limit }
    kinds[#kinds + 1] = kind
  end
  table.sort(kinds)
  return out, kinds
end

local function opt_number(opts, k, default, min)
  local v = opts[k]
  if v == nil then return default end
  if type(v) ~= "number" or v < min then bad(k .. " must be a number >= " .. min) end
  return v
end

function M.serve(fleet, opts)
  if type(opts) ~= "table" then bad("expected a table {handlers =, concurrency =}") end
  if fleet.worker then bad("this fleet object serves already; open another for a second worker") end
  local handlers, kinds = read_handlers(opts.handlers)
  local concurrency = opts.concurrency or 100
  if math.type(concurrency) ~= "integer" or concurrency < 1 then bad("concurrency must be an integer >= 1") end
  local lease = opt_number(opts, "lease", 10, 0.2)
  local hb = opt_number(opts, "heartbeat", lease / 3, 0.05)
  if hb >= lease then bad("heartbeat must be shorter than the lease") end
  local batch = opts.batch or math.min(concurrency, 64)
  if math.type(batch) ~= "integer" or batch < 1 then bad("batch must be an integer >= 1") end
  local writers = opts.writers or 2
  if math.type(writers) ~= "integer" or writers < 1 then bad("writers must be an integer >= 1") end
  local host, pid, id = identity()
  local w = setmetatable({
    fleet = fleet, db = fleet.db, q = fleet.q, ident = '"' .. fleet.schema .. '"',
    id = opts.id or id, host = host, pid = pid,
    handlers = handlers, kinds = kinds, concurrency = concurrency, lease = lease,
    heartbeat = hb, batch = batch, poll = opts.poll or fleet.poll,
    park_after = opt_number(opts, "park_after", 60, 0),
    quiet = opts.quiet, held = {}, active = 0, claimed = 0, finished = 0, claims = 0,
    swept = 0, clock_offset = 0, wake = task.event(), stopping = false, hard_stop = false,
    limits_dirty = true, backlog = false, free_kinds = {}, limited_kinds = {},
  }, Worker)
  w.steps = batcher("steps", function(items) flush_steps(w, items) end, writers, 1000)
  w.finishes = batcher("finishes", function(items) flush_finishes(w, items) end, writers, 1000)
  fleet.worker = w

  for kind, h in pairs(handlers) do
    if h.limit then fleet:limit(kind, h.limit) end
  end
  w.db:query(w.q.register, w.id, host, pid, table.concat(kinds, ","), concurrency, lease + 0.0)
  local row = w.db:first("SELECT extract(epoch FROM clock_timestamp())::float8 AS now")
  w:set_clock(row.now)

  local hub = fleet:_hub()
  local on_new = function(p) w:on_new(p) end
  local on_run = function(p) w:on_run(p) end
  hub:on_channel(fleet.new_channel, on_new)
  hub:on_channel(fleet.run_channel, on_run)
  hub:start()

  local helpers = {}
  w.steps:start()
  w.finishes:start()
  helpers[#helpers + 1] = task.spawn(w.heartbeat_loop, w)
  helpers[#helpers + 1] = task.spawn(w.sweep_loop, w)

  local ok, err = pcall(w.claim_loop, w)
  if ok then
    -- Graceful: no more claims; the running handlers get the grace period.
    if w.active > 0 and (w.grace or 0) > 0 then
      w.idle = task.event()
      pcall(task.timeout, w.grace, w.idle.wait, w.idle)
    end
    for _, rec in pairs(w.held) do
      if rec.reason == nil then
        rec.reason = "release"
        if rec.task then rec.task:cancel() end
      end
    end
    while w.active > 0 do
      w.idle = task.event()
      if w.active > 0 then w.idle:wait() end
    end
  else
    -- Cancelled (SIGTERM) or broken: every lease released in one
    -- statement, the attempts given back, so that other workers resume
    -- the runs at once.
    w.hard_stop = true
  end
  w.steps:stop()
  w.finishes:stop()
  for _, t in ipairs(helpers) do t:cancel() end
  hub:off_channel(fleet.new_channel, on_new)
  hub:off_channel(fleet.run_channel, on_run)
  hub:stop()
  local release, n = {}, 0
  for rid, rec in pairs(w.held) do
    if not rec.parked then
      n = n + 1
      release[n] = jencode { id = rid, token = rec.token, state = "queued", refund = true, delay = 0 }
    end
    if rec.task then rec.task:cancel() end
  end
  if n > 0 then
    pcall(w.db.query, w.db, w.q.finish, "[" .. table.concat(release, ",") .. "]",
      fleet.run_channel, fleet.new_channel, w.id)
  end
  pcall(w.db.exec, w.db, w.q.deregister, w.id)
  fleet.worker = nil
  if not ok then error(err, 0) end
  return { claimed = w.claimed, finished = w.finished, released = n }
end

-- fleet:stop{grace = 0}: the serve of this fleet object stops claiming,
-- gives its running handlers `grace` seconds, releases the others and
-- returns.
function fleet_mod.Fleet:stop(opts)
  local w = self.worker
  if not w then return false end
  w.grace = opts and opts.grace or 0
  w.stopping = true
  w.wake:set()
  return true
end

-- The worker's counters, for tests and the benchmark.
function fleet_mod.Fleet:worker_stats()
  local w = self.worker
  if not w then return nil end
  return { claimed = w.claimed, finished = w.finished, active = w.active, claims = w.claims,
           swept = w.swept, id = w.id, pid = w.pid }
end

return M
