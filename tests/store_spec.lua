-- ah.store: group commit, per-job savepoints, structured errors, reads on
-- reader threads, draining on close and at exit, and durability of every
-- write whose exec returned, even across kill -9.

local ah = require "agenthost"
local proc = require "support.proc"
local spec = require "support.spec"
local task, store = ah.task, ah.store

local dir

setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local n = 0
local function fresh(opts)
  n = n + 1
  local path = dir .. "/db" .. n .. ".sqlite"
  local db = store.open(path, opts)
  db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE, n REAL)")
  return db, path
end

local function run(fn) return task.run(fn) end

local function count(db, where, ...)
  return db:first("SELECT count(*) AS c FROM t " .. (where or ""), ...).c
end

local function fails(kind, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected a " .. kind .. " error")
  assert.is_true(ah.error.is(err, kind), "expected kind " .. kind .. ", got " .. tostring(err))
  return err
end

describe("ah.store", function()
  it("exec returns changes and the last rowid; query and first return rows", function()
    run(function()
      local db = fresh()
      assert.same({ 1, 1 }, { db:exec("INSERT INTO t(v, n) VALUES (?, ?)", "a", 1.5) })
      assert.same({ 1, 2 }, { db:exec("INSERT INTO t(v, n) VALUES (?, ?)", "b", 2) })
      assert.same({ 2, 0 }, { db:exec("UPDATE t SET n = n + 1") })
      assert.same({ { id = 1, v = "a", n = 2.5 }, { id = 2, v = "b", n = 3.0 } },
        db:query("SELECT id, v, n FROM t ORDER BY id"))
      assert.same({ id = 2 }, db:first("SELECT id FROM t WHERE v = ?", "b"))
      assert.is_nil(db:first("SELECT id FROM t WHERE v = ?", "zz"))
      assert.same({}, db:query("SELECT * FROM t WHERE id > 100"))
      db:close()
    end)
  end)

  it("binds nil, booleans, integers, floats and strings with NUL bytes", function()
    run(function()
      local db = fresh()
      db:exec("CREATE TABLE v(a, b, c, d, e, f)")
      local bin = "a\0b\255\n'; DROP TABLE v; --"
      db:exec("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?)", nil, true, false,
        math.maxinteger, 0.25, bin)
      local r = db:first("SELECT a, b, c, d, e, f, typeof(d) AS td, length(f) AS lf FROM v")
      assert.is_nil(r.a)
      assert.equal(1, r.b)
      assert.equal(0, r.c)
      assert.equal(math.maxinteger, r.d)
      assert.equal("integer", r.td)
      assert.equal(0.25, r.e)
      assert.equal(bin, r.f)
      assert.equal(1, db:first("SELECT count(*) AS c FROM v").c)
      db:close()
    end)
  end)

  it("commits the posts of one scheduler pass in one transaction", function()
    run(function()
      local db = fresh()
      local before = db:stats()
      for i = 1, 500 do db:post("INSERT INTO t(v) VALUES (?)", "p" .. i) end
      db:flush()
      local after = db:stats()
      assert.equal(1, after.transactions - before.transactions)
      assert.equal(500, after.posts - before.posts)
      assert.is_true(after.largest_group >= 500)
      assert.equal(500, count(db))
      db:close()
    end)
  end)

  it("fails a failing statement alone; the rest of its group commits", function()
    run(function()
      local db = fresh()
      db:exec("INSERT INTO t(v) VALUES ('taken')")
      local before = db:stats()
      local bad, good = {}, {}
      for i = 1, 20 do
        if i % 5 == 0 then
          bad[#bad + 1] = task.spawn(db.exec, db, "INSERT INTO t(v) VALUES ('taken')")
        else
          good[#good + 1] = task.spawn(db.exec, db, "INSERT INTO t(v) VALUES (?)", "g" .. i)
        end
      end
      for _, t in ipairs(good) do t:join() end
      for _, t in ipairs(bad) do
        local ok, err = t:result()
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "constraint"), tostring(err))
      end
      assert.equal(1, db:stats().transactions - before.transactions)
      assert.equal(17, count(db))
      db:close()
    end)
  end)

  it("reruns the group without a statement that rolled the whole transaction back", function()
    run(function()
      local db = fresh()
      db:exec("INSERT INTO t(v) VALUES ('taken')")
      local ts = {}
      for i = 1, 10 do
        ts[#ts + 1] = task.spawn(db.exec, db, "INSERT INTO t(v) VALUES (?)", "r" .. i)
        if i == 5 then
          ts[#ts + 1] = task.spawn(db.exec, db, "INSERT OR ROLLBACK INTO t(v) VALUES ('taken')")
        end
      end
      for i, t in ipairs(ts) do
        local ok, err = t:result()
        if i == 6 then
          assert.is_false(ok)
          assert.is_true(ah.error.is(err, "constraint"), tostring(err))
        else
          assert.is_true(ok, tostring(err))
        end
      end
      -- every good row exactly once
      assert.equal(11, count(db))
      assert.equal(10, count(db, "WHERE v LIKE 'r%'"))
      db:close()
    end)
  end)

  it("batch is all or nothing", function()
    run(function()
      local db = fresh()
      assert.same({ 2, 2 }, { db:batch {
        { "INSERT INTO t(v) VALUES (?)", "x" },
        { "INSERT INTO t(v, n) VALUES (?, ?)", "y", n = 3 },
      } })
      assert.equal(1, count(db, "WHERE v = 'y' AND n IS NULL"))
      local err = fails("constraint", db.batch, db, {
        { "INSERT INTO t(v) VALUES ('z')" },
        { "INSERT INTO t(v) VALUES ('x')" },
      })
      assert.equal(2, err.index)
      assert.equal("INSERT INTO t(v) VALUES ('x')", err.sql)
      assert.equal(0, count(db, "WHERE v = 'z'"))
      fails("invalid_argument", db.batch, db, { { 42 } })
      fails("invalid_argument", db.batch, db, "INSERT")
      db:close()
    end)
  end)

  it("gives structured errors for bad SQL, constraints and bad parameters; other writes go on", function()
    run(function()
      local db = fresh()
      local w = task.spawn(function()
        for i = 1, 50 do db:exec("INSERT INTO t(v) VALUES (?)", "ok" .. i) end
      end)
      local e = fails("sql", db.exec, db, "INSRT INTO t VALUES (1)")
      assert.matches("syntax error", e.message)
      assert.equal("INSRT INTO t VALUES (1)", e.sql)
      assert.is_false(e.retryable)
      db:exec("INSERT INTO t(v) VALUES ('u')")
      e = fails("constraint", db.exec, db, "INSERT INTO t(v) VALUES (?)", "u")
      assert.matches("UNIQUE constraint failed: t.v", e.message)
      assert.is_number(e.code)
      e = fails("invalid_argument", db.exec, db, "INSERT INTO t(v) VALUES (?)", { 1 })
      assert.matches("parameter 1 is a table", e.message)
      fails("invalid_argument", db.post, db, "INSERT INTO t(v) VALUES (?)", print)
      fails("invalid_argument", db.exec, db, "SELECT ?", 1, 2)
      fails("invalid_argument", db.exec, db, "SELECT 1; SELECT 2")
      fails("invalid_argument", db.exec, db, "   -- only a comment")
      fails("invalid_argument", db.exec, db, 42)
      e = fails("invalid_argument", db.exec, db, "COMMIT")
      assert.matches("not allowed", e.message)
      fails("invalid_argument", db.exec, db, "SAVEPOINT x")
      fails("sql", db.query, db, "SELECT * FROM missing")
      e = fails("invalid_argument", db.query, db, "DELETE FROM t") -- readers are read-only
      assert.matches("db:exec", e.message)
      w:join()
      assert.equal(51, count(db))
      db:close()
      fails("invalid_argument", db.exec, db, "SELECT 1")
    end)
  end)

  it("reports a failed post to the error handler, tagged with its SQL", function()
    local got
    run(function()
      got = spec.capture_reports()
      local db = fresh()
      db:post("INSERT INTO nowhere VALUES (?)", "secret-value")
      db:post("INSERT INTO t(v) VALUES ('after')")
      db:flush()
      assert.equal(1, count(db, "WHERE v = 'after'"))
      db:close()
      task.on_error(nil)
    end)
    assert.equal(1, #got)
    assert.is_true(ah.error.is(got[1].err, "sql"))
    assert.equal("INSERT INTO nowhere VALUES (?)", got[1].err.sql)
    assert.matches("db:post", got[1].err.message)
    assert.is_nil(tostring(got[1].err):find("secret-value", 1, true))
  end)

  it("fails to open an unwritable path with an io error", function()
    run(function()
      local e = fails("io", store.open, "/nonexistent-dir/x.sqlite")
      assert.matches("/nonexistent%-dir/x.sqlite", e.message)
      fails("invalid_argument", store.open, dir .. "/x.sqlite", { synchronous = "sometimes" })
      fails("invalid_argument", store.open, dir .. "/x.sqlite", { readers = -1 })
      fails("invalid_argument", store.open, 42)
    end)
    assert.has_error(function() store.open(dir .. "/y.sqlite") end)
  end)

  it("gives a busy error while another process holds the database, then recovers", function()
    local path = dir .. "/busy.sqlite"
    run(function()
      local db = store.open(path)
      db:exec("CREATE TABLE t(v)")
      db:close()
    end)
    -- The holder runs a write that never ends, so it keeps the write lock.
    local holder = proc.spawn_cli { proc.script(string.format([[
      local ah = require "agenthost"
      local db = ah.store.open(%q)
      print("open")
      io.stdout:flush()
      db:exec("INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1e15) SELECT x FROM c")
    ]], path)) }
    assert.is_true(holder:wait_output("open", 10), holder:err())
    run(function()
      local db = store.open(path, { busy_timeout = 0.02 })
      local err
      for _ = 1, 500 do -- until the holder's statement has taken the lock
        local ok, e = pcall(db.exec, db, "INSERT INTO t VALUES ('probe')")
        if not ok then err = e break end
        task.sleep(0.01)
      end
      assert.is_true(ah.error.is(err, "busy"), tostring(err))
      assert.is_true(err.retryable)
      local reads = db:first("SELECT count(*) AS c FROM t WHERE v = 'probe'").c -- readers go on
      holder:signal("KILL")
      assert.equal(137, holder:wait(10))
      db:exec("INSERT INTO t VALUES ('after')")
      assert.equal(reads, db:first("SELECT count(*) AS c FROM t WHERE v = 'probe'").c)
      assert.equal(1, db:first("SELECT count(*) AS c FROM t WHERE v = 'after'").c)
      db:close()
    end)
  end)

  it("reads on reader threads and in :memory: databases", function()
    run(function()
      local db = fresh { readers = 4 }
      for i = 1, 100 do db:post("INSERT INTO t(v, n) VALUES (?, ?)", "q" .. i, i) end
      db:flush()
      local sums = task.map({ 1, 2, 3, 4, 5, 6, 7, 8 }, function(k)
        return db:first("SELECT sum(n) AS s FROM t WHERE n % 8 = ?", k % 8).s
      end)
      local total = 0
      for _, s in ipairs(sums) do total = total + s end
      assert.equal(5050, total)
      assert.is_true(db:stats().reads >= 8)
      db:close()
      local mem = store.open(":memory:")
      mem:exec("CREATE TABLE m(x)")
      mem:post("INSERT INTO m VALUES (1)")
      assert.equal(1, mem:first("SELECT count(*) AS c FROM m").c) -- in order with the writes
      mem:close()
    end)
  end)

  it("caps a query's result with a too_large error", function()
    run(function()
      local db = fresh { max_result = 4096 }
      db:exec([[INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL
                SELECT x + 1 FROM c WHERE x < 50) SELECT printf('%0500d', x) FROM c]])
      local e = fails("too_large", db.query, db, "SELECT v FROM t")
      assert.matches("LIMIT", e.message)
      assert.equal(5, #db:query("SELECT v FROM t LIMIT 5"))
      db:close()
    end)
  end)

  it("interrupts a cancelled query; the reader serves the next one", function()
    run(function()
      local db = fresh { readers = 1 }
      local forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
      local q = task.spawn(db.query, db, forever)
      task.sleep(0.01)
      q:cancel()
      local ok, err = q:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.equal(0, count(db))
      db:close()
    end)
  end)

  it("keeps the loop running while the writer works", function()
    run(function()
      local db = fresh()
      local ticks, done = 0, false
      local ticker = task.spawn(function()
        while not done do
          task.sleep(0.001)
          ticks = ticks + 1
        end
      end)
      task.sleep(0.005)
      local start = ticks
      -- one statement that keeps the writer busy for a long while
      db:exec([[INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL
                SELECT x + 1 FROM c WHERE x < 300000) SELECT 'w' || x FROM c]])
      done = true
      ticker:join()
      assert.equal(300000, count(db))
      assert.is_true(ticks - start >= 10, "the loop stood still: " .. (ticks - start) .. " ticks")
      db:close()
    end)
  end)

  it("close drains every queued post, in a task and outside one", function()
    local path
    run(function()
      local db
      db, path = fresh()
      for i = 1, 2000 do db:post("INSERT INTO t(v) VALUES (?)", "c" .. i) end
      db:close()
      db:close() -- closing twice is harmless
    end)
    run(function()
      local db = store.open(path)
      assert.equal(2000, count(db))
      for i = 1, 100 do db:post("INSERT INTO t(v) VALUES (?)", "d" .. i) end
      task.spawn(function() end):join()
      getmetatable(db).__index.close(db) -- and outside a task below
    end)
    local db2
    run(function() db2 = store.open(path) end)
    db2:close() -- outside a task: blocks until drained
    run(function()
      local db = store.open(path)
      assert.equal(2100, count(db))
      db:close()
    end)
  end)
end)

describe("ah.store misuse and races", function()
  it("survives a db collected while its close is still draining", function()
    run(function()
      local db = fresh()
      for i = 1, 20000 do db:post("INSERT INTO t(v) VALUES (?)", "x" .. i) end
      local t = task.spawn(function() db:close() end)
      task.yield()
      t:cancel()
      pcall(t.join, t)
      db, t = nil, nil
      collectgarbage()
      collectgarbage()
      task.sleep(0.05)
    end)
  end)

  it("refuses a blocking close while tasks wait on the database", function()
    run(function()
      local db = fresh()
      local w = task.spawn(db.exec, db, "INSERT INTO t(v) VALUES ('w')")
      task.yield() -- w is now waiting for its commit
      local ok, err = coroutine.wrap(function() return pcall(db.close, db) end)()
      assert.is_false(ok)
      assert.matches("close it from a task", tostring(err))
      w:join()
      db:close()
    end)
  end)

  it("keeps readers read-only, PRAGMA query_only included", function()
    run(function()
      local db = fresh()
      fails("invalid_argument", db.query, db, "PRAGMA query_only = 0")
      fails("invalid_argument", db.query, db, "INSERT INTO t(v) VALUES ('q') RETURNING id")
      assert.equal(0, count(db))
      db:close()
    end)
  end)

  -- The header's read and write versions (bytes 18 and 19) are 2 in WAL mode.
  local function in_wal(path)
    local f = assert(io.open(path, "rb"))
    local h = f:read(20)
    f:close()
    return h:byte(19) == 2 and h:byte(20) == 2
  end

  for _, readers in ipairs { 2, 0 } do
  it("refuses pragmas that change the database or the connection in a query (readers = " .. readers .. ")", function()
    run(function()
      local db, path = fresh { readers = readers }
      db:exec("INSERT INTO t(v) VALUES ('x')")
      for _, sql in ipairs {
        "PRAGMA journal_mode=DELETE", "PRAGMA journal_mode = 'memory'", "PRAGMA main.journal_mode=OFF",
        "PRAGMA locking_mode=EXCLUSIVE", "PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA wal_autocheckpoint=0", "PRAGMA optimize", "PRAGMA incremental_vacuum",
        "PRAGMA shrink_memory", "PRAGMA user_version=7", "PRAGMA foreign_keys=OFF",
        "PRAGMA writable_schema=ON", "PRAGMA busy_timeout=0", "PRAGMA synchronous=OFF",
      } do
        local err = fails("invalid_argument", db.query, db, sql)
        assert.is_false(err.retryable, sql)
        assert.matches("db:exec", err.message, 1, true)
        assert.equal(sql, err.sql)
      end
      -- A write's statement, cached by the writer, is still refused as a query.
      db:exec("PRAGMA wal_autocheckpoint=1000")
      fails("invalid_argument", db.query, db, "PRAGMA wal_autocheckpoint=1000")
      -- Pure reads still work.
      assert.equal("wal", db:first("PRAGMA journal_mode").journal_mode)
      assert.equal(0, db:first("PRAGMA user_version").user_version)
      assert.equal(3, #db:query("PRAGMA table_info(t)"))
      assert.equal(3, #db:query("SELECT * FROM pragma_table_info('t')"))
      assert.equal(1, count(db))
      db:exec("INSERT INTO t(v) VALUES ('y')")
      db:close()
      assert.is_true(in_wal(path), "the database left WAL mode")
    end)
  end)
  end

  it("refuses a changing pragma even while the writer holds the database", function()
    run(function()
      local db, path = fresh()
      -- With a read open on another reader, the mode change could only
      -- fail with busy; it must be refused first, not reported retryable.
      local readers = {}
      for i = 1, 4 do
        readers[i] = task.spawn(function() return db:first("SELECT count(*) AS c FROM t").c end)
      end
      local err = fails("invalid_argument", db.query, db, "PRAGMA journal_mode=DELETE")
      assert.is_false(err.retryable)
      for i = 1, 4 do assert.equal(0, readers[i]:join()) end
      db:close()
      assert.is_true(in_wal(path))
    end)
  end)

  it("reads a batch entry's n raw, whatever its metatable says", function()
    run(function()
      local db = fresh()
      local calls = 0
      local entry = setmetatable({ "INSERT INTO t(v) VALUES (?)", "m" },
        { __index = function(_, k) if k == "n" then calls = calls + 1 return calls == 1 and 1 or 200 end end })
      assert.same({ 1, 1 }, { db:batch { entry } })
      assert.equal(0, calls)
      db:close()
    end)
  end)

  it("opens one new database from two stores at once", function()
    local path = dir .. "/twice.sqlite"
    run(function()
      local a, b = task.gather(function() return store.open(path) end,
                               function() return store.open(path) end)
      a:exec("CREATE TABLE IF NOT EXISTS t(v)")
      b:exec("INSERT INTO t VALUES (1)")
      assert.equal(1, a:first("SELECT count(*) AS c FROM t").c)
      a:close()
      b:close()
    end)
  end)
end)

describe("ah.store durability", function()
  local function script(src) return proc.script(src) end

  it("keeps every post after a normal exit and after SIGTERM", function()
    local path = dir .. "/exit.sqlite"
    local r = proc.cli { script(string.format([[
      local ah = require "agenthost"
      local db = ah.store.open(%q)
      db:exec("CREATE TABLE t(v)")
      for i = 1, 5000 do db:post("INSERT INTO t VALUES (?)", i) end
    ]], path)) }
    assert.equal(0, r.code, r.err)
    local p = proc.spawn_cli { script(string.format([[
      local ah = require "agenthost"
      local db = ah.store.open(%q)
      for i = 1, 3000 do db:post("INSERT INTO t VALUES (?)", -i) end
      print("posted")
      io.stdout:flush()
      ah.task.sleep(3600)
    ]], path)) }
    assert.is_true(p:wait_output("posted", 10), p:err())
    p:signal("TERM")
    assert.equal(143, p:wait(20))
    run(function()
      local db = store.open(path)
      assert.same({ c = 5000, s = 5000 * 5001 // 2 }, db:first("SELECT count(*) AS c, sum(v) AS s FROM t WHERE v > 0"))
      assert.same({ c = 3000 }, db:first("SELECT count(*) AS c FROM t WHERE v < 0"))
      db:close()
    end)
  end)

  -- One trial's shell: runs the writer ("$@") with its ids logged to
  -- $1/ids, and kills it with SIGKILL once $1/ids holds $2 lines ("ready"
  -- included), or after 10 s; exits with the writer's status.
  local KILLER = [[
dir=$1 lines=$2
shift 2
: >"$dir/ids"
"$@" >>"$dir/ids" 2>"$dir/err" </dev/null &
pid=$!
i=0
while [ $i -lt 1000 ] && [ "$(wc -l <"$dir/ids")" -lt "$lines" ]; do
  sleep 0.01
  i=$((i + 1))
done
kill -KILL $pid
wait $pid
]]

  it("keeps every write whose exec returned across kill -9 (20 trials)", function()
    math.randomseed(os.time())
    local writer = script([[
      local ah = require "agenthost"
      local db = ah.store.open(...)
      db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, w INTEGER, body TEXT)")
      print("ready")
      io.stdout:flush()
      local function writer(w)
        for i = 1, 1e9 do
          local _, id = db:exec("INSERT INTO t(w, body) VALUES (?, ?)", w, string.rep("b", i % 200))
          io.stdout:write(id, "\n")
          io.stdout:flush()
        end
      end
      local ts = {}
      for w = 1, 16 do ts[w] = ah.task.spawn(writer, w) end
      for w = 1, 16 do ts[w]:join() end
    ]])
    -- Five trials at a time, each killed at its own random point.
    for round = 0, 3 do
      local trials = {}
      for k = 1, 5 do
        local trial = round * 5 + k
        local d = proc.tmpdir()
        local path = string.format("%s/crash%d.sqlite", dir, trial)
        trials[k] = { n = trial, dir = d, path = path, p = proc.spawn {
          "sh", "-c", KILLER, "sh", d, tostring(math.random(1, 3000)), proc.bin, writer, path } }
      end
      for _, t in ipairs(trials) do
        local trial = t.n
        assert.equal(137, t.p:wait(20), "trial " .. trial .. ": " .. (proc.read(t.dir .. "/err") or ""))
        local ids = proc.read(t.dir .. "/ids") or ""
        assert.is_true(ids:sub(1, 6) == "ready\n", "trial " .. trial .. ": never ready")
        local logged = {}
        for id in ids:gmatch("(%d+)\n") do logged[#logged + 1] = math.tointeger(id) end
        assert.is_true(#logged > 0, "trial " .. trial .. ": nothing logged")
        run(function()
          local db = store.open(t.path)
          local have = {}
          for _, r in ipairs(db:query("SELECT id FROM t")) do have[r.id] = true end
          for _, id in ipairs(logged) do
            assert(have[id], string.format("trial %d: id %d was logged but is missing", trial, id))
          end
          db:close()
        end)
      end
    end
  end)
end)
