-- ah.proc: subprocesses for tasks, without a shell; see docs/proc.md.
--
--   ah.proc.run{cmd = "ls", args = {"-l"}, timeout = 10}
--     -> {code, signal, stdout, stderr, truncated}
--   local p <close> = ah.proc.spawn{cmd = "server", args = {...}}
--     p:read_line(), p:read(n), p:write(s), p:close_stdin(), p:wait(),
--     p:kill(sig), p:close(), p:status(), p:stderr(), p.pid
--
-- The C part does the work; this adds the list form of the command:
-- run{"ls", "-l", "/tmp", timeout = 5} is run{cmd = "ls", args = {"-l",
-- "/tmp"}, timeout = 5}.

local core = require "agenthost.core"
local C = core._proc

local M = {}

local function options(opts, what)
  if type(opts) ~= "table" then
    core.error.raise("invalid_argument",
      what .. ": the options must be a table such as {cmd = \"ls\", args = {\"-l\"}}")
  end
  if opts.cmd ~= nil or opts[1] == nil then return opts end
  if opts.args ~= nil then
    core.error.raise("invalid_argument",
      what .. ": give the command either as a list or as cmd = and args =, not both")
  end
  local o, args = {}, {}
  for k, v in pairs(opts) do
    if math.type(k) ~= "integer" then o[k] = v end
  end
  for i = 2, #opts do args[i - 1] = opts[i] end
  o.cmd, o.args = opts[1], args
  return o
end

-- run{cmd, args, stdin, env, inherit_env, cwd, timeout, max_output,
--     truncate, kill_grace}
function M.run(opts)
  return C.run(options(opts, "ah.proc.run"))
end

-- spawn{cmd, args, env, inherit_env, cwd, stdin, stdout, stderr, max_line,
--       max_stderr, kill_grace}
function M.spawn(opts)
  return C.spawn(options(opts, "ah.proc.spawn"))
end

-- stats() -> {live, running}
M.stats = C.stats

return M
