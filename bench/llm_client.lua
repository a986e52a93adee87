-- bench/llm_client.lua: streamed completions on agenthost against the mock
-- LLM server.
--
--   build/agenthost bench/llm_client.lua KIND BASE_URL COMPLETIONS PACING_MS
--
-- KIND is openai or anthropic; BASE_URL the provider's base URL.
-- COMPLETIONS tasks each stream one chat completion through one shared
-- provider, all at once.  A warm-up round of the same size opens the
-- connections first; then the measured round.  Time to first token (TTFT)
-- runs from the chat call to the first text delta; PACING_MS is the
-- mock's own delay before that delta, so TTFT - PACING_MS is what the
-- client (and the loaded server) added.  CPU is user + system time of this
-- process over the measured round.  Prints one line:
--
--   client=agenthost kind=K completions=N seconds=S cpu=C cpu_per_completion_ms=X
--     ttft_p50_ms=A ttft_p99_ms=B added_ttft_p50_ms=A2 added_ttft_p99_ms=B2 errors=E
--
-- Exit status 1 on a usage error.

local ah = require "agenthost"
local task = ah.task

local function usage(msg)
  io.stderr:write("llm_client.lua: ", msg, "\n",
    "usage: agenthost bench/llm_client.lua openai|anthropic BASE_URL COMPLETIONS PACING_MS\n")
  os.exit(1)
end

local kind, base, n_s, pacing_s = ...
if kind ~= "openai" and kind ~= "anthropic" then usage("KIND must be openai or anthropic") end
if not base then usage("expected BASE_URL") end
local n = math.tointeger(tonumber(n_s))
local pacing = tonumber(pacing_s)
if not n or n < 1 then usage("COMPLETIONS must be a positive integer") end
if not pacing or pacing < 0 then usage("PACING_MS must be a number >= 0") end

-- Every connection of a round stays cached for the next.
ah.http.configure { max_connections = n + 64 }

local p = ah.llm.provider { kind = kind, base_url = base, model = "mock-1", api_key = "bench",
                            max_retries = 0, timeout = 120 }
local clock = ah.clock
local messages = { { role = "user", content = "Give me a status report of the services." } }

local reported = 0
local function report(what)
  if reported < 5 then
    reported = reported + 1
    io.stderr:write("llm_client.lua: ", what, "\n")
  end
end

-- One round: returns the TTFTs in ms of the completions that succeeded,
-- and the number that failed.
local function round()
  local ttft, errors = {}, 0
  local items = {}
  for i = 1, n do items[i] = i end
  task.map(items, function()
    local t0, first = clock(), nil
    local ok, r = pcall(p.chat, p, { messages = messages, stream = function()
      if not first then first = clock() end
    end })
    if ok and first and r.text ~= "" then
      ttft[#ttft + 1] = (first - t0) * 1000
    else
      errors = errors + 1
      report(ok and "a completion without text" or tostring(r))
    end
  end)
  return ttft, errors
end

round() -- warm-up: opens the connections
local r0, t_begin = ah.rusage(), clock()
local ttft, errors = round()
local r1, t_end = ah.rusage(), clock()

table.sort(ttft)
local function pct(q)
  if #ttft == 0 then return 0 / 0 end
  return ttft[math.max(1, math.ceil(#ttft * q))]
end
local cpu = r1.cpu - r0.cpu
local done = #ttft
io.stdout:write(string.format(
  "client=agenthost kind=%s completions=%d seconds=%.3f cpu=%.3f cpu_per_completion_ms=%.4f " ..
  "ttft_p50_ms=%.3f ttft_p99_ms=%.3f added_ttft_p50_ms=%.3f added_ttft_p99_ms=%.3f errors=%d\n",
  kind, done, t_end - t_begin, cpu, done > 0 and cpu * 1000 / done or 0 / 0,
  pct(0.5), pct(0.99), pct(0.5) - pacing, pct(0.99) - pacing, errors))
io.stdout:flush()
