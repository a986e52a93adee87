-- bench/store_client.lua: SQLite write throughput and loop responsiveness
-- of agenthost's store.
--
--   build/agenthost bench/store_client.lua PATH MODE ROWS CONCURRENCY
--   build/agenthost bench/store_client.lua --check
--
-- PATH is opened as a fresh database (`ah.store.open`, WAL,
-- synchronous = "normal") and given the benchmark's table; then ROWS small
-- rows go in through one bound-parameter INSERT:
--
--   post   one task calls `db:post` for every row, yielding with
--          `task.sleep(0)` after every 1,000 so the writer thread commits
--          while it produces; then `db:exec` of a statement that changes
--          nothing serves as the barrier: the writer takes its queue in
--          order, so once that has committed every row before it has.
--   exec   CONCURRENCY tasks each loop `db:exec` of the INSERT until ROWS
--          rows are written; each row is committed before its task goes on.
--
-- The timed window runs from the first write to the last commit; CPU is user
-- + system time of the process (the loop and the writer thread) over it.
-- Meanwhile another task sleeps 1 ms in a loop and records how late it wakes
-- (actual minus requested).  Afterwards the row count is read back with
-- `db:first`.  Prints one line:
--
--   client=agenthost mode=MODE rows=N seconds=S rows_per_s=R cpu=CPU lateness_p99_ms=P lateness_max_ms=M transactions=T slice_p99_ms=L
--
-- transactions is how many the writer committed in the window (from
-- `db:stats()`, "-" if it does not say).  slice_p99_ms (post only, else "-")
-- is how long the producer itself holds the loop between two yields: no
-- timer can wake during a slice, so it bounds the lateness from below.  Exit status 1 on a wrong count or
-- any error, 2 on a usage error or when this build has no `ah.store`
-- (--check only tests for that).

local ah = require "agenthost"
local task = ah.task

local function usage(msg)
  io.stderr:write("store_client.lua: ", msg, "\n",
    "usage: agenthost bench/store_client.lua PATH post|exec ROWS CONCURRENCY\n")
  os.exit(2)
end

local path, mode, rows_s, conc_s = ...

if type(ah.store) ~= "table" or type(ah.store.open) ~= "function" then
  io.stderr:write("store_client.lua: this build of agenthost has no ah.store (host/store.c, ",
    "bindings/store.c); measure only the peers with --clients \"raw aiosqlite\"\n")
  os.exit(2)
end
if path == "--check" then os.exit(0) end

if not path or not mode or not rows_s or not conc_s then usage("expected PATH MODE ROWS CONCURRENCY") end
if mode ~= "post" and mode ~= "exec" then usage("MODE must be post or exec, got '" .. mode .. "'") end
local rows = math.tointeger(tonumber(rows_s))
local conc = math.tointeger(tonumber(conc_s))
if not rows or rows < 1 then usage("ROWS must be a positive integer") end
if not conc or conc < 1 then usage("CONCURRENCY must be a positive integer") end

local SCHEMA = "CREATE TABLE rows(id INTEGER PRIMARY KEY, agent INTEGER NOT NULL, " ..
  "step INTEGER NOT NULL, body TEXT NOT NULL)"
local INSERT = "INSERT INTO rows(agent, step, body) VALUES (?, ?, ?)"
local BARRIER = "DELETE FROM rows WHERE id < 0"
local YIELD_EVERY = 1000

-- The body every client writes for row i: "AAAAAA:SSSSSSSSS:" then 'x' up
-- to 64 bytes, where A is the agent (i mod 64) and S the step (i).
local FILL = string.rep("x", 64 - 17)
local format = string.format
local function body(i)
  return format("%06d:%09d:", i % 64, i) .. FILL
end

local clock = ah.clock

local function transactions(db)
  local ok, st = pcall(db.stats, db)
  return ok and type(st) == "table" and math.tointeger(st.transactions) or nil
end

local db = ah.store.open(path, { synchronous = "normal" })
db:exec(SCHEMA)

-- The ticker: how late a 1 ms sleep wakes while the writes run.
local late, nlate, stop = {}, 0, false
local ticker = task.spawn(function()
  local sleep = task.sleep
  while not stop do
    local t0 = clock()
    sleep(0.001)
    nlate = nlate + 1
    late[nlate] = (clock() - t0 - 0.001) * 1000
  end
end)
task.sleep(0)

local slices, nslices = {}, 0
local tx0 = transactions(db)
local r0 = ah.rusage()
local t0 = clock()
if mode == "post" then
  local sleep = task.sleep
  local s0 = t0
  for i = 0, rows - 1 do
    db:post(INSERT, i % 64, i, body(i))
    if (i + 1) % YIELD_EVERY == 0 or i == rows - 1 then
      nslices = nslices + 1
      slices[nslices] = (clock() - s0) * 1000
      sleep(0)
      s0 = clock()
    end
  end
  db:exec(BARRIER)
else
  local nxt = 0
  local function writer()
    while nxt < rows do
      local i = nxt
      nxt = nxt + 1
      db:exec(INSERT, i % 64, i, body(i))
    end
  end
  local writers = {}
  for w = 1, conc do writers[w] = task.spawn(writer) end
  for w = 1, conc do writers[w]:join() end
end
local t1 = clock()
local r1 = ah.rusage()
local tx1 = transactions(db)
stop = true
ticker:join()

local row = db:first("SELECT count(*) AS n FROM rows")
local got = row and (row.n or row[1])
db:close()
if got ~= rows then
  io.stderr:write(format("store_client.lua: expected %d rows, found %s\n", rows, tostring(got)))
  os.exit(1)
end

local function p99_of(xs, n)
  table.sort(xs)
  return n > 0 and xs[math.max(1, math.ceil(n * 0.99))] or 0 / 0
end
local p99 = p99_of(late, nlate)
local max = nlate > 0 and late[nlate] or 0 / 0
local elapsed = t1 - t0
io.stdout:write(format(
  "client=agenthost mode=%s rows=%d seconds=%.3f rows_per_s=%.1f cpu=%.3f lateness_p99_ms=%.3f " ..
  "lateness_max_ms=%.3f transactions=%s slice_p99_ms=%s\n",
  mode, rows, elapsed, rows / elapsed, r1.cpu - r0.cpu, p99, max,
  (tx0 and tx1) and tostring(tx1 - tx0) or "-",
  nslices > 0 and format("%.3f", p99_of(slices, nslices)) or "-"))
io.stdout:flush()
