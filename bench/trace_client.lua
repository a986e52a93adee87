-- bench/trace_client.lua: what tracing costs the agent loop, per model
-- call and per tool call: real agents (agenthost.agent, with memory)
-- against the mock model, with tracing off and on.
--
--   build/agenthost bench/trace_client.lua MODE TRACING AGENTS CALLS [OTLP_URL]
--
-- Each of AGENTS agents (all at once) makes CALLS calls of the kind MODE
-- says, as runs of the agent loop against the bundled mock model (started
-- here on a loopback port with rules for the two kinds; its own CPU is
-- not counted), each agent with its memory in one SQLite database:
--
--   model: CALLS runs of one turn each: one model call, answered at once.
--   tool:  CALLS / 4 runs of two turns each: the model asks for four tool
--          calls at once (run through task.map), then answers; a tool call
--          is a 1 ms task.sleep standing in for its work.
--
-- TRACING off: tracing never enabled (the loop's trace calls return the
-- inert span); store: tracing on, the spans stored in the agents' memory
-- database (db:post, group commit); otlp: stored and also exported to the
-- OTLP/HTTP endpoint OTLP_URL (a queue large enough for every span).
--
-- CPU is user + system time of this process (the store's writer thread
-- included) from the first run's start to the last span and message
-- committed (db:flush) and exported (trace.flush).  Prints one line:
--
--   mode=M tracing=T agents=N calls=C model_calls=K tool_calls=L seconds=S
--     cpu=X cpu_per_call_us=Y spans=N stored=N exported=N dropped=N

local ah = require "agenthost"
local task, trace = ah.task, ah.trace

local mode, tracing, agents_s, calls_s, url = ...
local agents, calls = math.tointeger(tonumber(agents_s)), math.tointeger(tonumber(calls_s))
if (mode ~= "model" and mode ~= "tool") or (tracing ~= "off" and tracing ~= "store" and tracing ~= "otlp")
    or not agents or not calls or calls < 4 or calls % 4 ~= 0 or (tracing == "otlp" and not url) then
  io.stderr:write("usage: agenthost bench/trace_client.lua model|tool off|store|otlp AGENTS CALLS [OTLP_URL]\n",
    "  (CALLS: a multiple of 4)\n")
  os.exit(2)
end

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))

local rules = dir .. "/rules.json"
local f = assert(io.open(rules, "w"))
f:write(require("agenthost").json.encode { rules = {
  { system = "tool workload", when = "user", tool_calls = {
    { name = "probe", arguments = { host = "a" } }, { name = "probe", arguments = { host = "b" } },
    { name = "probe", arguments = { host = "c" } }, { name = "probe", arguments = { host = "d" } } } },
  { system = "tool workload", when = "tool", reply = "All four hosts answered." },
  { reply = "p99 is 180 ms; nothing to do." },
} })
f:close()

local base = ah.config.start_mock { args = { "--rules", rules } }
local provider = ah.llm.provider { kind = "openai", base_url = base .. "/v1", model = "mock-1",
                                   api_key = "bench" }
local mem = ah.memory.open(dir .. "/memory.db")

if tracing ~= "off" then
  -- The queue holds every span of the run, so that all are exported and
  -- the figure is the cost of exporting them, not of dropping some.
  local runs = mode == "model" and calls or calls // 4
  local per_run = mode == "model" and 3 or 9
  trace.enable { otlp = tracing == "otlp" and
    { url = url, delay = 1, max_queue = agents * runs * per_run + 16 } or false }
end

local probe = {
  name = "probe", description = "Probes a host.",
  parameters = { type = "object", properties = { host = { type = "string" } }, required = { "host" } },
  run = function(args)
    task.sleep(0.001)
    return { host = args.host, p99_ms = 180 }
  end,
}

local model_calls, tool_calls, failed = 0, 0, 0
local function agent()
  local a = ah.agent.new {
    name = "bench", provider = provider, memory = mem, tools = { probe },
    system = mode == "tool" and "You are the tool workload." or "You are the model workload.",
  }
  for _ = 1, mode == "model" and calls or calls // 4 do
    local ok, r = pcall(a.run, a, "How is p99 latency?")
    if ok then
      model_calls = model_calls + r.turns
      if mode == "tool" then tool_calls = tool_calls + 4 end
    else
      failed = failed + 1
      if failed == 1 then io.stderr:write("bench/trace_client.lua: a run failed: ", tostring(r), "\n") end
    end
  end
end

local items = {}
for i = 1, agents do items[i] = i end
local r0, t0 = ah.rusage(), ah.clock()
task.map(items, agent, { limit = agents })
mem.db:flush()
trace.flush(60)
local r1, t1 = ah.rusage(), ah.clock()
local ncalls = mode == "model" and model_calls or tool_calls
local st = trace.stats()
local ex = st.export or { exported = 0, dropped = 0 }
local okq, stored = pcall(mem.db.first, mem.db, "SELECT count(*) AS n FROM trace_spans")
if not okq then stored = nil end
print(string.format("mode=%s tracing=%s agents=%d calls=%d model_calls=%d tool_calls=%d seconds=%.3f " ..
  "cpu=%.3f cpu_per_call_us=%.2f spans=%d stored=%d exported=%d dropped=%d failed=%d", mode, tracing,
  agents, ncalls, model_calls, tool_calls, t1 - t0, r1.cpu - r0.cpu, (r1.cpu - r0.cpu) * 1e6 / ncalls,
  st.finished, stored and stored.n or 0, ex.exported, ex.dropped, failed))
mem:close()
ah.config.stop_mock()
os.execute("rm -rf " .. dir)
if failed > 0 then os.exit(1) end
