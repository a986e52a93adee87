-- Helpers for specs that run programs: the agenthost CLI, a fresh lua5.4
-- interpreter for scenarios that must not share (or could wedge) the busted
-- process, and background processes that are signalled while they run.
--
-- Every wait here is bounded and synchronises on output or on the exit
-- status file, never on a sleep that hopes to be long enough.

local M = {}

M.bin = os.getenv("AGENTHOST_BIN") or "build/agenthost"

-- Quotes s for sh.
local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = q

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read = read

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end
M.write = write

local function sh(cmd)
  local _, how, code = os.execute(cmd)
  if how == "exit" then return code end
  return 128 + (code or 0)
end
M.sh = sh

local dirs = {}

-- The path of command cmd on PATH, or nil.
function M.which(cmd)
  local f = io.popen("command -v " .. q(cmd) .. " 2>/dev/null")
  local path = f:read("l")
  f:close()
  return path ~= "" and path or nil
end

-- A fresh temporary directory, removed by M.cleanup().
function M.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("l")
  p:close()
  assert(d and d ~= "", "mktemp -d failed")
  dirs[#dirs + 1] = d
  return d
end

function M.cleanup()
  for i = #dirs, 1, -1 do
    os.execute("rm -rf " .. q(dirs[i]))
    dirs[i] = nil
  end
end

-- Writes a Lua script into a fresh directory and returns its path.
function M.script(source, name)
  return write(M.tmpdir() .. "/" .. (name or "script.lua"), source)
end

local function join_args(args)
  local parts = {}
  for i, a in ipairs(args) do parts[i] = q(a) end
  return table.concat(parts, " ")
end

-- Runs argv (a list) to completion under a hard time limit and returns
-- {code, out, err}.  code 124 means the limit was hit.
function M.run(argv, opts)
  opts = opts or {}
  local d = M.tmpdir()
  local cmd = string.format("timeout -k 2 %d %s >%s 2>%s </dev/null",
    opts.limit or 30, join_args(argv), q(d .. "/out"), q(d .. "/err"))
  local code = sh(cmd)
  return { code = code, out = read(d .. "/out") or "", err = read(d .. "/err") or "" }
end

-- Runs the agenthost CLI with the given arguments.
function M.cli(args, opts)
  local argv = { M.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return M.run(argv, opts)
end

-- Runs Lua source in a fresh lua5.4 (same LUA_PATH / LUA_CPATH as the
-- specs) with a hard limit of `limit` seconds: for scenarios that could
-- hang or crash the interpreter running them.
function M.lua(source, limit)
  return M.run({ "lua5.4", M.script(source) }, { limit = limit or 10 })
end

-- Background processes -------------------------------------------------------

local Bg = {}
Bg.__index = Bg

-- Starts argv in the background; its output goes to files in a fresh
-- directory, and its exit status to `rc` once it has exited.
function M.spawn(argv)
  local d = M.tmpdir()
  local self = setmetatable({ dir = d }, Bg)
  local cmd = string.format(
    "( %s >%s 2>%s </dev/null & echo $! >%s; wait $!; echo $? >%s; mv %s %s ) " ..
    ">/dev/null 2>&1 &",
    join_args(argv), q(d .. "/out"), q(d .. "/err"), q(d .. "/pid"),
    q(d .. "/rc.tmp"), q(d .. "/rc.tmp"), q(d .. "/rc"))
  assert(sh(cmd) == 0, "cannot start " .. argv[1])
  return self
end

function M.spawn_cli(args)
  local argv = { M.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return M.spawn(argv)
end

-- Polls (every 10 ms, at most `limit` seconds) until the shell test `cond`
-- holds; returns whether it did.
local function poll(cond, limit)
  local n = math.max(1, math.floor((limit or 10) * 100))
  return sh(string.format(
    "i=0; while [ $i -lt %d ]; do if %s; then exit 0; fi; sleep 0.01; " ..
    "i=$((i+1)); done; exit 1", n, cond)) == 0
end

M.poll = poll

function Bg:out() return read(self.dir .. "/out") or "" end
function Bg:err() return read(self.dir .. "/err") or "" end

function Bg:pid()
  assert(poll("[ -s " .. q(self.dir .. "/pid") .. " ]", 10), "no pid")
  return tonumber(read(self.dir .. "/pid"))
end

-- Waits until stdout contains the plain string s; returns whether it did.
function Bg:wait_output(s, limit)
  return poll(string.format("grep -qsF -- %s %s", q(s), q(self.dir .. "/out")), limit)
end

-- Waits until stderr contains the plain string s, or the process has
-- exited; returns whether stderr contains it.
function Bg:wait_error(s, limit)
  local has = string.format("grep -qsF -- %s %s", q(s), q(self.dir .. "/err"))
  poll(string.format("{ %s || [ -f %s ]; }", has, q(self.dir .. "/rc")), limit)
  return sh(has) == 0
end

function Bg:signal(name)
  return sh(string.format("kill -%s %d", name, self:pid())) == 0
end

-- Waits for the exit status (nil when the process is still running after
-- `limit` seconds, in which case it is killed).
function Bg:wait(limit)
  if not poll("[ -f " .. q(self.dir .. "/rc") .. " ]", limit or 30) then
    self:signal("KILL")
    return nil
  end
  return tonumber(read(self.dir .. "/rc"))
end

return M
