-- ah.pg against a real throwaway server (tests/support/pg.lua): every type
-- both ways, NULLs, big results, structured errors with the SQLSTATE,
-- passwords kept out of messages, prepared statements and their cache,
-- batches, COPY, the simple protocol, per-call timeouts and task
-- cancellation stopping the statement on the server.

local ah = require "agenthost"
local pgs = require "support.pg"
local task = ah.task

local srv
setup(function() srv = pgs.start() end)
teardown(function() if srv then srv:stop() end end)

local function run(fn) return task.run(fn) end

local fails = pgs.fails

local n = 0
local function fresh_table(db, cols)
  n = n + 1
  local name = "t" .. n
  db:exec("CREATE TABLE " .. name .. "(" .. cols .. ")")
  return name
end

-- Waits (polling pg_stat_activity from psql, 10 s at most) until no
-- backend runs a statement containing marker.
local function gone_from_server(db, marker)
  for _ = 1, 200 do
    local r = db:first("SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' " ..
      "AND query LIKE $1 AND pid <> pg_backend_pid()", "%" .. marker .. "%")
    if r.n == 0 then return true end
    task.sleep(0.05)
  end
  return false
end

describe("ah.pg types", function()
  it("decodes every supported type from the server", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      local r = db:first([=[SELECT 1::int2 AS i2, 2147483647::int4 AS i4,
        9223372036854775807::int8 AS i8, '-9223372036854775808'::int8 AS i8min, 42::oid AS o,
        1.5::float4 AS f4, 0.1::float8 AS f8, 'NaN'::float8 AS nan, 'Infinity'::float8 AS inf,
        '-Infinity'::float8 AS ninf, 123456789012345678901234567890.123456789::numeric AS num,
        true AS t, false AS f, 'héllo'::text AS txt, 'v'::varchar(3) AS vc, 'c'::char(3) AS ch,
        'nm'::name AS nm, '\x00ff10'::bytea AS by, '{"a": [1, 2.5, null, "x"], "b": {"c": true}}'::jsonb AS jb,
        '[1, 2]'::json AS js, '2024-02-29 13:14:15.123456+00'::timestamptz AS tz,
        '2024-02-29 13:14:15'::timestamp AS ts, '2024-02-29'::date AS d, '13:14:15'::time AS tm,
        '1 day 02:03:04'::interval AS iv, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
        ARRAY[1, NULL, 3]::int4[] AS ai, ARRAY['a', 'b c', 'd"e', 'f\g', NULL, 'NULL']::text[] AS at,
        ARRAY[[1, 2], [3, 4]]::int8[] AS a2, ARRAY[true, false] AS ab, ARRAY[1.5, 2]::float8[] AS af,
        ARRAY['\x01'::bytea, '\x'::bytea] AS aby, ARRAY['{"k": 1}'::jsonb, 'null'::jsonb] AS ajb,
        '[0:1]={7,8}'::int[] AS abounds, '{}'::int[] AS aempty,
        ARRAY['2024-01-01'::date] AS ad, ARRAY[1.25::numeric] AS anum]=])
      assert.equal(1, r.i2)
      assert.equal(2147483647, r.i4)
      assert.equal(math.maxinteger, r.i8)
      assert.equal(math.mininteger, r.i8min)
      assert.equal("integer", math.type(r.i8))
      assert.equal(42, r.o)
      assert.equal(1.5, r.f4)
      assert.equal(0.1, r.f8)
      assert.is_true(r.nan ~= r.nan)
      assert.equal(math.huge, r.inf)
      assert.equal(-math.huge, r.ninf)
      assert.equal("123456789012345678901234567890.123456789", r.num)
      assert.is_true(r.t)
      assert.is_false(r.f)
      assert.equal("héllo", r.txt)
      assert.equal("v", r.vc)
      assert.equal("c  ", r.ch)
      assert.equal("nm", r.nm)
      assert.equal("\0\255\16", r.by)
      assert.same({ a = { 1, 2.5, ah.null, "x" }, b = { c = true } }, r.jb)
      assert.equal("integer", math.type(r.jb.a[1]))
      assert.same({ 1, 2 }, r.js)
      assert.equal("2024-02-29 13:14:15.123456+00", r.tz)
      assert.equal("2024-02-29 13:14:15", r.ts)
      assert.equal("2024-02-29", r.d)
      assert.equal("13:14:15", r.tm)
      assert.equal("1 day 02:03:04", r.iv)
      assert.equal("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", r.u)
      assert.same({ 1, ah.null, 3 }, r.ai)
      assert.same({ "a", "b c", 'd"e', "f\\g", ah.null, "NULL" }, r.at)
      assert.same({ { 1, 2 }, { 3, 4 } }, r.a2)
      assert.same({ true, false }, r.ab)
      assert.same({ 1.5, 2.0 }, r.af)
      assert.same({ "\1", "" }, r.aby)
      assert.same({ { k = 1 }, ah.null }, r.ajb)
      assert.same({ 7, 8 }, r.abounds)
      assert.same({}, r.aempty)
      assert.same({ "2024-01-01" }, r.ad)
      assert.same({ "1.25" }, r.anum)
      db:close()
    end)
  end)

  it("keeps every JSON number's type and digits through json and jsonb, both ways", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      local v = { id = 1234567890123456789, big = 9007199254740993, min = math.mininteger,
                  tokens = 71, whole = 71.0, f = 0.1 + 0.2, tiny = 5e-324 }
      local r = db:first([[SELECT $1::jsonb AS jb, $1::json AS js,
        '{"whole": 71.0, "tokens": 71, "id": 1234567890123456789}'::jsonb AS lit]], v)
      for _, col in ipairs { "jb", "js" } do
        for k, want in pairs(v) do
          assert.equal(want, r[col][k], col .. "." .. k)
          assert.equal(math.type(want), math.type(r[col][k]), col .. "." .. k)
        end
      end
      assert.equal("float", math.type(r.lit.whole))
      assert.equal("integer", math.type(r.lit.tokens))
      assert.equal(1234567890123456789, r.lit.id)
      db:close()
    end)
  end)

  it("binds every Lua value, and tables by the parameter's type (json, arrays)", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      local t = fresh_table(db, [[i int8, f float8, b bool, s text, by bytea, j jsonb, js json,
        ai int[], at text[], aj jsonb[], a2 int[][], n numeric, ts timestamptz, u uuid]])
      local bin = "\0\1\2\255'; DROP TABLE x; --\\x41"
      db:exec("INSERT INTO " .. t .. " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        math.mininteger, 1 / 3, true, "it's \"quoted\" \\ ", bin, { a = { 1, 2 }, n = ah.null },
        { 1, "two" }, { 1, ah.null, 3 }, { "x", "y,z", 'q"', "\\", "NULL" }, { { a = 1 }, { 2 } },
        { { 1, 2 }, { 3, 4 } }, "12345678901234567890.5", "2024-03-01 00:00:00+00",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
      local r = db:first("SELECT * FROM " .. t)
      assert.equal(math.mininteger, r.i)
      assert.equal(1 / 3, r.f)
      assert.is_true(r.b)
      assert.equal("it's \"quoted\" \\ ", r.s)
      assert.equal(bin, r.by)
      assert.same({ a = { 1, 2 }, n = ah.null }, r.j)
      assert.same({ 1, "two" }, r.js)
      assert.same({ 1, ah.null, 3 }, r.ai)
      assert.same({ "x", "y,z", 'q"', "\\", "NULL" }, r.at)
      assert.same({ { a = 1 }, { 2 } }, r.aj)
      assert.same({ { 1, 2 }, { 3, 4 } }, r.a2)
      assert.equal("12345678901234567890.5", r.n)
      assert.equal("2024-03-01 00:00:00+00", r.ts)
      -- Lua floats and integers compare with the server's values exactly.
      assert.equal(1, db:first("SELECT $1::float8 = 0.1::float8 AS eq", 0.1).eq and 1 or 0)
      assert.equal(2 ^ 53, db:first("SELECT $1::int8 AS v", 2 ^ 53).v)
      -- A string to a json parameter is JSON text as is; numbers and booleans too.
      assert.same({ x = 1 }, db:first("SELECT $1::jsonb AS v", '{"x": 1}').v)
      assert.same({ true, 5 }, { db:first("SELECT $1::jsonb AS a, $2::jsonb AS b", true, 5).a,
        db:first("SELECT $1::jsonb AS b", 5).b })
      db:close()
    end)
  end)

  it("gives NULL as ah.null (cjson.null), keeps every column, and binds nil and ah.null as NULL", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      assert.equal(require("cjson").null, ah.null)
      local r = db:first("SELECT NULL::int AS a, $1::text AS b, $2::int AS c, 1 AS d", nil, ah.null)
      assert.equal(ah.null, r.a)
      assert.equal(ah.null, r.b)
      assert.equal(ah.null, r.c)
      local keys = {}
      for k in pairs(r) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "a", "b", "c", "d" }, keys)
      local rows = db:query("SELECT NULL::int AS a, 2 AS b")
      assert.same({ "a", "b" }, rows.columns)
      assert.equal(1, rows.affected)
      -- nil in the middle of the parameters is a NULL, not the end of them
      assert.same({ a = 1, b = ah.null, c = 3 },
        db:first("SELECT $1::int AS a, $2::int AS b, $3::int AS c", 1, nil, 3))
      db:close()
    end)
  end)

  it("returns big results whole, in order", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      local rows = db:query("SELECT g AS i, repeat('x', 100) AS pad FROM generate_series(1, 50000) g")
      assert.equal(50000, #rows)
      assert.equal(50000, rows.affected)
      for i = 1, #rows, 997 do assert.equal(i, rows[i].i) end
      assert.equal(50000, rows[50000].i)
      local big = db:first("SELECT repeat('y', 5000000) AS s")
      assert.equal(5000000, #big.s)
      db:close()
    end)
  end)
end)

describe("ah.pg statements", function()
  it("exec returns affected rows; first returns nil when there is none; several statements run without parameters", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      local t = fresh_table(db, "id int PRIMARY KEY, v text")
      assert.equal(1, db:exec("INSERT INTO " .. t .. " VALUES ($1, $2)", 1, "a"))
      assert.equal(2, db:exec("INSERT INTO " .. t .. " VALUES (2, 'b'), (3, 'c')"))
      assert.equal(3, db:exec("UPDATE " .. t .. " SET v = v || $1", "!"))
      assert.is_nil(db:first("SELECT * FROM " .. t .. " WHERE id = $1", 99))
      assert.equal(1, db:exec("DELETE FROM " .. t .. " WHERE id = 3; DELETE FROM " .. t .. " WHERE id = 2"))
      assert.same({ { id = 1, v = "a!" } }, (function()
        local rows = db:query("SELECT * FROM " .. t)
        rows.columns, rows.affected = nil, nil
        return rows
      end)())
      db:close()
    end)
  end)

  it("raises sql errors with the SQLSTATE, detail, constraint and the statement; the pool goes on", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 1 }
      local t = fresh_table(db, "id int PRIMARY KEY, v text NOT NULL")
      db:exec("INSERT INTO " .. t .. " VALUES (1, 'a')")
      local e = fails("sql", db.exec, db, "INSERT INTO " .. t .. " VALUES ($1, $2)", 1, "b")
      assert.equal("23505", e.code)
      assert.equal(t .. "_pkey", e.constraint)
      assert.equal(t, e.table)
      assert.equal("Key (id)=(1) already exists.", e.detail)
      assert.is_false(e.retryable)
      assert.is_true(e.sent)
      assert.matches("duplicate key", e.message)
      assert.matches("23505", e.message)
      assert.equal("INSERT INTO " .. t .. " VALUES ($1, $2)", e.sql)
      e = fails("sql", db.exec, db, "INSERT INTO " .. t .. " VALUES ($1, $2)", 2, nil)
      assert.equal("23502", e.code)
      assert.equal("v", e.column)
      e = fails("sql", db.query, db, "SELEC 1")
      assert.equal("42601", e.code)
      assert.equal(1, e.position)
      e = fails("sql", db.first, db, "SELECT 1 / $1 AS x", 0)
      assert.equal("22012", e.code)
      e = fails("sql", db.first, db, "SELECT nope FROM " .. t)
      assert.equal("42703", e.code)
      assert.is_string(e.hint ~= nil and e.hint or "")
      -- a failing statement fails alone: the connection serves the next one
      assert.equal(1, db:first("SELECT count(*) AS n FROM " .. t).n)
      -- a wrong parameter count is caught before anything is sent
      e = fails("invalid_argument", db.first, db, "SELECT $1::int AS a", 1, 2)
      assert.matches("takes 1 parameter", e.message)
      e = fails("invalid_argument", db.first, db, "SELECT $1::text AS a", "a\0b")
      assert.matches("NUL byte", e.message)
      db:close()
    end)
  end)

  it("marks serialization failures and deadlocks retryable", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local e = fails("sql", db.exec, db,
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'could not serialize'; END $$")
      assert.equal("40001", e.code)
      assert.is_true(e.retryable)
      e = fails("sql", db.exec, db,
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01', MESSAGE = 'deadlock'; END $$")
      assert.is_true(e.retryable)
      e = fails("sql", db.exec, db,
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '23505', MESSAGE = 'dup', HINT = 'look'; END $$")
      assert.is_false(e.retryable)
      assert.equal("look", e.hint)
      db:close()
    end)
  end)

  it("never shows the password: not in connect errors, not in statement errors, not in tostring", function()
    local pw = srv.password
    run(function()
      -- a wrong password: the server refuses, the message names the user only
      local bad = srv:url_for("postgres", pw .. "-wrong")
      local e = fails("connect", ah.pg.connect, bad)
      assert.is_nil(e.message:find(pw, 1, true))
      assert.matches("password authentication failed", e.message)
      -- a URL libpq cannot parse, whose error would echo a piece of it
      e = fails("invalid_argument", ah.pg.connect,
        string.format("postgres://postgres:%s%%zz@127.0.0.1:%d/postgres", pw, srv.port))
      assert.is_nil(e.message:find(pw, 1, true), e.message)
      -- nothing refused: statement text that holds the password is scrubbed
      local db = ah.pg.connect(srv.url)
      e = fails("sql", db.first, db, "SELECT '" .. pw .. "'::int AS x")
      assert.is_nil(e.message:find(pw, 1, true), e.message)
      assert.is_nil(e.sql:find(pw, 1, true))
      assert.is_nil(tostring(db):find(pw, 1, true))
      assert.is_nil(tostring(db:info().server):find(pw, 1, true))
      db:close()
      -- a pool's messages once the server is unreachable
      local p = ah.pg.pool { url = string.format("postgres://postgres:%s@127.0.0.1:1/x", pw),
                             acquire_timeout = 2 }
      e = fails("connect", p.first, p, "SELECT 1")
      assert.is_nil(e.message:find(pw, 1, true), e.message)
      p:close()
    end)
  end)

  it("looks host names up off the loop, tries each address and each host in turn", function()
    run(function()
      -- localhost may give ::1 first, where nothing listens: 127.0.0.1 is tried next
      local db = ah.pg.connect((srv:url_for("postgres", srv.password):gsub("127%.0%.0%.1", "localhost")))
      assert.equal(1, db:first("SELECT 1 AS x").x)
      assert.matches("@localhost:", db:info().server)
      db:close()
      local e = fails("connect", ah.pg.connect, "postgres://x@no-such-host.invalid:5432/x")
      assert.matches('could not translate host name "no%-such%-host.invalid"', e.message)
      -- a list: the name that does not resolve is skipped
      local url = string.format("postgres://postgres@no-such-host.invalid,localhost:%d/postgres?password=%s",
        srv.port, srv.password)
      local s = ah.pg.connect(url)
      assert.equal(2, s:first("SELECT 2 AS x").x)
      s:close()
    end)
  end)

  it("prepares a statement once per connection, re-prepares it after the table changed, and bounds the cache", function()
    run(function()
      local db = ah.pg.connect(srv.url, { statement_cache = 4 })
      local t = fresh_table(db, "id int, v text")
      for i = 1, 20 do db:exec("INSERT INTO " .. t .. " VALUES ($1, $2)", i, "v" .. i) end
      local s = db:stats()
      assert.equal(1, s.prepares)
      -- the table changes under the cached statement: sent again, prepared anew
      db:first("SELECT * FROM " .. t .. " WHERE id = $1", 1)
      db:exec("ALTER TABLE " .. t .. " ADD COLUMN w int DEFAULT 7")
      local r = db:first("SELECT * FROM " .. t .. " WHERE id = $1", 1)
      assert.equal(7, r.w)
      -- more statements than the cache holds: the oldest are deallocated
      for i = 1, 10 do db:first("SELECT $1::int + " .. i .. " AS v", i) end
      assert.is_true(db:stats().cached <= 4)
      local left = db:first("SELECT count(*) AS n FROM pg_prepared_statements").n
      assert.is_true(left <= 5, left .. " statements left on the server")
      db:close()
    end)
  end)

  it("batch runs statements in one round trip, all or nothing", function()
    run(function()
      local db = ah.pg.pool { url = srv.url }
      local t = fresh_table(db, "id int PRIMARY KEY, j jsonb")
      local res = db:batch {
        { "INSERT INTO " .. t .. " VALUES ($1, $2)", 1, { a = 1 } },
        { "INSERT INTO " .. t .. " VALUES ($1, $2) RETURNING id", 2, ah.null },
        { "SELECT * FROM " .. t .. " ORDER BY id" },
      }
      assert.equal(1, res[1].affected)
      assert.equal(2, res[2][1].id)
      assert.equal(2, #res[3])
      assert.same({ a = 1 }, res[3][1].j)
      local e = fails("sql", db.batch, db, {
        { "INSERT INTO " .. t .. " VALUES ($1)", 3 },
        { "INSERT INTO " .. t .. " VALUES ($1)", 1 },
        { "INSERT INTO " .. t .. " VALUES ($1)", 4 },
      })
      assert.equal("23505", e.code)
      assert.equal(2, e.index)
      assert.equal(2, db:first("SELECT count(*) AS n FROM " .. t).n)
      db:close()
    end)
  end)

  it("a statement that fails to prepare fails alone, named by its index in a batch", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 1 }
      local t = fresh_table(db, "id int")
      local e = fails("sql", db.first, db, "SELECT id FROM no_such_table WHERE id = $1", 1)
      assert.equal("42P01", e.code)
      -- The same connection goes on, and the statement is tried again
      -- (prepared anew) once the table exists.
      db:exec("CREATE TABLE no_such_table(id int)")
      assert.is_nil(db:first("SELECT id FROM no_such_table WHERE id = $1", 1))
      e = fails("sql", db.batch, db, {
        { "INSERT INTO " .. t .. " VALUES ($1)", 1 },
        { "INSERT INTO " .. t .. "_missing VALUES ($1)", 2 },
        { "INSERT INTO " .. t .. " VALUES ($1)", 3 },
      })
      assert.equal("42P01", e.code)
      assert.equal(2, e.index)
      assert.equal(0, db:first("SELECT count(*) AS n FROM " .. t).n)
      db:close()
    end)
  end)

  it("copies rows in, from an array or an iterator, and fails alone on bad data", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local t = fresh_table(db, "id int PRIMARY KEY, s text, j jsonb, a int[], f float8, b bool")
      local rows = {}
      for i = 1, 5000 do
        rows[i] = { i, i % 7 == 0 and ah.null or ("line\t" .. i .. "\n\\"), { n = i }, ah.pg.array { i, i + 1 },
                    i / 4, i % 2 == 0 }
      end
      assert.equal(5000, db:copy("COPY " .. t .. " FROM STDIN", rows))
      local r = db:first("SELECT * FROM " .. t .. " WHERE id = $1", 10)
      assert.same({ id = 10, s = "line\t10\n\\", j = { n = 10 }, a = { 10, 11 }, f = 2.5, b = true }, r)
      assert.equal(ah.null, db:first("SELECT s FROM " .. t .. " WHERE id = 7").s)
      local i = 5000
      assert.equal(100, db:copy("COPY " .. t .. "(id) FROM STDIN", function()
        i = i + 1
        if i <= 5100 then return { i } end
      end))
      local e = fails("sql", db.copy, db, "COPY " .. t .. "(id) FROM STDIN", { { 1 } })
      assert.equal("23505", e.code)
      e = fails("invalid_argument", db.copy, db, "SELECT 1", {})
      assert.equal(5100, db:first("SELECT count(*) AS n FROM " .. t).n)
      -- enough data that the socket fills and copy waits for room: every
      -- row once (rows sent again after a wait were once counted twice)
      local big = fresh_table(db, "id int, pad text")
      local k = 0
      local pad = string.rep("p", 200)
      assert.equal(60000, db:copy("COPY " .. big .. " FROM STDIN", function()
        k = k + 1
        if k <= 60000 then return { k, pad } end
      end))
      local c = db:first("SELECT count(*) AS n, count(DISTINCT id) AS d FROM " .. big)
      assert.same({ n = 60000, d = 60000 }, c)
      -- COPY through query is refused before it could wedge a connection
      fails("invalid_argument", db.query, db, "COPY " .. t .. " FROM STDIN")
      db:close()
    end)
  end)
end)

describe("ah.pg timeouts and cancellation", function()
  it("a per-call timeout raises timeout and stops the statement on the server", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local e = fails("timeout", db.first, db, { "SELECT pg_sleep(30), 'timeout-marker-1'", timeout = 0.2 })
      assert.is_true(e.retryable)
      assert.is_true(gone_from_server(db, "timeout-marker-1"))
      -- the connection serves the next call
      assert.equal(1, db:first("SELECT 1 AS x").x)
      -- the pool's default timeout applies to every call
      local p2 = ah.pg.pool { url = srv.url, timeout = 0.2 }
      fails("timeout", p2.exec, p2, "SELECT pg_sleep(30), 'timeout-marker-2'")
      assert.is_true(gone_from_server(db, "timeout-marker-2"))
      assert.equal(2, p2:first("SELECT 2 AS x").x)
      p2:close()
      db:close()
    end)
  end)

  it("cancelling the task cancels the statement on the server", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local started = task.event()
      local t = task.spawn(function()
        started:set()
        db:first("SELECT pg_sleep(30), 'cancel-marker'")
      end)
      started:wait()
      -- wait until the server runs it
      for _ = 1, 200 do
        if db:first("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%cancel-marker%' " ..
          "AND state = 'active' AND pid <> pg_backend_pid()").n > 0 then break end
        task.sleep(0.02)
      end
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.is_true(gone_from_server(db, "cancel-marker"))
      assert.is_true(db:stats().cancels >= 1)
      db:close()
    end)
  end)

  it("the server's statement_timeout is a sql error with SQLSTATE 57014", function()
    run(function()
      local db = ah.pg.connect(srv.url)
      db:exec("SET statement_timeout = 100")
      local e = fails("sql", db.first, db, "SELECT pg_sleep(5)")
      assert.equal("57014", e.code)
      assert.equal(1, db:first("SELECT 1 AS x").x)
      db:close()
    end)
  end)

  it("a cancel that reaches the next pipelined statement does not fail it", function()
    run(function()
      -- one connection; a short statement is cancelled while many others
      -- queue behind it: they all succeed.
      local db = ah.pg.pool { url = srv.url, size = 1, pipeline = 1000 }
      for round = 1, 5 do
        local victims = {}
        for i = 1, 10 do
          victims[i] = task.spawn(function() db:first("SELECT pg_sleep(0.01), $1::int AS r", round) end)
        end
        local others = {}
        for i = 1, 50 do
          others[i] = task.spawn(function() return db:first("SELECT $1::int AS v", i).v end)
        end
        task.yield()
        for _, v in ipairs(victims) do v:cancel() end
        for i, o in ipairs(others) do assert.equal(i, o:join()) end
      end
      db:close()
    end)
  end)
end)
