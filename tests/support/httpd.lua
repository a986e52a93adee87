-- Starts and stops the local HTTP test server (tests/support/httpd.c) for
-- specs.  httpd.start() runs it in the background with its stdin on a pipe
-- that this process holds, so the server goes away with this process even
-- when stop() is never called; it waits for the server's "port=" line and
-- returns a server:
--
--   srv.port            the port it listens on (127.0.0.1 only)
--   srv.base            "http://127.0.0.1:PORT"
--   srv.url(path)       "http://127.0.0.1:PORT/path" (srv:url(path) works too)
--   srv.pid             the server's process id
--   srv:stop([limit])   SIGTERM, then waits for the exit (SIGKILL after
--                       limit seconds, 5 by default); returns the exit
--                       status, 0 for a clean exit; later calls return it too
--   srv:stderr()        what the server wrote on stderr
--   httpd.stop_all()    stops every server not stopped yet (for teardown)
--
-- A server also stops when it goes out of scope as a to-be-closed variable
-- (local srv <close> = httpd.start()) and when it is collected.  The binary
-- is AGENTHOST_HTTPD, else tests/httpd next to AGENTHOST_BIN, else
-- build/tests/httpd; httpd.start{bin = ..., port = ..., limit = ...}
-- overrides the binary, asks for a fixed port, and bounds the wait for the
-- server to listen (5 s by default).
--
-- Other servers built on httpd.c (tests/support/mockllm.lua) start through
-- the same code: opts.name names the binary ("httpd" by default; its
-- variable is AGENTHOST_<NAME>), opts.args lists further arguments, and
-- opts.files lists files that stop() removes.
--
-- Every wait is bounded and polls files in one shell loop, 10 ms apart.

local M = {}

local proc = require "support.proc"
local q, read, sh, poll = proc.quote, proc.read, proc.sh, proc.poll

-- The server binary these specs use (name: "httpd" by default).
function M.bin(name)
  name = name or "httpd"
  local env = os.getenv("AGENTHOST_" .. name:upper())
  if env and env ~= "" then return env end
  local main = os.getenv("AGENTHOST_BIN")
  if main and main ~= "" then
    return (main:match("^(.*)/[^/]*$") or ".") .. "/tests/" .. name
  end
  return "build/tests/" .. name
end

local running = setmetatable({}, { __mode = "k" })

local Server = {}
Server.__index = Server

-- The path of one of the server's files (base.out, base.err, ...).
function Server:file(name)
  return self.base_path .. "." .. name
end

function Server:stderr()
  return self.err or read(self:file("err")) or ""
end

function Server:stop(limit)
  if self.stopped then return self.status end
  self.stopped = true
  running[self] = nil
  local rc = q(self:file("rc"))
  poll("[ -f " .. q(self:file("pid")) .. " ]", 1)
  local pid = tonumber(read(self:file("pid")) or "")
  if pid and not poll("[ -f " .. rc .. " ]", 0.01) then
    sh(string.format("[ -f %s ] || kill -TERM %d 2>/dev/null", rc, pid))
    if not poll("[ -f " .. rc .. " ]", limit or 5) then
      sh(string.format("[ -f %s ] || kill -KILL %d 2>/dev/null", rc, pid))
      poll("[ -f " .. rc .. " ]", 5)
    end
  end
  -- The wrapper shell has exited or is about to: closing waits for it.
  self.pipe:close()
  self.status = tonumber(read(self:file("rc")) or "")
  self.err = read(self:file("err")) or ""
  os.remove(self.base_path)
  for _, name in ipairs({ "out", "err", "pid", "pid.tmp", "rc", "rc.tmp" }) do
    os.remove(self:file(name))
  end
  for _, path in ipairs(self.files) do os.remove(path) end
  return self.status
end

-- A server that is collected (or still running when Lua closes) is stopped
-- too, so that its files go away; its process would go anyway, at EOF on
-- its stdin.
function Server:__gc()
  self:stop()
end

-- A to-be-closed server stops with the default limit (the second argument
-- is the error being raised, if any).
function Server:__close()
  self:stop()
end

-- Starts a server (see the top of this file for opts); raises an error
-- carrying the server's stderr when it does not come up.
function M.start(opts)
  opts = opts or {}
  local name = opts.name or "httpd"
  local bin = opts.bin or M.bin(name)
  local f = io.open(bin, "rb")
  if not f then
    error(name .. ": no test server at " .. bin .. " (build it with make)", 2)
  end
  f:close()

  -- The server's files are named after a fresh temporary file.
  local base = os.tmpname()
  local function at(name) return q(base .. "." .. name) end

  -- The shell keeps the pipe on fd 3 for the server's stdin (an
  -- asynchronous command would otherwise read /dev/null), records the
  -- server's pid, and writes its exit status to rc once it has exited.
  local args = opts.port and (" --port " .. math.tointeger(opts.port)) or ""
  for _, a in ipairs(opts.args or {}) do args = args .. " " .. q(a) end
  local cmd = string.format(
    "exec 3<&0; %s%s <&3 3<&- >%s 2>%s & echo $! >%s; mv %s %s; " ..
    "wait $!; echo $? >%s; mv %s %s",
    q(bin), args, at("out"), at("err"), at("pid.tmp"), at("pid.tmp"), at("pid"),
    at("rc.tmp"), at("rc.tmp"), at("rc"))
  local pipe = assert(io.popen(cmd, "w"))
  local self = setmetatable({ base_path = base, pipe = pipe, files = opts.files or {} }, Server)

  poll(string.format("{ [ -f %s ] && grep -q '^port=' %s; } || [ -f %s ]",
    at("pid"), at("out"), at("rc")), opts.limit or 5)
  local port = tonumber((read(self:file("out")) or ""):match("^port=(%d+)\n"))
  if not port then
    local status = self:stop(1)
    error(string.format("%s: %s did not start listening (exit status %s): %s",
      name, bin, tostring(status), self:stderr()), 2)
  end

  self.port = port
  self.pid = tonumber(read(self:file("pid")) or "")
  self.base = "http://127.0.0.1:" .. port
  self.url = function(a, b)
    local path = b
    if type(a) ~= "table" then path = a end
    path = path or "/"
    if path:sub(1, 1) ~= "/" then path = "/" .. path end
    return self.base .. path
  end
  running[self] = true
  return self
end

-- Stops every server started here and not stopped yet.
function M.stop_all()
  local list = {}
  for srv in pairs(running) do list[#list + 1] = srv end
  for _, srv in ipairs(list) do srv:stop() end
end

return M
