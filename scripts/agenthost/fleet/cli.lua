-- agenthost.fleet.cli: the `agenthost fleet` command.
--
--   agenthost fleet status [URL] [--name NAME] [--json]
--
-- prints a fleet's queue depth (due now, delayed, parked), its runs by
-- state and by kind (with fleet-wide limits), and every registered worker
-- with its heartbeat and the leases it holds.  URL defaults to
-- DATABASE_URL.  It only reads: operators steer with SQL (docs/fleet.md).
-- Exit status 0, 1 when the database cannot be read, 2 for usage errors.

local ah = require "agenthost.core"

local M = {}

local USAGE = [[
usage: agenthost fleet status [URL] [--name NAME] [--json]

Prints the queue depth, the runs by state and by kind, and the workers
alive with their leases, of the fleet NAME (default "default") in the
PostgreSQL database at URL (default: $DATABASE_URL).
]]

local function usage_error(msg)
  io.stderr:write("agenthost fleet: ", msg, "\n", USAGE)
  return 2
end

local function fmt_age(s)
  if s == nil then return "-" end
  if s < 0 then return string.format("in %.1fs", -s) end
  if s < 120 then return string.format("%.1fs", s) end
  if s < 7200 then return string.format("%.0fm", s / 60) end
  return string.format("%.1fh", s / 3600)
end

-- The report of fleet:report() as text lines.
function M.render(name, r)
  local out = {}
  local function line(...) out[#out + 1] = string.format(...) end
  line("fleet %s", name)
  line("queue: %d due now, %d delayed, %d parked (waiting for a time or an event); " ..
    "oldest due %s", r.queue.due, r.queue.delayed, r.queue.waiting, fmt_age(r.queue.oldest_due_s))
  local states = {}
  for _, s in ipairs { "queued", "running", "waiting", "done", "failed", "dead", "cancelled" } do
    states[#states + 1] = string.format("%s %d", s, r.states[s] or 0)
  end
  line("runs: %s", table.concat(states, ", "))
  if #r.kinds > 0 then
    line("%-24s %8s %8s %8s", "kind", "queued", "running", "limit")
    for _, k in ipairs(r.kinds) do
      line("%-24s %8d %8d %8s", k.kind, k.queued, k.running,
        k.max_running and tostring(k.max_running) or "-")
    end
  end
  local alive = 0
  for _, w in ipairs(r.workers) do if w.alive then alive = alive + 1 end end
  line("workers: %d alive of %d registered", alive, #r.workers)
  if #r.workers > 0 then
    line("%-36s %-6s %9s %7s %11s  %s", "worker", "state", "heartbeat", "leases", "next expiry",
      "kinds")
    for _, w in ipairs(r.workers) do
      line("%-36s %-6s %9s %7d %11s  %s", w.id, w.alive and "alive" or "stale",
        fmt_age(w.heartbeat_age), w.leases, w.next_expiry and fmt_age(-w.next_expiry) or "-",
        w.kinds or "")
    end
  end
  if r.orphans > 0 then
    line("%d running run(s) belong to no registered worker; the sweep takes them back " ..
      "when their leases expire", r.orphans)
  end
  return table.concat(out, "\n") .. "\n"
end

function M.run(...)
  local args = { ... }
  local cmd = args[1]
  if cmd == nil or cmd == "--help" or cmd == "-h" then
    io.stdout:write(USAGE)
    return cmd and 0 or 2
  end
  if cmd ~= "status" then return usage_error("unknown command '" .. tostring(cmd) .. "'") end
  local url, name, json
  local i = 2
  while i <= #args do
    local a = args[i]
    if a == "--name" then
      name = args[i + 1]
      if not name then return usage_error("--name needs a value") end
      i = i + 1
    elseif a == "--json" then
      json = true
    elseif a:sub(1, 2) == "--" then
      return usage_error("unknown option '" .. a .. "'")
    elseif url then
      return usage_error("one URL only")
    else
      url = a
    end
    i = i + 1
  end
  url = url or os.getenv("DATABASE_URL")
  if not url or url == "" then return usage_error("no database URL given (nor DATABASE_URL)") end
  local ok, res = pcall(function()
    local fleet = ah.fleet.open { db = url, name = name or "default", pool_size = 2,
                                  create = false }
    local r = fleet:report()
    fleet:close()
    return r
  end)
  if not ok then
    io.stderr:write("agenthost fleet: ", tostring(res), "\n")
    return 1
  end
  if json then
    io.stdout:write(ah.json.encode(res), "\n")
  else
    io.stdout:write(M.render(name or "default", res))
  end
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
