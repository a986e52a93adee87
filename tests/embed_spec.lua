-- The Lua-module form of embedding: a Lua host that owns its frame loop
-- drives agenthost with ah.step; top-level tasks started with task.spawn or
-- task.detach outside any task; named channels; ah.log.  Steps are counted,
-- never timed.

local ah = require "agenthost"
local task = ah.task

-- Steps until fn() is true; fails after limit steps.
local function step_until(fn, limit)
  for n = 1, limit or 100000 do
    if fn() then return n end
    ah.step(0.001)
  end
  error("condition not reached in " .. tostring(limit or 100000) .. " steps", 2)
end

describe("ah.step", function()
  it("drives a task spawned outside any task", function()
    local h = task.spawn(function(a, b)
      task.sleep(0.001)
      return a + b
    end, 2, 3)
    assert.equal("pending", h:status())
    step_until(function() return h:done() end)
    assert.same({ true, 5 }, { h:result() })
  end)

  it("drives detached tasks, and returns false once no task is live", function()
    local ran = 0
    for _ = 1, 3 do task.detach(function() task.yield() ran = ran + 1 end) end
    step_until(function() return ran == 3 end)
    step_until(function() return ah.step(0) == false end)
    assert.equal(0, task.stats().live)
  end)

  it("returns true while tasks are live", function()
    local ev = task.event()
    local h = task.spawn(function() ev:wait() end)
    assert.is_true(ah.step(0))
    assert.is_true(ah.step(0))
    ev:set()
    step_until(function() return h:done() end)
    assert.is_false(ah.step(0))
  end)

  it("with a budget of 0 runs one ready task per step", function()
    local ran = 0
    for _ = 1, 100 do task.detach(function() ran = ran + 1 end) end
    ah.step(0)
    assert.equal(1, ran)
    ah.step(0)
    assert.equal(2, ran)
    step_until(function() return ran == 100 end)
  end)

  it("is refused inside a task and inside task.run", function()
    local err
    task.run(function()
      local ok, e = pcall(ah.step, 0)
      err = e
      assert.is_false(ok)
    end)
    assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    assert.matches("frame loop", err.message, 1, true)
    local ok, e = pcall(ah.step, -1)
    assert.is_false(ok)
    assert.is_true(ah.error.is(e, "invalid_argument"))
  end)

  it("a top-level task's error nobody took is reported when its handle is collected", function()
    local got = {}
    task.on_error(function(e) got[#got + 1] = tostring(e) end)
    task.spawn(function() error("top-level boom") end)
    step_until(function() return task.stats().live == 0 end)
    collectgarbage() collectgarbage()
    step_until(function() return #got > 0 end)
    task.on_error(nil)
    assert.matches("top%-level boom", got[1])
  end)
end)

describe("ah.channel", function()
  it("is one channel per name, a bounded queue between tasks", function()
    local ch = ah.channel("spec-a")
    assert.equal(ch, ah.channel("spec-a"))
    assert.not_equal(ch, ah.channel("spec-b"))
    assert.matches("spec%-a", tostring(ch))
    local got = {}
    task.run(function()
      local consumer = task.spawn(function()
        for _ = 1, 3 do got[#got + 1] = ch:recv() end
      end)
      ch:send({ n = 1 })
      ch:send("two")
      ch:send(3)
      consumer:join()
    end)
    assert.same({ { n = 1 }, "two", 3 }, got)
    assert.is_nil(ch:try_recv())
    assert.is_true(ch:try_send(1))
    assert.equal(1, ch:len())
    assert.equal(1, ch:try_recv())
  end)

  it("refuses a name that is not a non-empty string", function()
    for _, bad in ipairs { "", 42, false } do
      local ok, err = pcall(ah.channel, bad)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"))
    end
  end)
end)

describe("ah.log", function()
  it("refuses an unknown level", function()
    assert.has_error(function() ah.log("loud", "x") end)
  end)
end)

describe("ah.store.open without a path", function()
  it("outside an embedding host says to give one", function()
    local err
    task.run(function()
      local ok, e = pcall(ah.store.open)
      assert.is_false(ok)
      err = e
    end)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("db_path", err.message, 1, true)
  end)
end)
