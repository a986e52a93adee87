-- tests/memory_spec.lua again, with memory on PostgreSQL
-- (tests/support/backend.lua), and what only the PostgreSQL backend has:
-- its own migrations, its statements' dialect, one writer per pool that
-- keeps the order of posts, and posts that outlive the task that made
-- them.

local backend = require "support.backend"
backend.rerun("tests/memory_spec.lua", _ENV)

local ah = require "agenthost"
local proc = require "support.proc"
local mpg = require "agenthost.memory.pg"
local task = ah.task

local function run(fn) return task.run(fn) end
local n = 0
local function url()
  n = n + 1
  return backend.url("pgonly" .. n)
end

describe("agenthost.memory on PostgreSQL", function()
  it("writes each statement in PostgreSQL's dialect", function()
    local memory = ah.memory
    for name, sql in pairs(memory.SQL) do
      local t = mpg.translate(sql)
      assert.is_nil(t:find("?", 1, true), name .. ": " .. t)
      assert.is_nil(t:find("PRAGMA", 1, true), name)
      assert.is_nil(t:find("bm25", 1, true), name)
    end
    assert.equal("SELECT a FROM t WHERE b = $1 AND c = $2 LIMIT NULLIF($3, -1)",
      mpg.rewrite("SELECT a FROM t WHERE b = ? AND c = ? LIMIT ?"))
    assert.equal("INSERT INTO runs(x) VALUES ($1) RETURNING id", mpg.rewrite("INSERT INTO runs(x) VALUES (?1)"))
    assert.equal("INSERT INTO notes(x) VALUES ($1)", mpg.rewrite("INSERT INTO notes(x) VALUES (?)"))
    assert.equal("UPDATE ah_memory_schema SET version = 7", mpg.translate("PRAGMA user_version = 7"))
  end)

  it("migrates an older PostgreSQL schema forward and indexes what it held; refuses a newer one", function()
    local u = url()
    run(function()
      local pool = ah.pg.pool { url = u }
      local db = mpg.adapt(pool)
      assert.same({ 0, 1 }, { ah.memory.migrate(db, 1) })
      pool:exec("INSERT INTO agents(name, created) VALUES ('old', 0)")
      pool:exec("INSERT INTO runs(agent_id, started) VALUES (1, 0)")
      pool:exec("INSERT INTO messages(run_id, seq, role, content, created) VALUES (1, 1, 'user', 'ancient lighthouse logs', 0)")
      pool:close()
    end)
    run(function()
      local mem = ah.memory.open(u)
      assert.equal(ah.memory.SCHEMA_VERSION, mem.db:first("PRAGMA user_version").user_version)
      local hits = mem:recall("old", "lighthouse", 3)
      assert.equal(1, #hits)
      assert.equal("ancient lighthouse logs", hits[1].content)
      assert.equal("ops", (function() mem:set_agent(1, "ops") return mem:run(1).current_agent end)())
      mem.db.pool:exec("UPDATE ah_memory_schema SET version = 99")
      local ok, err = pcall(ah.memory.open, u)
      assert.is_false(ok)
      assert.matches("newer than this agenthost knows", tostring(err))
      mem:close()
    end)
  end)

  it("keeps the order of posts and appends from many tasks, each write failing alone", function()
    run(function()
      local pool = ah.pg.pool { url = url(), size = 4 }
      local mem = ah.memory.open(pool)
      local r = mem:start_run("alice")
      for i = 1, 200 do mem:post(r, { role = "event", name = "e" .. i }) end
      local h = mem:history(r)
      assert.equal(200, #h)
      for i = 1, 200 do assert.equal("e" .. i, h[i].name) end
      -- concurrent appends to one conversation (as tools finishing at once)
      local items = {}
      for i = 1, 100 do items[i] = i end
      task.map(items, function(i) mem:append(r, { role = "tool", content = "r" .. i }) end, { limit = 50 })
      h = mem:history(r)
      assert.equal(300, #h)
      for i, m in ipairs(h) do assert.equal(i, m.seq) end
      -- a failing write fails alone; the ones around it are stored
      local reported = {}
      task.on_error(function(e) reported[#reported + 1] = e end)
      mem:post(r, { role = "event", name = "before" })
      mem.db:post("INSERT INTO nope VALUES (1)")
      mem:post(r, { role = "event", name = "after" })
      h = mem:history(r)
      assert.equal("before", h[#h - 1].name)
      assert.equal("after", h[#h].name)
      task.yield()
      assert.equal(1, #reported)
      assert.equal("42P01", reported[1].code)
      task.on_error(nil)
      -- every memory on the pool shares its writer
      assert.equal(mem.db, ah.memory.open(pool).db)
      mem:close()
      pool:close()
    end)
  end)

  it("stores what was posted by a program that exits right after", function()
    local u = url()
    local script = proc.script(string.format([[
      local ah = require "agenthost"
      local mem = ah.memory.open(%q)
      local r = mem:start_run("exit")
      for i = 1, 50 do mem:post(r, { role = "event", name = "p" .. i }) end
      print("posted " .. r)
    ]], u))
    local r = proc.cli { script }
    assert.equal(0, r.code, r.err)
    local id = tonumber(r.out:match("posted (%d+)"))
    run(function()
      local mem = ah.memory.open(u)
      assert.equal(50, #mem:history(id))
      mem:close()
    end)
  end)
end)
