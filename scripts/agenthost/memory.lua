-- agenthost.memory: what agents remember, in an ah.store database.
--
--   local memory = require "agenthost.memory"
--   local mem = memory.open("var/memory.db")      -- or memory.open(db) for an open store
--   local run = mem:start_run("researcher", { goal = "..." })
--   mem:append(run, { role = "user", content = "..." })   -- waits until stored
--   mem:post(run, { role = "assistant", content = "..." }) -- fire-and-forget
--   mem:event(run, "tool_started", { name = "search" })
--   mem:tool_call(run, { id =, name =, arguments =, result =, error = })
--   local msgs = mem:history(run)                 -- in order
--   mem:finish_run(run, "done", result)
--   mem:set_note("researcher", "style", "brief")  mem:note("researcher", "style")
--   local hits = mem:recall("researcher", "what did we find about tides", 5)
--
-- The schema (agents, runs, messages, tool_calls, notes and an FTS5 index
-- over message text) carries its version in PRAGMA user_version and is
-- migrated forward on open, in one atomic batch per step.  Recall ranks
-- messages of the agent's runs by bm25; the query is free text (model
-- output is fine: it is turned into quoted terms, never spliced as syntax).
--
-- Tables given as content or data are stored as JSON.  Every value is a
-- bound parameter.

local ah = require "agenthost.core"
local cjson = require "cjson"

local M = {}
local Memory = {}
Memory.__index = Memory

M.SCHEMA_VERSION = 2

-- Each step takes the schema from version i - 1 to i.
local migrations = {
  {
    [[CREATE TABLE agents(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL)]],
    [[CREATE TABLE runs(
        id INTEGER PRIMARY KEY,
        agent_id INTEGER NOT NULL REFERENCES agents(id),
        goal TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        result TEXT,
        started REAL NOT NULL,
        finished REAL)]],
    [[CREATE INDEX runs_agent ON runs(agent_id, id)]],
    [[CREATE TABLE messages(
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        seq INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT,
        name TEXT,
        tool_call_id TEXT,
        data TEXT,
        created REAL NOT NULL,
        UNIQUE(run_id, seq))]],
    [[CREATE TABLE tool_calls(
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        call_id TEXT,
        name TEXT NOT NULL,
        arguments TEXT,
        result TEXT,
        error TEXT,
        created REAL NOT NULL)]],
    [[CREATE INDEX tool_calls_run ON tool_calls(run_id, id)]],
    [[CREATE TABLE notes(
        agent_id INTEGER NOT NULL REFERENCES agents(id),
        key TEXT NOT NULL,
        value TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY(agent_id, key))]],
  },
  {
    [[CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content = 'messages', content_rowid = 'id')]],
    [[CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
      END]],
    [[CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content)
          VALUES ('delete', old.id, old.content);
      END]],
    [[CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content)
          VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
      END]],
    -- index what version 1 stored before there was an index
    [[INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')]],
  },
}
M.migrations = migrations

local function bad(what, msg)
  error(ah.error.new("invalid_argument", what .. ": " .. msg), 3)
end

local function text_or_json(v, what, field)
  if v == nil or type(v) == "string" then return v end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  if type(v) == "table" then
    local ok, s = pcall(cjson.encode, v)
    if ok then return s end
    bad(what, field .. " cannot be encoded as JSON: " .. tostring(s))
  end
  bad(what, field .. " must be a string or a table, not a " .. type(v))
end

-- Migrates db to `target` (default: the newest version).  Returns the
-- version it found and the one it left.
function M.migrate(db, target)
  target = target or M.SCHEMA_VERSION
  local from = db:first("PRAGMA user_version").user_version
  if from > M.SCHEMA_VERSION then
    error(ah.error.new("invalid_argument", string.format(
      "agenthost.memory: the database has schema version %d, newer than this " ..
      "agenthost knows (%d); upgrade agenthost", from, M.SCHEMA_VERSION)), 2)
  end
  for v = from + 1, target do
    local batch = {}
    for i, sql in ipairs(migrations[v]) do batch[i] = { sql } end
    batch[#batch + 1] = { "PRAGMA user_version = " .. math.tointeger(v) }
    local ok, e = pcall(db.batch, db, batch)
    if not ok then
      -- Another connection may have migrated meanwhile (two opens of a new
      -- file at once): then there is nothing left to do for this step.
      if db:first("PRAGMA user_version").user_version < v then error(e, 0) end
    end
  end
  return from, math.max(from, target)
end

-- memory.open(path_or_db [, store_opts]) -> memory
function M.open(where, opts)
  local db, owned = where, false
  if type(where) == "string" then
    db, owned = ah.store.open(where, opts), true
  elseif type(where) ~= "userdata" then
    bad("memory.open", "expected a path or an open ah.store database")
  end
  M.migrate(db)
  return setmetatable({ db = db, owned = owned, agents = {} }, Memory)
end

function Memory:close()
  if self.owned then self.db:close() end
end

-- The id of the agent called name, created on first use.
function Memory:agent_id(name)
  if type(name) ~= "string" or name == "" then
    bad("memory", "the agent name must be a non-empty string")
  end
  local id = self.agents[name]
  if id then return id end
  self.db:exec("INSERT INTO agents(name, created) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
    name, os.time())
  id = self.db:first("SELECT id FROM agents WHERE name = ?", name).id
  self.agents[name] = id
  return id
end

-- mem:start_run(agent, {goal =}) -> run id
function Memory:start_run(agent, opts)
  local aid = self:agent_id(agent)
  local goal = opts and text_or_json(opts.goal, "start_run", "goal")
  local _, id = self.db:exec("INSERT INTO runs(agent_id, goal, started) VALUES (?, ?, ?)",
    aid, goal, os.time())
  return id
end

function Memory:finish_run(run, status, result)
  self.db:exec("UPDATE runs SET status = ?, result = ?, finished = ? WHERE id = ?",
    status or "done", text_or_json(result, "finish_run", "result"), os.time(), run)
end

-- The run's row {id, agent_id, goal, status, result, started, finished}.
function Memory:run(run)
  return self.db:first("SELECT * FROM runs WHERE id = ?", run)
end

-- The agent's runs, newest first.
function Memory:runs(agent, limit)
  return self.db:query("SELECT * FROM runs WHERE agent_id = ? ORDER BY id DESC LIMIT ?",
    self:agent_id(agent), limit or 100)
end

local APPEND = [[INSERT INTO messages(run_id, seq, role, content, name, tool_call_id, data, created)
  SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3, ?4, ?5, ?6, ?7 FROM messages WHERE run_id = ?1]]

local function message_args(run, msg, what)
  if math.type(run) ~= "integer" then bad(what, "the run must be a run id from start_run") end
  if type(msg) ~= "table" then bad(what, "the message must be a table {role =, content =}") end
  if type(msg.role) ~= "string" or msg.role == "" then bad(what, "the message needs a role") end
  return run, msg.role, text_or_json(msg.content, what, "content"), msg.name,
    msg.tool_call_id, text_or_json(msg.data, what, "data"), os.time()
end

-- mem:append(run, {role, content, name, tool_call_id, data}) -> message id,
-- once stored.  The messages of a run are numbered in the order appended.
function Memory:append(run, msg)
  local _, id = self.db:exec(APPEND, message_args(run, msg, "memory:append"))
  return id
end

-- Like append, without waiting: for the loop's hot path.
function Memory:post(run, msg)
  self.db:post(APPEND, message_args(run, msg, "memory:post"))
end

-- mem:event(run, kind, data): an event in the run's history (role "event").
function Memory:event(run, kind, data)
  if type(kind) ~= "string" then bad("memory:event", "the event kind must be a string") end
  self:post(run, { role = "event", name = kind, data = data })
end

-- The run's messages in order; data fields that hold JSON are decoded.
function Memory:history(run, opts)
  local rows = self.db:query(
    "SELECT seq, role, content, name, tool_call_id, data FROM messages WHERE run_id = ? " ..
    "AND (? OR role <> 'event') ORDER BY seq LIMIT ?",
    run, not (opts and opts.events == false), opts and opts.limit or -1)
  for _, r in ipairs(rows) do
    if r.data then
      local ok, v = pcall(cjson.decode, r.data)
      if ok then r.data = v end
    end
  end
  return rows
end

-- mem:tool_call(run, {id, name, arguments, result, error}) (posted)
function Memory:tool_call(run, call)
  if type(call) ~= "table" or type(call.name) ~= "string" then
    bad("memory:tool_call", "expected {name =, arguments =, result =, error =}")
  end
  self.db:post("INSERT INTO tool_calls(run_id, call_id, name, arguments, result, error, created) " ..
    "VALUES (?, ?, ?, ?, ?, ?, ?)", run, call.id, call.name,
    text_or_json(call.arguments, "memory:tool_call", "arguments"),
    text_or_json(call.result, "memory:tool_call", "result"),
    call.error ~= nil and tostring(call.error) or nil, os.time())
end

function Memory:tool_calls(run)
  return self.db:query("SELECT call_id, name, arguments, result, error FROM tool_calls " ..
    "WHERE run_id = ? ORDER BY id", run)
end

function Memory:set_note(agent, key, value)
  if type(key) ~= "string" then bad("memory:set_note", "the key must be a string") end
  self.db:exec("INSERT INTO notes(agent_id, key, value, updated) VALUES (?, ?, ?, ?) " ..
    "ON CONFLICT(agent_id, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
    self:agent_id(agent), key, text_or_json(value, "memory:set_note", "value"), os.time())
end

function Memory:note(agent, key)
  local r = self.db:first("SELECT value FROM notes WHERE agent_id = ? AND key = ?",
    self:agent_id(agent), key)
  return r and r.value
end

function Memory:notes(agent)
  local out = {}
  for _, r in ipairs(self.db:query("SELECT key, value FROM notes WHERE agent_id = ? ORDER BY key",
    self:agent_id(agent))) do
    out[r.key] = r.value
  end
  return out
end

-- Free text -> an FTS5 query of quoted terms joined by OR (at most 32).
local function fts_query(text)
  local terms, seen = {}, {}
  for word in text:gmatch("[%w\128-\255_]+") do
    local w = word:lower()
    if not seen[w] and #terms < 32 then
      seen[w] = true
      terms[#terms + 1] = '"' .. w .. '"'
    end
  end
  return table.concat(terms, " OR ")
end
M.fts_query = fts_query

-- mem:recall(agent, text, k) -> up to k messages of the agent's runs that
-- best match text, best first: {id, run_id, seq, role, content, score}
-- (score: bm25, lower is better).
function Memory:recall(agent, text, k)
  if type(text) ~= "string" then bad("memory:recall", "the text must be a string") end
  k = math.tointeger(k or 5)
  if not k or k < 1 then bad("memory:recall", "k must be an integer >= 1") end
  local q = fts_query(text)
  if q == "" then return {} end
  return self.db:query([[
    SELECT m.id, m.run_id, m.seq, m.role, m.content, bm25(messages_fts) AS score
    FROM messages_fts
    JOIN messages m ON m.id = messages_fts.rowid
    JOIN runs r ON r.id = m.run_id
    WHERE messages_fts MATCH ? AND r.agent_id = ?
    ORDER BY score LIMIT ?]], q, self:agent_id(agent), k)
end

return M
