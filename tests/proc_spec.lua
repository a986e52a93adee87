-- ah.proc: run and spawn against ordinary programs (sh, cat, echo, sleep):
-- exit codes, signals, the three streams, env, cwd, timeouts and
-- cancellation that kill and reap the whole job, the output cap, many
-- processes at once, bad commands and bad options.

local ah = require "agenthost"
local spec = require "support.spec"
local helpers = require "support.proc"
local proc, task = ah.proc, ah.task

local function run(fn) return task.run(fn) end

local fails = spec.fails

-- Waits (inside a task) until every process started here has been reaped.
local function reaped()
  assert.is_true(spec.eventually(function() return proc.stats().running == 0 end),
    "processes still running: " .. proc.stats().running)
end

local function alive(pid)
  -- A zombie still has /proc/PID; its state letter is Z.
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %b() (%a)") ~= "Z" and true or "zombie"
end

local function my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return pid
end

-- Children of this process that are zombies (read from /proc: ps would
-- run with the sanitizer runtimes preloaded in the ASan suite).
local function zombies()
  local lfs = require "lfs"
  local me, n = my_pid(), 0
  for name in lfs.dir("/proc") do
    if name:match("^%d+$") then
      local f = io.open("/proc/" .. name .. "/stat")
      local s = f and f:read("a")
      if f then f:close() end
      local state, ppid = (s or ""):match("^%d+ %b() (%a) (%d+)")
      if ppid == me and state == "Z" then n = n + 1 end
    end
  end
  return n
end

local function read_pid(path)
  return tonumber(helpers.read(path) or "")
end

-- Waits (in 10 ms sleeps inside the task) until path holds a pid.
local function wait_pid(path)
  assert.is_true(spec.eventually(function() return read_pid(path) ~= nil end), "no pid in " .. path)
  return read_pid(path)
end

teardown(helpers.cleanup)

describe("ah.proc.run", function()
  it("returns the exit code, stdout and stderr", function()
    local r = run(function()
      return proc.run { cmd = "sh", args = { "-c", "echo out; echo err >&2; exit 3" } }
    end)
    assert.equal(3, r.code)
    assert.is_nil(r.signal)
    assert.equal("out\n", r.stdout)
    assert.equal("err\n", r.stderr)
    assert.is_false(r.truncated)
  end)

  it("takes the command as a list too, and never uses a shell", function()
    local r = run(function() return proc.run { "echo", "$(id)", "a;b", "*" } end)
    assert.equal(0, r.code)
    assert.equal("$(id) a;b *\n", r.stdout)
  end)

  it("reports the signal that ended the process", function()
    local r = run(function() return proc.run { "sh", "-c", "kill -TERM $$" } end)
    assert.is_nil(r.code)
    assert.equal(15, r.signal)
  end)

  it("feeds stdin and closes it, a megabyte as well as nothing", function()
    local big = string.rep("0123456789abcdef", 65536)
    local r1, r2, r3 = run(function()
      return proc.run { cmd = "cat", stdin = big }, proc.run { cmd = "cat", stdin = "" },
        proc.run { cmd = "cat" }
    end)
    assert.equal(#big, #r1.stdout)
    assert.is_true(r1.stdout == big)
    assert.equal("", r2.stdout)
    assert.equal("", r3.stdout) -- no stdin: /dev/null
  end)

  it("adds to the environment, removes with false, or starts empty", function()
    local r1, r2 = run(function()
      return proc.run { "sh", "-c", "echo \"$AH_X/$HOME/${PATH:+path}\"", env = { AH_X = "x", HOME = false } },
        proc.run { "/usr/bin/env", env = { ONLY = "1" }, inherit_env = false }
    end)
    assert.equal("x//path\n", r1.stdout)
    assert.equal("ONLY=1\n", r2.stdout)
  end)

  it("runs in cwd", function()
    local d = helpers.tmpdir()
    local r = run(function() return proc.run { "pwd", cwd = d } end)
    assert.equal(d, r.stdout:gsub("\n$", ""))
  end)

  it("names a missing command, a missing file and a bad cwd", function()
    local e1 = fails("invalid_argument", function() proc.run { cmd = "no-such-command-ah" } end)
    assert.matches("command 'no%-such%-command%-ah' not found %(not in PATH%)", e1.message)
    local e2 = fails("invalid_argument", function() proc.run { cmd = "/no/such/file" } end)
    assert.matches("'/no/such/file' not found", e2.message)
    local e3 = fails("invalid_argument", function() proc.run { cmd = "/etc/passwd" } end)
    assert.matches("cannot be run", e3.message)
    local e4 = fails("invalid_argument", function() proc.run { cmd = "ls", cwd = "/no/such/dir" } end)
    assert.matches("cwd '/no/such/dir'", e4.message)
    run(reaped)
  end)

  it("rejects bad options with messages that say what to pass", function()
    assert.matches("cmd must be a non%-empty string",
      fails("invalid_argument", function() proc.run {} end).message)
    assert.matches("args must be a list",
      fails("invalid_argument", function() proc.run { cmd = "ls", args = "-l" } end).message)
    assert.matches("args%[2%] must be a string",
      fails("invalid_argument", function() proc.run { cmd = "ls", args = { "-l", {} } } end).message)
    assert.matches("NUL",
      fails("invalid_argument", function() proc.run { cmd = "ls", args = { "a\0b" } } end).message)
    assert.matches("env names",
      fails("invalid_argument", function() proc.run { cmd = "ls", env = { ["A=B"] = "x" } } end).message)
    assert.matches("timeout must be",
      fails("invalid_argument", function() proc.run { cmd = "ls", timeout = "soon" } end).message)
    assert.matches("both",
      fails("invalid_argument", function() proc.run { "ls", args = { "-l" } } end).message)
    assert.matches("inside a task",
      select(2, pcall(proc.run, { cmd = "ls" })).message)
  end)

  it("kills and reaps a process that runs past its timeout", function()
    local d = helpers.tmpdir()
    local pid
    local err = fails("timeout", function()
      task.spawn(function() pid = wait_pid(d .. "/pid") end)
      proc.run { "sh", "-c", "echo $$ > " .. d .. "/pid; exec sleep 30", timeout = 0.2 }
    end)
    assert.is_true(err.retryable)
    assert.matches("'sh' did not finish within 0.2 s", err.message)
    run(reaped)
    assert.is_false(alive(pid))
    assert.equal(0, zombies())
  end)

  it("kills the whole job, SIGKILL after the grace period for what ignores SIGTERM", function()
    local d = helpers.tmpdir()
    local script = "trap '' TERM; sleep 30 & echo $! > " .. d .. "/child; echo $$ > " .. d ..
      "/pid; wait; wait"
    fails("timeout", function()
      proc.run { "sh", "-c", script, timeout = 0.2, kill_grace = 0.1 }
    end)
    run(reaped)
    local pid, child = read_pid(d .. "/pid"), read_pid(d .. "/child")
    assert.is_false(alive(pid))
    -- Killed, the grandchild is left to init to reap: a zombie counts as
    -- ended (init may take a second or more to reap it).
    run(function()
      assert.is_true(spec.eventually(function() return alive(child) ~= true end), "grandchild survived")
    end)
    assert.equal(0, zombies())
  end)

  it("ends the process when its task is cancelled", function()
    local d = helpers.tmpdir()
    local pid
    run(function()
      local t = task.spawn(function()
        return proc.run { "sh", "-c", "echo $$ > " .. d .. "/pid; exec sleep 30" }
      end)
      pid = wait_pid(d .. "/pid")
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      reaped()
    end)
    assert.is_false(alive(pid))
    assert.equal(0, zombies())
  end)

  it("caps the output: too_large by default, or truncated on request", function()
    local err = fails("too_large", function()
      proc.run { "sh", "-c", "head -c 100000 /dev/zero", max_output = 1000 }
    end)
    assert.matches("max_output %(1000 bytes%) on stdout", err.message)
    local r = run(function()
      return proc.run { "sh", "-c", "head -c 100000 /dev/zero; echo done >&2", max_output = 1000, truncate = true }
    end)
    assert.equal(1000, #r.stdout)
    assert.equal("done\n", r.stderr)
    assert.is_true(r.truncated)
    assert.equal(0, r.code)
    run(reaped)
  end)

  it("does not hand the host's HTTP connections to the programs it starts", function()
    local httpd = require "support.httpd"
    local srv = httpd.start()
    local listing = run(function()
      assert.equal(200, ah.http.get(srv.url("/fixed")).status) -- a kept-alive connection now
      return proc.run { cmd = "ls", args = { "-l", "/proc/self/fd" } }.stdout
    end)
    srv:stop()
    -- its stdio are socket pairs of libuv's; nothing above 2 may be a socket
    for fd in listing:gmatch(" (%d+) %-> socket:") do
      assert.is_true(tonumber(fd) <= 2, "inherited socket " .. fd .. ":\n" .. listing)
    end
  end)

  it("ends what a finished command left running in its session", function()
    run(function()
      local r = proc.run { cmd = "sh", args = { "-c", "sleep 30 & echo $!" }, timeout = 20 }
      assert.equal(0, r.code) -- returns once sh is done, not after the sleep
      local pid = math.tointeger(tonumber(r.stdout))
      assert.is_not_nil(pid, r.stdout)
      -- killed with its leader (a zombie left to init counts as ended)
      assert.is_true(spec.eventually(function() return alive(pid) ~= true end))
    end)
  end)

  it("runs 200 processes at once", function()
    local outs = run(function()
      local items = {}
      for i = 1, 200 do items[i] = i end
      return task.map(items, function(i)
        return proc.run { "sh", "-c", "echo $0", tostring(i) }.stdout
      end)
    end)
    for i = 1, 200 do assert.equal(i .. "\n", outs[i]) end
    run(reaped)
    assert.equal(0, zombies())
  end)
end)

describe("ah.proc.spawn", function()
  it("talks to a process line by line", function()
    run(function()
      local p <close> = proc.spawn { cmd = "cat" }
      assert.is_number(p.pid)
      assert.equal("running", p:status())
      p:write("one\ntwo\n")
      assert.equal("one", p:read_line())
      assert.equal("two", p:read_line())
      p:write("three\r\nlast")
      p:close_stdin()
      assert.equal("three\r", p:read_line())
      assert.equal("last", p:read_line())
      assert.is_nil(p:read_line())
      assert.is_nil(p:read())
      local st = p:wait()
      assert.equal(0, st.code)
      assert.equal("exited", p:status())
      local ok, err = pcall(p.write, p, "more")
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "io"))
    end)
  end)

  -- (Without LD_PRELOAD: in the ASan suite the sanitizer runtimes would
  -- be preloaded into the pipeline too, and have their say on stderr.)
  it("reads bytes, keeps stderr's tail and reports it with the exit status", function()
    run(function()
      local p = proc.spawn { "sh", "-c", "printf abcdef; head -c 5000 /dev/zero | tr '\\0' e >&2; echo END >&2; exit 4",
                             max_stderr = 100, env = { LD_PRELOAD = false } }
      local got = {}
      while true do
        local s = p:read(2)
        if not s then break end
        got[#got + 1] = s
      end
      assert.equal("abcdef", table.concat(got))
      local st = p:wait()
      assert.equal(4, st.code)
      assert.equal(100, #st.stderr)
      assert.matches("eeeEND\n$", st.stderr)
    end)
  end)

  it("streams a large output with backpressure", function()
    run(function()
      local p = proc.spawn { "sh", "-c", "head -c 5000000 /dev/zero" }
      local n = 0
      while true do
        local s = p:read(100000)
        if not s then break end
        n = n + #s
      end
      assert.equal(5000000, n)
      assert.equal(0, p:wait().code)
    end)
  end)

  it("raises too_large for a line longer than max_line", function()
    run(function()
      local p <close> = proc.spawn { "sh", "-c", "head -c 300000 /dev/zero; echo", max_line = 100000 }
      local ok, err = pcall(p.read_line, p)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "too_large"))
    end)
  end)

  it("sends signals to the process and ends it with close", function()
    run(function()
      local p = proc.spawn { "sleep", "30" }
      assert.is_true(p:kill("INT"))
      assert.equal(2, p:wait().signal)
      assert.is_false(p:kill())
      local ok, err = pcall(p.kill, p, "NOPE")
      assert.is_false(ok)
      assert.matches("the signal must be a name", err.message)
      local q = proc.spawn { "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done", kill_grace = 0.1 }
      assert.equal("ready", q:read_line())
      q:close()
      assert.equal(9, q:wait().signal)
      reaped()
    end)
  end)

  it("lets a cancelled read go without ending the process", function()
    run(function()
      local p <close> = proc.spawn { "cat" }
      local reader = task.spawn(function() return p:read_line() end)
      task.yield()
      reader:cancel()
      assert.is_false((reader:result()))
      p:write("still here\n")
      assert.equal("still here", p:read_line())
      local r2 = task.spawn(function() return p:read_line() end)
      task.yield()
      local ok, err = pcall(p.read_line, p)
      assert.is_false(ok)
      assert.matches("another task is already reading", err.message)
      p:write("x\n")
      assert.equal("x", r2:join())
    end)
  end)

  it("wires stdio to /dev/null or to the host's", function()
    run(function()
      local p = proc.spawn { "sh", "-c", "cat; echo hidden", stdin = "null", stdout = "null" }
      assert.equal(0, p:wait().code)
      local ok, err = pcall(p.read_line, p)
      assert.is_false(ok)
      assert.matches("not a pipe", err.message)
      ok, err = pcall(proc.spawn, { "cat", stdout = "file" })
      assert.is_false(ok)
      assert.matches("stdout must be", err.message)
    end)
  end)

  it("kills and reaps what is still running when the host exits", function()
    local d = helpers.tmpdir()
    local script = helpers.script(string.format([[
      local ah = require "agenthost"
      ah.proc.spawn { "sh", "-c", "echo $$ > %s/pid; exec sleep 30" }
      for _ = 1, 500 do
        local f = io.open("%s/pid")
        if f and f:read("n") then f:close() break end
        if f then f:close() end
        ah.task.sleep(0.01)
      end
      print("started")
    ]], d, d))
    local r = helpers.cli({ script })
    assert.equal(0, r.code, r.err)
    assert.equal("started\n", r.out)
    local pid = read_pid(d .. "/pid")
    assert.is_number(pid)
    assert.is_false(alive(pid))
  end)
end)
