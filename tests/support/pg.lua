-- A throwaway PostgreSQL cluster for the specs (and bench/pg): initdb in a
-- fresh temporary directory, the server on 127.0.0.1 at an ephemeral port
-- with its Unix socket in that directory, fsync off, and everything removed
-- by stop().  The superuser "postgres" has a password, required over TCP
-- (scram-sha-256), so that the specs connect the way users do; local
-- socket connections (psql here) are trusted.
--
-- As root the cluster belongs to the postgres user, since the server
-- refuses to run as root.  Nothing here skips: when the server cannot be
-- started, start() raises with the server's log, and the spec fails.
--
--   local pgs = require "support.pg"
--   local srv = pgs.start()            -- srv.url, srv.port, srv.dir
--   srv:psql("SELECT 1")               -- blocking; outside tasks
--   srv:restart()                      -- pg_ctl restart -m fast (blocking)
--   srv:ctl_argv("restart")            -- the same for ah.proc.run in a task
--   srv:stop()
--   pgs.start{ durable = true }        -- fsync and synchronous commit on
--   pgs.stop_dir(srv.dir)              -- stop it from another process

local M = {}

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function capture(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("a")
  local ok, _, code = f:close()
  return ok, out, code
end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- The directory of the newest installed server's programs.
local function bindir()
  local env = os.getenv("AH_PG_BINDIR")
  if env and env ~= "" then return env end
  local _, out = capture("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1")
  local dir = out:match("([^\n]+)")
  if not dir then
    error("support.pg: no PostgreSQL server found under /usr/lib/postgresql " ..
      "(install the Debian package postgresql: make deps)", 2)
  end
  return dir
end

local function is_root()
  local _, out = capture("id -u")
  return out:match("^0") ~= nil
end

-- An unused TCP port on 127.0.0.1 (another process may still take it
-- before the server does: start() tries again then).
local function free_port()
  local socket = require "socket"
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return math.tointeger(tonumber(port))
end

local Server = {}
Server.__index = Server

-- Runs cmd as the cluster's owner.
function Server:as_owner(cmd)
  if self.root then return "runuser -u postgres -- " .. cmd end
  return cmd
end

function Server:ctl(action, extra)
  return self:as_owner(string.format("%s/pg_ctl -D %s -l %s -w -t 60 %s %s",
    self.bin, q(self.data), q(self.log), extra or "", action))
end

-- argv of pg_ctl for ah.proc.run (in a task, while the loop runs).  The
-- server must not inherit the sanitizer runtimes the ASan suite preloads
-- into lua5.4 (it would abort on its own leaks): env drops LD_PRELOAD.
function Server:ctl_argv(action)
  local argv = { "env", "-u", "LD_PRELOAD" }
  if self.root then
    for _, a in ipairs { "runuser", "-u", "postgres", "--" } do argv[#argv + 1] = a end
  end
  for _, a in ipairs { self.bin .. "/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                       "-m", "fast", action } do
    argv[#argv + 1] = a
  end
  return argv
end

local function read_log(path)
  local f = io.open(path, "r")
  if not f then return "(no log)" end
  local s = f:read("a")
  f:close()
  return s:sub(-3000)
end

function Server:options()
  local fast = self.durable and "" or
    "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
  return string.format("-o %s", q(string.format(
    "-p %d -k %s -c listen_addresses=127.0.0.1 %s-c max_connections=200 -c shared_buffers=%s " ..
    "-c log_min_messages=warning -c max_prepared_transactions=10",
    self.port, self.dir, fast, self.durable and "128MB" or "32MB")))
end

function Server:start_server()
  for attempt = 1, 3 do
    self.port = free_port()
    self.url = string.format("postgres://postgres:%s@127.0.0.1:%d/postgres", self.password,
      self.port)
    if sh(self:ctl("start", self:options()) .. " >/dev/null 2>&1") then return end
    os.execute(self:kill_cmd()) -- a server that came up after pg_ctl gave up
    if attempt == 3 then
      error("support.pg: the PostgreSQL server did not start; its log:\n" .. read_log(self.log), 0)
    end
  end
end

-- psql over the local socket as postgres; returns the output (unaligned,
-- tuples only) or raises with it.
function Server:psql(sql, db)
  local ok, out = capture(self:as_owner(string.format(
    "%s/psql -h %s -p %d -U postgres -d %s -X -A -t -q -v ON_ERROR_STOP=1 -c %s",
    self.bin, q(self.dir), self.port, q(db or "postgres"), q(sql))))
  if not ok then error("support.pg: psql failed: " .. out, 2) end
  return (out:gsub("\n$", ""))
end

-- Shell commands that end the server's postmaster by its pid file if it
-- still runs (pg_ctl stop can fail on a loaded machine, or pg_ctl start
-- give up on a server that comes up after all; its backends exit with
-- it), for before the directory is removed.
function Server:kill_cmd()
  return string.format("p=$(head -1 %s 2>/dev/null); " ..
    "case \"$p\" in ''|*[!0-9]*) ;; *) kill -KILL \"$p\" 2>/dev/null ;; esac",
    q(self.data .. "/postmaster.pid"))
end

-- A background shell that stops the server once this process is gone
-- (a spec that crashed never runs its teardown).
function Server:watchdog()
  local _, out = capture("echo $PPID")
  local pid = out:match("(%d+)")
  if not pid then return end
  os.execute(string.format("( while kill -0 %s 2>/dev/null; do sleep 1; done; " ..
    "if [ -d %s ]; then %s >/dev/null 2>&1; %s; rm -rf %s; fi ) </dev/null >/dev/null 2>&1 &",
    pid, q(self.data), self:ctl("stop", "-m immediate"), self:kill_cmd(), q(self.dir)))
end

function Server:restart()
  if not sh(self:ctl("restart", "-m fast " .. self:options()) .. " >/dev/null 2>&1") then
    error("support.pg: restart failed; log:\n" .. read_log(self.log), 2)
  end
end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  os.execute(self:ctl("stop", "-m immediate") .. " >/dev/null 2>&1")
  os.execute(self:kill_cmd())
  os.execute("rm -rf " .. q(self.dir))
end

-- The URL of user with password on this server.
function Server:url_for(user, password, db)
  return string.format("postgres://%s:%s@127.0.0.1:%d/%s", user, password, self.port,
    db or "postgres")
end

-- Stops the server whose directory is dir (made by start) and removes
-- it: for a program that started the server in another process.
function M.stop_dir(dir)
  local self = setmetatable({ bin = bindir(), root = is_root(), dir = dir, data = dir .. "/data",
                              log = dir .. "/log" }, Server)
  self:stop()
end

-- Calls fn(...), which must raise a structured error of this kind; returns
-- the error (for the specs).
function M.fails(kind, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected a " .. kind .. " error, the call succeeded", 2) end
  local ah = require "agenthost"
  if not ah.error.is(err, kind) then
    error("expected kind " .. kind .. ", got " .. tostring(err), 2)
  end
  return err
end

-- start{password =, durable =, detached =}: durable keeps fsync and
-- synchronous commit on (the server's defaults), for benchmarks; detached
-- leaves the server running when this process exits (stop_dir ends it).
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ bin = bindir(), root = is_root(), durable = opts.durable,
                              password = opts.password or "s3cret-Pw_" .. math.random(1e6) },
                            Server)
  local _, out = capture("mktemp -d /tmp/ahpg.XXXXXX")
  self.dir = assert(out:match("([^\n]+)"), "mktemp failed")
  self.data = self.dir .. "/data"
  self.log = self.dir .. "/log"
  local pwfile = self.dir .. "/pw"
  local f = assert(io.open(pwfile, "w"))
  f:write(self.password, "\n")
  f:close()
  if self.root then assert(sh("chown -R postgres " .. q(self.dir))) end
  local ok, log = capture(self:as_owner(string.format(
    "%s/initdb -D %s -U postgres --pwfile=%s -A scram-sha-256 --auth-local=trust " ..
    "-E UTF8 --locale=C --no-sync", self.bin, q(self.data), q(pwfile))))
  os.remove(pwfile)
  if not ok then
    os.execute("rm -rf " .. q(self.dir))
    error("support.pg: initdb failed:\n" .. log, 2)
  end
  local ok2, err = pcall(self.start_server, self)
  if not ok2 then
    os.execute("rm -rf " .. q(self.dir))
    error(err, 2)
  end
  if not opts.detached then self:watchdog() end
  return self
end

return M
