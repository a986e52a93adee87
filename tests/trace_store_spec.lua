-- Spans stored with memory (agenthost.trace.store): one row per span in
-- trace_spans of the agent's own database, written through db:post (the
-- agent never waits), read back by conversation and by time range, beside
-- memory's tables without touching its schema version.

local ah = require "agenthost"
local proc = require "support.proc"
local fixture = require "support.trace_fixture"
local tstore = require "agenthost.trace.store"
local trace = ah.trace
local task = ah.task

describe("trace store", function()
  local dir
  setup(function() dir = proc.tmpdir() end)
  teardown(function() proc.cleanup() end)
  after_each(function() trace.disable() end)

  it("stores every span of a run, its sub-run's too, in the memory database", function()
    local db_path = dir .. "/a.db"
    local info
    task.run(function()
      info = fixture.build(db_path)
      local mem = ah.memory.open(db_path)
      local rows = tstore.spans(mem.db, { conversation = info.conversation })
      assert.equal(info.spans, #rows)
      local by = {}
      for _, r in ipairs(rows) do by[r.name] = by[r.name] or r end
      local run = by["invoke_agent ops"]
      assert.is_nil(run.parent_span_id)
      assert.equal("agent", run.kind)
      assert.equal(1, run.span_kind)
      assert.equal(tostring(info.conversation), run.conversation)
      assert.equal(360, run.attributes["gen_ai.usage.input_tokens"])
      assert.equal(by["turn 1"].span_id, by["execute_tool shell"].parent_span_id)
      assert.equal("error", by["execute_tool shell"].status)
      assert.equal("error: exit status 2", by["execute_tool shell"].status_message)
      assert.equal("tool_error", by["execute_tool shell"].attributes["error.type"])
      assert.equal("unset", by["execute_tool metrics"].status)
      local sub = by["invoke_agent researcher"]
      assert.equal(by["execute_tool research"].span_id, sub.parent_span_id)
      assert.equal(tostring(info.sub_conversation), sub.conversation)
      for _, r in ipairs(rows) do
        assert.equal(run.trace_id, r.trace_id)
        assert.is_true(r.start_ns <= r.end_ns)
      end
      -- the sub-run's conversation finds the same trace
      assert.equal(info.spans, #tstore.spans(mem.db, { conversation = info.sub_conversation }))
      assert.equal(0, #tstore.spans(mem.db, { conversation = 12345 }))
      -- memory's schema version is memory's alone
      assert.equal(ah.memory.SCHEMA_VERSION, mem.db:first("PRAGMA user_version").user_version)
      -- and the messages come from memory's table
      assert.equal(6, #tstore.messages(mem.db, info.conversation))
      assert.same({}, tstore.messages(mem.db, "not a run"))
      mem:close()
    end)
  end)

  it("writes without making the agent wait, and keeps event times", function()
    local db_path = dir .. "/b.db"
    task.run(function()
      local db = ah.store.open(db_path)
      trace.enable { otlp = false, store = db }
      local ticks = 0
      local ticker = task.spawn(function() while true do ticks = ticks + 1; task.yield() end end)
      task.yield()
      local t0 = ticks
      for i = 1, 500 do
        local sp = trace.start("work " .. i, { conversation = "c" .. (i % 3) })
        sp:add_event("halfway", { i = i })
        sp:finish()
      end
      assert.equal(0, ticks - t0) -- 500 spans stored, no yield
      ticker:cancel()
      db:flush()
      assert.equal(500, db:first("SELECT count(*) AS n FROM trace_spans").n)
      local rows = tstore.spans(db, { conversation = "c1" })
      assert.equal(167, #rows)
      for _, r in ipairs(rows) do
        local e = r.events[1]
        assert.equal("halfway", e.name)
        assert.is_true(e.time_ns >= r.start_ns and e.time_ns <= r.end_ns)
      end
      db:close()
    end)
  end)

  it("selects traces by time range", function()
    local db_path = dir .. "/c.db"
    task.run(function()
      local db = ah.store.open(db_path)
      trace.enable { otlp = false, store = db }
      trace.start("early"):finish()
      task.sleep(0.02)
      local mid = trace.now_ns()
      task.sleep(0.02)
      local late = trace.start("late")
      trace.start("late child"):finish()
      late:finish()
      db:flush()
      local after = tstore.spans(db, { since_ns = mid })
      assert.equal(2, #after)
      assert.equal("late", after[1].name)
      local before = tstore.spans(db, { until_ns = mid })
      assert.equal(1, #before)
      assert.equal("early", before[1].name)
      assert.equal(3, #tstore.spans(db, {}))
      db:close()
    end)
  end)

  it("keeps spans of traces without a store out of every database", function()
    local db_path = dir .. "/d.db"
    task.run(function()
      local db = ah.store.open(db_path)
      trace.enable { otlp = false }
      trace.start("nowhere"):finish()
      local sp = trace.start("here", { store = db })
      trace.start("here too"):finish()
      sp:finish()
      db:flush()
      local names = {}
      for _, r in ipairs(db:query("SELECT name FROM trace_spans ORDER BY start_ns")) do
        names[#names + 1] = r.name
      end
      assert.same({ "here", "here too" }, names)
      db:close()
    end)
  end)

  it("stores a trace continued from a traceparent in the default store", function()
    local db_path = dir .. "/e.db"
    task.run(function()
      local db = ah.store.open(db_path)
      trace.enable { otlp = false, store = db }
      local sp = trace.start("from gateway", { parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" })
      trace.start("child"):finish()
      sp:finish()
      db:flush()
      local rows = db:query("SELECT name, trace_id, parent_span_id FROM trace_spans ORDER BY start_ns")
      assert.equal(2, #rows)
      assert.equal("0af7651916cd43dd8448eb211c80319c", rows[1].trace_id)
      assert.equal("b7ad6b7169203331", rows[1].parent_span_id)
      db:close()
    end)
  end)

  it("uses plain SQL a PostgreSQL backend runs as well (no SQLite-only syntax)", function()
    for _, sql in ipairs(tstore.SCHEMA) do
      for _, word in ipairs { "AUTOINCREMENT", "OR REPLACE", "WITHOUT ROWID", "json_", "strftime", "PRAGMA" } do
        assert.is_nil(sql:upper():find(word:upper(), 1, true), word .. " in " .. sql)
      end
    end
  end)
end)
