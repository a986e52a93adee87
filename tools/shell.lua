-- tools/shell.lua: an agent tool that runs one program from an allow-list.
--
--   local shell = require "shell"
--   local tool = shell.new { allow = { "ls", "df", "uptime" }, cwd = "/srv", roots = { "/srv" }, timeout = 10 }
--   tool.run({ command = "ls", args = { "-l" } })   --> "exit code 0\n..."
--
-- The model picks a command from the allow-list and gives its arguments as
-- a list; the program is started by ah.proc.run, never through a shell, so
-- no argument is expanded, split or chained.  The model still chooses the
-- arguments, and an option can make a harmless program harmful (find's
-- -exec, sort's --output), so each command has a policy: the options it
-- may get (an allow-list; anything else is refused, abbreviations
-- included), which arguments are paths, and the roots those paths must
-- stay under once `..` and symlinks are resolved (by realpath(1)).  The
-- operands are passed after "--" where the program takes it, so an operand
-- is never read as an option.  The commands of BUILTIN have a policy of
-- their own; any other is given one as a table, or runs unrestricted.  A
-- refusal is an invalid_argument error that names the argument and the
-- reason, so the model can correct itself.  See docs/agent.md.
--
-- shell.new{...} options:
--   allow        list of commands (required): a program name or absolute
--                path (its BUILTIN policy if it has one, otherwise any
--                arguments), or a policy table {name, flags, values, long,
--                operands, pattern, dashdash, cwd_operand, unrestricted}
--   roots        directories the path arguments must stay under; relative
--                ones are taken from cwd (default: cwd, or the host's
--                working directory)
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
-- the list, a refused argument, a timeout or a missing program raise
-- structured errors that the agent hands back to the model.

local ah = require "agenthost"

local M = {}

local function misuse(message, level)
  error(ah.error.new("invalid_argument", message), level)
end

-- Policies -------------------------------------------------------------------------
--
-- A policy table (the form users write, see docs/agent.md):
--   [1] or name   the program
--   flags         string of the short options taking no value ("ilnr")
--   values        {letter = "any" | "path"}: short options taking a value
--   long          {name = true | "any" | "path"}: long options (without
--                 "--"), true for those taking no value
--   operands      "paths" (each a path under the roots), "any" or "none"
--   pattern       list of the options that give the pattern: without one of
--                 them, the first operand is a pattern, not a path (grep)
--   dashdash      true: "--" is inserted before the operands
--   cwd_operand   true: with no path operand the program works on the
--                 working directory, which must then be under the roots
--   find          true: find's grammar (paths, then an expression of the
--                 `primaries` {name = number of values})
--   unrestricted  true: any arguments (the old behaviour; only for programs
--                 that are harmless with any arguments)

local FIND_PRIMARIES = {
  ["-name"] = 1, ["-iname"] = 1, ["-path"] = 1, ["-ipath"] = 1, ["-regex"] = 1, ["-iregex"] = 1,
  ["-type"] = 1, ["-xtype"] = 1, ["-size"] = 1, ["-mtime"] = 1, ["-mmin"] = 1, ["-atime"] = 1,
  ["-amin"] = 1, ["-ctime"] = 1, ["-cmin"] = 1, ["-perm"] = 1, ["-user"] = 1, ["-group"] = 1,
  ["-maxdepth"] = 1, ["-mindepth"] = 1, ["-links"] = 1, ["-printf"] = 1,
  ["-empty"] = 0, ["-print"] = 0, ["-print0"] = 0, ["-prune"] = 0, ["-ls"] = 0, ["-true"] = 0,
  ["-false"] = 0, ["-readable"] = 0, ["-writable"] = 0, ["-executable"] = 0,
  ["-not"] = 0, ["!"] = 0, ["("] = 0, [")"] = 0, ["-a"] = 0, ["-and"] = 0, ["-o"] = 0,
  ["-or"] = 0, [","] = 0, ["-depth"] = 0, ["-xdev"] = 0, ["-mount"] = 0,
}

-- The built-in policies of the commands docs/agent.md suggests.  What
-- each leaves out is what writes files, runs programs, reads a list of
-- files from elsewhere, follows symlinks out of the roots or never ends:
-- find -exec/-execdir/-ok/-okdir/-delete/-fprint*/-fls/-L/-H, sort
-- -o/--output/--compress-program/-T/--files0-from/--random-source, grep
-- -R/--include-from (and -f only with a path under the roots), wc
-- --files0-from, tail -f/-F, ls -L.
M.BUILTIN = {
  ls = { flags = "aAlhRtrSd1FiscuUGngoQpXv", long = { all = true, ["almost-all"] = true,
         ["human-readable"] = true, recursive = true, ["group-directories-first"] = true },
         operands = "paths", dashdash = true, cwd_operand = true },
  df = { flags = "hHkTiPal", long = { ["human-readable"] = true, inodes = true, portability = true,
         ["print-type"] = true, all = true, ["local"] = true, total = true },
         operands = "paths", dashdash = true },
  uptime = { flags = "ps", long = { pretty = true, since = true }, operands = "none" },
  cat = { flags = "nbsAETuvet", long = { number = true, ["number-nonblank"] = true,
          ["squeeze-blank"] = true, ["show-all"] = true }, operands = "paths", dashdash = true },
  grep = { flags = "ivnclLhHrwxEFGoqsIaz", values = { e = "any", f = "path", m = "any",
           A = "any", B = "any", C = "any" },
           long = { ["ignore-case"] = true, ["invert-match"] = true, ["line-number"] = true,
                    count = true, ["files-with-matches"] = true, ["files-without-match"] = true,
                    recursive = true, ["word-regexp"] = true, ["line-regexp"] = true,
                    ["extended-regexp"] = true, ["fixed-strings"] = true, ["only-matching"] = true,
                    quiet = true, silent = true, ["no-messages"] = true, ["with-filename"] = true,
                    ["no-filename"] = true, regexp = "any", file = "path", ["max-count"] = "any",
                    include = "any", exclude = "any", ["exclude-dir"] = "any", context = "any",
                    ["after-context"] = "any", ["before-context"] = "any" },
           pattern = { "-e", "-f", "--regexp", "--file" },
           operands = "paths", dashdash = true, cwd_operand = true },
  find = { find = true, primaries = FIND_PRIMARIES, cwd_operand = true },
  sort = { flags = "bdfgiMhnRrVcCsuz", values = { k = "any", t = "any", S = "any" },
           long = { ["ignore-leading-blanks"] = true, ["dictionary-order"] = true,
                    ["ignore-case"] = true, ["general-numeric-sort"] = true,
                    ["human-numeric-sort"] = true, ["numeric-sort"] = true, reverse = true,
                    ["version-sort"] = true, unique = true, stable = true, key = "any",
                    ["field-separator"] = "any", ["zero-terminated"] = true, check = true },
           operands = "paths", dashdash = true },
  head = { flags = "qvz", values = { n = "any", c = "any" },
           long = { lines = "any", bytes = "any", quiet = true, silent = true, verbose = true },
           operands = "paths", dashdash = true },
  tail = { flags = "qvz", values = { n = "any", c = "any" },
           long = { lines = "any", bytes = "any", quiet = true, silent = true, verbose = true },
           operands = "paths", dashdash = true },
  wc = { flags = "lwcmL", long = { lines = true, words = true, bytes = true, chars = true,
         ["max-line-length"] = true }, operands = "paths", dashdash = true },
}

-- A policy from its user form (a table) or a program name; raises on a
-- malformed one.
local function make_policy(i, entry)
  local p
  if type(entry) == "string" then
    local name = entry
    local base = name:match("[^/]+$")
    p = M.BUILTIN[base] or { unrestricted = true }
    entry = setmetatable({ name }, { __index = p })
  elseif type(entry) ~= "table" then
    misuse(string.format("shell.new: allow[%d] must be a program name or a policy table", i), 3)
  end
  local name = entry[1] or entry.name
  if type(name) ~= "string" or name == "" or name:find("%s") or name:find("\0", 1, true)
      or (name:find("/", 1, true) and name:sub(1, 1) ~= "/") then
    misuse(string.format("shell.new: allow[%d] must be a program name or an absolute path, got %q",
      i, tostring(name)), 3)
  end
  local function bad(what) misuse(string.format("shell.new: allow[%d] (%s): %s", i, name, what), 4) end
  p = { name = name, unrestricted = entry.unrestricted == true, find = entry.find == true,
        primaries = entry.primaries or FIND_PRIMARIES, flags = {}, values = {}, long = {},
        operands = entry.operands or "paths", dashdash = entry.dashdash == true,
        cwd_operand = entry.cwd_operand == true, pattern = {} }
  if entry.flags ~= nil then
    if type(entry.flags) ~= "string" or entry.flags:find("[^%w]") then bad("flags must be a string of letters and digits") end
    for c in entry.flags:gmatch(".") do p.flags[c] = true end
  end
  for c, kind in pairs(entry.values or {}) do
    if type(c) ~= "string" or #c ~= 1 or (kind ~= "any" and kind ~= "path") then
      bad("values must map a letter to \"any\" or \"path\"")
    end
    p.values[c] = kind
  end
  for n, kind in pairs(entry.long or {}) do
    if type(n) ~= "string" or n == "" or n:find("=", 1, true) or (kind ~= true and kind ~= "any" and kind ~= "path") then
      bad("long must map an option name (without --) to true, \"any\" or \"path\"")
    end
    p.long[n] = kind
  end
  for _, o in ipairs(entry.pattern or {}) do p.pattern[o] = true end
  if p.operands ~= "paths" and p.operands ~= "any" and p.operands ~= "none" then
    bad("operands must be \"paths\", \"any\" or \"none\"")
  end
  -- The options, as the model is told them when it gets one wrong.
  local shown = {}
  for c in (entry.flags or ""):gmatch(".") do shown[#shown + 1] = "-" .. c end
  local vs = {}
  for c in pairs(p.values) do vs[#vs + 1] = c end
  table.sort(vs)
  for _, c in ipairs(vs) do shown[#shown + 1] = "-" .. c .. " VALUE" end
  local ls = {}
  for n, kind in pairs(p.long) do ls[#ls + 1] = "--" .. n .. (kind == true and "" or "=VALUE") end
  table.sort(ls)
  for _, n in ipairs(ls) do shown[#shown + 1] = n end
  if p.find then
    local ps = {}
    for n in pairs(p.primaries) do ps[#ps + 1] = n end
    table.sort(ps)
    shown = ps
  end
  p.shown = #shown > 0 and table.concat(shown, ", ") or "none"
  return p
end

-- refuse(command, i, arg, why): the error for the model.
local function refuse(command, i, arg, why)
  misuse(string.format("shell: %s: argument %d '%s' is refused: %s", command, i, arg, why), 0)
end

-- apply(p, list) -> the arguments to run, and the paths to check: a list
-- of {index, path}.  Raises on an argument the policy refuses.
local function apply(p, list)
  local cmd, opts, operands, paths = p.name, {}, {}, {}
  local function path_arg(i, a)
    if a == "" then refuse(cmd, i, a, "an empty path") end
    paths[#paths + 1] = { i, a }
  end
  if p.find then
    local i, n = 1, #list
    while i <= n and not (list[i]:sub(1, 1) == "-" or p.primaries[list[i]]) do
      path_arg(i, list[i])
      opts[#opts + 1] = list[i]
      i = i + 1
    end
    if #paths == 0 and p.cwd_operand then paths[1] = { 0, "." } end
    while i <= n do
      local a = list[i]
      local arity = p.primaries[a]
      if not arity then
        refuse(cmd, i, a, "not an allowed find expression (allowed: " .. p.shown .. ")")
      end
      if i + arity > n then refuse(cmd, i, a, "it needs a value") end
      for k = i, i + arity do opts[#opts + 1] = list[k] end
      i = i + arity + 1
    end
    return opts, paths
  end
  local dd, has_pattern = false, false
  local i = 1
  while i <= #list do
    local a = list[i]
    if dd or a == "-" or a:sub(1, 1) ~= "-" then
      operands[#operands + 1] = { i, a }
    elseif a == "--" then
      dd = true
    elseif a:sub(1, 2) == "--" then
      local name, val = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local kind = p.long[name]
      if kind == nil then refuse(cmd, i, a, "not an allowed option (allowed: " .. p.shown .. ")") end
      if kind == true then
        if val then refuse(cmd, i, a, "--" .. name .. " takes no value") end
        opts[#opts + 1] = a
      else
        local at = i
        if not val then
          i = i + 1
          val = list[i]
          if not val then refuse(cmd, at, a, "it needs a value") end
        end
        if kind == "path" then path_arg(i, val) end
        opts[#opts + 1] = "--" .. name .. "=" .. val
      end
      if p.pattern["--" .. name] then has_pattern = true end
    else
      local j = 2
      while j <= #a do
        local c = a:sub(j, j)
        if p.flags[c] then
          j = j + 1
        elseif p.values[c] then
          local val, at = a:sub(j + 1), i
          if val == "" then
            i = i + 1
            val = list[i]
            if not val then refuse(cmd, at, a, "-" .. c .. " needs a value") end
          end
          if p.values[c] == "path" then path_arg(i, val) end
          if p.pattern["-" .. c] then has_pattern = true end
          opts[#opts + 1] = a:sub(1, j)
          opts[#opts + 1] = val
          a = nil
          break
        else
          refuse(cmd, i, a, (#a == 2 and "" or ("-" .. c .. " in it is ")) ..
            "not an allowed option (allowed: " .. p.shown .. ")")
        end
      end
      if a then opts[#opts + 1] = a end
    end
    i = i + 1
  end
  if p.operands == "none" and #operands > 0 then
    refuse(cmd, operands[1][1], operands[1][2], cmd .. " takes no operands")
  end
  local first = 1
  if next(p.pattern) and not has_pattern and operands[1] then first = 2 end -- the pattern
  local any_path = false
  for k, o in ipairs(operands) do
    if p.operands == "paths" and k >= first and o[2] ~= "-" then
      path_arg(o[1], o[2])
      any_path = true
    end
  end
  if not any_path and p.cwd_operand and #paths == 0 then paths[1] = { 0, "." } end
  if p.dashdash and #operands > 0 then opts[#opts + 1] = "--" end
  for _, o in ipairs(operands) do opts[#opts + 1] = o[2] end
  return opts, paths
end
M._apply = apply
-- _policy(entry) -> the policy of an allow-list entry, for the specs.
function M._policy(entry) return make_policy(1, entry) end

-- realpath(list, cwd) -> the canonical absolute path of each (`..` and
-- symlinks resolved; missing components allowed), by realpath(1).
local function realpath(list, cwd)
  local args = { "-m", "-z", "--" }
  for i, p in ipairs(list) do args[i + 3] = p end
  local r = ah.proc.run { cmd = "realpath", args = args, cwd = cwd, timeout = 10 }
  if r.code ~= 0 then
    error(ah.error.new("io", "shell: realpath failed: " .. r.stderr:gsub("%s+$", "")), 0)
  end
  local out = {}
  for s in r.stdout:gmatch("([^%z]*)%z") do out[#out + 1] = s end
  if #out ~= #list then error(ah.error.new("io", "shell: realpath gave an unexpected answer"), 0) end
  return out
end

local function under(path, root)
  return path == root or root == "/" or path:sub(1, #root + 1) == root .. "/"
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
  local policies, names = {}, {}
  for i, entry in ipairs(opts.allow) do
    local p = make_policy(i, entry)
    if not policies[p.name] then
      policies[p.name] = p
      names[#names + 1] = p.name
    end
  end
  if opts.check ~= nil and type(opts.check) ~= "function" then
    misuse("shell.new: check must be a function(command, args)", 2)
  end
  -- Relative roots are taken from cwd, as realpath runs there: the default
  -- "." is cwd itself.
  local roots = opts.roots or { "." }
  if type(roots) ~= "table" or #roots == 0 then misuse("shell.new: roots must be a list of directories", 2) end
  for i, r in ipairs(roots) do
    if type(r) ~= "string" or r == "" or r:find("\0", 1, true) then
      misuse(string.format("shell.new: roots[%d] must be a directory", i), 2)
    end
  end
  local resolved_roots -- resolved at the first run, in a task
  local timeout = opts.timeout or 30
  local max_output = opts.max_output or 64 * 1024
  local max_args = opts.max_args or 64

  local tool = {
    name = opts.name or "shell",
    description = opts.description or
      ("Runs one program with a list of arguments (no shell: no pipes, globs, " ..
       "redirection or variables). Allowed programs: " .. table.concat(names, ", ") .. ". " ..
       "Each program accepts only some options, and paths only under " ..
       (opts.roots and table.concat(roots, ", ") or (opts.cwd or "the working directory")) ..
       "; a refused argument is reported with the reason."),
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
    local policy = type(command) == "string" and policies[command]
    if not policy then
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
    local run_args = list
    if not policy.unrestricted then
      local paths
      run_args, paths = apply(policy, list)
      if #paths > 0 then
        local all = {}
        for k, p in ipairs(paths) do all[k] = p[2] end
        if not resolved_roots then resolved_roots = realpath(roots, opts.cwd) end
        local real = realpath(all, opts.cwd)
        for k, p in ipairs(paths) do
          local inside = false
          for _, root in ipairs(resolved_roots) do
            if under(real[k], root) then inside = true break end
          end
          if not inside then
            local where = p[1] == 0 and string.format("shell: %s: the working directory", command)
              or string.format("shell: %s: argument %d '%s'", command, p[1], p[2])
            misuse(string.format("%s is outside the allowed roots (%s; it resolves to %s)%s", where,
              table.concat(resolved_roots, ", "), real[k],
              p[1] == 0 and "; give a path under a root" or ""), 0)
          end
        end
      end
    end
    local r = ah.proc.run {
      cmd = command, args = run_args, cwd = opts.cwd, env = opts.env,
      timeout = timeout, max_output = max_output, truncate = true,
    }
    local shown = { command }
    for i, a in ipairs(list) do shown[i + 1] = a end
    return render(table.concat(shown, " "), r, max_output), r
  end

  return tool
end

return M
