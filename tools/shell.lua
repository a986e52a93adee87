-- tools/shell.lua: an agent tool that runs one program from an allow-list.
--
--   local shell = require "shell"
--   local tool = shell.new { allow = { "ls", "df", "uptime" }, cwd = "/srv", timeout = 10 }
--   tool.run({ command = "ls", args = { "-l" } })   --> "exit code 0\n..."
--
-- The model picks a command from the allow-list and gives its arguments as
-- a list; the program is started by ah.proc.run, never through a shell, so
-- no argument is expanded, split or chained.  The allow-list names
-- programs, not command lines: the model chooses the arguments, so allow
-- only programs that are safe with any arguments (not find, with its
-- -exec, nor an interpreter), or pass `check` to vet them.
--
-- shell.new{...} options:
--   allow        list of program names or absolute paths (required)
--   check        function(command, args) -> true | false, reason
--   cwd, env     passed to ah.proc.run (env merges into the host's)
--   timeout      seconds per run (30)
--   max_output   bytes kept of each of stdout and stderr (64 KiB; the rest is
--                dropped and the result says so)
--   max_args     most arguments accepted (64), each at most 4096 bytes
--   name, description
--
-- The tool is the table {name, description, parameters, timeout, run}:
-- `parameters` is its JSON Schema, `run(args, ctx)` returns the text for
-- the model (exit status, stdout, stderr) and the raw result of
-- ah.proc.run.  A non-zero exit is a result, not an error; a command off
-- the list, bad arguments, a timeout or a missing program raise structured
-- errors that the agent hands back to the model.

local ah = require "agenthost"

local M = {}

local function misuse(message, level)
  error(ah.error.new("invalid_argument", message), level)
end

-- The text the model sees.
local function render(command, r, max_output)
  local out = { string.format("$ %s", command) }
  if r.signal then
    out[#out + 1] = "killed by signal " .. r.signal
  else
    out[#out + 1] = "exit code " .. r.code
  end
  out[#out + 1] = "--- stdout ---\n" .. r.stdout
  if r.stderr ~= "" then out[#out + 1] = "--- stderr ---\n" .. r.stderr end
  if r.truncated then
    out[#out + 1] = string.format("(output cut at %d bytes per stream)", max_output)
  end
  return table.concat(out, "\n")
end

function M.new(opts)
  if type(opts) ~= "table" or type(opts.allow) ~= "table" or #opts.allow == 0 then
    misuse("shell.new: an allow-list is required, e.g. shell.new { allow = { \"ls\", \"df\" } }; " ..
      "the tool refuses to run without one", 2)
  end
  local allowed, names = {}, {}
  for i, cmd in ipairs(opts.allow) do
    if type(cmd) ~= "string" or cmd == "" or cmd:find("%s") or cmd:find("\0", 1, true)
        or (cmd:find("/", 1, true) and cmd:sub(1, 1) ~= "/") then
      misuse(string.format("shell.new: allow[%d] must be a program name or an absolute path, got %q",
        i, tostring(cmd)), 2)
    end
    if not allowed[cmd] then
      allowed[cmd] = true
      names[#names + 1] = cmd
    end
  end
  if opts.check ~= nil and type(opts.check) ~= "function" then
    misuse("shell.new: check must be a function(command, args)", 2)
  end
  local timeout = opts.timeout or 30
  local max_output = opts.max_output or 64 * 1024
  local max_args = opts.max_args or 64

  local tool = {
    name = opts.name or "shell",
    description = opts.description or
      ("Runs one program with a list of arguments (no shell: no pipes, globs, " ..
       "redirection or variables). Allowed programs: " .. table.concat(names, ", ") .. "."),
    parameters = {
      type = "object",
      properties = {
        command = { type = "string", enum = names, description = "the program to run" },
        args = { type = "array", items = { type = "string" }, maxItems = max_args,
                 description = "its arguments, one string each" },
      },
      required = { "command" },
      additionalProperties = false,
    },
    timeout = timeout,
    allow = names,
  }

  -- args come from the model: checked here whatever the schema said.
  function tool.run(args, ctx)
    if type(args) ~= "table" then misuse("shell: arguments must be an object {command, args}", 0) end
    local command, list = args.command, args.args
    if type(command) ~= "string" or not allowed[command] then
      misuse(string.format("shell: %q is not an allowed command (allowed: %s)",
        tostring(command), table.concat(names, ", ")), 0)
    end
    if list == nil then list = {} end
    if type(list) ~= "table" then misuse("shell: args must be a list of strings", 0) end
    if #list > max_args then misuse(string.format("shell: at most %d arguments", max_args), 0) end
    for k in pairs(list) do
      if math.type(k) ~= "integer" or k < 1 or k > #list then
        misuse("shell: args must be a list of strings", 0)
      end
    end
    for i, a in ipairs(list) do
      if type(a) ~= "string" then misuse(string.format("shell: args[%d] must be a string", i), 0) end
      if #a > 4096 then misuse(string.format("shell: args[%d] is longer than 4096 bytes", i), 0) end
    end
    if opts.check then
      local ok, reason = opts.check(command, list)
      if not ok then misuse("shell: refused: " .. tostring(reason or "not allowed"), 0) end
    end
    local r = ah.proc.run {
      cmd = command, args = list, cwd = opts.cwd, env = opts.env,
      timeout = timeout, max_output = max_output, truncate = true,
    }
    local shown = { command }
    for i, a in ipairs(list) do shown[i + 1] = a end
    return render(table.concat(shown, " "), r, max_output), r
  end

  return tool
end

return M
