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

local core = require "agenthost.core"
local task = core.task
local C = core._reload

local M = {}

M.budget = 10000000 -- instructions per staging step
M.on_reload = nil -- function(event): {kind = "loaded"|"failed"|"swapped", module, path, version, ms, error}
M.quiet = false -- when true, only failures are written to stderr

local roots = {} -- watched directories, in order
local watcher -- the C watcher, created by the first M.watch
local modules = {} -- path -> record {name, path, table, version, scope}
local by_name = {} -- module name -> record
local staging -- the record whose body is running (for M.scope)

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

-- Inside a module body: the scope of the version being loaded.
function M.scope(name)
  if staging then return staging.scope end
  local rec = name and by_name[name]
  if rec then return rec.scope end
  error("reload.scope: call it from the body of a module loaded from a watched directory", 2)
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
  local rec = { name = name, path = path, version = 1, text = text }
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
    modules[path] = rec
    by_name[name] = rec
    if watcher then watcher:file(path, text) end
    emit({ kind = "loaded", module = name, path = path, version = 1, ms = (core.clock() - t0) * 1000 })
  end
  return value
end

local function searcher(name)
  local tried = {}
  for _, root in ipairs(roots) do
    local path, err = package.searchpath(name, root .. "/?.lua;" .. root .. "/?/init.lua")
    if path then return load_module, path end
    tried[#tried + 1] = err
  end
  return table.concat(tried)
end

local function changed(path, text, err)
  local rec = modules[path]
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
-- poll (use polling instead of file events).
function M.watch(dir, opts)
  for _, r in ipairs(roots) do if r == dir then return end end
  if not watcher then
    watcher = C.watch(dir, changed, opts)
    table.insert(package.searchers, 2, searcher)
  else
    watcher:add(dir)
  end
  roots[#roots + 1] = dir
  for path, rec in pairs(modules) do watcher:file(path, rec.text) end
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
