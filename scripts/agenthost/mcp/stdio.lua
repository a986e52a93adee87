-- agenthost.mcp.stdio: the stdio transport of an MCP client.  The server
-- is a subprocess started with ah.proc.spawn (no shell); each message is
-- one line of JSON on its stdin and stdout, and the end of its stderr is
-- quoted when it fails or exits.
--
-- There is no background task: whichever caller is waiting for an answer
-- reads the server's output and hands each message to the client, which
-- gives it to its owner; when the reader has its own answer it passes the
-- reading on to another waiting caller.  So a client holds nothing that
-- outlives its calls, and the server's notifications and requests (ping)
-- are handled while a call is in progress.
--
-- check(opts) and open(c, opts) make the transport object described in
-- agenthost.mcp.rpc (send, roundtrip, close, broken).  Relies on
-- agenthost (ah.proc, task.timeout, structured errors) and on the
-- client's side of that interface.

local ah = require "agenthost"
local rpc = require "agenthost.mcp.rpc"
local task = ah.task

local err, misuse, excerpt = rpc.err, rpc.misuse, rpc.excerpt

local M = {}

local Stdio = {}
Stdio.__index = Stdio

-- check(opts) -> the server's command line, the client's name unless
-- opts.name is given; raises invalid_argument for options that cannot
-- start a server.
function M.check(opts)
  if type(opts) ~= "table" or type(opts.cmd) ~= "string" then
    misuse("mcp.stdio: expected {cmd = \"program\", args = {...}}")
  end
  local words = { opts.cmd }
  for i, a in ipairs(opts.args or {}) do words[i + 1] = tostring(a) end
  return excerpt(table.concat(words, " "), 60)
end

-- open(c, opts) -> the transport of client c: the server started with
-- ah.proc.spawn.  A command that cannot be started raises here.
function M.open(c, opts)
  local t = setmetatable({
    c = c,
    max_line = opts.max_line or rpc.DEFAULT_MAX_LINE,
    exit_grace = opts.exit_grace or 2,
    -- True while one caller reads the server's output for every caller.
    reading = false,
  }, Stdio)
  t.proc = ah.proc.spawn {
    cmd = opts.cmd, args = opts.args, env = opts.env, cwd = opts.cwd,
    max_line = t.max_line, kill_grace = opts.kill_grace,
  }
  return t
end

function Stdio:send(data)
  local c = self.c
  local ok, e = pcall(self.proc.write, self.proc, data .. "\n")
  if not ok then
    if ah.error.is(e, "io") then
      e = err("io", string.format("mcp %s: cannot write to the server: %s%s",
        c.name, e.message, self:exit_note()))
      c:_fail(e)
    end
    error(e, 0)
  end
end

-- ", it exited with code N; its stderr ends: ..." when that is known.
function Stdio:exit_note()
  local p = self.proc
  local note = ""
  if p:status() == "exited" then
    local st = p:wait()
    note = st.signal and (" (it was killed by signal " .. st.signal .. ")")
      or (" (it exited with code " .. tostring(st.code) .. ")")
  end
  local tail = p:stderr():gsub("%s+$", "")
  if tail ~= "" then note = note .. "; its stderr ends: " .. excerpt(tail:sub(-300), 300) end
  return note
end

-- Reads and dispatches one line; raises a transport failure.
function Stdio:read_one()
  local c, p = self.c, self.proc
  local ok, line = pcall(p.read_line, p)
  if not ok then
    local e = line
    if ah.error.is(e, "too_large") then
      c:_fail(err("too_large", string.format("mcp %s: the server wrote a line longer than max_line (%d bytes)",
        c.name, self.max_line)))
      return
    end
    if ah.error.is(e, "cancelled") then error(e, 0) end
    c:_fail(err("io", "mcp " .. c.name .. ": reading from the server: " .. tostring(e)))
    return
  end
  if line == nil then
    -- The output ended: the server has exited or is about to.
    if p:status() ~= "exited" then
      -- Give it a moment to be reaped so the message can say how it ended.
      pcall(task.timeout, 1, p.wait, p)
    end
    c:_fail(err("io", string.format("mcp %s: the server closed its output%s",
      c.name, self:exit_note())))
    return
  end
  if line:sub(-1) == "\r" then line = line:sub(1, -2) end
  if line == "" then return end
  c:_receive(line)
end

-- Wakes a waiting caller (not `me`, and not one that has given up) to take
-- over the reading.
local function hand_off(c, me)
  for _, slot in pairs(c._pending) do
    if slot ~= me and not slot.msg and not slot.gone then
      slot.ev:set()
      return
    end
  end
end

-- One caller at a time reads the server's output and hands each answer to
-- its caller; the others wait on their slot's event.  A caller that leaves
-- (answered, failed, timed out, cancelled) passes the reading on.
function Stdio:roundtrip(msg, slot)
  local c = self.c
  c:_send(msg)
  slot.sent = true
  local ok, e = pcall(function()
    while not slot.msg do
      if c._dead then error(c._dead, 0) end
      if not self.reading then
        self.reading = true
        local read_ok, read_err = pcall(self.read_one, self)
        self.reading = false
        if not read_ok then error(read_err, 0) end
      else
        slot.ev:wait()
        slot.ev:clear()
      end
    end
  end)
  slot.gone = true
  if not self.reading then hand_off(c, slot) end
  if not ok then error(e, 0) end
  return slot.msg
end

function Stdio:broken()
  self.proc:close()
end

function Stdio:close()
  local p = self.proc
  p:close_stdin()
  -- The server should exit once its input ends; if not, end it.
  if not pcall(task.timeout, self.exit_grace, p.wait, p) then
    p:close()
    pcall(p.wait, p)
  end
end

return M
