-- ah.reload: staged swap of modules from watched directories, rollback on
-- every kind of failure, dispatch at call time, state migration, sweeping
-- of the tasks an old version started, and file events from editors.

local ah = require "agenthost"
local spec = require "support.spec"
local task, reload = ah.task, ah.reload
reload.quiet = true -- failures still go to stderr

local seq = 0

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("l")
  p:close()
  return d
end

-- A fresh directory with one module; returns dir, name, path.
local function module_dir(text)
  seq = seq + 1
  local dir = tmpdir()
  local name = "rmod" .. seq
  local path = dir .. "/" .. name .. ".lua"
  write(path, text)
  return dir, name, path
end

local function version_module(v, extra)
  return ("local M = {}\nfunction M.version() return %q end\n%s\nreturn M\n"):format(v, extra or "")
end

-- Waits (bounded) for the next swap or failure of module `name`.
local function next_event(events, name, t)
  return task.timeout(t or 5, function()
    while true do
      for i, ev in ipairs(events) do
        if ev.module == name and ev.kind ~= "loaded" then
          table.remove(events, i)
          return ev
        end
      end
      task.sleep(0.005)
    end
  end)
end

-- The quiet period after a change is the host's default (50 ms) in the
-- specs that count on it to join the steps of a save into one change;
-- the others wait 10 ms.
local QUIET = { debounce_ms = 50 }

local function with_watch(dir, fn, opts)
  opts = opts or { debounce_ms = 10 }
  local events = {}
  reload.on_reload = function(ev)
    if ev.kind ~= "loaded" then events[#events + 1] = ev end
  end
  local ok, err = pcall(task.run, function()
    reload.watch(dir, opts)
    fn(events)
  end)
  reload.stop()
  reload.on_reload = nil
  if not ok then error(err, 0) end
end

local function baseline()
  collectgarbage()
  collectgarbage()
  return task.stats().live, collectgarbage("count")
end

describe("reload", function()
  it("swaps a changed module in place: the same table, the new functions", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      assert.equal("v1", m.version())
      assert.equal(1, reload.version(name))
      write(path, version_module("v2"))
      local ev = next_event(events, name)
      assert.equal("swapped", ev.kind)
      assert.equal(2, ev.version)
      assert.equal(m, package.loaded[name])
      assert.equal("v2", m.version())
    end)
  end)

  local failures = {
    { "a syntax error", "local M = {}\nfunction M.version() return 'v2' end\nthis is not lua\nreturn M\n", ":3:" },
    { "a runtime error in the body", "local M = {}\nfunction M.version() return 'v2' end\nerror('body broke')\nreturn M\n", "body broke" },
    { "a body that does not return a table", "return 42\n", "must return a table" },
    { "a failing validate", version_module("v2", "function M.validate() error('not valid') end"), "not valid" },
    { "validate returning false", version_module("v2", "function M.validate() return false, 'nope' end"), "nope" },
    { "a failing migrate", version_module("v2", "function M.migrate(old) error('cannot migrate') end"), "cannot migrate" },
    { "an endless loop in the body", "local M = {}\nwhile true do end\nreturn M\n", "instruction budget" },
    { "a body that waits", "local ah = require 'agenthost'\nah.task.sleep(0.01)\nreturn {}\n", "" },
  }
  for _, case in ipairs(failures) do
    it("keeps the old version serving after " .. case[1] .. ", reports file:line once, and leaks nothing", function()
      local dir, name, path = module_dir(version_module("v1", "M.state = { n = 1 }"))
      with_watch(dir, function(events)
        local m = require(name)
        local live0, mem0 = baseline()
        write(path, case[2])
        local ev = next_event(events, name)
        assert.equal("failed", ev.kind)
        assert.matches(path, ev.error, 1, true)
        assert.matches(case[3], ev.error, 1, true)
        assert.equal("v1", m.version())
        assert.same({ n = 1 }, m.state)
        assert.equal(1, reload.version(name))
        -- the same broken content saved again is not reported again; the
        -- next good save swaps
        write(path, case[2])
        write(path, version_module("v3"))
        ev = next_event(events, name)
        assert.equal("swapped", ev.kind)
        assert.equal("v3", m.version())
        assert.same({ n = 1 }, m.state) -- state survives without migrate
        local live1, mem1 = baseline()
        assert.equal(live0, live1)
        assert.is_true(mem1 < mem0 + 256, ("memory grew from %.0f KB to %.0f KB"):format(mem0, mem1))
      end)
    end)
  end

  it("calls migrate with the old state and keeps what it returns", function()
    local dir, name, path = module_dir(version_module("v1", "M.state = { count = 5 }"))
    with_watch(dir, function(events)
      local m = require(name)
      m.state.count = m.state.count + 1
      write(path, version_module("v2", "function M.migrate(old) return { total = old.count * 10 } end"))
      assert.equal("swapped", next_event(events, name).kind)
      assert.same({ total = 60 }, m.state)
    end)
  end)

  it("finishes a call in flight on the old code and runs the next call on the new", function()
    local dir, name, path = module_dir(version_module("v1",
      "function M.slow(gate) local v = M.version() gate:wait() return v, 'v1 code' end"))
    with_watch(dir, function(events)
      local m = require(name)
      -- The call waits inside the old code until the swap is done.
      local gate = task.event()
      local h = task.spawn(function() return m.slow(gate) end)
      spec.settle(function() return h:status() == "waiting" end)
      write(path, version_module("v2", "function M.slow() return 'v2', 'v2 code' end"))
      assert.equal("swapped", next_event(events, name).kind)
      gate:set()
      local v, code = h:join()
      assert.equal("v1", v)
      assert.equal("v1 code", code)
      assert.equal("v2 code", select(2, m.slow()))
    end)
  end)

  it("calls the old version's stop() and cancels the tasks its scope started", function()
    local counters = {}
    _G.__reload_counters = counters
    local body = [[
local R = require("agenthost.reload").scope(...)
local M = {}
local tag = %q
function M.start() R:every(0.005, function() __reload_counters[tag] = (__reload_counters[tag] or 0) + 1 end) end
function M.stop() __reload_counters[tag .. "_stopped"] = true end
return M
]]
    local dir, name, path = module_dir(body:format("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      m.start()
      assert.is_true(spec.eventually(function() return (counters.v1 or 0) > 0 end))
      write(path, body:format("v2"))
      assert.equal("swapped", next_event(events, name).kind)
      assert.is_true(counters.v1_stopped)
      local frozen = counters.v1
      task.sleep(0.05)
      assert.equal(frozen, counters.v1) -- the old loop was swept
    end)
    _G.__reload_counters = nil
  end)

  it("treats two quick saves as one change with the last content", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      write(path, version_module("v2"))
      write(path, version_module("v3"))
      local ev = next_event(events, name)
      assert.equal("swapped", ev.kind)
      assert.equal("v3", m.version())
      assert.equal(2, ev.version)
    end, QUIET)
  end)

  it("does not reload a save that changes nothing", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      write(path, version_module("v1")) -- same bytes
      task.sleep(0.15)
      write(path, version_module("v2"))
      local ev = next_event(events, name)
      assert.equal(2, ev.version) -- the first save was no reload
      assert.equal("v2", m.version())
      assert.equal(0, #events)
    end)
  end)

  it("keeps serving when the file is deleted, and loads it again when recreated", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      os.remove(path)
      task.sleep(0.15)
      assert.equal("v1", m.version())
      assert.equal(0, #events)
      write(path, version_module("v2"))
      assert.equal("swapped", next_event(events, name).kind)
      assert.equal("v2", m.version())
    end)
  end)

  it("sees an editor's save by rename", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      write(path .. ".swp", version_module("v2"))
      assert(os.rename(path .. ".swp", path))
      assert.equal("swapped", next_event(events, name).kind)
      assert.equal("v2", m.version())
    end)
  end)

  it("sees a save by truncate-and-write", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      local f = assert(io.open(path, "r+b"))
      f:seek("set", 0)
      local text = version_module("v2")
      f:write(text)
      f:close()
      os.execute("truncate -s " .. #text .. " '" .. path .. "'")
      assert.equal("swapped", next_event(events, name).kind)
      assert.equal("v2", m.version())
    end, QUIET)
  end)

  it("watches subdirectories", function()
    local dir = tmpdir()
    os.execute("mkdir -p '" .. dir .. "/sub'")
    seq = seq + 1
    local name = "rsub" .. seq
    local path = dir .. "/sub/" .. name .. ".lua"
    write(path, version_module("v1"))
    with_watch(dir, function(events)
      local m = require("sub." .. name)
      write(path, version_module("v2"))
      assert.equal("swapped", next_event(events, "sub." .. name).kind)
      assert.equal("v2", m.version())
    end)
  end)

  it("works by polling where file events are unavailable", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function(events)
      local m = require(name)
      task.sleep(0.15)
      write(path, version_module("v2-longer-content"))
      assert.equal("swapped", next_event(events, name).kind)
      assert.equal("v2-longer-content", m.version())
    end, { poll = true, debounce_ms = 10 })
  end)

  it("reload.now reloads at once and reports what was wrong", function()
    local dir, name, path = module_dir(version_module("v1"))
    with_watch(dir, function()
      local m = require(name)
      write(path, version_module("v2"))
      assert.is_true(reload.now(name))
      assert.equal("v2", m.version())
      write(path, "return nil +")
      local ok, err = reload.now(name)
      assert.is_false(ok)
      assert.matches(path .. ":1:", err, 1, true)
      assert.equal("v2", m.version())
      local ok2, err2 = reload.now("no_such_module")
      assert.is_false(ok2)
      assert.matches("not a module loaded from a watched directory", err2)
    end)
  end)

  it("runs a module written for reload when nothing watches it", function()
    local dir, name = module_dir([[
local R = require("agenthost.reload").scope(...)
local M = {}
M.state = { ticks = 0 }
function M.start() return R:every(0.001, function() M.state.ticks = M.state.ticks + 1 end) end
function M.stop() R:sweep() end
function M.migrate(old) return old or M.state end
return M
]])
    local saved = package.path
    package.path = dir .. "/?.lua;" .. saved
    local ok, err = pcall(task.run, function()
      local m = require(name)
      local h = m.start()
      assert.is_true(spec.eventually(function() return m.state.ticks >= 3 end))
      m.stop()
      local done, why = h:result()
      assert.is_false(done)
      assert.is_true(ah.error.is(why, "cancelled"))
      assert.is_nil(reload.version(name)) -- loaded, but not reloadable
    end)
    package.path = saved
    if not ok then error(err, 0) end
  end)

  it("with path = false, watches dir without searching it", function()
    local dir, name, path = module_dir(version_module("v1"))
    local saved = package.path
    with_watch(dir, function(events)
      local found = pcall(require, name)
      assert.is_false(found)
      -- the same directory, spelled differently, on package.path
      package.path = dir .. "/.//?.lua;" .. saved
      local m = require(name)
      assert.equal(1, reload.version(name))
      write(path, version_module("v2"))
      assert.equal("swapped", next_event(events, name).kind)
      assert.equal("v2", m.version())
    end, { debounce_ms = 10, path = false })
    package.path = saved
  end)

  it("refuses to watch a directory that does not exist", function()
    local ok, err = pcall(task.run, function() reload.watch("/nonexistent/dir/for/agenthost") end)
    reload.stop()
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("existing directory", err.message)
  end)

  it("loses and doubles no step of 1,000 agents across 100 reloads", function()
    local body = [[
local M = {}
local V = %d
function M.step(log, agent, n)
  log[#log + 1] = { agent, n, V }
  require("agenthost").task.sleep(0.001 * (agent %% 3))
  return V
end
return M
]]
    local dir, name, path = module_dir(body:format(1))
    with_watch(dir, function()
      local m = require(name)
      local log, stop = {}, false
      local mismatch = 0
      local agents = {}
      for a = 1, 1000 do
        agents[a] = task.spawn(function()
          local n = 0
          while not stop do
            n = n + 1
            local expected = reload.version(name)
            local ran = m.step(log, a, n)
            -- a step that started after a swap ran the new version
            if ran ~= expected then mismatch = mismatch + 1 end
            task.yield()
          end
          return n
        end)
      end
      for v = 2, 101 do
        task.sleep(0.002)
        write(path, body:format(v))
        assert(reload.now(name))
      end
      task.sleep(0.01)
      stop = true
      local steps = {}
      for a = 1, 1000 do steps[a] = agents[a]:join() end
      assert.equal(101, reload.version(name))
      assert.equal(0, mismatch)
      -- every agent's steps appear exactly once, 1..n in order
      local seen = {}
      for _, e in ipairs(log) do
        local a, n = e[1], e[2]
        seen[a] = seen[a] or 0
        assert.equal(seen[a] + 1, n)
        seen[a] = n
      end
      for a = 1, 1000 do assert.equal(steps[a], seen[a]) end
    end, { debounce_ms = 60000 }) -- every reload is reload.now's: the watcher stays quiet
  end)
end)
