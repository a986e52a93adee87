-- agenthost.reload: change Lua modules while they run.
--
-- Modules required from a watched directory are reloadable.  When a file
-- changes, its new version is staged first: compiled as text, its body run
-- in a fresh table, its validate() called, its migrate(old_state) called.
-- Only when every step succeeded is it swapped into the module table that
-- callers already hold (the table keeps its identity), and the old
-- version's stop() is called and the tasks it started through its scope
-- are cancelled.  Any failure keeps the old version serving and is
-- reported as "file:line: message" once per failed save.  Every step runs
-- under pcall with an instruction budget.
--
-- Calls dispatch through the module table at call time: a coroutine in the
-- middle of a call finishes it on the old code, and its next call through
-- the table runs the new code.  State that must survive a reload lives in
-- M.state (or in the store), not in upvalues.
--
-- Which modules are reloadable: those found in a directory given to
-- watch() (searched before package.path unless its option path is false),
-- and those that require finds on package.path in a watched directory.
-- Paths are compared in their absolute, normalised spelling, so "d/x.lua",
-- "./d/x.lua" and "/cwd/d/x.lua" are one file.  A module written for
-- reload runs unchanged where nothing watches it: scope() then gives its
-- one version a scope of its own, and M.state is simply the module's.

local core = require "agenthost.core"
local task = core.task
local C = core._reload

local M = {}

M.budget = 10000000 -- instructions per staging step
M.on_reload = nil -- function(event): {kind = "loaded"|"failed"|"swapped", module, path, version, ms, error}
M.quiet = false -- when true, only failures are written to stderr

local roots = {} -- watched directories, in order: {dir (as given), key (canonical), search}
local watcher -- the C watcher, created by the first M.watch
local modules = {} -- canonical path -> record {name, path, key, table, version, scope}
local by_name = {} -- module name -> record
local plain = {} -- module name -> the scope of a module loaded while not watched
local staging -- the record whose body is running (for M.scope)
local main -- the program's main script (M.main): {path, key, text, reported}

-- The absolute, lexically normalised spelling of a path: one file found
-- under different spellings (a package.path entry, a watched directory, a
-- watcher's event) compares equal.
local function canon(p)
  if p:sub(1, 1) ~= "/" then p = C.cwd() .. "/" .. p end
  local parts = {}
  for seg in p:gmatch("[^/]+") do
    if seg == ".." then parts[#parts] = nil
    elseif seg ~= "." then parts[#parts + 1] = seg end
  end
  return "/" .. table.concat(parts, "/")
end

-- Whether the file at canonical path key lies in a watched directory.
local function watched(key)
  for _, r in ipairs(roots) do
    if r.key == "/" or key:sub(1, #r.key + 1) == r.key .. "/" then return true end
  end
  return false
end

local function emit(ev)
  if ev.kind == "failed" then
    io.stderr:write(string.format("agenthost: reload failed (%.1f ms): %s\n", ev.ms or 0, ev.error))
  elseif not M.quiet then
    io.stderr:write(string.format("agenthost: reload %s %s version %d (%.1f ms)\n",
      ev.kind, ev.module, ev.version or 0, ev.ms or 0))
  end
  if M.on_reload then
    local ok, err = pcall(M.on_reload, ev)
    if not ok then io.stderr:write("agenthost: on_reload failed: ", tostring(err), "\n") end
  end
end

-- Runs fn(...) in a plain coroutine with an instruction budget.  Waiting
-- calls are refused there (module bodies, validate, migrate and stop must
-- not wait).  Returns true, results or false, message.
local function budgeted(what, fn, ...)
  local co = coroutine.create(fn)
  debug.sethook(co, function()
    error(what .. ": instruction budget of " .. M.budget .. " exceeded", 2)
  end, "", M.budget)
  local res = table.pack(coroutine.resume(co, ...))
  if res[1] and coroutine.status(co) ~= "dead" then
    return false, what .. " yielded; it must not wait"
  end
  if not res[1] then
    local err = res[2]
    if type(err) == "table" and err.message then err = err.message end
    return false, tostring(err)
  end
  return table.unpack(res, 1, res.n)
end

-- A scope tracks the tasks one version of a module starts, so the swap can
-- sweep them: local R = require("agenthost.reload").scope(...)
local Scope = {}
Scope.__index = Scope

function Scope:spawn(fn, ...)
  local h = task.spawn(fn, ...)
  self.tasks[h] = true
  return h
end

-- Runs fn every `seconds` until the version is swapped out or the scope
-- swept; returns the handle of the looping task.
function Scope:every(seconds, fn, ...)
  local args = table.pack(...)
  return self:spawn(function()
    while true do
      task.sleep(seconds)
      fn(table.unpack(args, 1, args.n))
    end
  end)
end

function Scope:sweep()
  for h in pairs(self.tasks) do
    h:cancel()
    self.tasks[h] = nil
  end
end

local function new_scope(rec)
  return setmetatable({ module = rec.name, version = rec.version, tasks = setmetatable({}, { __mode = "k" }) }, Scope)
end

-- Inside a module body (local R = reload.scope(...)): the scope of the
-- version being loaded.  A module that nothing watches has one version,
-- and gets one scope per name, so that it runs unchanged without a
-- watcher: R:spawn and R:every start their tasks, R:sweep cancels them.
function M.scope(name)
  if name ~= nil and type(name) ~= "string" then
    core.error.raise("invalid_argument", "reload.scope: name must be a string (the module's name, ...)")
  end
  if staging then return staging.scope end
  local rec = name and by_name[name]
  if rec then return rec.scope end
  if not name then return new_scope({ name = "?", version = 1 }) end
  if not plain[name] then plain[name] = new_scope({ name = name, version = 1 }) end
  return plain[name]
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

-- Compiles and runs a version of the module in a fresh table.
local function stage(rec, text)
  local chunk, err = load(text, "@" .. rec.path, "t")
  if not chunk then return nil, err end
  local prev = staging
  staging = rec
  local ok, value = budgeted("module body", chunk, rec.name, rec.path)
  staging = prev
  if not ok then return nil, value end
  if type(value) ~= "table" then
    return nil, rec.path .. ": a reloadable module must return a table (it returned " .. type(value) .. ")"
  end
  if type(value.validate) == "function" then
    local vok, verdict, why = budgeted("validate", value.validate, value)
    if not vok then return nil, verdict end
    if verdict == false then
      return nil, rec.path .. ": validate() refused the new version" .. (why and (": " .. tostring(why)) or "")
    end
  end
  return value
end

-- Stages, migrates and swaps; returns true or false, error.
local function apply(rec, text)
  local t0 = core.clock()
  local old_scope = rec.scope
  local next_rec = { name = rec.name, path = rec.path, version = rec.version + 1 }
  next_rec.scope = new_scope(next_rec)
  local new, err = stage(next_rec, text)
  if not new then return false, err end
  local T = rec.table
  local state = T.state
  if type(new.migrate) == "function" then
    local ok, migrated = budgeted("migrate", new.migrate, state, new)
    if not ok then return false, migrated end
    if migrated ~= nil then state = migrated end
  elseif state == nil then
    state = new.state
  end
  -- The swap: nothing below can fail halfway.
  local old = {}
  for k, v in pairs(T) do old[k] = v end
  for k in pairs(old) do T[k] = nil end
  for k, v in pairs(new) do T[k] = v end
  T.state = state
  rec.version = next_rec.version
  rec.scope = next_rec.scope
  rec.text = text
  if type(old.stop) == "function" then
    local ok, serr = budgeted("stop", old.stop, old)
    if not ok then
      io.stderr:write("agenthost: reload: stop() of the old ", rec.name, " failed: ", serr, "\n")
    end
  end
  old_scope:sweep()
  emit({ kind = "swapped", module = rec.name, path = rec.path, version = rec.version,
         ms = (core.clock() - t0) * 1000 })
  return true
end

-- Loads a module found under a watched root (the package searcher's loader).
local function load_module(name, path)
  local t0 = core.clock()
  local text = assert(read_file(path))
  local rec = { name = name, path = path, key = canon(path), version = 1, text = text }
  rec.scope = new_scope(rec)
  local prev = staging
  staging = rec
  local chunk, err = load(text, "@" .. path, "t")
  if not chunk then staging = prev; error(err, 0) end
  local ok, value = pcall(chunk, name, path)
  staging = prev
  if not ok then error(value, 0) end
  if type(value) == "table" then
    rec.table = value
    modules[rec.key] = rec
    by_name[name] = rec
    if watcher then watcher:file(rec.key, text) end
    emit({ kind = "loaded", module = name, path = path, version = 1, ms = (core.clock() - t0) * 1000 })
  end
  return value
end

-- The package searcher (before the standard ones): the watched directories
-- that are searched, then what the standard searcher would find on
-- package.path, when it lies in a watched directory.
local function searcher(name)
  local tried = {}
  for _, root in ipairs(roots) do
    if root.search then
      local path, err = package.searchpath(name, root.dir .. "/?.lua;" .. root.dir .. "/?/init.lua")
      if path then return load_module, path end
      tried[#tried + 1] = err
    end
  end
  local path = package.searchpath(name, package.path)
  if path and watched(canon(path)) then return load_module, path end
  if #tried == 0 then return nil end
  return table.concat(tried)
end

-- A change of the main script: it is not a module and cannot be swapped,
-- so the change is reported once per saved content with what to do.
local function main_changed(text)
  if not text or text == main.text or text == main.reported then return end
  main.reported = text
  io.stderr:write("agenthost: ", main.path, " changed: the main script is not reloaded ",
    "(only the modules it requires are); restart agenthost to run the new version, ",
    "or move the code that should reload into a module (docs/reload.md)\n")
end

local function changed(path, text, err)
  local key = canon(path)
  if main and key == main.key then return main_changed(text) end
  local rec = modules[key]
  if not rec then return end -- not a loaded module
  if not text then
    if err ~= "deleted" then
      emit({ kind = "failed", module = rec.name, path = path, error = path .. ": " .. tostring(err) })
    end
    return -- a deleted file keeps the old version serving
  end
  if text == rec.text or text == rec.failed then return end
  local t0 = core.clock()
  local ok, e = apply(rec, text)
  if not ok then
    rec.failed = text -- one report per failed save
    emit({ kind = "failed", module = rec.name, path = path, error = e, ms = (core.clock() - t0) * 1000 })
  end
end

-- Watches dir (and its subdirectories): modules required from it from now
-- on are reloadable.  opts: debounce_ms (50), sighup (reload on SIGHUP),
-- poll (use polling instead of file events), path (true: require searches
-- dir before package.path; false: dir is only watched, and its modules are
-- found on package.path as they would be without watching).
function M.watch(dir, opts)
  if type(dir) ~= "string" then
    core.error.raise("invalid_argument", "ah.reload.watch: dir must be a string")
  end
  if type(opts) == "table" and opts.path ~= nil and type(opts.path) ~= "boolean" then
    core.error.raise("invalid_argument", "ah.reload.watch: path must be a boolean")
  end
  local search = not (type(opts) == "table" and opts.path == false)
  local key = canon(dir)
  for _, r in ipairs(roots) do
    if r.key == key then
      r.search = r.search or search
      return
    end
  end
  if not watcher then
    watcher = C.watch(key, changed, opts)
    table.insert(package.searchers, 2, searcher)
  else
    watcher:add(key)
  end
  roots[#roots + 1] = { dir = dir, key = key, search = search }
  for k, rec in pairs(modules) do watcher:file(k, rec.text) end
  if main and main.text then watcher:file(main.key, main.text) end
end

-- Names the program's main script (the agenthost command does under
-- --watch).  It is not a module: a change to it is reported on stderr,
-- saying that it is not reloaded and what to do instead.
function M.main(path)
  if type(path) ~= "string" then
    core.error.raise("invalid_argument", "reload.main: path must be a string")
  end
  main = { path = path, key = canon(path), text = read_file(path) }
  if watcher and main.text then watcher:file(main.key, main.text) end
end

-- Reloads module `name` from its file now; returns true or false, error.
function M.now(name)
  local rec = by_name[name]
  if not rec then
    return false, "reload.now: '" .. tostring(name) .. "' is not a module loaded from a watched directory"
  end
  local text, err = read_file(rec.path)
  if not text then return false, err end
  if text == rec.text then return true end
  local t0 = core.clock()
  local ok, e = apply(rec, text)
  if not ok then
    emit({ kind = "failed", module = name, path = rec.path, error = e, ms = (core.clock() - t0) * 1000 })
  end
  return ok, e
end

-- The version number of a loaded module (1 for the first load).
function M.version(name)
  local rec = by_name[name]
  return rec and rec.version
end

-- Stops watching (the modules stay as they are).
function M.stop()
  if watcher then watcher:close() end
  watcher = nil
  roots = {}
  for i = #package.searchers, 1, -1 do
    if package.searchers[i] == searcher then table.remove(package.searchers, i) end
  end
end

return M
