-- The combinators (gather, race, timeout, map) and the synchronisation
-- objects (semaphore, queue, event) of ah.task.  "Would have happened"
-- is proven with flags set after a sleep several times longer than the
-- event that cancels it; nothing asserts on elapsed time.

local ah = require "agenthost"
local proc = require "support.proc"
local task = ah.task

local helpers = require "support.spec"
local closer, settle = helpers.closer, helpers.settle
local capture_reports = helpers.capture_reports

-- Runs a scenario in a fresh interpreter: the scenario prints one line
-- starting with "result" as its last act.
local function isolated(source)
  local r = proc.lua("local ah = require 'agenthost'\nlocal task = ah.task\n" .. source, 3)
  assert(r.code ~= 124, "the scenario did not finish (the scheduler hung)")
  assert(r.code == 0, "the interpreter failed with status " .. r.code .. ":\n" .. r.err)
  return r.out:match("result[^\n]*")
end

after_each(function()
  task.on_error(nil)
  proc.cleanup()
end)

describe("task.gather", function()
  it("returns the first result of each function, in argument order", function()
    local r = { task.run(function()
      return task.gather(
        function() task.sleep(0.03) return "a", "ignored" end,
        function() task.sleep(0.01) return "b" end,
        function() end,
        function() return false end)
    end) }
    assert.equal(4, select("#", table.unpack(r, 1, 4)))
    assert.equal("a", r[1])
    assert.equal("b", r[2])
    assert.is_nil(r[3])
    assert.equal(false, r[4])
  end)

  it("runs the functions concurrently", function()
    local log = task.run(function()
      local log = {}
      task.gather(
        function() task.sleep(0.05) log[#log + 1] = "slow" end,
        function() task.sleep(0.01) log[#log + 1] = "fast" end)
      log[#log + 1] = "gathered"
      return log
    end)
    assert.same({ "fast", "slow", "gathered" }, log)
  end)

  it("with no functions returns nothing", function()
    assert.equal(0, task.run(function() return select("#", task.gather()) end))
  end)

  it("an error in one function cancels the others, and is raised after they finished", function()
    local got = capture_reports()
    local boom = ah.error.new("tool", "boom")
    local flags, log = {}, {}
    task.run(function()
      local ok, err = pcall(task.gather,
        function()
          task.sleep(0.01)
          error(boom)
        end,
        function()
          local _ <close> = closer(function() log[#log + 1] = "sibling unwound" end)
          task.sleep(0.2)
          flags.second = true
        end,
        function()
          task.sleep(0.2)
          flags.third = true
        end)
      log[#log + 1] = "gather raised"
      assert.is_false(ok)
      assert.equal(boom, err)
    end)
    assert.same({}, flags)
    assert.same({ "sibling unwound", "gather raised" }, log)
    assert.equal(0, #got) -- the raised error was taken; the rest are cancellations
  end)

  it("a second error among the cancelled functions goes to the error handler", function()
    local got = capture_reports()
    local ok, err = task.run(function()
      return pcall(task.gather,
        function()
          task.sleep(0.01)
          error("first", 0)
        end,
        function()
          local ok = pcall(task.sleep, 0.2)
          if not ok then error("cleanup failed", 0) end
        end)
    end)
    assert.is_false(ok)
    assert.equal("first", err)
    assert.equal(1, #got)
    assert.equal("cleanup failed", got[1].err)
  end)

  it("an error raised before the others started cancels them too", function()
    local line = isolated [[
      local flag = false
      local ok, err = task.run(function()
        return pcall(task.gather,
          function() error("early", 0) end,
          function() task.sleep(0.05) flag = true end)
      end)
      print("result", ok, err, flag)
    ]]
    assert.equal("result\tfalse\tearly\tfalse", line)
  end)

  it("cancelling the waiting task cancels the functions and the tasks they started", function()
    task.run(function()
      local flags, started = {}, 0
      local h = task.spawn(function()
        task.gather(
          function()
            task.spawn(function() started = started + 1 task.sleep(0.2) flags.grandchild = true end)
            started = started + 1
            task.sleep(0.2)
            flags.a = true
          end,
          function() started = started + 1 task.sleep(0.2) flags.b = true end)
        flags.after = true
      end)
      settle(function() return started == 3 end)
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.same({}, flags)
    end)
  end)

  it("cancelling the waiting task before the functions started cancels them", function()
    local line = isolated [[
      local flag = false
      local ok, kind = task.run(function()
        local h = task.spawn(function()
          task.gather(function() task.sleep(0.05) flag = true end,
                      function() task.sleep(0.05) flag = true end)
        end)
        task.yield() -- h started the gather; its functions have not run yet
        h:cancel()
        local ok, err = h:result()
        return ok, err.kind
      end)
      print("result", ok, kind, flag)
    ]]
    assert.equal("result\tfalse\tcancelled\tfalse", line)
  end)

  it("a cancel already pending when gather starts also stops its functions", function()
    local flag = task.run(function()
      local flag = false
      local h = task.spawn(function()
        task.current():cancel() -- delivered at the next await: the gather
        local ok, err = pcall(task.gather, function()
          task.sleep(0.01)
          flag = true
        end)
        assert(not ok and err.kind == "cancelled")
        task.sleep(0.05)
      end)
      h:result()
      return flag
    end)
    assert.is_false(flag)
  end)

  it("rejects arguments that are not functions", function()
    task.run(function()
      local ok, err = pcall(task.gather, function() end, 42)
      assert.is_false(ok)
      assert.matches("invalid_argument: .*task.gather: argument 2 must be a function", tostring(err))
    end)
  end)
end)

describe("task.race", function()
  it("returns the index and every value of the first to finish", function()
    local r = { task.run(function()
      return task.race(
        function() task.sleep(0.05) return "slow" end,
        function() task.sleep(0.01) return "fast", "second value" end)
    end) }
    assert.same({ 2, "fast", "second value" }, r)
  end)

  it("cancels the losers before it returns", function()
    local flags, log = {}, {}
    task.run(function()
      local i = task.race(
        function()
          local _ <close> = closer(function() log[#log + 1] = "loser unwound" end)
          task.sleep(0.2)
          flags.a = true
        end,
        function() task.sleep(0.01) return "won" end,
        function() task.sleep(0.2) flags.c = true end)
      log[#log + 1] = "race returned " .. i
    end)
    assert.same({}, flags)
    assert.same({ "loser unwound", "race returned 2" }, log)
  end)

  it("raises when the first to finish raised, and cancels the others", function()
    local flag = false
    local ok, err = task.run(function()
      return pcall(task.race,
        function() task.sleep(0.01) error("first failed", 0) end,
        function() task.sleep(0.2) flag = true end)
    end)
    assert.is_false(ok)
    assert.equal("first failed", err)
    assert.is_false(flag)
  end)

  it("a winner that finishes before the others started cancels them too", function()
    local line = isolated [[
      local flag = false
      local r = { task.run(function()
        return task.race(function() return "now" end,
                         function() task.sleep(0.05) flag = true end)
      end) }
      print("result", r[1], r[2], flag)
    ]]
    assert.equal("result\t1\tnow\tfalse", line)
  end)

  it("with one function returns its values", function()
    assert.same({ 1, "only" }, { task.run(function()
      return task.race(function() task.yield() return "only" end)
    end) })
  end)

  it("needs at least one function", function()
    task.run(function()
      local ok, err = pcall(task.race)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"))
      assert.matches("at least one function", err.message)
      local ok2, err2 = pcall(task.race, "not a function")
      assert.is_false(ok2)
      assert.matches("task.race: argument 1 must be a function", tostring(err2))
    end)
  end)
end)

describe("task.timeout", function()
  it("returns fn's values when it finishes in time", function()
    local r = { task.run(function()
      return task.timeout(1, function(a, b)
        task.sleep(0.01)
        return b, a
      end, "a", "b")
    end) }
    assert.same({ "b", "a" }, r)
  end)

  it("returns the values of a fn that needs no wait", function()
    assert.equal("now", task.run(function()
      return task.timeout(0.5, function() return "now" end)
    end))
  end)

  it("raises a retryable timeout error and cancels fn", function()
    local log, flag = {}, false
    local ok, err = task.run(function()
      local ok, err = pcall(task.timeout, 0.01, function()
        local _ <close> = closer(function() log[#log + 1] = "fn unwound" end)
        task.sleep(0.3)
        flag = true
      end)
      log[#log + 1] = "timeout raised"
      return ok, err
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "timeout"), tostring(err))
    assert.is_true(err.retryable)
    assert.matches("^timeout: ", tostring(err))
    assert.is_false(flag)
    assert.same({ "fn unwound", "timeout raised" }, log)
  end)

  it("raises fn's own error unchanged", function()
    local e = ah.error.new("tool", "fn failed")
    local ok, err = task.run(function()
      return pcall(task.timeout, 1, function()
        task.sleep(0.001)
        error(e)
      end)
    end)
    assert.is_false(ok)
    assert.equal(e, err)
  end)

  it("an inner timeout fires without disturbing an outer one", function()
    local ok, kind, after = task.run(function()
      return task.timeout(1, function()
        local ok, err = pcall(task.timeout, 0.01, task.sleep, 0.5)
        return ok, err.kind, "outer went on"
      end)
    end)
    assert.is_false(ok)
    assert.equal("timeout", kind)
    assert.equal("outer went on", after)
  end)

  it("cancelling the waiting task cancels fn and its timer", function()
    task.run(function()
      local flag, started = false, false
      local h = task.spawn(function()
        task.timeout(0.05, function()
          started = true
          task.sleep(0.2)
          flag = true
        end)
      end)
      settle(function() return started end)
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
      task.sleep(0.1) -- past the deadline: a live timer would misfire here
      assert.is_false(flag)
    end)
  end)

  it("rejects a bad duration or fn", function()
    task.run(function()
      for _, s in ipairs { -1, 0 / 0 } do
        local ok, err = pcall(task.timeout, s, function() end)
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      end
      local ok, err = pcall(task.timeout, "soon", function() end)
      assert.is_false(ok)
      assert.matches("invalid_argument: .*task.timeout: seconds must be a number", tostring(err))
      ok, err = pcall(task.timeout, 1, "not a function")
      assert.is_false(ok)
      assert.matches("invalid_argument: .*task.timeout: fn must be a function", tostring(err))
    end)
  end)
end)

describe("task.map", function()
  it("returns the first result of fn(item, i) at each item's index", function()
    local r = task.run(function()
      return task.map({ 10, 20, 30 }, function(item, i)
        task.sleep(0.001 * (4 - i))
        return item + i, "ignored"
      end, { limit = 2 })
    end)
    assert.same({ 11, 22, 33 }, r)
  end)

  it("runs at most `limit` calls at once and every item once", function()
    local running, peak, seen = 0, 0, {}
    task.run(function()
      task.map({ 1, 2, 3, 4, 5, 6, 7 }, function(item)
        running = running + 1
        peak = math.max(peak, running)
        task.sleep(0.005)
        seen[#seen + 1] = item
        running = running - 1
      end, { limit = 3 })
    end)
    assert.equal(3, peak)
    table.sort(seen)
    assert.same({ 1, 2, 3, 4, 5, 6, 7 }, seen)
  end)

  it("without a limit runs every call at once", function()
    local running, peak = 0, 0
    task.run(function()
      task.map({ 1, 2, 3, 4, 5 }, function()
        running = running + 1
        peak = math.max(peak, running)
        task.sleep(0.005)
        running = running - 1
      end)
    end)
    assert.equal(5, peak)
  end)

  it("the first error cancels the calls still running and is raised", function()
    local started, finished = {}, {}
    local ok, err = task.run(function()
      return pcall(task.map, { 1, 2, 3, 4, 5, 6 }, function(item)
        started[#started + 1] = item
        if item == 2 then
          task.sleep(0.01)
          error("item 2 failed", 0)
        end
        task.sleep(0.2)
        finished[#finished + 1] = item
      end, { limit = 3 })
    end)
    assert.is_false(ok)
    assert.equal("item 2 failed", err)
    assert.same({}, finished)
    assert.same({ 1, 2, 3 }, started) -- nothing new started after the error
  end)

  it("an error raised before the other calls started cancels them too", function()
    local line = isolated [[
      local finished = 0
      local ok, err = task.run(function()
        return pcall(task.map, { 1, 2, 3 }, function(item)
          if item == 1 then error("at once", 0) end
          task.sleep(0.05)
          finished = finished + 1
        end, { limit = 3 })
      end)
      print("result", ok, err, finished)
    ]]
    assert.equal("result\tfalse\tat once\t0", line)
  end)

  it("of no items returns an empty array", function()
    local ok, r = task.run(function()
      return pcall(task.map, {}, function() error("not called") end)
    end)
    assert.is_true(ok, tostring(r))
    assert.same({}, r)
  end)

  it("rejects bad arguments with a message naming the problem", function()
    task.run(function()
      local cases = {
        { { "not a table", function() end }, "items must be a table" },
        { { { 1 }, "not a function" }, "fn must be a function" },
        { { { 1 }, function() end, { limit = 0 } }, "limit must be an integer >= 1" },
        { { { 1 }, function() end, { limit = 1.5 } }, "limit must be an integer >= 1" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(task.map, table.unpack(c[1], 1, 3))
        assert.is_false(ok)
        assert.matches(c[2], tostring(err), 1, true)
      end
    end)
  end)
end)

describe("combinators used over and over", function()
  it("keep every result, error and detached run apart", function()
    local got = capture_reports()
    local stored = 0
    task.run(function()
      for i = 1, 200 do
        local a, b, c = task.gather(
          function() task.yield() return { i } end,
          function() return "b" .. i end,
          function() task.yield() task.yield() return i * 2 end)
        assert.same({ { i }, "b" .. i, i * 2 }, { a, b, c })
        local ok, err = pcall(task.gather,
          function() task.yield() error({ code = i }) end,
          function() for _ = 1, 5 do task.yield() end end)
        assert.is_false(ok)
        assert.equal(i, err.code)
        local idx, v = task.race(
          function() for _ = 1, 3 do task.yield() end return "slow" end,
          function() task.yield() return "fast" .. i end)
        assert.equal(2, idx)
        assert.equal("fast" .. i, v)
        assert.equal("t" .. i, task.timeout(1, function() task.yield() return "t" .. i end))
        task.detach(function(n) task.yield() stored = stored + n end, 1)
      end
    end)
    assert.equal(200, stored)
    assert.equal(0, #got)
  end)
end)

-- gather, race and map may run one of their functions in the calling task
-- itself rather than in a child (docs/tasks.md).  Whichever runs where, the
-- contract is the same: these cases hold for every position of a function.
describe("combinators: every function keeps the contract of a child", function()
  local function idle() task.sleep(0.3) end

  it("a function cancelled by a failing sibling sees the cancellation at its await point, as its own", function()
    local boom = ah.error.new("tool", "boom")
    local seen = {}
    local ok, err = task.run(function()
      return pcall(task.gather,
        function()
          local ok, e = pcall(task.sleep, 0.3)
          seen.kind = not ok and e.kind
          seen.own = task.current():cancelled()
          error(e, 0)
        end,
        function() task.sleep(0.01) error(boom) end)
    end)
    assert.is_false(ok)
    assert.equal(boom, err)
    assert.same({ kind = "cancelled", own = true }, seen)
  end)

  it("the tasks a cancelled function started are cancelled with it", function()
    local log, flags = {}, {}
    local ok, err = task.run(function()
      local ok, err = pcall(task.gather,
        function()
          task.spawn(function()
            local _ <close> = closer(function() log[#log + 1] = "grandchild unwound" end)
            task.sleep(0.3)
            flags.grandchild = true
          end)
          task.sleep(0.3)
          flags.first = true
        end,
        function() task.sleep(0.01) error("second failed", 0) end)
      log[#log + 1] = "gather raised"
      return ok, err
    end)
    assert.is_false(ok)
    assert.equal("second failed", err)
    assert.same({}, flags)
    assert.same({ "grandchild unwound", "gather raised" }, log)
  end)

  it("a gather returns only once the tasks its functions started have finished", function()
    local log = task.run(function()
      local log = {}
      task.gather(
        function() task.spawn(function() task.sleep(0.05) log[#log + 1] = "started by the first" end) end,
        function() task.spawn(function() task.sleep(0.02) log[#log + 1] = "started by the second" end) end)
      log[#log + 1] = "gathered"
      return log
    end)
    assert.same({ "started by the second", "started by the first", "gathered" }, log)
  end)

  it("a function that fails takes the tasks it started down with it", function()
    local log, flag = {}, false
    local ok, err = task.run(function()
      local ok, err = pcall(task.gather,
        function()
          task.spawn(function()
            local _ <close> = closer(function() log[#log + 1] = "its task unwound" end)
            task.sleep(0.3)
            flag = true
          end)
          task.sleep(0.01)
          error("first failed", 0)
        end,
        function() task.sleep(0.05) end)
      log[#log + 1] = "gather raised"
      return ok, err
    end)
    assert.is_false(ok)
    assert.equal("first failed", err)
    assert.is_false(flag)
    assert.same({ "its task unwound", "gather raised" }, log)
  end)

  it("a cancelled function that catches the cancellation and waits again holds the gather until it ends", function()
    local log = {}
    task.run(function()
      local ok = pcall(task.gather,
        function()
          local slept = pcall(task.sleep, 0.3)
          task.sleep(0.02)
          log[#log + 1] = "first cleaned up after " .. (slept and "sleeping" or "its cancellation")
        end,
        function() task.sleep(0.01) error("second failed", 0) end)
      log[#log + 1] = "gather raised: " .. tostring(not ok)
    end)
    assert.same({ "first cleaned up after its cancellation", "gather raised: true" }, log)
  end)

  it("a gather nested in a cancelled function is cancelled with it, all of its functions", function()
    local log = {}
    task.run(function()
      pcall(task.gather,
        function()
          task.gather(
            function() local ok = pcall(task.sleep, 0.3) log[#log + 1] = "inner first: " .. tostring(ok) end,
            function() local ok = pcall(task.sleep, 0.3) log[#log + 1] = "inner second: " .. tostring(ok) end)
        end,
        function() task.sleep(0.01) error("outer failed", 0) end)
    end)
    table.sort(log)
    assert.same({ "inner first: false", "inner second: false" }, log)
  end)

  -- The traceback of a function's error is the one it would have in a
  -- task of its own: from where it failed down to the function itself.
  local function tracebacks(combinator, failing)
    return task.run(function()
      local _, first = pcall(combinator, failing, idle)
      local _, second = pcall(combinator, idle, failing)
      return first, second
    end)
  end

  it("an error keeps its traceback whichever position the failing function has", function()
    local function failing()
      task.sleep(0.001)
      error(ah.error.new("tool", "after a wait"))
    end
    local function at_once() error(ah.error.new("tool", "before any wait")) end
    for _, combinator in ipairs { task.gather, task.race } do
      for _, fn in ipairs { failing, at_once } do
        local first, second = tracebacks(combinator, fn)
        assert.is_string(first.traceback)
        assert.matches("in function <[^>]*sync_spec.lua", first.traceback)
        assert.equal(second.traceback, first.traceback)
        assert.not_matches("task.run", first.traceback, 1, true)
      end
    end
  end)

  it("a deep error keeps the traceback it would have in a task of its own", function()
    local function deep(n)
      if n == 0 then
        task.sleep(0.001)
        error(ah.error.new("tool", "deep"))
      end
      return (deep(n - 1)) -- not a tail call: every level is a frame
    end
    for _, depth in ipairs { 5, 19, 20, 21, 40 } do
      local first, second = tracebacks(task.gather, function() deep(depth) end)
      assert.equal(second.traceback, first.traceback)
      if depth >= 21 then assert.matches("skipping", first.traceback) end
    end
  end)

  it("a second error goes to the error handler with the same traceback from any position", function()
    local got = capture_reports()
    local function cleanup_fails()
      local ok = pcall(task.sleep, 0.3)
      if not ok then error("cleanup failed", 0) end
    end
    local function fails_first() task.sleep(0.01) error("first", 0) end
    task.run(function()
      assert.is_false(pcall(task.gather, cleanup_fails, fails_first))
      assert.is_false(pcall(task.gather, fails_first, cleanup_fails))
    end)
    assert.equal(2, #got)
    assert.equal("cleanup failed", got[1].err)
    assert.equal("cleanup failed", got[2].err)
    assert.matches("stack traceback", got[1].traceback)
    assert.equal(got[2].traceback, got[1].traceback)
  end)

  it("combinators nest deeper than Lua nests C calls", function()
    local function tree(d)
      if d == 0 then task.sleep(0.001) return 1 end
      local a, b = task.gather(function() return tree(d - 1) end, function() return 1 end)
      return a + b
    end
    local function failing(d)
      if d == 0 then task.sleep(0.001) error("deep failure", 0) end
      return (task.gather(function() return failing(d - 1) end, function() task.sleep(1) end))
    end
    assert.equal(251, task.run(tree, 250))
    assert.same({ false, "deep failure" }, { task.run(pcall, failing, 250) })
  end)

  it("race: a later winner cancels the first function at its await point, and the tasks it started", function()
    local log, flags = {}, {}
    local r = { task.run(function()
      return task.race(
        function()
          task.spawn(function()
            local _ <close> = closer(function() log[#log + 1] = "its task unwound" end)
            task.sleep(0.3)
            flags.grandchild = true
          end)
          local ok, e = pcall(task.sleep, 0.3)
          log[#log + 1] = "first: " .. (ok and "slept" or e.kind)
          flags.first = ok
        end,
        function() task.sleep(0.01) return "second", "won" end)
    end) }
    assert.same({ 2, "second", "won" }, r)
    assert.same({ first = false }, flags)
    table.sort(log)
    assert.same({ "first: cancelled", "its task unwound" }, log)
  end)

  it("race: a first function that wins cancels the others and returns every value", function()
    local flag = false
    local r = { task.run(function()
      return task.race(
        function() task.sleep(0.01) return "first", nil, "three" end,
        function() task.sleep(0.3) flag = true end)
    end) }
    assert.equal(1, r[1])
    assert.equal("first", r[2])
    assert.is_nil(r[3])
    assert.equal("three", r[4])
    assert.is_false(flag)
  end)

  it("map: an error cancels every call still running, wherever it runs, at its await point", function()
    local cancelled = {}
    local ok, err = task.run(function()
      return pcall(task.map, { 1, 2, 3 }, function(item)
        if item == 3 then
          task.sleep(0.01)
          error("item 3 failed", 0)
        end
        local ok, e = pcall(task.sleep, 0.3)
        if not ok then cancelled[#cancelled + 1] = item .. " " .. e.kind end
        error(e, 0)
      end, { limit = 3 })
    end)
    assert.is_false(ok)
    assert.equal("item 3 failed", err)
    table.sort(cancelled)
    assert.same({ "1 cancelled", "2 cancelled" }, cancelled)
  end)
end)

describe("task.semaphore", function()
  it("counts permits", function()
    task.run(function()
      local s = task.semaphore(2)
      assert.equal(2, s:available())
      s:acquire()
      assert.equal(1, s:available())
      assert.is_true(s:try_acquire())
      assert.equal(0, s:available())
      assert.is_false(s:try_acquire())
      s:release()
      assert.equal(1, s:available())
      s:release()
      s:release()
      assert.equal(3, s:available())
    end)
  end)

  it("acquire waits until a permit is released", function()
    local log = task.run(function()
      local s, log = task.semaphore(0), {}
      local h = task.spawn(function()
        s:acquire()
        log[#log + 1] = "acquired"
      end)
      task.yield()
      assert.equal("waiting", h:status())
      log[#log + 1] = "releasing"
      s:release()
      h:join()
      return log
    end)
    assert.same({ "releasing", "acquired" }, log)
  end)

  it("serves waiters in arrival order", function()
    local order = task.run(function()
      local s, order, hs = task.semaphore(0), {}, {}
      for _, name in ipairs { "c", "a", "e", "b", "d" } do
        hs[#hs + 1] = task.spawn(function()
          s:acquire()
          order[#order + 1] = name
        end)
        task.yield() -- it queues before the next one starts
      end
      for _ = 1, #hs do
        s:release()
        task.yield()
      end
      for _, h in ipairs(hs) do h:join() end
      return order
    end)
    assert.same({ "c", "a", "e", "b", "d" }, order)
  end)

  it("a released permit goes to the first waiter, not to a late arrival", function()
    task.run(function()
      local s = task.semaphore(1)
      s:acquire()
      local got = false
      local w = task.spawn(function()
        s:acquire()
        got = true
      end)
      task.yield()
      s:release()
      assert.equal(0, s:available())
      assert.is_false(s:try_acquire())
      w:join()
      assert.is_true(got)
    end)
  end)

  it("a cancelled waiter gives up its place", function()
    local order = task.run(function()
      local s, order = task.semaphore(0), {}
      local function waiter(name)
        return task.spawn(function()
          s:acquire()
          order[#order + 1] = name
        end)
      end
      local a, b, c = waiter("a"), waiter("b"), waiter("c")
      task.yield()
      b:cancel()
      s:release()
      s:release()
      a:join()
      c:join()
      assert.equal("cancelled", b:status())
      assert.equal(0, s:available())
      return order
    end)
    assert.same({ "a", "c" }, order)
  end)

  it("a permit handed to a task that is then cancelled is not lost", function()
    task.run(function()
      local s = task.semaphore(0)
      local acquired = false
      local h = task.spawn(function()
        s:acquire()
        acquired = true
        local ok = pcall(task.sleep, 10)
        s:release() -- the cancelled holder gives its permit back
        assert(not ok)
      end)
      task.yield()
      s:release() -- hands the permit to h ...
      h:cancel() -- ... which is cancelled before it resumed
      h:join()
      assert.is_true(acquired)
      assert.equal(1, s:available())
    end)
  end)

  it("rejects a negative or non-integer count", function()
    local ok, err = pcall(task.semaphore, -1)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    ok, err = pcall(task.semaphore, 1.5)
    assert.is_false(ok)
    assert.matches("integer", tostring(err))
    ok, err = pcall(task.semaphore, "many")
    assert.is_false(ok)
    assert.matches("invalid_argument: .*task.semaphore: n must be an integer", tostring(err))
  end)
end)

describe("task.queue", function()
  it("is first in, first out for any non-nil value", function()
    task.run(function()
      local q = task.queue(10)
      local t = {}
      for _, v in ipairs { 1, "two", false, t, 5.5 } do q:push(v) end
      assert.equal(5, q:len())
      assert.equal(1, q:pop())
      assert.equal("two", q:pop())
      assert.equal(false, q:pop())
      assert.equal(t, q:pop())
      assert.equal(5.5, q:pop())
      assert.equal(0, q:len())
    end)
  end)

  it("keeps its order across the wrap of its ring", function()
    task.run(function()
      local q, out = task.queue(3), {}
      for i = 1, 10 do
        q:push(i)
        if i % 2 == 0 then
          out[#out + 1] = q:pop()
          out[#out + 1] = q:pop()
        end
      end
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, out)
    end)
  end)

  it("applies backpressure: a pusher waits while full and resumes after a pop, in order", function()
    local log, popped = task.run(function()
      local q, log, popped = task.queue(2), {}, {}
      local producer = task.spawn(function()
        for i = 1, 4 do
          q:push(i)
          log[#log + 1] = "pushed " .. i
        end
      end)
      task.yield()
      assert.same({ "pushed 1", "pushed 2" }, log)
      assert.equal("waiting", producer:status())
      assert.equal(2, q:len())
      popped[#popped + 1] = q:pop()
      log[#log + 1] = "popped"
      assert.equal(2, q:len()) -- the waiting pusher's item moved in
      task.yield()
      assert.equal("waiting", producer:status())
      popped[#popped + 1] = q:pop()
      log[#log + 1] = "popped"
      producer:join()
      popped[#popped + 1] = q:pop()
      popped[#popped + 1] = q:pop()
      return log, popped
    end)
    assert.same({ "pushed 1", "pushed 2", "popped", "pushed 3", "popped", "pushed 4" }, log)
    assert.same({ 1, 2, 3, 4 }, popped)
  end)

  it("waiting pushers keep their order", function()
    local popped = task.run(function()
      local q = task.queue(1)
      q:push("a")
      local hs = {}
      for _, v in ipairs { "b", "c", "d" } do
        hs[#hs + 1] = task.spawn(function() q:push(v) end)
        task.yield()
      end
      local popped = {}
      for _ = 1, 4 do popped[#popped + 1] = q:pop() end
      for _, h in ipairs(hs) do h:join() end
      return popped
    end)
    assert.same({ "a", "b", "c", "d" }, popped)
  end)

  it("pop waits while the queue is empty and a push hands the item over", function()
    task.run(function()
      local q = task.queue(1)
      local h = task.spawn(function() return q:pop() end)
      task.yield()
      assert.equal("waiting", h:status())
      q:push("hello")
      assert.equal(0, q:len()) -- handed straight to the waiting popper
      assert.equal("hello", h:join())
    end)
  end)

  it("try_pop returns nil when empty and the head otherwise", function()
    local q = task.queue(2)
    assert.is_nil(q:try_pop())
    q:push("x")
    assert.equal("x", q:try_pop())
    assert.is_nil(q:try_pop())
  end)

  it("a cancelled pusher's item is not queued", function()
    task.run(function()
      local q = task.queue(1)
      q:push("kept")
      local h = task.spawn(function() q:push("dropped") end)
      task.yield()
      h:cancel()
      assert.is_false((h:result()))
      assert.equal("kept", q:pop())
      assert.is_nil(q:try_pop())
    end)
  end)

  it("a cancelled popper takes no item", function()
    task.run(function()
      local q = task.queue(1)
      local h = task.spawn(function() return q:pop() end)
      task.yield()
      h:cancel()
      assert.is_false((h:result()))
      q:push("for someone else")
      assert.equal(1, q:len())
      assert.equal("for someone else", q:pop())
    end)
  end)

  it("refuses nil with invalid_argument and a hint", function()
    task.run(function()
      local q = task.queue(1)
      local ok, err = pcall(q.push, q, nil)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"))
      assert.matches("wrap it in a table", err.message)
      ok, err = pcall(q.push, q)
      assert.is_false(ok)
      assert.matches("invalid_argument: .*queue:push: nil cannot be queued", tostring(err))
      assert.equal(0, q:len())
    end)
  end)

  it("rejects a capacity below 1", function()
    for _, cap in ipairs { 0, -3 } do
      local ok, err = pcall(task.queue, cap)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"))
      assert.matches("capacity", err.message)
    end
    local ok, err = pcall(task.queue, "big")
    assert.is_false(ok)
    assert.matches("invalid_argument: .*task.queue: capacity must be an integer", tostring(err))
  end)
end)

describe("task.event", function()
  it("set wakes every waiter and stays set", function()
    task.run(function()
      local ev, woken = task.event(), {}
      local hs = {}
      for i = 1, 3 do
        hs[i] = task.spawn(function()
          ev:wait()
          woken[#woken + 1] = i
        end)
      end
      task.yield()
      assert.same({}, woken)
      assert.is_false(ev:is_set())
      ev:set()
      assert.is_true(ev:is_set())
      for _, h in ipairs(hs) do h:join() end
      assert.same({ 1, 2, 3 }, woken)
    end)
  end)

  it("wait returns at once when set, and blocks again after clear", function()
    task.run(function()
      local ev, log = task.event(), {}
      ev:set()
      local h = task.spawn(function()
        ev:wait()
        log[#log + 1] = "first wait"
        ev:clear()
        ev:wait()
        log[#log + 1] = "second wait"
      end)
      task.yield()
      assert.same({ "first wait" }, log)
      assert.is_false(ev:is_set())
      assert.equal("waiting", h:status())
      ev:set()
      h:join()
      assert.same({ "first wait", "second wait" }, log)
    end)
  end)

  it("a cancelled waiter leaves the others waiting", function()
    task.run(function()
      local ev = task.event()
      local a = task.spawn(function() ev:wait() return "a" end)
      local b = task.spawn(function() ev:wait() return "b" end)
      task.yield()
      a:cancel()
      assert.is_false((a:result()))
      assert.equal("waiting", b:status())
      ev:set()
      assert.equal("b", b:join())
    end)
  end)
end)
