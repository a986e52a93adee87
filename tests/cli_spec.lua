-- The agenthost command: options, exit statuses, `arg`, error output,
-- draining of detached work, SIGINT/SIGTERM, and the seed agent.
-- Processes are waited for with bounded polls that synchronise on their
-- output and exit status, never on a sleep that hopes to be long enough.

local ah = require "agenthost"
local json = require("agenthost").json
local proc = require "support.proc"

local SEED = "scripts/examples/seed_agent.lua"

-- The seed agent runs take a couple of seconds of (sleeping) wall time
-- each: start them together, before the other tests, and check them last.
local seed, memory_file = {}, nil

setup(function()
  memory_file = proc.tmpdir() .. "/memory.jsonl"
  seed.one = proc.spawn_cli { SEED }
  seed.memory = proc.spawn_cli { SEED, "--memory-file", memory_file }
  seed.many = proc.spawn_cli { SEED, "--agents", "20", "--steps", "2" }
end)

teardown(function() proc.cleanup() end)

local function cli_script(source, args)
  local argv = { proc.script(source) }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return proc.cli(argv)
end

describe("agenthost options", function()
  it("--version prints the version and exits 0", function()
    local r = proc.cli { "--version" }
    assert.equal(0, r.code)
    assert.matches("^agenthost " .. ah.version:gsub("%.", "%%.") .. "[%s(]", r.out)
  end)

  it("--help and -h print the usage on stdout and exit 0", function()
    for _, opt in ipairs { "--help", "-h" } do
      local r = proc.cli { opt }
      assert.equal(0, r.code, opt)
      assert.matches("usage: ", r.out)
      assert.matches("SCRIPT", r.out)
      assert.equal("", r.err)
    end
  end)

  it("exits 2 with the usage on stderr when no script is given", function()
    local r = proc.cli {}
    assert.equal(2, r.code)
    assert.matches("no script", r.err)
    assert.matches("usage: ", r.err)
  end)

  it("exits 2 naming an unknown option", function()
    local r = proc.cli { "--frobnicate", proc.script("print 'not run'") }
    assert.equal(2, r.code)
    assert.matches("unknown option '%-%-frobnicate'", r.err)
    assert.not_matches("not run", r.out)
  end)

  it("exits 2 when the script does not exist", function()
    local r = proc.cli { proc.tmpdir() .. "/missing.lua" }
    assert.equal(2, r.code)
    assert.matches("missing.lua", r.err)
  end)
end)

describe("agenthost SCRIPT", function()
  it("exits 0 after a script that succeeds", function()
    local r = cli_script [[print("hello from the script")]]
    assert.equal(0, r.code, r.err)
    assert.equal("hello from the script\n", r.out)
    assert.equal("", r.err)
  end)

  it("runs the script as the main task", function()
    local r = cli_script [[
      local task = require("agenthost").task
      assert(task.current(), "not in a task")
      local a = task.spawn(function() task.sleep(0.02) return "a" end)
      local b = task.spawn(function() task.sleep(0.01) return "b" end)
      print(b:join() .. a:join())
    ]]
    assert.equal(0, r.code, r.err)
    assert.equal("ba\n", r.out)
  end)

  it("sets arg and ... as lua does", function()
    local script = proc.script [[
      local parts = {}
      for i = -2, #arg do parts[#parts + 1] = i .. "=" .. tostring(arg[i]) end
      print(table.concat(parts, "|"))
      print(select("#", ...), ...)
    ]]
    local r = proc.cli { script, "one", "two words", "" }
    assert.equal(0, r.code, r.err)
    local line1, line2 = r.out:match("^([^\n]*)\n([^\n]*)\n$")
    assert.equal(table.concat({ "-2=nil", "-1=" .. proc.bin, "0=" .. script,
      "1=one", "2=two words", "3=" }, "|"), line1)
    assert.equal("3\tone\ttwo words\t", line2)

    local r2 = proc.cli { "--", script, "x" }
    assert.equal(0, r2.code, r2.err)
    assert.equal(table.concat({ "-2=" .. proc.bin, "-1=--", "0=" .. script, "1=x" }, "|"),
      r2.out:match("^[^\n]*"))
  end)

  it("exits 1 with the error and a traceback when the main task fails", function()
    local r = cli_script([[
      local task = require("agenthost").task
      print("before")
      local function deeper() task.sleep(0.001) error("main boom") end
      deeper()
    ]])
    assert.equal(1, r.code)
    assert.equal("before\n", r.out)
    assert.matches("script%.lua:3: main boom", r.err)
    assert.matches("stack traceback:", r.err)
    assert.matches("deeper", r.err)
  end)

  it("prints a structured error of the main task as kind: message", function()
    local r = cli_script [[
      local ah = require "agenthost"
      ah.task.timeout(0.01, ah.task.sleep, 1)
    ]]
    assert.equal(1, r.code)
    assert.matches("timeout: ", r.err)
    assert.matches("stack traceback:", r.err)
  end)

  it("drains detached work before it exits", function()
    local r = cli_script [[
      local task = require("agenthost").task
      task.detach(function()
        task.sleep(0.05)
        print("detached finished")
      end)
      print("main finished")
    ]]
    assert.equal(0, r.code, r.err)
    assert.equal("main finished\ndetached finished\n", r.out)
  end)

  it("reports an uncaught error in another task on stderr and keeps running", function()
    local r = cli_script [[
      local task = require("agenthost").task
      local failed = task.event()
      task.detach(function()
        task.sleep(0.001)
        failed:set()
        error("worker boom")
      end)
      local h = task.spawn(function()
        failed:wait()
        task.sleep(0.01)
        return "sibling finished"
      end)
      print(h:join())
      print("main finished")
    ]]
    assert.equal(0, r.code)
    assert.equal("sibling finished\nmain finished\n", r.out)
    assert.matches("agenthost: uncaught error in task: [^\n]*worker boom", r.err)
    assert.matches("stack traceback:", r.err)
  end)
end)

describe("agenthost signals", function()
  local script = [[
    local task = require("agenthost").task
    local function say(s) io.stdout:write(s, "\n") io.stdout:flush() end
    local cancelled = task.event()
    task.detach(function()
      cancelled:wait()
      task.sleep(0.02)
      say("detached drained")
    end)
    task.spawn(function()
      local ok, err = pcall(task.sleep, 30)
      say("child " .. tostring(err and err.kind))
    end)
    local _ <close> = setmetatable({}, { __close = function(_, err)
      say("main closed: " .. tostring(err and err.kind))
      cancelled:set()
    end })
    say("ready")
    task.sleep(30)
    say("main not cancelled")
  ]]

  local function interrupt(signal)
    local p = proc.spawn_cli { proc.script(script) }
    assert.is_true(p:wait_output("ready", 10), "the script never got ready: " .. p:err())
    assert.is_true(p:signal(signal))
    return p:wait(10), p:out(), p:err()
  end

  it("SIGINT cancels the tasks, drains detached work and exits 130", function()
    local code, out = interrupt("INT")
    assert.equal(130, code)
    assert.matches("child cancelled", out)
    assert.matches("main closed: cancelled\ndetached drained\n", out)
    assert.not_matches("not cancelled", out)
  end)

  it("SIGTERM does the same and exits 143", function()
    local code, out, err = interrupt("TERM")
    assert.equal(143, code)
    assert.matches("child cancelled", out)
    assert.matches("main closed: cancelled\ndetached drained\n", out)
    assert.not_matches("uncaught error", err)
  end)

  it("exits 130 even when the main task handles the cancellation", function()
    local p = proc.spawn_cli { proc.script [[
      local task = require("agenthost").task
      io.stdout:write("ready\n") io.stdout:flush()
      local ok, err = pcall(task.sleep, 30)
      print("handled " .. tostring(err and err.kind))
    ]] }
    assert.is_true(p:wait_output("ready", 10))
    assert.is_true(p:signal("INT"))
    assert.equal(130, p:wait(10))
    assert.matches("handled cancelled", p:out())
  end)

  it("a second signal exits at once while detached work is still pending", function()
    local p = proc.spawn_cli { proc.script [[
      local task = require("agenthost").task
      task.detach(function() task.sleep(30) end)
      io.stdout:write("ready\n") io.stdout:flush()
      pcall(task.sleep, 30)
      io.stdout:write("cancelled\n") io.stdout:flush()
    ]] }
    assert.is_true(p:wait_output("ready", 10))
    assert.is_true(p:signal("INT"))
    assert.is_true(p:wait_output("cancelled", 10))
    assert.is_true(p:signal("INT"))
    assert.equal(130, p:wait(10))
  end)
end)

describe("--watch", function()
  local function watched_dir()
    local dir = proc.tmpdir()
    proc.write(dir .. "/wmod.lua", "return { version = function() return 'v1' end }\n")
    proc.write(dir .. "/main.lua", [[
      local task = require("agenthost").task
      local m = require "wmod"
      io.stdout:write("ready ", m.version(), "\n") io.stdout:flush()
      for _ = 1, 1000 do
        if m.version() == "v2" then break end
        task.sleep(0.01)
      end
      print("saw " .. m.version())
    ]])
    return dir
  end

  it("reloads a module of the script's directory when its file changes", function()
    local dir = watched_dir()
    local p = proc.spawn_cli { "--watch", dir .. "/main.lua" }
    assert.is_true(p:wait_output("ready v1", 10), p:err())
    proc.write(dir .. "/wmod.lua", "return { version = function() return 'v2' end }\n")
    assert.equal(0, p:wait(15))
    assert.matches("saw v2", p:out())
    assert.matches("reload swapped wmod version 2", p:err())
  end)

  it("takes the directory to watch as an argument", function()
    local dir = watched_dir()
    local other = proc.tmpdir()
    os.execute("mv " .. proc.quote(dir .. "/wmod.lua") .. " " .. proc.quote(other))
    local p = proc.spawn({ "env", "LUA_PATH=" .. other .. "/?.lua;;", proc.bin, "--watch", other, dir .. "/main.lua" })
    assert.is_true(p:wait_output("ready v1", 10), p:err())
    proc.write(other .. "/wmod.lua", "return { version = function() return 'v2' end }\n")
    assert.equal(0, p:wait(15))
    assert.matches("saw v2", p:out())
  end)

  it("reloads on SIGHUP without waiting for the quiet period", function()
    local dir = watched_dir()
    local p = proc.spawn({ "env", "AGENTHOST_RELOAD_DEBOUNCE_MS=60000", proc.bin, "--watch", dir .. "/main.lua" })
    assert.is_true(p:wait_output("ready v1", 10), p:err())
    proc.write(dir .. "/wmod.lua", "return { version = function() return 'v2' end }\n")
    assert.is_true(p:signal("HUP"))
    assert.equal(0, p:wait(15))
    assert.matches("saw v2", p:out())
  end)
end)

-- The absolute path of the command, for runs from another directory.
local function abs(path)
  if path:sub(1, 1) == "/" then return path end
  local f = io.popen("pwd")
  local cwd = f:read("l")
  f:close()
  return cwd .. "/" .. path
end

-- Runs argv in directory dir (env -C) with the model settings of the
-- environment removed, so that the offline mock is what answers.
local OFFLINE = { "env", "-u", "OPENAI_API_KEY", "-u", "ANTHROPIC_API_KEY", "-u", "AGENTHOST_PROVIDER",
                  "-u", "AGENTHOST_BASE_URL", "-u", "AGENTHOST_MODEL", "-u", "AGENTHOST_SEARCH_URL",
                  "-u", "AGENTHOST_MOCKLLM" }
local function run_in(dir, argv, opts)
  local full = { table.unpack(OFFLINE) }
  full[#full + 1] = "-C"
  full[#full + 1] = dir
  for _, a in ipairs(argv) do full[#full + 1] = a end
  return proc.run(full, opts)
end

describe("the module path", function()
  it("has the main script's directory without --watch, from any working directory", function()
    local dir = proc.tmpdir()
    proc.write(dir .. "/beside.lua", "return { where = 'beside the script' }\n")
    proc.write(dir .. "/main.lua", "print(require('beside').where)\n")
    local r = run_in(proc.tmpdir(), { abs(proc.bin), dir .. "/main.lua" })
    assert.equal(0, r.code, r.err)
    assert.equal("beside the script\n", r.out)
  end)

  it("puts the main script's directory before LUA_PATH and the defaults", function()
    local dir, other = proc.tmpdir(), proc.tmpdir()
    proc.write(dir .. "/which.lua", "return 'script dir'\n")
    proc.write(other .. "/which.lua", "return 'LUA_PATH'\n")
    proc.write(dir .. "/main.lua", "print((require 'which'))\n")
    local r = proc.run { "env", "LUA_PATH=" .. other .. "/?.lua;;", proc.bin, dir .. "/main.lua" }
    assert.equal(0, r.code, r.err)
    assert.equal("script dir\n", r.out)
  end)

  it("is the same with --watch DIR: DIR is watched, not searched", function()
    local dir, other = proc.tmpdir(), proc.tmpdir()
    proc.write(other .. "/elsewhere.lua", "return { v = 1 }\n")
    proc.write(dir .. "/main.lua", "print(require('elsewhere').v)\n")
    local plain = proc.cli { dir .. "/main.lua" }
    local watched = proc.cli { "--watch", other, dir .. "/main.lua" }
    assert.equal(1, plain.code)
    assert.matches("module 'elsewhere' not found", plain.err)
    assert.equal(1, watched.code, watched.out)
    assert.matches("module 'elsewhere' not found", watched.err)
  end)
end)

describe("a reloadable module", function()
  -- The module of docs/reload.md's "Writing a reloadable module".
  local MODULE = [[
local R = require("agenthost.reload").scope(...)   -- this version's scope
local M = {}

M.state = { seen = 0, ticks = 0 }

function M.step(input)
  M.state.seen = M.state.seen + 1
  return "handled " .. input
end

function M.validate() return type(M.step) == "function" end
function M.migrate(old) return old or M.state end
function M.start(ticked)
  R:every(0.001, function() M.state.ticks = M.state.ticks + 1 ticked:set() end)
end
function M.stop() R:sweep() end

return M
]]
  local MAIN = [[
local task = require("agenthost").task
local m = require "documented"
local ticked = task.event()
m.start(ticked)
ticked:wait()
m.stop()
print(m.step("a"), m.step("b"), m.state.seen, m.state.ticks > 0)
]]

  it("runs unchanged without --watch and with it", function()
    local dir = proc.tmpdir()
    proc.write(dir .. "/documented.lua", MODULE)
    proc.write(dir .. "/main.lua", MAIN)
    local plain = proc.cli { dir .. "/main.lua" }
    assert.equal(0, plain.code, plain.err)
    assert.equal("handled a\thandled b\t2\ttrue\n", plain.out)
    assert.equal("", plain.err)
    local watched = proc.cli { "--watch", dir .. "/main.lua" }
    assert.equal(0, watched.code, watched.err)
    assert.equal(plain.out, watched.out)
    assert.matches("reload loaded documented version 1", watched.err)
  end)
end)

describe("SIGHUP", function()
  it("without --watch is reported on stderr and ignored", function()
    local p = proc.spawn_cli { proc.script [[
      local task = require("agenthost").task
      io.stdout:write("ready\n") io.stdout:flush()
      local ok, err = pcall(task.sleep, 30)
      print("ended " .. tostring(err and err.kind))
    ]] }
    assert.is_true(p:wait_output("ready", 10), p:err())
    assert.is_true(p:signal("HUP"))
    assert.is_true(p:wait_error("SIGHUP ignored", 10),
      "exit status: " .. tostring(proc.read(p.dir .. "/rc")) .. ", stderr: " .. p:err())
    assert.matches("%-%-watch", p:err())
    assert.is_true(p:signal("TERM"))
    assert.equal(143, p:wait(10))
    assert.matches("ended cancelled", p:out())
  end)
end)

describe("--watch and the main script", function()
  it("reports on stderr that an edited main script is not reloaded", function()
    local dir = proc.tmpdir()
    local source = [[
      local task = require("agenthost").task
      io.stdout:write("ready\n") io.stdout:flush()
      local ok, err = pcall(task.sleep, 30)
      print("first version ended " .. tostring(err and err.kind))
    ]]
    local main = proc.write(dir .. "/main.lua", source)
    local p = proc.spawn({ "env", "AGENTHOST_RELOAD_DEBOUNCE_MS=10", proc.bin, "--watch", main })
    assert.is_true(p:wait_output("ready", 10), p:err())
    proc.write(main, source .. "-- edited\n")
    assert.is_true(p:wait_error("is not reloaded", 10), "stderr: " .. p:err())
    assert.matches("main%.lua changed", p:err())
    assert.matches("restart", p:err())
    assert.is_true(p:signal("TERM"))
    assert.equal(143, p:wait(10))
    assert.matches("first version ended cancelled", p:out())
  end)
end)

describe("agenthost --mock-llm", function()
  it("runs the mock model built into the command", function()
    local p = proc.spawn_cli { "--mock-llm", "--model", "built-in-1" }
    assert.is_true(p:wait_output("port=", 10), p:err())
    local port = p:out():match("port=(%d+)")
    local res
    ah.task.run(function() res = ah.http.get("http://127.0.0.1:" .. port .. "/v1/models") end)
    assert.equal(200, res.status)
    assert.matches("built%-in%-1", res.body)
    assert.is_true(p:signal("TERM"))
    assert.equal(0, p:wait(10))
  end)

  it("exits 2 with the mock's usage on a bad option", function()
    local r = proc.cli { "--mock-llm", "--chunk", "0" }
    assert.equal(2, r.code)
    assert.matches("usage: mockllm", r.err)
  end)

  -- The command copied alone (as `make install` puts it in PREFIX/bin): the
  -- Lua library and the mock are built into it, and no build/tests/mockllm
  -- is reachable from the directory it runs in.
  it("answers offline from a copy of the command alone, run from another directory", function()
    local bin = proc.tmpdir() .. "/agenthost"
    assert.equal(0, proc.sh("cp " .. proc.quote(abs(proc.bin)) .. " " .. proc.quote(bin)))
    local cwd = proc.tmpdir()
    local r = run_in(cwd, { bin, abs("scripts/examples/ops_agent.lua") }, { limit = 60 })
    assert.equal(0, r.code, r.err)
    assert.matches("bundled offline mock", r.err)
    assert.matches("tools used: ", r.out)
  end)
end)

describe("the seed agent", function()
  it("prints the result of one step as JSON and exits 0", function()
    local code = seed.one:wait(60)
    assert.equal(0, code, seed.one:err())
    local lines = {}
    for l in seed.one:out():gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(1, #lines)
    local result = json.decode(lines[1])
    assert.matches("^LLM response to: ", result.final_response)
    assert.equal(120.5, result.tools_used.metrics.latency_ms)
    assert.matches("^Search results for: ", result.tools_used.search_result)
  end)

  it("writes exactly one memory record for one step: the detached write is not lost", function()
    local code = seed.memory:wait(60)
    assert.equal(0, code, seed.memory:err())
    local records = {}
    for l in (proc.read(memory_file) or ""):gmatch("[^\n]+") do
      records[#records + 1] = json.decode(l)
    end
    assert.equal(1, #records)
    assert.equal("Analyze system performance anomalies", records[1].observation)
    assert.equal(120.5, records[1].tools.metrics.latency_ms)
    assert.is_string(records[1].decision.llm_response)
  end)

  it("--agents 20 --steps 2 prints one summary line", function()
    local code = seed.many:wait(60)
    assert.equal(0, code, seed.many:err())
    assert.matches(
      "^agents=20 steps=2 wall=%d+%.%d%d%d ideal=4%.200 cpu=%d+%.%d%d%d maxrss_mb=%d+%.%d\n$",
      seed.many:out())
  end)

  it("exits 2 on a bad argument", function()
    local r = proc.cli { SEED, "--agents", "zero" }
    assert.equal(2, r.code)
    assert.matches("positive integer", r.err)
  end)
end)
