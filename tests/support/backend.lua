-- The database the memory and agent specs keep memory in: SQLite (an
-- ah.store file, the default) or PostgreSQL (a throwaway server from
-- support.pg, one schema per path), so that the same specs run against
-- both backends.  A spec opens its databases through here:
--
--   local backend = require "support.backend"
--   local db = backend.db(path)            -- ah.store database or ah.pg pool
--   backend.memory.open(path)              -- ah.memory, on that database
--   backend.db_source(path)                -- Lua source opening it elsewhere
--   backend.sqlite_only(it)(name, fn)      -- a test that looks inside SQLite
--
-- and tests/pg_<spec>.lua runs it again with backend.rerun(file), which
-- starts the server and names each describe "... (PostgreSQL)".

local M = { name = "sqlite" }
local srv
local schemas, nschema = {}, 0

function M.is_pg() return M.name == "postgresql" end

-- The URL of the schema standing for path, made on first use.
function M.url(path)
  local s = schemas[path]
  if not s then
    nschema = nschema + 1
    s = "mem" .. nschema
    schemas[path] = s
    srv:psql("CREATE SCHEMA " .. s)
  end
  return srv.url .. "?options=-csearch_path%3D" .. s
end

-- An open database for path.
function M.db(path)
  local ah = require "agenthost"
  if not M.is_pg() then return ah.store.open(path) end
  return ah.pg.pool { url = M.url(path), size = 4 }
end

-- Lua source (with `ah` in scope) that opens the database for path, for a
-- script run in another process.
function M.db_source(path)
  if not M.is_pg() then return string.format("ah.store.open(%q)", path) end
  return string.format("ah.pg.pool { url = %q, size = 4 }", M.url(path))
end

-- ah.memory, whose open(path) opens the database for path.
M.memory = setmetatable({
  open = function(where, opts)
    local memory = require("agenthost").memory
    if M.is_pg() and type(where) == "string" then return memory.open(M.url(where), opts) end
    return memory.open(where, opts)
  end,
}, { __index = function(_, k) return require("agenthost").memory[k] end })

-- it, for a test only the SQLite backend has (it reads the file itself).
function M.sqlite_only(it)
  if M.is_pg() then return function() end end
  return it
end

-- Runs the spec file again on PostgreSQL (from the file that calls it,
-- with that file's busted environment env).
function M.rerun(file, env)
  M.name = "postgresql"
  env.setup(function() srv = require("support.pg").start() end)
  env.teardown(function() if srv then srv:stop() end end)
  local wrapped = setmetatable({
    describe = function(name, fn) return env.describe(name .. " (PostgreSQL)", fn) end,
  }, { __index = env })
  assert(loadfile(file, "t", wrapped))()
end

return M
