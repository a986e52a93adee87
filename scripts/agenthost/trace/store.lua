-- agenthost.trace.store: finished spans in the database of an agent's
-- memory, one row per span in the table trace_spans, and the queries the
-- timeline reads them back with.
--
-- Writes go through db:post: the store's writer thread commits them with
-- whatever else is queued (group commit), and the agent never waits.  A
-- database is an ah.store one or any object with the store's post, query
-- and first (memory on PostgreSQL has one, which queues its writes for a
-- background writer of its own).  The
-- table is created on first use, with statements posted ahead of the first
-- span (the writer runs posts in order).  The SQL is plain (TEXT, BIGINT,
-- INTEGER, positional parameters, no SQLite functions), so that another
-- backend of ah.store can run it unchanged.
--
-- No primary key: span ids are random, and keeping them in a unique index
-- costs every write more than it gives the reads (which go by trace and
-- by conversation, both indexed).  Columns: trace_id, span_id (hex, W3C
-- sizes), parent_span_id (NULL for a
-- root), name, kind (the timeline's category), span_kind (OTLP's SpanKind
-- number), start_ns and end_ns (Unix nanoseconds), status ('unset', 'ok',
-- 'error'), status_message, conversation (the gen_ai.conversation.id of
-- the span's run, inherited by its children), attributes (a JSON object)
-- and events (a JSON array of {name, offset_ns, attributes}, or NULL;
-- offset_ns from the span's start, which JSON numbers hold exactly).

local json = require("agenthost.core").json

local M = {}

M.TABLE = "trace_spans"

M.SCHEMA = {
  [[CREATE TABLE IF NOT EXISTS trace_spans(
      trace_id TEXT NOT NULL,
      span_id TEXT NOT NULL,
      parent_span_id TEXT,
      name TEXT NOT NULL,
      kind TEXT NOT NULL,
      span_kind INTEGER NOT NULL,
      start_ns BIGINT NOT NULL,
      end_ns BIGINT NOT NULL,
      status TEXT NOT NULL,
      status_message TEXT,
      conversation TEXT,
      attributes TEXT NOT NULL,
      events TEXT)]],
  [[CREATE INDEX IF NOT EXISTS trace_spans_trace ON trace_spans(trace_id)]],
  [[CREATE INDEX IF NOT EXISTS trace_spans_conversation ON trace_spans(conversation)]],
}

local INSERT = [[INSERT INTO trace_spans(trace_id, span_id, parent_span_id, name, kind,
  span_kind, start_ns, end_ns, status, status_message, conversation, attributes, events)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)]]

local STATUS = { [0] = "unset", [1] = "ok", [2] = "error" }
M.STATUS = STATUS

local ready = setmetatable({}, { __mode = "k" }) -- databases whose table exists
local post_fn                                    -- db:post as it was before any hook

-- The store's post as it is before tracing wraps it (agenthost.trace.hooks).
function M.use_post(fn)
  post_fn = post_fn or fn
end

-- Posts to db: an ah.store database (userdata, whose post the db hooks may
-- wrap), or another backend's database object with the same post (memory
-- on PostgreSQL: agenthost.memory.pg, which writes in the background too).
local function post(db, ...)
  if post_fn and type(db) == "userdata" then return post_fn(db, ...) end
  return db:post(...)
end

-- Creates the table in db unless done already (posted: never waits).
function M.ensure(db)
  if ready[db] then return end
  ready[db] = true
  for _, sql in ipairs(M.SCHEMA) do post(db, sql) end
  local hooks = package.loaded["agenthost.trace.hooks"]
  if hooks then hooks.seen_db(db) end
end

-- JSON of a table that may be empty: "{}" for the attributes.
local function encode(t)
  local ok, s = pcall(json.encode, t)
  if ok then return s end
  -- A value JSON cannot hold (a function, a cycle): its text instead.
  local safe = {}
  for k, v in pairs(t) do
    local tv = type(v)
    safe[tostring(k)] = (tv == "string" or tv == "number" or tv == "boolean") and v or tostring(v)
  end
  return json.encode(safe)
end

-- Posts the row of a finished span.
function M.write(db, sp)
  if not ready[db] then M.ensure(db) end
  local events
  if sp.events then
    local list = {}
    for i, e in ipairs(sp.events) do
      list[i] = { name = e.name, offset_ns = e.time_ns - sp.start_ns, attributes = e.attributes }
    end
    events = encode(list)
  end
  post(db, INSERT, sp.trace_id, sp.span_id, sp.parent_id, sp.name, sp.kind, sp.span_kind,
    sp.start_ns, sp.end_ns, STATUS[sp.status] or "unset", sp.status_message, sp.conversation,
    encode(sp.attributes), events)
end

-- ---- reading ------------------------------------------------------------------------------

local COLUMNS = [[trace_id, span_id, parent_span_id, name, kind, span_kind, start_ns, end_ns,
  status, status_message, conversation, attributes, events]]

local function decode_rows(rows)
  for _, r in ipairs(rows) do
    local ok, a = pcall(json.decode, r.attributes or "{}")
    r.attributes = ok and type(a) == "table" and a or {}
    if r.events then
      local ok2, e = pcall(json.decode, r.events)
      r.events = ok2 and type(e) == "table" and e or nil
      for _, ev in ipairs(r.events or {}) do
        ev.time_ns = r.start_ns + (math.tointeger(ev.offset_ns) or 0)
        ev.offset_ns = nil
      end
    end
  end
  return rows
end

-- spans(db, {conversation =, since_ns =, until_ns =, limit =}) -> rows:
-- every span of each trace that has a span of the conversation, or a span
-- overlapping [since_ns, until_ns) (either bound may be nil), in the order
-- they started; at most limit (default 50,000) rows.
function M.spans(db, q)
  q = q or {}
  local limit = q.limit or 50000
  local rows
  if q.conversation ~= nil then
    rows = db:query("SELECT " .. COLUMNS .. " FROM trace_spans WHERE trace_id IN " ..
      "(SELECT trace_id FROM trace_spans WHERE conversation = ?) ORDER BY start_ns, span_id LIMIT ?",
      tostring(q.conversation), limit)
  else
    local since = q.since_ns or math.mininteger
    local upto = q.until_ns or math.maxinteger
    rows = db:query("SELECT " .. COLUMNS .. " FROM trace_spans WHERE trace_id IN " ..
      "(SELECT trace_id FROM trace_spans WHERE start_ns < ? AND end_ns >= ?) " ..
      "ORDER BY start_ns, span_id LIMIT ?", upto, since, limit)
  end
  return decode_rows(rows)
end

-- messages(db, conversation) -> the conversation's messages from the
-- memory tables ({seq, role, content, name, tool_call_id, created,
-- tool_calls = {{name, arguments}} of an answer, is_error of a tool
-- result}), or {} when the database has none (no memory there, or
-- another id).
function M.messages(db, conversation)
  local id = math.tointeger(tonumber(conversation))
  if not id then return {} end
  local ok, rows = pcall(db.query, db,
    "SELECT seq, role, content, name, tool_call_id, created, data FROM messages " ..
    "WHERE run_id = ? AND role <> 'event' ORDER BY seq", id)
  if not ok then return {} end
  for _, r in ipairs(rows) do
    local okd, data = pcall(json.decode, r.data or "null")
    r.data = nil
    if okd and type(data) == "table" then
      if type(data.tool_calls) == "table" then
        local calls = {}
        for i, c in ipairs(data.tool_calls) do
          if type(c) == "table" then
            local args = c.raw_arguments
            if type(args) ~= "string" then
              local oke, text = pcall(json.encode, c.arguments or {})
              args = oke and text or nil
            end
            calls[#calls + 1] = { name = tostring(c.name), arguments = args }
          end
          if i >= 64 then break end
        end
        r.tool_calls = calls
      end
      if data.is_error == true then r.is_error = true end
    end
  end
  return rows
end

return M
