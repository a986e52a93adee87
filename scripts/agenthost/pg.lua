-- ah.pg: PostgreSQL for tasks.  See docs/pg.md.
--
--   local db = ah.pg.pool{ url = "postgres://app@db/app", size = 8 }
--   local rows = db:query("SELECT id, name FROM items WHERE owner = $1", owner)
--   local n = db:exec("UPDATE items SET done = true WHERE id = $1", id)
--   local row = db:first("SELECT * FROM items WHERE id = $1", id)    -- or nil
--   db:transaction(function(tx) tx:exec(...) tx:query(...) end)     -- commit, or rollback
--   local l = db:listen("jobs")  local n = l:recv(5)  db:notify("jobs", "42")
--   db:copy("COPY items(id, name) FROM STDIN", rows)
--   db:batch{ {sql, ...}, {sql, ...} }                              -- one round trip, atomic
--   db:stats()  db:close()
--   local conn = ah.pg.connect(url)   -- one session, the same methods
--
-- The pool hands each call to the least loaded of its connections; calls
-- of concurrent tasks are pipelined on them (at most `pipeline` per
-- connection), so 64 tasks on 8 connections keep every connection busy
-- without a round trip between queries.  A transaction (or COPY) has its
-- connection to itself until it ends.  Callers wait in FIFO order for a
-- connection, at most acquire_timeout seconds.  Lost connections are
-- dropped (their calls fail with a retryable `connect` error) and new ones
-- opened on demand with exponential backoff, so the pool comes back by
-- itself after a server restart.
--
-- The C part (bindings/pg.c, host/pg.c) does the I/O and the decoding;
-- this file adds the pool, transactions, listeners, the encoding of table
-- parameters (json and arrays) and the decoding of json results.

local core = require "agenthost.core"
local json = core.json
local C = core._pg
local task = core.task
local clock = core.clock
local null = core.null

local M = {}
M.null = null

local function raise(kind, msg, fields)
  core.error.raise(kind, msg, fields)
end

local function bad(what, msg)
  core.error.raise("invalid_argument", what .. ": " .. msg)
end

-- ---- values -----------------------------------------------------------------------

-- A json or jsonb column's value (ah.json: integers stay integers, 71.0
-- stays a float); text the server sent that does not decode stays text.
local function json_decode(s)
  if type(s) ~= "string" then return s end
  local ok, v = pcall(json.decode, s)
  if not ok then return s end
  return v
end

local function decode_json_array(a)
  for i, x in ipairs(a) do
    if type(x) == "table" then decode_json_array(x) else a[i] = json_decode(x) end
  end
end

local function decode_row(row, js)
  for name, kind in pairs(js) do
    local v = row[name]
    if kind == 1 then row[name] = json_decode(v)
    elseif type(v) == "table" then decode_json_array(v) end
  end
  return row
end

local function decode_rows(rows, js)
  for i = 1, #rows do decode_row(rows[i], js) end
  return rows
end

-- The shortest decimal text of a float that reads back the same.
local function float_text(x)
  if x ~= x then return "NaN" end
  if x == math.huge then return "Infinity" end
  if x == -math.huge then return "-Infinity" end
  for p = 15, 16 do
    local s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then return s end
  end
  return string.format("%.17g", x)
end

local function quote_elem(s)
  if s:find("\0", 1, true) then error("an array element holds a NUL byte", 0) end
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

-- The text of PostgreSQL's array literal for the Lua array t (nested
-- tables are further dimensions; nil and ah.null are NULL).  elem is the
-- element type's OID when known: json elements are encoded as JSON,
-- bytea elements as their hex form.
local function array_literal(t, elem)
  local kind = elem and C.type_info(elem)
  local n = t.n or #t
  local parts = {}
  for i = 1, n do
    local v = t[i]
    local tv = type(v)
    if v == nil or v == null then
      parts[i] = "NULL"
    elseif kind == "json" then
      parts[i] = quote_elem(tv == "string" and v or json.encode(v))
    elseif tv == "table" then
      parts[i] = array_literal(v, elem)
    elseif tv == "boolean" then
      parts[i] = v and "t" or "f"
    elseif math.type(v) == "integer" then
      parts[i] = tostring(v)
    elseif tv == "number" then
      parts[i] = float_text(v)
    elseif tv == "string" then
      if kind == "bytea" then
        parts[i] = quote_elem("\\x" .. v:gsub(".", function(c) return string.format("%02x", c:byte()) end))
      else
        parts[i] = quote_elem(v)
      end
    else
      error("an array element is a " .. tv, 0)
    end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- ah.pg.array(t [, elem_oid]) -> the array literal text of t.
function M.array(t, elem)
  if type(t) ~= "table" then bad("ah.pg.array", "expected a table (an array)") end
  local ok, s = pcall(array_literal, t, elem)
  if not ok then bad("ah.pg.array", s) end
  return s
end

-- ah.pg.ident(name) -> name quoted as an SQL identifier.
function M.ident(name)
  if type(name) ~= "string" or name == "" or name:find("\0", 1, true) then
    bad("ah.pg.ident", "the name must be a non-empty string without NUL")
  end
  return '"' .. name:gsub('"', '""') .. '"'
end

-- The parameters ... with tables turned into text by the types the
-- statement takes (json: JSON; arrays: array literals).
local function encode_tables(c, timeout, sql, what, ...)
  local types = c:param_types(timeout, sql)
  local args = table.pack(...)
  for i = 1, args.n do
    local v = args[i]
    if type(v) == "table" then
      local oid = types[i]
      local kind, elem = C.type_info(oid or 0)
      if kind == "json" then
        local ok, s = pcall(json.encode, v)
        if not ok then
          bad(what, "parameter $" .. i .. " cannot be encoded as JSON: " ..
            tostring(type(s) == "table" and s.message or s))
        end
        args[i] = s
      elseif kind == "array" then
        local ok, s = pcall(array_literal, v, elem)
        if not ok then bad(what, "parameter $" .. i .. ": " .. s) end
        args[i] = s
      else
        bad(what, string.format("parameter $%d is a table, but the statement takes type %s " ..
          "there (tables go to json, jsonb and array parameters); cast it ($%d::jsonb) or " ..
          "pass a string", i, tostring(oid), i))
      end
    end
  end
  return table.unpack(args, 1, args.n)
end

local function has_table(...)
  for i = 1, select("#", ...) do
    if type((select(i, ...))) == "table" then return true end
  end
  return false
end

-- Statements a pooled call must not run alone: transaction control (it
-- would leave a connection inside a transaction for the next caller) and
-- COPY (which has its own method).
local control_words = {
  BEGIN = true, START = true, COMMIT = true, END = true, ROLLBACK = true, ABORT = true,
  SAVEPOINT = true, RELEASE = true, PREPARE = true,
}
local kinds, nkinds = {}, 0 -- statement text -> "copy", "control" or false
local function statement_kind(sql)
  local k = kinds[sql]
  if k ~= nil then return k end
  local word = sql:match("^%s*(%a+)")
  word = word and word:upper()
  k = word == "COPY" and "copy" or (control_words[word] and "control") or false
  if nkinds >= 4096 then kinds, nkinds = {}, 0 end
  kinds[sql] = k
  nkinds = nkinds + 1
  return k
end

-- ---- calls ---------------------------------------------------------------------------

-- The SQL and options of a call: sql, or {sql, timeout = s}.
local function sql_opts(self, what, sql)
  local timeout = self.timeout
  if type(sql) == "table" then
    local t = sql
    sql = t[1] or t.sql
    if t.timeout ~= nil then
      if t.timeout ~= false and (type(t.timeout) ~= "number" or t.timeout <= 0) then
        bad(what, "timeout must be a number > 0, or false for none")
      end
      timeout = t.timeout
    end
  end
  if type(sql) ~= "string" then bad(what, "the SQL must be a string (or {sql, timeout = s})") end
  return sql, timeout
end

-- Runs method of the C connection for one call of an executor (a pool,
-- a transaction or a connection): get/put give and take back the C
-- connection.
local function call(self, method, what, sql, ...)
  local timeout
  if type(sql) == "string" then
    timeout = self.timeout
  else
    sql, timeout = sql_opts(self, what, sql)
  end
  if self.shared then
    local k = kinds[sql]
    if k == nil then k = statement_kind(sql) end
    if k == "control" then
      bad(what, "transaction control cannot run on the pool: use pg:transaction(function(tx) ... end)")
    elseif k == "copy" then
      bad(what, "COPY runs through pg:copy(sql, rows)")
    end
  end
  local tables = false
  local np = select("#", ...)
  if np > 0 then
    local a1, a2, a3 = ...
    tables = type(a1) == "table" or type(a2) == "table" or type(a3) == "table" or
      (np > 3 and has_table(select(4, ...)))
  end
  for attempt = 1, 3 do
    local e = self:_get(what)
    local c = e.c
    local ok, a, b
    if tables then
      ok, a, b = pcall(function(...) return c[method](c, timeout, sql, encode_tables(c, timeout, sql, what, ...)) end, ...)
    else
      ok, a, b = pcall(c[method], c, timeout, sql, ...)
    end
    self:_put(e, ok, a)
    if ok then
      if b then
        if method == "query" then decode_rows(a, b) else decode_row(a, b) end
      end
      return a
    end
    -- A call that never reached the server goes to another connection
    -- (twice at most).
    if not (type(a) == "table" and a.kind == "connect" and a.sent == false and self.shared)
        or attempt == 3 then
      error(a, 0)
    end
  end
end

local Exec = {}

-- rows = x:query(sql, ...)  -- an array of rows keyed by column name,
-- with rows.columns (the names in order) and rows.affected
function Exec:query(sql, ...) return call(self, "query", "pg:query", sql, ...) end

-- x:first(sql, ...) -> the first row, or nil
function Exec:first(sql, ...) return call(self, "first", "pg:first", sql, ...) end

-- x:exec(sql, ...) -> the number of rows affected.  Without parameters the
-- SQL may hold several statements (the simple protocol; the count is the
-- last one's).
function Exec:exec(sql, ...)
  if select("#", ...) == 0 then
    local s = type(sql) == "table" and (sql[1] or sql.sql) or sql
    if type(s) == "string" and (s:find(";", 1, true)) then
      return call(self, "simple", "pg:exec", sql)
    end
  end
  return call(self, "exec", "pg:exec", sql, ...)
end

-- The statements of a batch or a pipeline, checked, with their table
-- parameters encoded; returns the list to hand to the C call.
local function statement_list(self, c, what, list, timeout)
  local l = list
  for i, st in ipairs(list) do
    local n = st.n or #st
    if has_table(table.unpack(st, 2, n)) then
      if l == list then l = table.move(list, 1, #list, 1, {}) end
      local enc = table.pack(encode_tables(c, timeout, st[1], what, table.unpack(st, 2, n)))
      local copy = { st[1], n = n }
      for k = 1, enc.n do copy[k + 1] = enc[k] end
      l[i] = copy
    end
  end
  return l
end

local function check_list(self, what, list, opts)
  if type(list) ~= "table" then bad(what, "expected an array of {sql, params...}") end
  local timeout = self.timeout
  if opts ~= nil then
    if type(opts) ~= "table" then bad(what, "the options must be a table") end
    if opts.timeout ~= nil then timeout = opts.timeout end
  end
  for i, st in ipairs(list) do
    if type(st) ~= "table" or type(st[1]) ~= "string" then
      bad(what, "entry " .. i .. " must be {sql, params...}")
    end
    if self.shared and statement_kind(st[1]) then
      bad(what, "entry " .. i .. ": transaction control and COPY cannot run here")
    end
  end
  return timeout
end

local function run_list(self, method, what, list, opts)
  local timeout = check_list(self, what, list, opts)
  local e = self:_get(what)
  local c = e.c
  local ok, res = pcall(function()
    return c[method](c, timeout, statement_list(self, c, what, list, timeout))
  end)
  self:_put(e, ok, res)
  if not ok then error(res, 0) end
  for _, r in ipairs(res) do
    if type(r) == "table" and r.json then
      decode_rows(r, r.json)
      r.json = nil
    end
  end
  return res
end

-- x:batch{{sql, ...}, ...} -> an array of results (rows, with .affected):
-- the statements go in one round trip and commit together, or not at all.
function Exec:batch(list, opts) return run_list(self, "batch", "pg:batch", list, opts) end

-- x:pipeline{{sql, ...}, ...} -> an array with, for each statement in
-- order, its result (rows, with .affected) or its error (an ah.error value,
-- not raised): the statements go in one round trip on one connection, run
-- in order, and each is its own transaction (outside a transaction) that
-- fails alone.
function Exec:pipeline(list, opts) return run_list(self, "pipeline", "pg:pipeline", list, opts) end

-- x:notify(channel, payload): NOTIFY through pg_notify (bound parameters).
function Exec:notify(channel, payload)
  if type(channel) ~= "string" or channel == "" then bad("pg:notify", "the channel must be a non-empty string") end
  if payload ~= nil and type(payload) ~= "string" then bad("pg:notify", "the payload must be a string") end
  call(self, "exec", "pg:notify", "SELECT pg_notify($1, $2)", channel, payload or "")
end

-- Copies rows (an array of arrays, or a function returning the next row
-- and nil at the end) with `sql` (COPY ... FROM STDIN) on connection e.
local COPY_CHUNK = 1000
local function run_copy(self, c, sql, rows, timeout)
  local ncols
  local function put(chunk)
    while not c:copy_put(timeout, chunk, ncols) do end
  end
  c:copy_begin(timeout, sql)
  local ok, err = pcall(function()
    local chunk, n = {}, 0
    local function add(row)
      if type(row) ~= "table" then bad("pg:copy", "every row must be an array of values") end
      ncols = ncols or row.n or #row
      local r = row
      for k = 1, ncols do
        local v = row[k]
        if type(v) == "table" then
          if r == row then r = table.move(row, 1, ncols, 1, {}) end
          local okj, s = pcall(json.encode, v)
          if not okj then
            bad("pg:copy", "a value cannot be encoded as JSON: " ..
              tostring(type(s) == "table" and s.message or s))
          end
          r[k] = s
        end
      end
      n = n + 1
      chunk[n] = r
      if n == COPY_CHUNK then
        put(chunk)
        chunk, n = {}, 0
      end
    end
    if type(rows) == "function" then
      for row in rows do add(row) end
    else
      for i = 1, #rows do add(rows[i]) end
    end
    if n > 0 then put(chunk) end
  end)
  if not ok then
    pcall(c.copy_end, c, timeout, "the rows could not be sent: " ..
      tostring(type(err) == "table" and err.message or err))
    error(err, 0)
  end
  local count
  repeat count = c:copy_end(timeout) until count
  return count
end

-- x:copy("COPY t(a, b) FROM STDIN", rows) -> rows copied.  rows is an array
-- of arrays or an iterator; tables among the values are sent as JSON.
function Exec:copy(sql, rows, opts)
  local timeout = self.timeout
  if type(sql) ~= "string" or statement_kind(sql) ~= "copy" then
    bad("pg:copy", "the SQL must be a COPY ... FROM STDIN statement")
  end
  if type(rows) ~= "table" and type(rows) ~= "function" then
    bad("pg:copy", "rows must be an array of arrays or an iterator function")
  end
  if opts and opts.timeout ~= nil then timeout = opts.timeout end
  local e = self:_get_exclusive("pg:copy")
  local ok, res = pcall(run_copy, self, e.c, sql, rows, timeout)
  self:_release(e, ok or (type(res) == "table" and res.kind == "sql"))
  if not ok then error(res, 0) end
  return res
end

-- ---- transactions ----------------------------------------------------------------------

local Tx = setmetatable({}, { __index = Exec })
Tx.__index = Tx

local function tx_check(self, what)
  if not self.active then
    raise("invalid_argument", what .. ": the transaction has ended; use the tx object only " ..
      "inside its function")
  end
end

function Tx:_get(what)
  tx_check(self, what)
  local root = self.root
  if root.begin then
    -- BEGIN goes out with the first statement, in the same round trip; if
    -- it failed, so does that statement.
    local b = root.begin
    root.begin = nil
    root.e.c:send(nil, b)
  end
  return root.e
end

function Tx:_put(e, ok, err)
  if not ok and type(err) == "table" and err.kind ~= "invalid_argument" then
    self.root.aborted = err
  end
end

function Tx:_get_exclusive(what) return self:_get(what) end
function Tx:_release() end

local sp_seq = 0

-- tx:transaction(fn): a savepoint; an error in fn rolls back to it and
-- is raised, leaving the outer transaction usable.
function Tx:transaction(fn, ...)
  tx_check(self, "tx:transaction")
  if type(fn) ~= "function" then bad("tx:transaction", "expected a function") end
  sp_seq = sp_seq + 1
  local name = "ah_sp_" .. sp_seq
  local c = self:_get("tx:transaction").c
  c:exec(self.timeout, "SAVEPOINT " .. name)
  local sub = setmetatable({ root = self.root, active = true, timeout = self.timeout, parent = self }, Tx)
  local res = table.pack(pcall(fn, sub, ...))
  sub.active = false
  if res[1] then
    c:exec(self.timeout, "RELEASE SAVEPOINT " .. name)
    return table.unpack(res, 2, res.n)
  end
  local err = res[2]
  if not (type(err) == "table" and err.kind == "cancelled") then
    local ok, e2 = pcall(c.exec, c, self.timeout, "ROLLBACK TO SAVEPOINT " .. name)
    if ok then self.root.aborted = nil else self.root.aborted = e2 end
  end
  error(err, 0)
end

local isolation_levels = {
  ["serializable"] = "SERIALIZABLE", ["repeatable read"] = "REPEATABLE READ",
  ["read committed"] = "READ COMMITTED", ["read uncommitted"] = "READ UNCOMMITTED",
}

local function begin_sql(opts)
  local sql = "BEGIN"
  if opts then
    if opts.isolation then
      local lvl = isolation_levels[tostring(opts.isolation):lower()]
      if not lvl then
        bad("pg:transaction", "isolation must be serializable, repeatable read, read committed or read uncommitted")
      end
      sql = sql .. " ISOLATION LEVEL " .. lvl
    end
    if opts.read_only then sql = sql .. " READ ONLY" end
    if opts.deferrable then sql = sql .. " DEFERRABLE" end
  end
  return sql
end

-- Runs fn(tx) in a transaction on connection e; returns pcall's results,
-- and whether the connection is still good.
local function run_tx(pool, e, fn, opts, timeout, ...)
  local root = { e = e, begin = begin_sql(opts) }
  local tx = setmetatable({ root = root, active = true, timeout = timeout, pool = pool }, Tx)
  root.tx = tx
  local res = table.pack(pcall(fn, tx, ...))
  tx.active = false
  local c = e.c
  if res[1] and root.begin then return res, true end -- nothing ran
  if res[1] and not root.aborted then
    local ok, err = pcall(c.exec, c, timeout, "COMMIT")
    if ok then return res, true end
    -- COMMIT failed (serialization, deferred constraint, lost connection):
    -- the server has ended the transaction.
    local healthy = type(err) == "table" and err.kind == "sql"
    return { false, err, n = 2 }, healthy and c:status() == "ready"
  end
  if res[1] then res = { false, root.aborted, n = 2 } end
  if root.begin then return res, true end -- failed before any statement ran
  local ok = pcall(c.exec, c, timeout, "ROLLBACK")
  return res, ok and c:status() == "ready"
end

local function transaction(self, fn, opts, ...)
  if type(fn) ~= "function" then bad("pg:transaction", "expected a function(tx)") end
  if opts ~= nil and type(opts) ~= "table" then bad("pg:transaction", "the options must be a table") end
  local retries = opts and opts.retries or 0
  if math.type(retries) ~= "integer" or retries < 0 then bad("pg:transaction", "retries must be an integer >= 0") end
  local timeout = self.timeout
  if opts and opts.timeout ~= nil then timeout = opts.timeout end
  for attempt = 0, retries do
    local e = self:_get_exclusive("pg:transaction")
    local res, healthy = run_tx(self, e, fn, opts, timeout, ...)
    self:_release(e, healthy)
    if res[1] then return table.unpack(res, 2, res.n) end
    local err = res[2]
    local again = attempt < retries and type(err) == "table" and
      (err.code == "40001" or err.code == "40P01")
    if not again then error(err, 0) end
    task.sleep(math.min(0.01 * 2 ^ attempt, 1) * (0.5 + math.random() / 2))
  end
end

-- ---- the pool ---------------------------------------------------------------------------

local Pool = setmetatable({}, { __index = Exec })
Pool.__index = Pool

local function opt_number(o, k, def, what, allow_false)
  local v = o[k]
  if v == nil then return def end
  if allow_false and v == false then return false end
  if type(v) ~= "number" or v <= 0 or v ~= v then
    bad(what, k .. " must be a number > 0" .. (allow_false and " (or false for none)" or ""))
  end
  return v
end

local function opt_int(o, k, def, lo, hi, what)
  local v = o[k]
  if v == nil then return def end
  if math.type(v) ~= "integer" or v < lo or v > hi then
    bad(what, string.format("%s must be an integer from %d to %d", k, lo, hi))
  end
  return v
end

local function default_url(url, what)
  if url == nil then url = os.getenv("DATABASE_URL") end
  if url ~= nil and type(url) ~= "string" then bad(what, "url must be a string") end
  return url
end

local function backoff(self)
  local d = math.min(self.backoff_min * 2 ^ (self.failures - 1), self.backoff_max)
  return d * (0.5 + math.random() / 2)
end

local function connect_task(self)
  local ok = pcall(function()
    local delay = self.next_attempt - clock()
    if delay > 0 then self.sleepq:wait(delay) end
    if self.closed then return end
    local okc, c = pcall(C.connect, self.url, self.copts)
    if self.closed then
      if okc then c:close() end
      return
    end
    if okc then
      c:set_autocommit(true)
      local now = clock()
      self.conns[#self.conns + 1] = { c = c, created = now, used = now, n = 0 }
      self.failures, self.last_error, self.ever_connected = 0, nil, true
      self.counters.connects = self.counters.connects + 1
      self.connecting = self.connecting - 1
      self.waitq:wake(self.depth)
    else
      self.connecting = self.connecting - 1
      self.failures = self.failures + 1
      self.last_error = c
      self.counters.connect_errors = self.counters.connect_errors + 1
      self.next_attempt = clock() + backoff(self)
      if not self.ever_connected then
        self.waitq:wake(self.waitq:count()) -- they fail with this error at once
      elseif self.waitq:count() > 0 then
        self:_grow()
      end
    end
  end)
  if not ok then self.connecting = math.max(0, self.connecting - 1) end
end

-- Starts opening a connection, unless `want` (default 1) are already
-- being opened, the pool is full, or (while connecting fails) one probe
-- is out.
function Pool:_grow(want)
  if self.closed or self.session_lost then return end
  local total = #self.conns + self.connecting
  if total >= self.size or self.connecting >= (want or 1) then return end
  if self.failures > 0 and self.connecting > 0 then return end -- one probe at a time
  self.connecting = self.connecting + 1
  task.detach(connect_task, self)
end

local function drop(self, i)
  local e = table.remove(self.conns, i)
  self.counters.dropped = self.counters.dropped + 1
  self.retired_stats[#self.retired_stats + 1] = e.c:stats()
  if #self.retired_stats > 64 then self:_fold_stats() end
  e.c:close()
  if self.session then self.session_lost = true end
end

function Pool:_fold_stats()
  local acc = self.retired
  for _, s in ipairs(self.retired_stats) do
    for k, v in pairs(s) do
      if k ~= "cached" and k ~= "queued" and k ~= "inflight" then acc[k] = (acc[k] or 0) + v end
    end
  end
  self.retired_stats = {}
end

-- Drops broken, stuck, too old and long idle connections (at most once a
-- second, from a call).
function Pool:_maintain(now)
  self.next_maint = now + 1
  local conns = self.conns
  local idle_kept = 0
  for i = #conns, 1, -1 do
    local e = conns[i]
    if not e.busy then
      local n = e.c:pending()
      if n < 0 or e.c:stuck() > self.cancel_grace then
        drop(self, i)
      elseif n == 0 and not self.session then
        if now - e.created > self.max_lifetime then
          drop(self, i)
        elseif now - e.used > self.idle_timeout and idle_kept >= self.min then
          drop(self, i)
        else
          idle_kept = idle_kept + 1
        end
      end
    end
  end
end

-- The connection for a shared call: an idle one; else, once the pool
-- cannot grow (every connection open, or opening them fails), the least
-- loaded one under the pipeline depth whose running statement is not
-- slow (pipelining behind a long statement or a lock wait would make a
-- quick call wait for it); nil when none.  Drops broken ones met.
function Pool:_pick()
  local conns = self.conns
  local slow = self.slow
  local refused -- connections found full or slow, in the rare second look
  while true do
    -- The fewest calls in flight by the pool's own count (no C call per
    -- connection); the chosen one is then asked for the truth.
    local best, bestn = nil, math.huge
    for i = 1, #conns do
      local e = conns[i]
      local n = e.n
      if n < bestn and not e.busy and not (refused and refused[e]) then
        best, bestn = e, n
        if n == 0 then break end
      end
    end
    if not best then return nil end
    local n, age = best.c:load()
    if n == 0 then return best, 0 end
    if n < 0 then
      for i = 1, #conns do
        if conns[i] == best then drop(self, i) break end
      end
    elseif bestn > 0 and (self.connecting > 0 or #conns < self.size) and self.failures == 0
        and not self.closed then
      return nil -- a new connection is better than a queue behind another call
    elseif n < self.depth and (not slow or age < slow) then
      return best, n
    else
      refused = refused or {}
      refused[best] = true -- full, or running something slow: try the next
    end
  end
end

-- An idle connection that has not been used for health_check seconds is
-- asked for a round trip before it is given out.
function Pool:_healthy(e, now)
  if not self.health_check or now - e.used < self.health_check then return true end
  local ok = pcall(e.c.exec, e.c, math.min(self.connect_timeout, 5), "SELECT 1")
  e.used = now
  if ok then return true end
  for i, x in ipairs(self.conns) do
    if x == e then drop(self, i) break end
  end
  return false
end

function Pool:_fail_wait(what, waited)
  self.counters.timeouts = self.counters.timeouts + 1
  if self.session_lost then
    raise("connect", what .. ": the connection was lost; a session does not reconnect " ..
      "(open a new one, or use ah.pg.pool)", { sent = false })
  end
  if #self.conns == 0 and self.last_error then
    raise("connect", string.format("%s: no connection to the server%s: %s", what,
      waited and string.format(" within %g s", self.acquire_timeout) or "",
      tostring(self.last_error.message or self.last_error)), { sent = false })
  end
  raise("timeout", string.format("%s: every connection of the pool stayed busy for %g s " ..
    "(size = %d); raise size or acquire_timeout", what, self.acquire_timeout, self.size),
    { sent = false, retryable = true })
end

-- Waits in line for pick() to give something; `exclusive` waits for an
-- idle connection.
function Pool:_wait(what, exclusive)
  local deadline = clock() + self.acquire_timeout
  local front = false
  while true do
    if self.closed then raise("invalid_argument", what .. ": the pool is closed") end
    if self.session_lost then self:_fail_wait(what) end
    -- Others waiting are served first (FIFO); one woken is first in line.
    if front or self.nwait == 0 then
      local e, n = self:_pick()
      if e and (not exclusive or n == 0) then
        if n > 0 then self:_grow() end
        return e
      end
    end
    self:_grow(self.nwait + 1)
    if not self.ever_connected and self.last_error and self.connecting == 0 then
      self:_fail_wait(what)
    end
    local left = deadline - clock()
    if left <= 0 then self:_fail_wait(what, true) end
    if self.waitq:count() >= self.max_waiting then
      raise("busy", string.format("%s: %d calls are already waiting for a connection", what,
        self.max_waiting), { retryable = true, sent = false })
    end
    self.counters.waits = self.counters.waits + 1
    self.nwait = self.nwait + 1
    local ok, woken = pcall(self.waitq.wait, self.waitq, left, front)
    self.nwait = self.nwait - 1
    if not ok then error(woken, 0) end
    front = true -- woken but not served: first in line again
  end
end

function Pool:_get(what)
  local now = clock()
  if now >= self.next_maint then
    if self.closed then raise("invalid_argument", what .. ": the pool is closed") end
    self:_maintain(now)
  end
  if self.nwait == 0 then
    local e, n = self:_pick()
    if e then
      if n > 0 then
        self:_grow()
      elseif self.health_check and now - e.used >= self.health_check and not self:_healthy(e, now) then
        e = nil
      end
      if e then
        e.used = now
        e.n = e.n + 1
        return e
      end
    end
  end
  local e = self:_wait(what, false)
  e.used = clock()
  e.n = e.n + 1
  return e
end

function Pool:_put(e, ok, err)
  e.n = e.n - 1
  if not ok and type(err) == "table" and err.kind == "connect" then
    if e.c:pending() < 0 then
      for i, x in ipairs(self.conns) do
        if x == e then drop(self, i) break end
      end
      self:_grow()
    end
  end
  if self.nwait > 0 then self.waitq:wake(1) end
end

-- A connection for a transaction or a COPY, to itself until _release.
function Pool:_get_exclusive(what)
  if self.closed then raise("invalid_argument", what .. ": the pool is closed") end
  local now = clock()
  if now >= self.next_maint then self:_maintain(now) end
  local e
  if self.nwait == 0 then
    local x, n = self:_pick()
    if x and n == 0 and self:_healthy(x, now) then e = x end
  end
  e = e or self:_wait(what, true)
  e.busy = true
  e.used = clock()
  e.c:set_autocommit(false)
  self.exclusive = self.exclusive + 1
  return e
end

function Pool:_release(e, healthy)
  e.busy = false
  self.exclusive = self.exclusive - 1
  e.used = clock()
  e.c:set_autocommit(true)
  if not healthy or e.c:status() ~= "ready" then
    for i, x in ipairs(self.conns) do
      if x == e then drop(self, i) break end
    end
    self:_grow()
  end
  if self.nwait > 0 then self.waitq:wake(self.depth) end
end

-- pg:transaction(fn [, {isolation =, read_only =, deferrable =, retries =,
-- timeout =}], ...) -> fn's results, once committed.  An error (or a
-- cancellation) in fn rolls back and is raised.  retries: how many times a
-- serialization failure or deadlock runs fn again.
function Pool:transaction(fn, opts, ...) return transaction(self, fn, opts, ...) end

-- ---- listening ---------------------------------------------------------------------------

local Listener = {}
Listener.__index = Listener

local function listen_sql(channel) return "LISTEN " .. M.ident(channel) end

-- The connection the pool listens on (its own, not one of `size`).
function Pool:_listen_conn()
  if self.session then
    local e = self.conns[1]
    if not e or e.c:pending() < 0 then self:_fail_wait("pg:listen") end
    return e.c
  end
  while self.lconn_opening do self.lconnq:wait(self.connect_timeout) end
  if self.lconn and self.lconn:status() == "ready" then return self.lconn end
  self.lconn_opening = true
  local ok, c = pcall(C.connect, self.url, self.copts)
  self.lconn_opening = false
  self.lconnq:wake(self.lconnq:count())
  if not ok then error(c, 0) end
  if self.lconn then self.lconn:close() end
  self.lconn = c
  return c
end

-- Replaces the lost listening connection: connects again (with backoff,
-- until deadline), LISTENs on every channel, moves the listeners over.
function Pool:_relisten(deadline)
  if self.relistening then
    self.relistenq:wait(deadline and math.max(deadline - clock(), 0.001) or nil)
    return
  end
  self.relistening = true
  local ok, err = pcall(function()
    local failures = 0
    while not self.closed do
      local okc, c = pcall(C.connect, self.url, self.copts)
      if okc then
        local okl = pcall(function()
          for ch in pairs(self.channels) do c:exec(self.timeout, listen_sql(ch)) end
        end)
        if okl then
          local old = self.lconn
          self.lconn = c
          for l in pairs(self.listeners) do
            if l.sub then l.sub:attach(c) end
          end
          if old then old:close() end
          self.counters.relistens = self.counters.relistens + 1
          return
        end
        c:close()
      end
      failures = failures + 1
      local d = math.min(self.backoff_min * 2 ^ (failures - 1), self.backoff_max)
      if deadline and clock() + d > deadline then return end
      task.sleep(d * (0.5 + math.random() / 2))
    end
  end)
  self.relistening = false
  self.relistenq:wake(self.relistenq:count())
  if not ok then error(err, 0) end
end

-- pg:listen(channel) -> a listener, once LISTEN is in effect.
-- l:recv([timeout]) -> {channel, payload, pid}, or nil when the time ran
-- out; {channel, missed = true} once after the connection was replaced
-- (notifications sent meanwhile are lost: read again what you listen for).
function Pool:listen(channel)
  if type(channel) ~= "string" or channel == "" or #channel > 63 then
    bad("pg:listen", "the channel must be a string of 1 to 63 bytes")
  end
  if self.closed then raise("invalid_argument", "pg:listen: the pool is closed") end
  local c = self:_listen_conn()
  if not self.channels[channel] then
    c:exec(self.timeout, listen_sql(channel))
    self.channels[channel] = 0
  end
  self.channels[channel] = self.channels[channel] + 1
  local l = setmetatable({ pool = self, channel = channel, sub = c:subscribe(channel) }, Listener)
  self.listeners[l] = true
  return l
end

function Listener:recv(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    bad("listener:recv", "the timeout must be a number > 0")
  end
  if not self.sub then raise("invalid_argument", "listener:recv: the listener is closed") end
  local deadline = timeout and clock() + timeout
  while true do
    local left = deadline and deadline - clock()
    if left and left <= 0 then return nil end
    local ch, payload, pid = self.sub:recv(left)
    if ch == nil then return nil end
    if ch ~= false then return { channel = ch, payload = payload, pid = pid } end
    if payload == "missed" then return { channel = self.channel, missed = true } end
    if payload == "closed" or not self.sub then
      raise("invalid_argument", "listener:recv: the listener is closed")
    end
    -- lost: a new connection, then "missed" is delivered
    local pool = self.pool
    if pool.closed then raise("invalid_argument", "listener:recv: the pool is closed") end
    if pool.session then pool:_fail_wait("listener:recv") end
    pool:_relisten(deadline)
  end
end

-- for n in l do ... end: notifications as they come, forever.
function Listener:__call() return self:recv() end

function Listener:close()
  local sub = self.sub
  if not sub then return end
  self.sub = nil
  sub:close()
  local pool = self.pool
  pool.listeners[self] = nil
  local n = (pool.channels[self.channel] or 1) - 1
  if n > 0 then
    pool.channels[self.channel] = n
    return
  end
  pool.channels[self.channel] = nil
  local c = pool.session and pool.conns[1] and pool.conns[1].c or pool.lconn
  if c and c:status() == "ready" and task.current() then
    pcall(c.exec, c, pool.timeout, "UNLISTEN " .. M.ident(self.channel))
  end
end
Listener.__close = Listener.close

-- ---- stats and closing ----------------------------------------------------------------------

-- pg:stats() -> counters of the pool and of its connections.
function Pool:stats()
  local s = {
    size = self.size, open = #self.conns, connecting = self.connecting, busy = self.exclusive,
    waiting = self.nwait, idle = 0, in_flight = 0,
  }
  for k, v in pairs(self.counters) do s[k] = v end
  self:_fold_stats()
  for k, v in pairs(self.retired) do s[k] = v end
  for _, e in ipairs(self.conns) do
    local cs = e.c:stats()
    local n = e.c:pending()
    if n == 0 and not e.busy then s.idle = s.idle + 1 end
    s.in_flight = s.in_flight + math.max(n, 0)
    for k, v in pairs(cs) do
      if k ~= "queued" and k ~= "inflight" then s[k] = (s[k] or 0) + v end
    end
  end
  s.listening = self.lconn ~= nil and self.lconn:status() == "ready"
  return s
end

-- pg:close(): closes every connection; calls still in flight fail with a
-- `connect` error, waiting calls with invalid_argument.
function Pool:close()
  if self.closed then return end
  -- What was handed to the pool to do later (memory's queued writes) is
  -- done first, when the caller can wait for it.
  if self.closing_hooks and task.current() then
    local hooks = self.closing_hooks
    self.closing_hooks = nil
    for _, fn in ipairs(hooks) do pcall(fn) end
  end
  if self.closed then return end
  self.closed = true
  self.next_maint = -math.huge -- the next call looks, and finds it closed
  for l in pairs(self.listeners) do
    if l.sub then l.sub:close() l.sub = nil end
  end
  for _, e in ipairs(self.conns) do e.c:close() end
  self.conns = {}
  if self.lconn then self.lconn:close() self.lconn = nil end
  self.sleepq:wake(self.sleepq:count())
  self.waitq:wake(self.waitq:count())
end
Pool.__close = Pool.close

function Pool:__tostring()
  return string.format("ah.pg.pool(%s, %d/%d open%s)", self.server or "PostgreSQL", #self.conns,
    self.size, self.closed and ", closed" or "")
end

local function new_pool(o, what)
  if o ~= nil and type(o) ~= "table" then bad(what, "expected a table of options") end
  o = o or {}
  local self = setmetatable({
    url = default_url(o.url, what),
    size = opt_int(o, "size", 8, 1, 10000, what),
    min = opt_int(o, "min", 0, 0, 10000, what),
    depth = opt_int(o, "pipeline", 16, 1, 100000, what),
    slow = opt_number(o, "slow", 0.1, what, true),
    max_waiting = opt_int(o, "max_waiting", 100000, 1, 1 << 30, what),
    acquire_timeout = opt_number(o, "acquire_timeout", 30, what),
    timeout = opt_number(o, "timeout", 60, what, true),
    connect_timeout = opt_number(o, "connect_timeout", 10, what),
    max_lifetime = opt_number(o, "max_lifetime", 3600, what),
    idle_timeout = opt_number(o, "idle_timeout", 300, what),
    health_check = opt_number(o, "health_check", 30, what, true),
    cancel_grace = opt_number(o, "cancel_grace", 10, what),
    backoff_min = opt_number(o, "backoff_min", 0.05, what),
    backoff_max = opt_number(o, "backoff_max", 1, what),
    conns = {}, connecting = 0, exclusive = 0, nwait = 0, failures = 0, next_attempt = 0,
    next_maint = 0, channels = {}, listeners = setmetatable({}, { __mode = "k" }),
    waitq = C.waitlist(), sleepq = C.waitlist(), lconnq = C.waitlist(), relistenq = C.waitlist(),
    counters = { connects = 0, connect_errors = 0, dropped = 0, waits = 0, timeouts = 0,
                 relistens = 0 },
    retired = {}, retired_stats = {}, shared = true,
  }, Pool)
  if o.prepare ~= nil and type(o.prepare) ~= "boolean" then bad(what, "prepare must be a boolean") end
  if o.application_name ~= nil and type(o.application_name) ~= "string" then
    bad(what, "application_name must be a string")
  end
  self.copts = {
    connect_timeout = self.connect_timeout, prepare = o.prepare ~= false,
    statement_cache = opt_int(o, "statement_cache", 256, 1, 100000, what),
    application_name = o.application_name,
  }
  if self.min > self.size then bad(what, "min must not exceed size") end
  return self
end

-- ah.pg.pool{url =, size =, ...} -> a pool (connections open on first use).
function M.pool(o) return new_pool(o, "ah.pg.pool") end

-- ah.pg.connect([url [, opts]]) -> one session (the pool's methods on one
-- connection that is never replaced: SET, temporary tables and advisory
-- locks last as long as it does).
function M.connect(url, o)
  if type(url) == "table" and o == nil then url, o = url.url, url end
  if o ~= nil and type(o) ~= "table" then bad("ah.pg.connect", "the options must be a table") end
  o = o or {}
  local opts = {}
  for k, v in pairs(o) do opts[k] = v end
  opts.url, opts.size, opts.min = url, 1, 1
  opts.pipeline = opts.pipeline or 100000
  opts.health_check = false
  opts.slow = false
  local self = new_pool(opts, "ah.pg.connect")
  self.session = true
  self.shared = false
  local c = C.connect(self.url, self.copts)
  c:set_autocommit(true)
  local now = clock()
  self.conns[1] = { c = c, created = now, used = now, n = 0 }
  self.ever_connected = true
  self.server = c:info().server
  return self
end

-- pg:before_close(fn): fn() runs (in the closing task) before close()
-- closes the connections, for work queued on the pool that must not be
-- lost.
function Pool:before_close(fn)
  if type(fn) ~= "function" then bad("pg:before_close", "expected a function") end
  self.closing_hooks = self.closing_hooks or {}
  table.insert(self.closing_hooks, fn)
end

-- ah.pg.is_pool(x): is x a pool or a session of this module?
function M.is_pool(x) return type(x) == "table" and getmetatable(x) == Pool end

-- conn:info() -> {server, pid, server_version} of a session.
function Pool:info()
  local e = self.conns[1]
  if not e then return { server = self.server } end
  return e.c:info()
end

return M
