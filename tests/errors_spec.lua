-- Structured errors (ah.error) and the misuse errors of ah.task: a waiting
-- call outside a task, wrong argument types, a task waiting for itself,
-- task.run inside a task.  Misuse raises at once, with a message that says
-- what to do instead.

local ah = require "agenthost"
local task = ah.task

-- Calls fn(...) and returns the error it raises (failing if it does not).
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

-- Runs fn in a plain coroutine (not a task) and returns its error.
local function raised_in_coroutine(fn)
  local co = coroutine.create(function() return raised(fn) end)
  local ok, err = coroutine.resume(co)
  assert(ok, tostring(err))
  return err
end

describe("ah.error", function()
  it("new makes a structured error with kind, message, retryable and extra fields", function()
    local e = ah.error.new("http", "server said no", { status = 503, retryable = true })
    assert.equal("http", e.kind)
    assert.equal("server said no", e.message)
    assert.is_true(e.retryable)
    assert.equal(503, e.status)
    assert.equal("http: server said no", tostring(e))
  end)

  it("is not retryable unless told", function()
    assert.is_false(ah.error.new("sql", "constraint failed").retryable)
  end)

  it("is recognises structured errors and their kind", function()
    local e = ah.error.new("timeout", "too slow")
    assert.is_true(ah.error.is(e))
    assert.is_true(ah.error.is(e, "timeout"))
    assert.is_false(ah.error.is(e, "cancelled"))
    assert.is_false(ah.error.is("timeout: too slow"))
    assert.is_false(ah.error.is({ kind = "timeout", message = "too slow" }, "timeout"))
    assert.is_false(ah.error.is(nil))
    assert.is_false(ah.error.is(42, "timeout"))
  end)

  it("keeps its identity through error, pcall and join, and gains a traceback in a task", function()
    local e = ah.error.new("tool", "broken tool")
    local err = task.run(function()
      local h = task.spawn(function()
        task.yield()
        error(e)
      end)
      return select(2, h:result())
    end)
    assert.equal(e, err)
    assert.is_string(err.traceback)
    assert.matches("stack traceback", err.traceback)
  end)

  it("errors of the scheduler are structured and print as kind: message", function()
    local err = task.run(function()
      return select(2, task.spawn(function() task.sleep(-1) end):result())
    end)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.is_string(err.message)
    assert.is_false(err.retryable)
    assert.equal("invalid_argument: " .. err.message, tostring(err))
    assert.matches("stack traceback", err.traceback)
  end)
end)

describe("misuse outside a task", function()
  local waiting_calls = {
    ["task.sleep"] = function() task.sleep(0.01) end,
    ["task.yield"] = function() task.yield() end,
    ["task.gather"] = function() task.gather(function() end) end,
    ["task.race"] = function() task.race(function() end) end,
    ["task.timeout"] = function() task.timeout(1, function() end) end,
    ["event:wait"] = function() task.event():wait() end,
    ["semaphore:acquire"] = function() task.semaphore(0):acquire() end,
    ["queue:pop"] = function() task.queue(1):pop() end,
    ["queue:push"] = function()
      local q = task.queue(1)
      q:push(1)
      q:push(2)
    end,
  }

  for name, call in pairs(waiting_calls) do
    it(name .. " raises invalid_argument saying to run it inside a task", function()
      local err = raised(call)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      assert.matches(name, err.message, 1, true)
      assert.matches("inside a task", err.message, 1, true)
      assert.matches("task.run", err.message, 1, true)
    end)
  end

  it("a waiting call in a plain coroutine inside a task is misuse too", function()
    task.run(function()
      local err = raised_in_coroutine(function() task.sleep(0.01) end)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      assert.matches("inside a task", err.message, 1, true)
    end)
  end)

  it("join and result of an unfinished task from a plain coroutine are misuse", function()
    task.run(function()
      local ev = task.event()
      local h = task.spawn(function() ev:wait() end)
      for _, method in ipairs { "join", "result" } do
        local err = raised_in_coroutine(function() return h[method](h) end)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches("task:" .. method, err.message, 1, true)
        assert.matches("inside a task", err.message, 1, true)
      end
      ev:set()
      h:join()
    end)
  end)

  it("the message carries the caller's position", function()
    local err = raised(function() task.sleep(0.01) end)
    assert.matches("errors_spec.lua:%d+:", err.message)
  end)

  it("nothing was started by a refused call", function()
    local before = task.stats()
    raised(function() task.gather(function() end, function() end) end)
    local after = task.stats()
    assert.equal(before.live, after.live)
    assert.equal(before.spawned, after.spawned)
  end)
end)

describe("misuse inside a task", function()
  it("task.run inside a task says to use task.spawn(fn):join()", function()
    local err = task.run(function() return raised(task.run, function() end) end)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("task.spawn(fn):join()", err.message, 1, true)
  end)

  it("task.run from a plain coroutine while the loop runs raises invalid_argument", function()
    task.run(function()
      local err = raised_in_coroutine(function() task.run(function() end) end)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      assert.matches("already running", err.message)
    end)
  end)

  it("a task joining itself raises invalid_argument", function()
    task.run(function()
      local me = task.current()
      for _, method in ipairs { "join", "result" } do
        local err = raised(me[method], me)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches("itself", err.message)
      end
    end)
  end)

  it("wrong argument types name the function, the argument and the expected type", function()
    task.run(function()
      local h = task.spawn(function() end)
      local cases = {
        { "task.spawn: fn must be a function", task.spawn, 42 },
        { "task.detach: fn must be a function", task.detach, nil },
        { "task.sleep: seconds must be a number >= 0", task.sleep, {} },
        { "task.sleep: seconds must be a number >= 0", task.sleep, nil },
        { "task:join: self must be a task", h.join, 42 },
        { "task:cancel: self must be a task", h.cancel, "h" },
        { "task:status: self must be a task", h.status, {} },
        { "event:wait: self must be an event", task.event().wait, {} },
        { "semaphore:release: self must be a semaphore", task.semaphore(1).release, task.queue(1) },
        { "queue:push: self must be a queue", task.queue(1).push, task.event(), 1 },
        { "task.on_error: the handler must be a function", task.on_error, 42 },
      }
      for i, c in ipairs(cases) do
        local err = raised(c[2], table.unpack(c, 3, 4))
        assert.is_true(ah.error.is(err, "invalid_argument"), "case " .. i .. ": " .. tostring(err))
        assert.matches(c[1], err.message, 1, true, "case " .. i)
      end
      h:join()
    end)
  end)
end)
