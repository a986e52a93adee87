-- agenthost.trace.hooks: what tracing adds to the other parts while it is
-- on, installed by trace.enable and removed by trace.disable.
--
-- HTTP (always while on): a request made inside a span carries the W3C
-- traceparent of that span, or of its own client span with
-- enable{http = true} ("GET", kind "http": method, server address and
-- port, the URL without its query or credentials, status; error.type is
-- the status code from 400 up, or the error's kind).  Streams (ah.http.stream
-- and sse) get a span that ends when the response head is in.
--
-- Subprocesses (enable{proc = true}): ah.proc.run gets a span (kind
-- "proc", the program's name and its exit code); ah.proc.spawn an event
-- on the current span.  Store writes (enable{db = true}): db:exec and
-- db:batch get a span (kind "db", db.system.name sqlite, the statement's
-- first word as db.operation.name, and the statement without its
-- parameters, which are never recorded); db:post, which does not wait, an
-- event on the current span.  The spans' own writes are never traced.

local core = require "agenthost.core"
local running = coroutine.running

local M = {}

local trace, cfg, current -- set by install
local saved = {}          -- what install replaced: {table, key, original}

local function replace(t, k, fn)
  saved[#saved + 1] = { t, k, t[k] }
  t[k] = fn
end

-- ---- HTTP ----------------------------------------------------------------------------

-- scheme://host[:port]/path of a URL, without credentials or query.
local function url_parts(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  authority = authority:gsub("^.*@", "")
  path = path:match("^[^?#]*")
  local host, port = authority:match("^%[(.-)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]*):?(%d*)$") end
  port = tonumber(port) or (scheme:lower() == "https" and 443 or 80)
  return scheme:lower() .. "://" .. authority .. path, host, port
end
M.url_parts = url_parts

local has_header

local function http_tracer(send, o, what)
  local parent = current[running()]
  if not parent then return send(o) end
  local sp
  if cfg.http then
    local method = (o.method or "GET"):upper()
    sp = trace.start(method, { kind = "http", span_kind = trace.CLIENT, current = false })
    local full, host, port = url_parts(tostring(o.url))
    sp:set("http.request.method", method):set("url.full", full)
      :set("server.address", host):set("server.port", port)
    if what ~= "request" then sp:set("agenthost.http.mode", what) end
  end
  local headers = {}
  for k, v in pairs(o.headers or {}) do headers[k] = v end
  if not has_header(headers, "traceparent") then
    headers.traceparent = (sp or parent):traceparent()
  end
  local n = {}
  for k, v in pairs(o) do n[k] = v end
  n.headers = headers
  if not sp then return send(n) end
  local ok, res = pcall(send, n)
  if not ok then
    sp:finish(res)
    error(res, 0)
  end
  local status = res.status
  sp:set("http.response.status_code", status)
  if type(status) == "number" and status >= 400 then
    sp:set("error.type", tostring(math.tointeger(status) or status))
    sp:set_status("error", "HTTP status " .. tostring(math.tointeger(status) or status))
  end
  sp:finish()
  return res
end

-- ---- subprocesses -----------------------------------------------------------------------

local function proc_hooks(proc)
  local run, spawn = proc.run, proc.spawn
  replace(proc, "run", function(opts)
    if not current[running()] then return run(opts) end
    local cmd = type(opts) == "table" and (opts.cmd or opts[1]) or nil
    local sp = trace.start("proc " .. tostring(cmd), { kind = "proc" })
    sp:set("process.executable.name", cmd and tostring(cmd):match("[^/]*$"))
    local ok, r = pcall(run, opts)
    if not ok then
      sp:finish(r)
      error(r, 0)
    end
    sp:set("process.exit.code", r.code)
    if r.code ~= 0 then
      sp:set("error.type", r.signal and "signal" or "exit_code")
      sp:set_status("error", r.signal and ("killed by signal " .. tostring(r.signal))
        or ("exit code " .. tostring(r.code)))
    end
    sp:finish()
    return r
  end)
  replace(proc, "spawn", function(opts)
    local sp = current[running()]
    if sp then
      local cmd = type(opts) == "table" and (opts.cmd or opts[1]) or nil
      sp:add_event("proc.spawn", { ["process.executable.name"] = cmd and tostring(cmd) })
    end
    return spawn(opts)
  end)
end

-- ---- the store ------------------------------------------------------------------------

local function operation(sql)
  return type(sql) == "string" and (sql:match("^%s*(%a+)") or ""):upper() or nil
end

local function db_hooks(methods)
  local exec, batch, post = methods.exec, methods.batch, methods.post
  -- The span store writes with the original post (agenthost.trace.store).
  require("agenthost.trace.store").use_post(post)
  local function traced(fn, what)
    return function(db, sql, ...)
      if not current[running()] then return fn(db, sql, ...) end
      local op = what == "batch" and "BATCH" or operation(sql)
      local sp = trace.start(op or what, { kind = "db", span_kind = trace.CLIENT })
      sp:set("db.system.name", "sqlite"):set("db.operation.name", op)
      if what == "exec" then sp:set("db.query.text", sql) end
      local res = table.pack(pcall(fn, db, sql, ...))
      if not res[1] then
        sp:finish(res[2])
        error(res[2], 0)
      end
      sp:finish()
      return table.unpack(res, 2, res.n)
    end
  end
  methods.exec = traced(exec, "exec")
  methods.batch = traced(batch, "batch")
  methods.post = function(db, sql, ...)
    local sp = current[running()]
    if sp then sp:add_event("db.post", { ["db.operation.name"] = operation(sql) }) end
    return post(db, sql, ...)
  end
  saved[#saved + 1] = { methods, "exec", exec }
  saved[#saved + 1] = { methods, "batch", batch }
  saved[#saved + 1] = { methods, "post", post }
end

local db_patched = false

-- Called with every database tracing meets (the stores of traces, and
-- each one ah.store.open returns while db spans are on): the first one
-- gives the methods table that all databases share.
function M.seen_db(db)
  if db_patched or not (cfg and cfg.db) then return end
  local mt = getmetatable(db)
  if type(mt) == "table" and type(mt.__index) == "table" then
    db_patched = true
    db_hooks(mt.__index)
  end
end

-- ---- install / remove ---------------------------------------------------------------------

function M.install(trace_mod, settings, current_spans)
  M.remove()
  trace, cfg, current = trace_mod, settings, current_spans
  local http = require "agenthost.http"
  has_header = http.has_header
  http._set_tracer(http_tracer)
  saved[#saved + 1] = { set = http._set_tracer }
  if cfg.proc then proc_hooks(require "agenthost.proc") end
  if cfg.db then
    local open = core.store.open
    replace(core.store, "open", function(...)
      local db = open(...)
      M.seen_db(db)
      return db
    end)
    if cfg.store then M.seen_db(cfg.store) end
  end
end

function M.remove()
  db_patched = false
  for i = #saved, 1, -1 do
    local s = saved[i]
    if s.set then s.set(nil) else s[1][s[2]] = s[3] end
    saved[i] = nil
  end
end

return M
