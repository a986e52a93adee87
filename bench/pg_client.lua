-- bench/pg_client.lua: PostgreSQL query throughput and client CPU of
-- ah.pg, for bench/pg.
--
--   build/agenthost bench/pg_client.lua URL MODE N CONCURRENCY POOL
--   build/agenthost bench/pg_client.lua --check
--
-- The tables are bench/pg's (it makes them before the runs):
--
--   select  CONCURRENCY tasks loop `db:first` of a point SELECT by primary
--           key (SELECT id, name, value FROM bench_items WHERE id = $1, id
--           cycling over the 10,000 rows) until N queries have returned.
--   insert  CONCURRENCY tasks loop `db:exec` of a single-row INSERT into
--           bench_rows, each committed on its own, until N rows are in.
--   copy    N rows into bench_bulk with `db:copy` (COPY FROM STDIN), the
--           rows made by an iterator as they are sent.
--   pipeline  N rows into bench_bulk in one transaction: `tx:batch` of
--           1,000 single-row INSERTs at a time (the prepared INSERT bound
--           1,000 times and one Sync: one round trip each).
--
-- The pool has POOL connections, opened before the timed window (a warm-up
-- query on each).  The window runs from the first query to the last
-- result; CPU is user + system time of this process over it (libpq runs in
-- it: the client's whole cost).  Afterwards the rows are counted.  Prints:
--
--   client=agenthost mode=MODE n=N seconds=S per_s=R cpu=CPU
--
-- Exit status 1 on a wrong count or any error, 2 on a usage error.

local ah = require "agenthost"
local task = ah.task

local function usage(msg)
  io.stderr:write("pg_client.lua: ", msg, "\n",
    "usage: agenthost bench/pg_client.lua URL select|insert|copy|pipeline N CONCURRENCY POOL\n")
  os.exit(2)
end

local url, mode, n_s, conc_s, pool_s = ...
if url == "--check" then
  os.exit(type(ah.pg) == "table" and type(ah.pg.pool) == "function" and 0 or 2)
end
if not (url and mode and n_s and conc_s and pool_s) then usage("expected URL MODE N CONCURRENCY POOL") end
local modes = { select = true, insert = true, copy = true, pipeline = true }
if not modes[mode] then usage("unknown mode '" .. mode .. "'") end
local n = math.tointeger(tonumber(n_s))
local conc = math.tointeger(tonumber(conc_s))
local size = math.tointeger(tonumber(pool_s))
if not n or n < 1 or not conc or conc < 1 or not size or size < 1 then
  usage("N, CONCURRENCY and POOL must be positive integers")
end

local BODY = string.rep("x", 64)

local db = ah.pg.pool { url = url, size = size, pipeline = 64 }
-- Open every connection before the window.
task.map((function()
  local t = {}
  for i = 1, size do t[i] = i end
  return t
end)(), function() db:first("SELECT pg_sleep(0.05)") end)
if mode == "insert" then db:exec("TRUNCATE bench_rows") end
if mode == "copy" or mode == "pipeline" then db:exec("TRUNCATE bench_bulk") end

local function workers(fn)
  local done = 0
  local list = {}
  for w = 1, conc do
    list[w] = function()
      while done < n do
        done = done + 1
        fn(done, w)
      end
    end
  end
  task.gather(table.unpack(list))
end

local t0, c0 = ah.clock(), ah.rusage().cpu
if mode == "select" then
  workers(function(i)
    local r = db:first("SELECT id, name, value FROM bench_items WHERE id = $1", i % 10000 + 1)
    if r.id ~= i % 10000 + 1 then error("wrong row") end
  end)
elseif mode == "insert" then
  workers(function(i, w)
    db:exec("INSERT INTO bench_rows(agent, step, body) VALUES ($1, $2, $3)", w, i, BODY)
  end)
elseif mode == "copy" then
  local i = 0
  db:copy("COPY bench_bulk(agent, step, body) FROM STDIN", function()
    i = i + 1
    if i <= n then return { i % 64, i, BODY } end
  end)
else
  db:transaction(function(tx)
    local sql = "INSERT INTO bench_bulk(agent, step, body) VALUES ($1, $2, $3)"
    local i = 0
    while i < n do
      local list = {}
      for k = 1, math.min(1000, n - i) do
        i = i + 1
        list[k] = { sql, i % 64, i, BODY }
      end
      tx:batch(list)
    end
  end)
end
local secs, cpu = ah.clock() - t0, ah.rusage().cpu - c0

if mode == "insert" then
  local got = db:first("SELECT count(*) AS c FROM bench_rows").c
  if got ~= n then error(string.format("expected %d rows, found %d", n, got)) end
elseif mode ~= "select" then
  local got = db:first("SELECT count(*) AS c FROM bench_bulk").c
  if got ~= n then error(string.format("expected %d rows, found %d", n, got)) end
end
db:close()
print(string.format("client=agenthost mode=%s n=%d seconds=%.4f per_s=%.1f cpu=%.4f",
  mode, n, secs, n / secs, cpu))
