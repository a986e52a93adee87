-- agenthost.trace.cli: the `agenthost trace` command, which writes the
-- timeline of stored spans as one HTML file (agenthost.trace.html).
--
--   agenthost trace DB --html OUT [--conversation ID] [--since T] [--until T]
--
-- DB is a database that traced agents stored their spans in (the memory
-- file, var/memory.db for the ops agent).  With --conversation, the page
-- shows every trace that has a span of that conversation (so the sub-runs
-- it started come along); otherwise every trace with a span in the time
-- range (all of them without --since and --until).  T is Unix seconds,
-- an ISO date and time (2025-06-01T12:00:00Z; without Z, local time), or a
-- time ago: 90s, 15m, 2h, 1d.  Exit status 0 when the page was written, 1
-- when there was nothing to show or the database could not be read, 2 for
-- a usage error.

local ah = require "agenthost.core"
local store = require "agenthost.trace.store"
local html = require "agenthost.trace.html"

local M = {}

local USAGE = [[
usage: agenthost trace DB --html OUT [--conversation ID] [--since T] [--until T]

Writes the timeline of the spans stored in DB (the memory database of
traced agents, e.g. var/memory.db) to OUT, one self-contained HTML file.

  --html OUT          the file to write
  --conversation ID   the traces of one conversation (a run id of memory)
  --since T, --until T  the traces with a span in this time range; T is Unix
                      seconds, an ISO time (2025-06-01T12:00:00Z, or local
                      time without Z), or a time ago (90s, 15m, 2h, 1d)
  --limit N           at most N spans (default 50000)
  --help              this text
]]

local function usage_error(msg)
  io.stderr:write("agenthost trace: ", msg, "\n", USAGE)
  os.exit(2)
end

-- parse_time(text [, now]) -> Unix seconds, or nil and why.
function M.parse_time(text, now)
  now = now or os.time()
  local n = tonumber(text)
  if n then return n end
  local amount, unit = text:match("^(%d+%.?%d*)([smhd])$")
  if amount then
    local mult = { s = 1, m = 60, h = 3600, d = 86400 }
    return now - tonumber(amount) * mult[unit]
  end
  local y, mo, d, rest = text:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil, "not a time: " .. text end
  local hh, mm, ss, zone = 0, 0, 0, ""
  if rest ~= "" then
    local h2, m2, s2, z = rest:match("^[T ](%d%d):(%d%d):?(%d?%d?%.?%d*)(Z?)$")
    if not h2 then return nil, "not a time: " .. text end
    hh, mm, ss, zone = tonumber(h2), tonumber(m2), tonumber(s2) or 0, z
  end
  local t = os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d),
                      hour = hh, min = mm, sec = math.floor(ss), isdst = false }
  if zone == "Z" then
    -- os.time read the fields as local time: add the local offset back.
    local utc = os.time(os.date("!*t", t))
    t = t + (t - utc)
  end
  return t + (ss - math.floor(ss))
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- run(args...) -> exit status
function M.run(...)
  local args = { ... }
  local db_path, out, conversation, since, upto, limit
  local i = 1
  while i <= #args do
    local a, v = args[i], args[i + 1]
    if a == "--help" or a == "-h" then
      io.stdout:write(USAGE)
      return 0
    elseif a == "--html" then
      out = v or usage_error("--html needs a file name")
      i = i + 1
    elseif a == "--conversation" then
      conversation = v or usage_error("--conversation needs an id")
      i = i + 1
    elseif a == "--since" or a == "--until" then
      if not v then usage_error(a .. " needs a time") end
      local t, why = M.parse_time(v)
      if not t then usage_error(a .. ": " .. why .. " (Unix seconds, 2025-06-01T12:00:00Z, or 15m)") end
      if a == "--since" then since = t else upto = t end
      i = i + 1
    elseif a == "--limit" then
      limit = math.tointeger(tonumber(v))
      if not limit or limit < 1 then usage_error("--limit needs a positive integer") end
      i = i + 1
    elseif a:sub(1, 1) == "-" then
      usage_error("unknown option " .. a)
    elseif not db_path then
      db_path = a
    else
      usage_error("more than one database given (" .. db_path .. ", " .. a .. ")")
    end
    i = i + 1
  end
  if not db_path then usage_error("no database given") end
  if not out then usage_error("--html OUT is required (the file to write)") end
  if conversation and (since or upto) then
    usage_error("give either --conversation or --since/--until, not both")
  end
  if not exists(db_path) then
    io.stderr:write("agenthost trace: ", db_path, ": no such file (the memory database of ",
      "traced agents, e.g. var/memory.db after make run)\n")
    return 1
  end
  local db = ah.store.open(db_path)
  local ok, rows = pcall(store.spans, db, {
    conversation = conversation, limit = limit,
    since_ns = since and math.floor(since * 1e9), until_ns = upto and math.floor(upto * 1e9),
  })
  if not ok then
    db:close()
    local msg = tostring(rows)
    if msg:find("no such table", 1, true) then
      msg = "there are no spans in " .. db_path .. " (tracing was not on: trace.enable, " ..
        "see docs/observability.md)"
    end
    io.stderr:write("agenthost trace: ", msg, "\n")
    return 1
  end
  if #rows == 0 then
    db:close()
    io.stderr:write("agenthost trace: no spans ",
      conversation and ("of conversation " .. conversation) or "in that time range",
      " in ", db_path, "\n")
    return 1
  end
  local messages, traces, t0, t1 = {}, {}, math.maxinteger, math.mininteger
  for _, r in ipairs(rows) do
    if r.conversation and not messages[r.conversation] then
      messages[r.conversation] = store.messages(db, r.conversation)
    end
    traces[r.trace_id] = true
    if r.start_ns < t0 then t0 = r.start_ns end
    if r.end_ns > t1 then t1 = r.end_ns end
  end
  db:close()
  local ntraces = 0
  for _ in pairs(traces) do ntraces = ntraces + 1 end
  local when = os.date("!%Y-%m-%d %H:%M:%S", t0 // 1000000000) .. " UTC"
  local page = html.render(rows, messages, {
    title = conversation and ("agenthost trace: conversation " .. conversation) or "agenthost trace",
    subtitle = string.format("%s · %s · %d traces ·", db_path, when, ntraces),
  })
  local tmp = out .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then
    io.stderr:write("agenthost trace: cannot write ", out, ": ", tostring(err), "\n")
    return 1
  end
  f:write(page)
  f:close()
  local renamed, rerr = os.rename(tmp, out)
  if not renamed then
    os.remove(tmp)
    io.stderr:write("agenthost trace: cannot write ", out, ": ", tostring(rerr), "\n")
    return 1
  end
  print(string.format("wrote %s: %d spans in %d traces, %.3f s (open it in a browser)",
    out, #rows, ntraces, (t1 - t0) / 1e9))
  return 0
end

-- The command's entry point: exits with run's status when it is not 0.
function M.main(...)
  local code = M.run(...)
  if code ~= 0 then
    io.stdout:flush()
    os.exit(code)
  end
end

return M
