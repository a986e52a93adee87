-- The Lua library built into the binary: the agenthost command and the
-- agenthost.so module run from any directory with nothing beside them, the
-- user's own modules come first, AGENTHOST_SOURCE loads the library from a
-- source tree, and messages still name the files a maintainer edits.

local proc = require "support.proc"

local bin = proc.bin

-- Copies the file at path into dir and returns the copy's path.
local function copy(path, dir)
  local name = path:match("[^/]+$")
  assert(proc.sh("cp " .. proc.quote(path) .. " " .. proc.quote(dir .. "/" .. name)) == 0)
  return dir .. "/" .. name
end

-- Runs `./agenthost script` inside dir, with the environment assignments env.
local function run_in(dir, script, env)
  local argv = { "env" }
  for _, kv in ipairs(env or {}) do argv[#argv + 1] = kv end
  argv[#argv + 1] = "sh"
  argv[#argv + 1] = "-c"
  argv[#argv + 1] = "cd " .. proc.quote(dir) .. " && exec ./agenthost " .. proc.quote(script)
  return proc.run(argv)
end

local PROBE = [[
local ah = require "agenthost"
local ws = require "web_search"
print(ah.version, type(ws) == "table", type(require("agenthost.mcp").stdio))
print(package.searchpath("agenthost", package.path) or "built-in")
print(ah.task.run == nil and "no" or "tasks")
]]

describe("the built-in Lua library", function()
  teardown(function() proc.cleanup() end)

  it("lets a copy of the command run from an unrelated directory, with the tools", function()
    local dir = proc.tmpdir()
    copy(bin, dir)
    proc.write(dir .. "/probe.lua", PROBE)
    local r = run_in(dir, "probe.lua")
    assert.equal(0, r.code, r.err)
    assert.matches("^%d+%.%d+%.%d+\ttrue\tfunction\n", r.out)
    assert.matches("\nbuilt%-in\n", r.out)
  end)

  it("lets a copy of agenthost.so serve a stock lua5.4 from an unrelated directory", function()
    local dir = proc.tmpdir()
    copy((os.getenv("LUA_CPATH") or "build/?.so;;"):match("^([^;]*)"):gsub("%?", "agenthost"), dir)
    local r = proc.run { "env", "LUA_PATH=", "LUA_CPATH=" .. dir .. "/?.so;;", "sh", "-c",
      "cd / && exec lua5.4 -e " .. proc.quote(
        "local ah = require 'agenthost' " ..
        "print(ah.task.run(function() ah.task.sleep(0.001) return require('shell') ~= nil end))") }
    assert.equal(0, r.code, r.err)
    assert.equal("true\n", r.out)
  end)

  it("finds the user's own module first, even one named like a bundled tool", function()
    local dir = proc.tmpdir()
    copy(bin, dir)
    proc.write(dir .. "/web_search.lua", "return { mine = true }\n")
    proc.write(dir .. "/t.lua", "print(require('web_search').mine)\n")
    local r = run_in(dir, "t.lua")
    assert.equal(0, r.code, r.err)
    assert.equal("true\n", r.out)
  end)

  it("loads the library from a source tree named by AGENTHOST_SOURCE", function()
    local dir, tree = proc.tmpdir(), proc.tmpdir()
    copy(bin, dir)
    assert(proc.sh("mkdir -p " .. proc.quote(tree .. "/tools")) == 0)
    proc.write(tree .. "/tools/web_search.lua", "return { from_tree = true }\n")
    proc.write(dir .. "/t.lua", "print(require('web_search').from_tree)\n")
    local r = run_in(dir, "t.lua", { "AGENTHOST_SOURCE=" .. tree })
    assert.equal(0, r.code, r.err)
    assert.equal("true\n", r.out)
    r = run_in(dir, "t.lua")
    assert.equal(0, r.code, r.err)
    assert.equal("nil\n", r.out)
  end)

  it("keeps the user's position in argument errors and the library's file names in tracebacks", function()
    local dir = proc.tmpdir()
    copy(bin, dir)
    proc.write(dir .. "/t.lua", table.concat({
      "local ah = require 'agenthost'",
      "local ok, err = pcall(ah.task.map, 1, print)",
      "print(err.message)",
      "print(select(2, xpcall(ah.task.map, function() return debug.traceback('tb', 2) end, 1, print)))",
    }, "\n"))
    local r = run_in(dir, "t.lua")
    assert.equal(0, r.code, r.err)
    assert.matches("^t%.lua:2: task%.map: items must be a table", r.out)
    assert.matches("\n%s*scripts/agenthost/init%.lua:%d+: in function", r.out)
  end)

  it("names a module that is neither the user's nor built in", function()
    local dir = proc.tmpdir()
    copy(bin, dir)
    proc.write(dir .. "/t.lua", "require 'agenthost.nope'\n")
    local r = run_in(dir, "t.lua")
    assert.equal(1, r.code)
    assert.matches("no module 'agenthost.nope' built into agenthost", r.err, 1, true)
  end)
end)
