-- agenthost.memory: what agents remember, in an ah.store database.
--
--   local memory = require "agenthost.memory"
--   local mem = memory.open("var/memory.db")      -- or memory.open(db) for an open store
--   local run = mem:start_run("researcher", { goal = "..." })   -- a conversation id
--   mem:append(run, { role = "user", content = "...", agent = "researcher" })  -- waits until stored
--   mem:post(run, { role = "assistant", content = "..." }) -- fire-and-forget
--   mem:event(run, "tool_started", { name = "search" })
--   mem:tool_call(run, { id =, name =, arguments =, result =, error = })
--   local msgs = mem:history(run)                 -- in order
--   mem:set_status(run, "waiting_approval")       -- running | waiting_approval
--   mem:set_agent(run, "billing")                 -- the agent that has the conversation now
--   mem:finish_run(run, "done", result)           -- done | max_turns | failed (with an error)
--   mem:conversations { agent = "researcher", state = "running" }   -- what to resume
--   mem:set_note("researcher", "style", "brief")  mem:note("researcher", "style")
--   local hits = mem:recall("researcher", "what did we find about tides", 5)
--
-- A conversation (the table is called runs, for history) is one integer
-- id: memory.id(v) is how every entry point reads one, and it accepts an
-- integer, a float with an integer value, or a string of decimal digits
-- (what a command line gives); anything else is refused with a message
-- naming the type expected.
--
-- The schema (agents, runs, messages, tool_calls, notes and an FTS5 index
-- over message text) carries its version in PRAGMA user_version and is
-- migrated forward on open, in one atomic batch per step.  Every statement
-- the module runs is in the SQL table below, next to the migrations: plain
-- SQL with bound parameters whose PostgreSQL form is the same statement
-- with $n placeholders (the FTS5 index and bm25 are the one part another
-- backend does its own way).  The methods above are the backend-neutral
-- API the agent loop uses.
--
-- Recall ranks messages of the agent's conversations by bm25; the query is
-- free text (model output is fine: it is turned into quoted terms, never
-- spliced as syntax).
--
-- Tables given as content or data are stored as JSON (ah.json), which
-- keeps the type of every number: an integer comes back an integer (a
-- token count stays 71, not 71.0), a float a float (71.0 stays 71.0), and
-- integers beyond 2^53 keep every digit.  JSON null is ah.null both ways.

local ah = require "agenthost.core"
local json = ah.json

local M = {}
local Memory = {}
Memory.__index = Memory

M.SCHEMA_VERSION = 3

-- ---- the schema and the statements ----------------------------------------------

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
  {
    -- The agent that has the conversation now (handoffs move it; NULL: the
    -- agent that started it), the tool call of another conversation that
    -- started this one (agents used as tools), why it failed, and when its
    -- state last changed.  Rows of version 2 keep NULL in all of them.
    [[ALTER TABLE runs ADD COLUMN current_agent TEXT]],
    [[ALTER TABLE runs ADD COLUMN parent_id INTEGER REFERENCES runs(id)]],
    [[ALTER TABLE runs ADD COLUMN parent_call TEXT]],
    [[ALTER TABLE runs ADD COLUMN error TEXT]],
    [[ALTER TABLE runs ADD COLUMN updated REAL]],
    -- The agent that wrote each message (NULL in version 2: the run's agent).
    [[ALTER TABLE messages ADD COLUMN agent TEXT]],
    [[CREATE INDEX runs_status ON runs(agent_id, status, id)]],
    [[CREATE INDEX runs_parent ON runs(parent_id, parent_call)]],
  },
}
M.migrations = migrations

-- The columns of a conversation as the methods return it.
local RUN_COLUMNS = [[r.id, r.agent_id, a.name AS agent, coalesce(r.current_agent, a.name) AS current_agent,
  r.goal, r.status, r.result, r.error, r.parent_id AS parent, r.parent_call, r.started, r.finished,
  coalesce(r.updated, r.finished, r.started) AS updated]]

local SQL = {
  user_version = "PRAGMA user_version",
  agent_insert = "INSERT INTO agents(name, created) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
  agent_id = "SELECT id FROM agents WHERE name = ?",
  run_insert = "INSERT INTO runs(agent_id, goal, started, parent_id, parent_call, updated) " ..
    "VALUES (?, ?, ?, ?, ?, ?)",
  run_finish = "UPDATE runs SET status = ?, result = ?, error = ?, finished = ?, updated = ? WHERE id = ?",
  run_status = "UPDATE runs SET status = ?, error = ?, updated = ? WHERE id = ?",
  run_agent = "UPDATE runs SET current_agent = ?, updated = ? WHERE id = ?",
  run_get = "SELECT " .. RUN_COLUMNS .. " FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.id = ?",
  runs_of_agent = "SELECT " .. RUN_COLUMNS .. " FROM runs r JOIN agents a ON a.id = r.agent_id " ..
    "WHERE r.agent_id = ? ORDER BY r.id DESC LIMIT ?",
  -- conversations{}: every filter is optional (a NULL parameter matches
  -- everything); ?5 = 1 asks for conversations without a parent.  A LIMIT
  -- of -1 is no limit (PostgreSQL: LIMIT NULL).
  conversations = "SELECT " .. RUN_COLUMNS .. " FROM runs r JOIN agents a ON a.id = r.agent_id " ..
    "WHERE (?1 IS NULL OR r.agent_id = ?1) AND (?2 IS NULL OR r.status = ?2) " ..
    "AND (?3 IS NULL OR r.parent_id = ?3) AND (?4 IS NULL OR r.parent_call = ?4) " ..
    "AND (?5 = 0 OR r.parent_id IS NULL) ORDER BY r.id LIMIT ?6",
  message_insert = [[INSERT INTO messages(run_id, seq, role, content, name, tool_call_id, data, created, agent)
    SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM messages WHERE run_id = ?1]],
  history = "SELECT m.id, m.seq, m.role, m.content, m.name, m.tool_call_id, m.data, " ..
    "coalesce(m.agent, a.name) AS agent FROM messages m JOIN runs r ON r.id = m.run_id " ..
    "JOIN agents a ON a.id = r.agent_id WHERE m.run_id = ? AND (? OR m.role <> 'event') " ..
    "ORDER BY m.seq LIMIT ?",
  tool_call_insert = "INSERT INTO tool_calls(run_id, call_id, name, arguments, result, error, created) " ..
    "VALUES (?, ?, ?, ?, ?, ?, ?)",
  tool_calls = "SELECT call_id, name, arguments, result, error FROM tool_calls WHERE run_id = ? ORDER BY id",
  note_set = "INSERT INTO notes(agent_id, key, value, updated) VALUES (?, ?, ?, ?) " ..
    "ON CONFLICT(agent_id, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
  note_get = "SELECT value FROM notes WHERE agent_id = ? AND key = ?",
  notes = "SELECT key, value FROM notes WHERE agent_id = ? ORDER BY key",
  -- The messages of the conversations the agent started or took part in.
  recall = [[SELECT m.id, m.run_id, m.seq, m.role, m.content, bm25(messages_fts) AS score
    FROM messages_fts
    JOIN messages m ON m.id = messages_fts.rowid
    JOIN runs r ON r.id = m.run_id
    WHERE messages_fts MATCH ?1 AND (r.agent_id = ?2 OR m.agent = ?3)
    ORDER BY score LIMIT ?4]],
}
M.SQL = SQL

-- The states of a conversation: running (started, never finished: if no
-- run is going on, the process died), waiting_approval (a tool call waits
-- for a:approve), done, max_turns, failed.
M.STATES = { running = true, waiting_approval = true, done = true, max_turns = true, failed = true }

-- ---- values ----------------------------------------------------------------------

local function bad(what, msg)
  error(ah.error.new("invalid_argument", what .. ": " .. msg), 3)
end

-- memory.encode(v) -> JSON text, or nil and the reason; memory.decode(text)
-- -> value, or nil and the reason: ah.json, with the contract these had
-- when they were a codec of their own.
local function reason(e) return type(e) == "table" and tostring(e.message) or tostring(e) end
function M.encode(v)
  local ok, s = pcall(json.encode, v)
  if ok then return s end
  return nil, reason(s)
end
function M.decode(text)
  if type(text) ~= "string" then return nil, "not a string" end
  local ok, v = pcall(json.decode, text)
  if ok then return v end
  return nil, reason(v)
end

-- memory.id(v [, what]) -> the integer conversation id v stands for, or
-- raises invalid_argument naming the expected type.
function M.id(v, what)
  local id
  if math.type(v) == "integer" then
    id = v
  elseif math.type(v) == "float" then
    id = math.tointeger(v)
  elseif type(v) == "string" and v:match("^%s*%d+%s*$") then
    id = math.tointeger(tonumber(v))
  end
  if not id or id < 1 then
    local shown = type(v) == "string" and string.format("%q", v) or tostring(v)
    error(ah.error.new("invalid_argument", string.format(
      "%s: a conversation is an integer id (as start_run or r.conversation gives it; " ..
      "a string of digits is read as one), got %s %s", what or "memory", type(v), shown)), 3)
  end
  return id
end

local function text_or_json(v, what, field)
  if v == nil or type(v) == "string" then return v end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  if type(v) == "table" then
    local s, why = M.encode(v)
    if s then return s end
    bad(what, field .. " cannot be encoded as JSON: " .. why)
  end
  bad(what, field .. " must be a string or a table, not a " .. type(v))
end

-- ---- opening ---------------------------------------------------------------------

-- Migrates db to `target` (default: the newest version).  Returns the
-- version it found and the one it left.
function M.migrate(db, target)
  target = target or M.SCHEMA_VERSION
  local from = db:first(SQL.user_version).user_version
  if from > M.SCHEMA_VERSION then
    error(ah.error.new("invalid_argument", string.format(
      "agenthost.memory: the database has schema version %d, newer than this " ..
      "agenthost knows (%d); upgrade agenthost", from, M.SCHEMA_VERSION)), 2)
  end
  for v = from + 1, target do
    local batch = {}
    for i, sql in ipairs((db.migrations or migrations)[v]) do batch[i] = { sql } end
    batch[#batch + 1] = { "PRAGMA user_version = " .. math.tointeger(v) }
    local ok, e = pcall(db.batch, db, batch)
    if not ok then
      -- Another connection may have migrated meanwhile (two opens of a new
      -- file at once): then there is nothing left to do for this step.
      if db:first(SQL.user_version).user_version < v then error(e, 0) end
    end
  end
  return from, math.max(from, target)
end

-- Is x a database memory.open takes (an ah.store database, an ah.pg pool
-- or session)?
function M.is_database(x)
  return type(x) == "userdata" or (type(x) == "table" and require("agenthost.pg").is_pool(x))
end

-- memory.open(path_or_db [, opts]) -> memory.  A path opens an ah.store
-- database (opts: the store's); a postgres:// URL a pool of its own (opts:
-- the pool's); an ah.pg pool or session is used as it is
-- (agenthost.memory.pg gives PostgreSQL's dialect).
function M.open(where, opts)
  local db, owned = where, false
  if type(where) == "string" and where:find("^postgres") then
    db, owned = require("agenthost.memory.pg").open(where, opts), true
  elseif type(where) == "string" then
    db, owned = ah.store.open(where, opts), true
  elseif type(where) == "table" and M.is_database(where) then
    db = require("agenthost.memory.pg").adapt(where)
  elseif type(where) ~= "userdata" then
    bad("memory.open", "expected a path, a postgres:// URL, an open ah.store database or an ah.pg pool")
  end
  M.migrate(db)
  return setmetatable({ db = db, owned = owned, agents = {} }, Memory)
end

function Memory:close()
  if self.owned then self.db:close() end
end

-- mem:flush(): waits until every write posted so far (mem:post, a
-- cancelled run's mark) is committed, on SQLite and PostgreSQL alike.
function Memory:flush()
  self.db:flush()
end

-- ---- agents and conversations ----------------------------------------------------

-- The id of the agent called name, created on first use.
function Memory:agent_id(name)
  if type(name) ~= "string" or name == "" then
    bad("memory", "the agent name must be a non-empty string")
  end
  local id = self.agents[name]
  if id then return id end
  self.db:exec(SQL.agent_insert, name, os.time())
  id = self.db:first(SQL.agent_id, name).id
  self.agents[name] = id
  return id
end

-- mem:start_run(agent, {goal =, parent =, parent_call =}) -> conversation id
-- parent and parent_call link a conversation to the tool call of another
-- conversation that started it.
function Memory:start_run(agent, opts)
  local aid = self:agent_id(agent)
  local goal = opts and text_or_json(opts.goal, "start_run", "goal")
  local parent = opts and opts.parent ~= nil and M.id(opts.parent, "memory:start_run") or nil
  local call = opts and opts.parent_call
  if call ~= nil and type(call) ~= "string" then bad("memory:start_run", "parent_call must be a string") end
  local now = os.time()
  local _, id = self.db:exec(SQL.run_insert, aid, goal, now, parent, call, now)
  return id
end

local function check_state(what, status, allowed)
  if not allowed[status] then
    local names = {}
    for k in pairs(allowed) do names[#names + 1] = k end
    table.sort(names)
    bad(what, string.format("the state must be one of %s, got %s", table.concat(names, ", "),
      tostring(status)))
  end
end

local FINISHED = { done = true, max_turns = true, failed = true }
local UNFINISHED = { running = true, waiting_approval = true }

-- mem:finish_run(run, status, result [, error]): done, max_turns or failed
-- (error: why, as text).
function Memory:finish_run(run, status, result, err)
  status = status or "done"
  check_state("memory:finish_run", status, FINISHED)
  local now = os.time()
  self.db:exec(SQL.run_finish, status, text_or_json(result, "finish_run", "result"),
    err ~= nil and tostring(err) or nil, now, now, M.id(run, "memory:finish_run"))
end

-- Like finish_run, without waiting (for a run being cancelled, whose
-- cleanup must not wait).
function Memory:post_finish_run(run, status, result, err)
  status = status or "done"
  check_state("memory:post_finish_run", status, FINISHED)
  local now = os.time()
  self.db:post(SQL.run_finish, status, text_or_json(result, "post_finish_run", "result"),
    err ~= nil and tostring(err) or nil, now, now, M.id(run, "memory:post_finish_run"))
end

-- mem:set_status(run, status): running or waiting_approval.
function Memory:set_status(run, status)
  check_state("memory:set_status", status, UNFINISHED)
  self.db:exec(SQL.run_status, status, nil, os.time(), M.id(run, "memory:set_status"))
end

-- mem:set_agent(run, name): the agent that has the conversation now.
function Memory:set_agent(run, name)
  if type(name) ~= "string" or name == "" then bad("memory:set_agent", "the agent name must be a non-empty string") end
  self.db:exec(SQL.run_agent, name, os.time(), M.id(run, "memory:set_agent"))
end

-- The conversation's row {id, agent (that started it), agent_id,
-- current_agent, goal, status, result, error, parent, parent_call, started,
-- finished, updated}, or nil.
function Memory:run(run)
  return self.db:first(SQL.run_get, M.id(run, "memory:run"))
end

-- The agent's conversations, newest first.
function Memory:runs(agent, limit)
  return self.db:query(SQL.runs_of_agent, self:agent_id(agent), limit or 100)
end

-- mem:conversations{agent =, state =, parent = id | false, call =, limit =}
-- -> the matching conversations (rows as mem:run gives them), oldest
-- first.  agent: the agent that started them; state: one of M.STATES;
-- parent: those started by a tool call of that conversation (call: of that
-- call id), or false for those started by no tool call.
function Memory:conversations(opts)
  opts = opts or {}
  if type(opts) ~= "table" then bad("memory:conversations", "expected a table {agent =, state =, ...}") end
  local aid
  if opts.agent ~= nil then
    if type(opts.agent) ~= "string" then bad("memory:conversations", "agent must be a string") end
    local r = self.db:first(SQL.agent_id, opts.agent)
    if not r then return {} end
    aid = r.id
  end
  if opts.state ~= nil then check_state("memory:conversations", opts.state, M.STATES) end
  local parent, top = nil, 0
  if opts.parent == false then top = 1
  elseif opts.parent ~= nil then parent = M.id(opts.parent, "memory:conversations") end
  if opts.call ~= nil and type(opts.call) ~= "string" then bad("memory:conversations", "call must be a string") end
  local limit = opts.limit or -1
  if math.type(limit) ~= "integer" then bad("memory:conversations", "limit must be an integer") end
  return self.db:query(SQL.conversations, aid, opts.state, parent, opts.call, top, limit)
end

-- ---- messages --------------------------------------------------------------------

local function message_args(run, msg, what)
  run = M.id(run, what)
  if type(msg) ~= "table" then bad(what, "the message must be a table {role =, content =}") end
  if type(msg.role) ~= "string" or msg.role == "" then bad(what, "the message needs a role") end
  if msg.agent ~= nil and type(msg.agent) ~= "string" then bad(what, "the message's agent must be a string") end
  return run, msg.role, text_or_json(msg.content, what, "content"), msg.name,
    msg.tool_call_id, text_or_json(msg.data, what, "data"), os.time(), msg.agent
end

-- mem:append(run, {role, content, name, tool_call_id, data, agent}) ->
-- message id, once stored.  The messages of a run are numbered in the
-- order appended.
function Memory:append(run, msg)
  local _, id = self.db:exec(SQL.message_insert, message_args(run, msg, "memory:append"))
  return id
end

-- Like append, without waiting: for the loop's hot path.
function Memory:post(run, msg)
  self.db:post(SQL.message_insert, message_args(run, msg, "memory:post"))
end

-- mem:event(run, kind, data): an event in the run's history (role "event").
function Memory:event(run, kind, data)
  if type(kind) ~= "string" then bad("memory:event", "the event kind must be a string") end
  self:post(run, { role = "event", name = kind, data = data })
end

-- The run's messages in order, {id, seq, role, content, name,
-- tool_call_id, data, agent}; data that holds JSON is decoded (numbers
-- keep their type).  opts: events = false leaves events out; limit.
function Memory:history(run, opts)
  local rows = self.db:query(SQL.history, M.id(run, "memory:history"),
    not (opts and opts.events == false), opts and opts.limit or -1)
  for _, r in ipairs(rows) do
    if r.data then
      local ok, v = pcall(json.decode, r.data)
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
  self.db:post(SQL.tool_call_insert, M.id(run, "memory:tool_call"), call.id, call.name,
    text_or_json(call.arguments, "memory:tool_call", "arguments"),
    text_or_json(call.result, "memory:tool_call", "result"),
    call.error ~= nil and tostring(call.error) or nil, os.time())
end

function Memory:tool_calls(run)
  return self.db:query(SQL.tool_calls, M.id(run, "memory:tool_calls"))
end

-- ---- notes and recall ------------------------------------------------------------

function Memory:set_note(agent, key, value)
  if type(key) ~= "string" then bad("memory:set_note", "the key must be a string") end
  self.db:exec(SQL.note_set, self:agent_id(agent), key,
    text_or_json(value, "memory:set_note", "value"), os.time())
end

function Memory:note(agent, key)
  local r = self.db:first(SQL.note_get, self:agent_id(agent), key)
  return r and r.value
end

function Memory:notes(agent)
  local out = {}
  for _, r in ipairs(self.db:query(SQL.notes, self:agent_id(agent))) do
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

-- mem:recall(agent, text, k) -> up to k messages of the conversations the
-- agent started or wrote in that best match text, best first: {id, run_id,
-- seq, role, content, score} (score: bm25, lower is better).
function Memory:recall(agent, text, k)
  if type(text) ~= "string" then bad("memory:recall", "the text must be a string") end
  k = math.tointeger(k or 5)
  if not k or k < 1 then bad("memory:recall", "k must be an integer >= 1") end
  local q = fts_query(text)
  if q == "" then return {} end
  return self.db:query(SQL.recall, q, self:agent_id(agent), agent, k)
end

return M
