-- bench/http_client.lua: HTTP client throughput and latency on agenthost.
--
--   build/agenthost bench/http_client.lua URL CONCURRENCY SECONDS
--
-- CONCURRENCY worker tasks each loop `http.get(URL)` (reading the whole
-- body) on one loop.  After a short warm-up (which opens the connections)
-- the measured window lasts SECONDS; requests that complete inside it are
-- counted and their latencies (start to complete response) kept.  CPU is
-- user + system time of this process over the window.  Prints one line:
--
--   client=agenthost conc=C requests=N seconds=S rps=R cpu=CPU rps_per_cpu=X p99_ms=P errors=E
--
-- errors counts failed requests and non-200 responses in the window; the
-- first few are described on stderr.  Exit status 1 on a usage error.

local ah = require "agenthost"
local task, http = ah.task, ah.http

local function usage(msg)
  io.stderr:write("http_client.lua: ", msg, "\n",
    "usage: agenthost bench/http_client.lua URL CONCURRENCY SECONDS\n")
  os.exit(1)
end

local url, conc_s, secs_s = ...
if not url or not conc_s or not secs_s then usage("expected URL CONCURRENCY SECONDS") end
local conc = math.tointeger(tonumber(conc_s))
local seconds = tonumber(secs_s)
if not conc or conc < 1 then usage("CONCURRENCY must be a positive integer") end
if not seconds or seconds <= 0 then usage("SECONDS must be a positive number") end
local warmup = math.min(1.0, math.max(0.2, seconds / 5))

local clock = ah.clock
local measuring, stop = false, false
local lat = {} -- latencies in ms of requests completed in the window
local nlat, errors, reported = 0, 0, 0

local function report(what)
  if reported < 5 then
    reported = reported + 1
    io.stderr:write("http_client.lua: ", what, "\n")
  end
end

local function worker()
  local get = http.get
  while not stop do
    local t0 = clock()
    local ok, res = pcall(get, url)
    local t1 = clock()
    if measuring then
      if ok and res.status == 200 then
        nlat = nlat + 1
        lat[nlat] = (t1 - t0) * 1000
      else
        errors = errors + 1
        report(ok and ("status " .. tostring(res.status)) or ("error " .. tostring(res)))
      end
    elseif not ok then
      report("error during warm-up: " .. tostring(res))
    end
  end
end

local workers = {}
for i = 1, conc do workers[i] = task.spawn(worker) end

task.sleep(warmup)
-- One thread runs every task, so the window is exactly the time between
-- these two points: a request counts when its worker saw it complete inside.
local r0 = ah.rusage()
local t_begin = clock()
measuring = true
task.sleep(seconds)
local r1 = ah.rusage()
local t_stop = clock()
measuring, stop = false, true

local elapsed = t_stop - t_begin
local cpu = r1.cpu - r0.cpu
table.sort(lat)
local p99 = nlat > 0 and lat[math.max(1, math.ceil(nlat * 0.99))] or 0 / 0
local rps = nlat / elapsed
io.stdout:write(string.format(
  "client=agenthost conc=%d requests=%d seconds=%.3f rps=%.1f cpu=%.3f rps_per_cpu=%.1f p99_ms=%.3f errors=%d\n",
  conc, nlat, elapsed, rps, cpu, cpu > 0 and nlat / cpu or 0 / 0, p99, errors))
io.stdout:flush()

for i = 1, conc do workers[i]:join() end
