-- ah.task: running, spawning, handles, sleeping, cancellation, detached
-- tasks, uncaught-error reporting, deadlock detection and the counters.
-- Orderings are checked with sleeps of clearly different lengths, and
-- waits synchronise on events the tasks produce, never on elapsed time.

local ah = require "agenthost"
local proc = require "support.proc"
local task = ah.task

local helpers = require "support.spec"
local closer, settle = helpers.closer, helpers.settle
local capture_reports = helpers.capture_reports
local eventually = helpers.eventually

after_each(function()
  task.on_error(nil)
  proc.cleanup()
end)

describe("the module", function()
  it("loads from stock lua and runs a task", function()
    local v = task.run(function()
      task.sleep(0.01)
      return 42
    end)
    assert.equal(42, v)
  end)

  it("has a version string and a monotonic clock", function()
    assert.is_string(ah.version)
    assert.truthy(ah.version:match("^%d+%.%d+%.%d+"))
    local a = ah.clock()
    local b = task.run(function()
      task.sleep(0.01)
      return ah.clock()
    end)
    assert.is_number(a)
    assert.is_true(b >= a)
  end)

  it("reports resource usage of the process", function()
    local ru = ah.rusage()
    for _, k in ipairs { "utime", "stime", "cpu", "maxrss_kb" } do
      assert.is_number(ru[k], k)
      assert.is_true(ru[k] >= 0, k)
    end
    assert.is_true(ru.maxrss_kb > 0)
    assert.is_true(math.abs(ru.cpu - (ru.utime + ru.stime)) < 1e-6)
  end)
end)

describe("task.run", function()
  it("returns every value of the main function, nils included", function()
    local n, a, b, c = (function(...) return select("#", ...), ... end)(
      task.run(function() return 1, nil, 3 end))
    assert.equal(3, n)
    assert.equal(1, a)
    assert.is_nil(b)
    assert.equal(3, c)
  end)

  it("passes its extra arguments to the main function", function()
    local a, b = task.run(function(x, y) return y, x end, "x", "y")
    assert.equal("y", a)
    assert.equal("x", b)
  end)

  it("re-raises the main function's error", function()
    local ok, err = pcall(task.run, function()
      task.sleep(0.001)
      error("main failed")
    end)
    assert.is_false(ok)
    assert.matches("main failed", err)
  end)

  it("re-raises a structured error as the same object, with a traceback", function()
    local e = ah.error.new("tool", "no such tool")
    local ok, err = pcall(task.run, function() error(e) end)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.matches("stack traceback", err.traceback)
  end)

  it("can run again after a run that failed", function()
    assert.is_false(pcall(task.run, function() error("first") end))
    assert.equal("second", task.run(function()
      task.sleep(0.001)
      return "second"
    end))
  end)

  it("runs the main task inside a task", function()
    local cur, status = task.run(function()
      return task.current(), task.current():status()
    end)
    assert.is_not_nil(cur)
    assert.equal("running", status)
    assert.equal("done", cur:status())
  end)

  it("waits for the main task's children before returning", function()
    local finished = false
    task.run(function()
      task.spawn(function()
        task.sleep(0.02)
        finished = true
      end)
    end)
    assert.is_true(finished)
  end)

  it("waits for detached tasks before returning", function()
    local finished = false
    local v = task.run(function()
      task.detach(function()
        task.sleep(0.02)
        finished = true
      end)
      return "main"
    end)
    assert.equal("main", v)
    assert.is_true(finished)
  end)

  it("raises invalid_argument when called inside a task", function()
    local ok, err = task.run(function()
      return pcall(task.run, function() end)
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("task.spawn", err.message)
  end)

  it("rejects a main that is not a function", function()
    local ok, err = pcall(task.run, 42)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    assert.matches("task.run: fn must be a function", err.message, 1, true)
  end)
end)

describe("task.spawn and handles", function()
  it("runs children concurrently", function()
    local log = task.run(function()
      local log = {}
      local a = task.spawn(function()
        task.sleep(0.05)
        log[#log + 1] = "slow"
      end)
      local b = task.spawn(function()
        task.sleep(0.01)
        log[#log + 1] = "fast"
      end)
      a:join()
      b:join()
      return log
    end)
    assert.same({ "fast", "slow" }, log)
  end)

  it("passes arguments and returns every value through join", function()
    task.run(function()
      local h = task.spawn(function(a, b) return b, nil, a end, 1, 2)
      local n, x, y, z = (function(...) return select("#", ...), ... end)(h:join())
      assert.equal(3, n)
      assert.equal(2, x)
      assert.is_nil(y)
      assert.equal(1, z)
    end)
  end)

  it("join raises the task's error and result returns it", function()
    task.run(function()
      local e = ah.error.new("tool", "broken")
      local h = task.spawn(function()
        task.sleep(0.001)
        error(e)
      end)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.equal(e, err)
      local ok2, err2 = h:result()
      assert.is_false(ok2)
      assert.equal(e, err2)
      -- joining again gives the same outcome
      assert.equal(e, select(2, pcall(h.join, h)))
    end)
  end)

  it("result returns true and the values on success", function()
    task.run(function()
      local h = task.spawn(function()
        task.yield()
        return "a", "b"
      end)
      local ok, a, b = h:result()
      assert.is_true(ok)
      assert.equal("a", a)
      assert.equal("b", b)
    end)
  end)

  it("a finished task can be joined from outside any task", function()
    local h = task.run(function()
      return task.spawn(function() return "v" end)
    end)
    assert.is_true(h:done())
    assert.equal("v", h:join())
    assert.same({ true, "v" }, { h:result() })
  end)

  it("reports its status through its life", function()
    task.run(function()
      local gate, release = task.event(), task.event()
      local inner
      local h = task.spawn(function()
        inner = task.current():status()
        gate:wait()
      end)
      assert.equal("pending", h:status())
      assert.is_false(h:done())
      task.yield()
      assert.equal("running", inner)
      assert.equal("waiting", h:status())

      local spinner = task.spawn(function()
        for _ = 1, 3 do task.yield() end
      end)
      task.yield() -- the spinner ran and queued itself behind us
      assert.equal("ready", spinner:status())

      local body_done = false
      local parent = task.spawn(function()
        task.spawn(function() release:wait() end)
        body_done = true
      end)
      settle(function() return body_done end)
      assert.equal("finishing", parent:status())
      release:set()
      gate:set()
      parent:join()
      h:join()
      spinner:join()
      assert.equal("done", parent:status())
      assert.is_true(parent:done())

      local failing = task.spawn(function() error("x") end)
      failing:result()
      assert.equal("failed", failing:status())
      assert.is_true(failing:done())

      local cancelled = task.spawn(function() task.sleep(10) end)
      task.yield()
      cancelled:cancel()
      cancelled:result()
      assert.equal("cancelled", cancelled:status())
      assert.is_true(cancelled:done())
    end)
  end)

  it("prints as a task", function()
    task.run(function()
      assert.matches("^task: ", tostring(task.current()))
    end)
  end)

  it("task.current is the handle spawn returned, and nil outside a task", function()
    assert.is_nil(task.current())
    task.run(function()
      local seen
      local h = task.spawn(function() seen = task.current() end)
      h:join()
      assert.equal(h, seen)
    end)
  end)

  it("a parent completes only after its children", function()
    local log = task.run(function()
      local log = {}
      local p = task.spawn(function()
        task.spawn(function()
          task.sleep(0.02)
          log[#log + 1] = "child"
        end)
        log[#log + 1] = "parent body"
        return "p"
      end)
      assert.equal("p", p:join())
      log[#log + 1] = "joined"
      return log
    end)
    assert.same({ "parent body", "child", "joined" }, log)
  end)
end)

describe("task.sleep and task.yield", function()
  it("a task that keeps yielding does not starve timers", function()
    -- In a separate interpreter: a regression would spin forever.
    local r = proc.lua([[
      local ah = require "agenthost"
      local task = ah.task
      print(task.run(function()
        local done = false
        local spins = 0
        local spinner = task.spawn(function()
          while not done do spins = spins + 1; task.yield() end
        end)
        local plain = task.spawn(function()
          while not done do coroutine.yield() end
        end)
        task.sleep(0.02)
        done = true
        spinner:join()
        plain:join()
        return spins > 0 and "timer fired" or "spinner never ran"
      end))
    ]], 10)
    assert.equal(0, r.code, r.err)
    assert.equal("timer fired\n", r.out)
  end)

  it("wakes shorter sleeps first", function()
    local log = task.run(function()
      local log = {}
      task.gather(
        function() task.sleep(0.05) log[#log + 1] = 50 end,
        function() task.sleep(0.01) log[#log + 1] = 10 end,
        function() task.sleep(0.03) log[#log + 1] = 30 end)
      return log
    end)
    assert.same({ 10, 30, 50 }, log)
  end)

  it("task.yield lets every other ready task run once", function()
    local log = task.run(function()
      local log = {}
      local function worker(name)
        for i = 1, 3 do
          log[#log + 1] = name .. i
          task.yield()
        end
      end
      local a, b = task.spawn(worker, "a"), task.spawn(worker, "b")
      a:join()
      b:join()
      return log
    end)
    assert.same({ "a1", "b1", "a2", "b2", "a3", "b3" }, log)
  end)

  it("task.sleep(0) yields to the other ready tasks", function()
    local log = task.run(function()
      local log = {}
      local h = task.spawn(function() log[#log + 1] = "other" end)
      task.sleep(0)
      log[#log + 1] = "back"
      h:join()
      return log
    end)
    assert.same({ "other", "back" }, log)
  end)

  it("a plain coroutine.yield acts like task.yield", function()
    local log = task.run(function()
      local log = {}
      local function worker(name)
        for i = 1, 2 do
          log[#log + 1] = name .. i
          coroutine.yield("ignored")
        end
        return name
      end
      local a, b = task.spawn(worker, "a"), task.spawn(worker, "b")
      assert.equal("a", a:join())
      assert.equal("b", b:join())
      return log
    end)
    assert.same({ "a1", "b1", "a2", "b2" }, log)
  end)

  it("rejects negative and NaN durations with invalid_argument", function()
    task.run(function()
      for _, s in ipairs { -1, -0.001, 0 / 0 } do
        local ok, err = pcall(task.sleep, s)
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches(">= 0", err.message)
      end
    end)
  end)

  it("rejects a duration that is not a number", function()
    task.run(function()
      local ok, err = pcall(task.sleep, "soon")
      assert.is_false(ok)
      assert.matches("invalid_argument: .*task.sleep: seconds must be a number", tostring(err))
    end)
  end)
end)

describe("yielding inside pcall and xpcall", function()
  it("pcall around a sleep returns its values", function()
    local r = { task.run(function()
      return pcall(function()
        task.sleep(0.01)
        task.yield()
        return 1, 2
      end)
    end) }
    assert.same({ true, 1, 2 }, r)
  end)

  it("pcall catches an error raised after a wait", function()
    local ok, err = task.run(function()
      return pcall(function()
        task.sleep(0.001)
        error("after the wait")
      end)
    end)
    assert.is_false(ok)
    assert.matches("after the wait", err)
  end)

  it("xpcall runs its handler for an error raised after a wait", function()
    local ok, msg, tb = task.run(function()
      local tb
      local ok, msg = xpcall(function()
        task.yield()
        task.sleep(0.001)
        error("deep")
      end, function(m)
        tb = debug.traceback()
        return "handled: " .. m
      end)
      return ok, msg, tb
    end)
    assert.is_false(ok)
    assert.matches("^handled: .*deep", msg)
    assert.is_string(tb)
  end)

  it("xpcall returns the values of a function that waited", function()
    local r = { task.run(function()
      return xpcall(function(a)
        task.sleep(0.001)
        return a, "b"
      end, debug.traceback, "a")
    end) }
    assert.same({ true, "a", "b" }, r)
  end)

  it("nested pcalls with waits at every level unwind correctly", function()
    local r = task.run(function()
      local log = {}
      local ok1 = pcall(function()
        task.sleep(0.001)
        local ok2, e2 = pcall(function()
          coroutine.yield()
          task.sleep(0.001)
          error("inner", 0)
        end)
        log[#log + 1] = tostring(ok2) .. ":" .. e2
        task.yield()
        error("outer", 0)
      end)
      log[#log + 1] = tostring(ok1)
      return log
    end)
    assert.same({ "false:inner", "false" }, r)
  end)

  it("joining a failed task inside pcall works", function()
    local ok, err = task.run(function()
      local h = task.spawn(function()
        task.sleep(0.001)
        error("child", 0)
      end)
      return pcall(h.join, h)
    end)
    assert.is_false(ok)
    assert.equal("child", err)
  end)
end)

describe("cancellation", function()
  it("cancels a sleeping task at its await point", function()
    task.run(function()
      local log = {}
      local h = task.spawn(function()
        log[#log + 1] = "before"
        task.sleep(10)
        log[#log + 1] = "after"
      end)
      task.yield()
      assert.equal(1, task.stats().sleeping)
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.is_false(err.retryable)
      assert.equal("cancelled", h:status())
      assert.same({ "before" }, log)
      assert.equal(0, task.stats().sleeping)
      local jok, jerr = pcall(h.join, h)
      assert.is_false(jok)
      assert.is_true(ah.error.is(jerr, "cancelled"))
    end)
  end)

  it("raises the cancellation inside the task so pcall handlers run", function()
    local caught = task.run(function()
      local caught
      local h = task.spawn(function()
        local ok, err = pcall(task.sleep, 10)
        caught = { ok = ok, kind = err and err.kind }
      end)
      task.yield()
      h:cancel()
      h:join() -- the task handled its cancellation and returned normally
      return caught
    end)
    assert.same({ ok = false, kind = "cancelled" }, caught)
  end)

  it("runs <close> variables on cancel, innermost first, with the error", function()
    local log = task.run(function()
      local log = {}
      local h = task.spawn(function()
        local a <close> = closer(function(_, e)
          log[#log + 1] = "a:" .. tostring(e and e.kind)
        end)
        do
          local b <close> = closer(function(_, e)
            log[#log + 1] = "b:" .. tostring(e and e.kind)
          end)
          task.sleep(10)
        end
      end)
      task.yield()
      h:cancel()
      assert.is_false((h:result()))
      return log
    end)
    assert.same({ "b:cancelled", "a:cancelled" }, log)
  end)

  it("a task cancelled before it started never runs", function()
    task.run(function()
      local ran = false
      local h = task.spawn(function() ran = true end)
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.equal("cancelled", h:status())
      task.sleep(0.001)
      assert.is_false(ran)
    end)
  end)

  it("cancelling a finished task changes nothing", function()
    task.run(function()
      local h = task.spawn(function() return "v" end)
      h:join()
      h:cancel()
      assert.equal("done", h:status())
      assert.equal("v", h:join())
    end)
  end)

  it("is delivered once: a task that handles it can wait again", function()
    local log = task.run(function()
      local log = {}
      local h = task.spawn(function()
        local ok, err = pcall(task.sleep, 10)
        log[#log + 1] = err.kind
        task.sleep(0.01) -- cleanup that waits
        task.yield()
        log[#log + 1] = "cleaned up"
        return "survived"
      end)
      task.yield()
      h:cancel()
      assert.equal("survived", h:join())
      return log
    end)
    assert.same({ "cancelled", "cleaned up" }, log)
  end)

  it("a cancel that arrives after the task was woken is delivered at its next await", function()
    task.run(function()
      local q = task.queue(1)
      local got, after
      local h = task.spawn(function()
        got = q:pop()
        task.sleep(10)
        after = true
      end)
      task.yield() -- h waits in pop
      q:push("item") -- h is woken with the item ...
      h:cancel() -- ... and cancelled before it resumed
      local ok, err = h:result()
      assert.equal("item", got) -- the item was not lost
      assert.is_nil(after)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.equal(0, q:len())
    end)
  end)

  it("a task can cancel itself; the error comes at its next await", function()
    local log = task.run(function()
      local log = {}
      local h = task.spawn(function()
        task.current():cancel()
        log[#log + 1] = "still running"
        task.yield()
        log[#log + 1] = "not reached"
      end)
      local ok, err = h:result()
      log[#log + 1] = err.kind
      return log
    end)
    assert.same({ "still running", "cancelled" }, log)
  end)

  it("cancels a task that spins on task.yield", function()
    task.run(function()
      local spins = 0
      local h = task.spawn(function()
        while true do
          spins = spins + 1
          task.yield()
        end
      end)
      task.yield()
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.is_true(spins < 5)
    end)
  end)

  it("a cancel during plain coroutine.yield calls lands at the next waiting call", function()
    task.run(function()
      local reached = false
      local h = task.spawn(function()
        for _ = 1, 50 do coroutine.yield() end
        reached = true
        task.sleep(0.01)
        return "finished"
      end)
      task.yield()
      h:cancel()
      local ok, err = h:result()
      assert.is_true(reached)
      assert.is_false(ok, "the task ran to the end: " .. tostring(err))
      assert.is_true(ah.error.is(err, "cancelled"))
    end)
  end)

  it("cancelling a task waiting in join leaves the joined task alone", function()
    task.run(function()
      local target = task.spawn(function()
        task.sleep(0.02)
        return "target"
      end)
      local waiter = task.spawn(function() return target:join() end)
      task.yield()
      waiter:cancel()
      assert.equal("cancelled", select(2, waiter:result()).kind)
      assert.equal("target", target:join())
    end)
  end)

  it("cancelling a parent cancels its children and grandchildren", function()
    task.run(function()
      local flags, started = {}, 0
      local child
      local p = task.spawn(function()
        child = task.spawn(function()
          started = started + 1
          task.sleep(0.1)
          flags.child = true
        end)
        task.spawn(function()
          task.spawn(function()
            started = started + 1
            task.sleep(0.1)
            flags.grandchild = true
          end)
          started = started + 1
          task.sleep(0.1)
          flags.child2 = true
        end)
        started = started + 1
        task.sleep(0.1)
        flags.parent = true
      end)
      settle(function() return started == 4 end)
      p:cancel()
      local ok, err = p:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      -- p completed only after its children, so none of them can still
      -- set its flag.
      assert.same({}, flags)
      assert.equal("cancelled", child:status())
    end)
  end)

  it("a child cancelled with its parent gets the cancellation once", function()
    task.run(function()
      local log, started = {}, false
      local p = task.spawn(function()
        task.spawn(function()
          started = true
          local ok, err = pcall(task.sleep, 10)
          log[#log + 1] = "child got " .. tostring(err and err.kind)
          local ok2, err2 = pcall(task.sleep, 0.01) -- cleanup that waits
          log[#log + 1] = ok2 and "cleanup done" or ("cleanup interrupted: " .. tostring(err2))
        end)
        task.sleep(10)
      end)
      settle(function() return started end)
      p:cancel()
      p:result()
      assert.same({ "child got cancelled", "cleanup done" }, log)
    end)
  end)

  it("a parent whose body fails cancels its children", function()
    task.run(function()
      local flag, started = false, false
      local p = task.spawn(function()
        task.spawn(function()
          started = true
          task.sleep(0.05)
          flag = true
        end)
        task.yield()
        error("parent failed", 0)
      end)
      local ok, err = p:result()
      assert.is_true(started)
      assert.is_false(ok)
      assert.equal("parent failed", err)
      assert.is_false(flag)
    end)
  end)

  it("cancellation errors are never reported as uncaught", function()
    local got = capture_reports()
    task.run(function()
      local h = task.spawn(function() task.sleep(10) end)
      task.spawn(function() task.sleep(10) end):cancel()
      task.yield()
      h:cancel()
      task.detach(function()
        task.current():cancel()
        task.yield()
      end)
      task.sleep(0.01)
    end)
    collectgarbage()
    collectgarbage()
    task.run(function() task.sleep(0.001) end)
    assert.equal(0, #got)
  end)
end)

describe("task.detach", function()
  it("runs fn with its arguments in the background", function()
    local got
    local v = task.run(function()
      task.detach(function(a, b)
        task.sleep(0.001)
        got = a + b
      end, 40, 2)
      return got
    end)
    assert.is_nil(v) -- the main task did not wait for it ...
    assert.equal(42, got) -- ... but task.run did
  end)

  it("survives the cancellation of the task that started it", function()
    local finished = false
    task.run(function()
      local h = task.spawn(function()
        task.detach(function()
          task.sleep(0.02)
          finished = true
        end)
        task.sleep(10)
      end)
      task.yield()
      h:cancel()
      h:result()
      assert.is_false(finished)
    end)
    assert.is_true(finished)
  end)

  it("is counted by task.stats until it finishes", function()
    task.run(function()
      local before = task.stats().detached
      local ev, finished = task.event(), task.event()
      task.detach(function()
        ev:wait()
        finished:set()
      end)
      assert.equal(before + 1, task.stats().detached)
      ev:set()
      finished:wait()
      task.yield()
      assert.equal(before, task.stats().detached)
    end)
  end)

  it("task.drain waits for every detached task, including ones started meanwhile", function()
    task.run(function()
      local done = {}
      task.detach(function()
        task.sleep(0.02)
        done[#done + 1] = "a"
        task.detach(function()
          task.sleep(0.01)
          done[#done + 1] = "b"
        end)
      end)
      task.detach(function() done[#done + 1] = "c" end)
      task.drain()
      assert.same({ "c", "a", "b" }, done)
      assert.equal(0, task.stats().detached)
      task.drain() -- nothing detached: returns at once
    end)
  end)

  it("task.drain refuses to run in a detached task, which would wait for itself", function()
    local err
    task.run(function()
      task.detach(function()
        local ok, e = pcall(task.drain)
        assert(not ok)
        err = e
      end)
    end)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("detached task", err.message)
  end)

  it("a task waiting in task.drain can be cancelled", function()
    task.run(function()
      local ev = task.event()
      task.detach(function() ev:wait() end)
      local h = task.spawn(task.drain)
      task.yield()
      h:cancel()
      local ok, e = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(e, "cancelled"))
      ev:set()
    end)
  end)

  it("can be started from outside a task and is drained by the next task.run", function()
    local ran = false
    task.detach(function() ran = true end)
    task.run(function() end)
    assert.is_true(ran)
  end)
end)

describe("uncaught errors", function()
  it("a detached task's error is reported at once while the others keep running", function()
    local got = capture_reports()
    local seen_by_main = task.run(function()
      task.detach(function()
        task.sleep(0.001)
        error("detached boom")
      end)
      local other = task.spawn(function()
        for _ = 1, 5 do task.sleep(0.001) end
        return "other finished"
      end)
      eventually(function() return #got > 0 end)
      local n = #got
      assert.equal("other finished", other:join())
      return n
    end)
    assert.equal(1, seen_by_main)
    assert.equal(1, #got)
    assert.matches("detached boom", tostring(got[1].err))
    assert.matches("stack traceback", got[1].traceback)
  end)

  it("a spawned task's error nobody took is reported at the end of task.run", function()
    local got = capture_reports()
    local keep
    local during = task.run(function()
      keep = task.spawn(function()
        task.sleep(0.001)
        error(ah.error.new("tool", "lost"))
      end)
      task.sleep(0.02) -- the child fails meanwhile; its handle is still held
      return #got
    end)
    assert.equal(0, during)
    assert.equal(1, #got)
    assert.is_true(ah.error.is(got[1].err, "tool"))
    assert.is_string(got[1].traceback)
    assert.equal("failed", keep:status())
  end)

  it("a spawned task's error is reported when its handle is collected", function()
    local got = capture_reports()
    local during = task.run(function()
      task.spawn(function() error("collected") end) -- handle dropped
      task.yield() -- it runs and fails
      collectgarbage()
      collectgarbage()
      task.sleep(0.005) -- lets the loop deliver the report
      return #got
    end)
    assert.equal(1, during)
    assert.equal(1, #got)
    assert.matches("collected", tostring(got[1].err))
  end)

  it("an error that was joined, taken by result or gathered is not reported", function()
    local got = capture_reports()
    task.run(function()
      local a = task.spawn(function() error("a") end)
      local b = task.spawn(function() error("b") end)
      pcall(a.join, a)
      b:result()
      pcall(task.gather, function()
        task.sleep(0.001)
        error("c")
      end)
    end)
    collectgarbage()
    task.run(function() end)
    assert.equal(0, #got)
  end)

  it("a failing task does not stop its siblings", function()
    local got = capture_reports()
    local r = task.run(function()
      task.spawn(function() error("one fails") end)
      local h = task.spawn(function()
        task.sleep(0.01)
        return "sibling ok"
      end)
      return h:join()
    end)
    assert.equal("sibling ok", r)
    assert.equal(1, #got)
  end)

  it("goes to stderr with a traceback by default, and on_error(nil) restores that", function()
    local r = proc.lua([[
      local task = require("agenthost").task
      task.on_error(function() print("custom handler") end)
      task.on_error(nil)
      task.run(function()
        task.detach(function() error("default handler boom") end)
        task.sleep(0.01)
        print("main still running")
      end)
    ]])
    assert.equal(0, r.code, r.err)
    assert.matches("main still running", r.out)
    assert.not_matches("custom handler", r.out)
    assert.matches("agenthost: uncaught error in task: [^\n]*default handler boom", r.err)
    assert.matches("stack traceback", r.err)
  end)

  it("still reaches stderr when the handler itself fails", function()
    local r = proc.lua([[
      local task = require("agenthost").task
      task.on_error(function() error("handler broke") end)
      print(task.run(function()
        task.detach(function() error("original boom") end)
        task.sleep(0.01)
        return "main ok"
      end))
    ]])
    assert.equal(0, r.code, r.err)
    assert.matches("main ok", r.out)
    assert.matches("original boom", r.err)
  end)

  it("task.on_error rejects a handler that is not a function", function()
    local ok, err = pcall(task.on_error, 42)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    assert.matches("task.on_error: the handler must be a function", err.message, 1, true)
  end)
end)

describe("deadlock detection", function()
  it("raises deadlock when the main task waits for an event nobody sets, after cleanup ran", function()
    local cleaned = false
    local ok, err = pcall(task.run, function()
      local _ <close> = closer(function() cleaned = true end)
      task.event():wait()
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "deadlock"), tostring(err))
    assert.is_true(cleaned)
  end)

  it("raises deadlock for a join cycle", function()
    local ok, err = pcall(task.run, function()
      local main = task.current()
      local h = task.spawn(function() main:join() end)
      h:join()
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "deadlock"), tostring(err))
  end)

  it("raises deadlock for a pop on a queue nobody fills and an acquire nobody releases", function()
    local ok, err = pcall(task.run, function()
      task.spawn(function() task.semaphore(0):acquire() end)
      task.queue(1):pop()
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "deadlock"), tostring(err))
  end)

  it("raises deadlock for a detached task that can never finish", function()
    local ok, err = pcall(task.run, function()
      task.detach(function() task.event():wait() end)
      return "main done"
    end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "deadlock"), tostring(err))
  end)

  it("is not a deadlock while a timer can still wake a task", function()
    local v = task.run(function()
      local ev = task.event()
      task.spawn(function()
        task.sleep(0.02)
        ev:set()
      end)
      ev:wait()
      return "woken"
    end)
    assert.equal("woken", v)
  end)

  it("leaves the scheduler usable", function()
    pcall(task.run, function() task.event():wait() end)
    assert.equal("fine", task.run(function()
      task.sleep(0.001)
      return "fine"
    end))
  end)
end)

describe("scheduling order", function()
  it("a task started by a running task runs as soon as that task waits, ahead of tasks woken before", function()
    local log = task.run(function()
      local log, ev = {}, task.event()
      local waiter = task.spawn(function() ev:wait() log[#log + 1] = "woken" end)
      task.yield() -- the waiter waits
      ev:set()     -- and is ready
      task.spawn(function() log[#log + 1] = "started" end)
      task.yield()
      waiter:join()
      return log
    end)
    assert.same({ "started", "woken" }, log)
  end)

  it("the tasks a task started ahead starts go to the back, so that no chain holds the queue", function()
    local log = task.run(function()
      local log, ev = {}, task.event()
      local waiter = task.spawn(function() ev:wait() log[#log + 1] = "woken" end)
      task.yield()
      ev:set()
      local function chain(n)
        log[#log + 1] = "chain " .. n
        if n < 3 then task.spawn(chain, n + 1) end
      end
      task.spawn(chain, 1)
      task.yield()
      waiter:join()
      return log
    end)
    assert.same({ "chain 1", "woken", "chain 2", "chain 3" }, log)
  end)
end)

describe("memory", function()
  -- Waits up to about 10 s (the loop idle in between) for cond().
  local function within_seconds(cond)
    for _ = 1, 5 do
      if eventually(cond) then return true end
    end
    return false
  end

  it("the collector runs while the loop is idle, without waiting for more allocation", function()
    task.run(function()
      local keep = {}
      for i = 1, 200000 do keep[i] = { i } end
      collectgarbage()
      task.yield() -- the scheduler notes what the cycle left when the task waits
      local base = collectgarbage("count")
      do
        -- Half as much again: below the collector's own threshold (twice
        -- what its last cycle left), so only idle time can collect it.
        local junk = {}
        for i = 1, 100000 do junk[i] = { i } end
      end
      assert.is_true(collectgarbage("count") > base * 1.4)
      assert.is_true(within_seconds(function() return collectgarbage("count") < base * 1.1 end),
        "the garbage was not collected while idle")
      assert.equal(200000, #keep)
    end)
  end)

  it("leaves a collector that Lua code stopped alone", function()
    task.run(function()
      collectgarbage()
      task.yield()
      local base = collectgarbage("count")
      collectgarbage("stop")
      do
        local junk = {}
        for i = 1, 100000 do junk[i] = { i } end
      end
      local grown = collectgarbage("count")
      for _ = 1, 10 do task.sleep(0.01) end
      local after = collectgarbage("count")
      collectgarbage("restart")
      assert.is_true(grown > base + 2048)
      assert.is_true(after >= grown, "a stopped collector ran")
    end)
  end)

  it("threads kept for reuse after a burst go back once it is over, and their memory with them", function()
    task.run(function()
      local items = {}
      for i = 1, 3000 do items[i] = i end
      local before = collectgarbage("count")
      task.map(items, function() task.sleep(0.001) end) -- 2,999 tasks at once
      local s = task.stats()
      assert.is_true(s.pooled >= 2000, "pooled " .. s.pooled)
      local peak = collectgarbage("count")
      assert.is_true(within_seconds(function() return task.stats().pooled <= 64 end),
        "the pool kept " .. task.stats().pooled .. " threads")
      assert.is_true(collectgarbage("count") < before + (peak - before) / 4)
    end)
  end)
end)

describe("task.stats", function()
  it("counts live, ready, sleeping, detached, spawned tasks and resumes", function()
    task.run(function()
      local s0 = task.stats()
      for _, k in ipairs { "live", "ready", "sleeping", "detached", "spawned", "resumes", "pooled" } do
        assert.equal("integer", math.type(s0[k]), k)
      end
      local hs = {}
      for i = 1, 3 do
        hs[i] = task.spawn(function() task.sleep(10) end)
      end
      local s1 = task.stats()
      assert.equal(s0.spawned + 3, s1.spawned)
      assert.equal(s0.live + 3, s1.live)
      assert.equal(s0.ready + 3, s1.ready)
      task.yield()
      local s2 = task.stats()
      assert.equal(s0.sleeping + 3, s2.sleeping)
      assert.equal(s0.ready, s2.ready)
      assert.is_true(s2.resumes >= s1.resumes + 4)
      for _, h in ipairs(hs) do h:cancel() end
      for _, h in ipairs(hs) do h:result() end
      local s3 = task.stats()
      assert.equal(s0.sleeping, s3.sleeping)
      assert.equal(s0.live, s3.live)
    end)
    assert.equal(0, task.stats().ready)
  end)
end)
