-- bench/trace_client.lua: what tracing costs an agent loop, per model call
-- and per tool call, with simulated calls.
--
--   build/agenthost bench/trace_client.lua MODE TRACING AGENTS CALLS [URL]
--
-- MODE model: each of AGENTS agents runs CALLS turns, each one model call.
-- MODE tool: each agent runs CALLS / 4 turns, each four tool calls at once
-- (task.map).  A model call or a tool call is a 1 ms task.sleep standing
-- in for the wait, plus the values the agent loop would hand to tracing
-- (a provider result with usage, a tool call and its result).  TRACING
-- off: the trace calls are made with tracing off (the inert span); store:
-- tracing on, spans stored in a SQLite database in a temporary directory
-- (db:post, group commit); otlp: stored and also exported to the OTLP/HTTP
-- endpoint URL (a queue large enough for every span).  The spans are made with the calls the agent loop makes
-- (docs/observability.md): a run span, a turn span per turn, a chat span
-- per model call, an execute_tool span per tool call.
--
-- CPU is user + system time of the whole process (the store's writer
-- thread included) from the first agent's start to the last span written
-- (db:flush) and exported (trace.flush).  Prints one line:
--
--   mode=M tracing=T agents=N calls=C seconds=S cpu=X cpu_per_call_us=Y
--     spans=N stored=N exported=N dropped=N

local ah = require "agenthost"
local task, trace = ah.task, ah.trace

local mode, tracing, agents_s, calls_s, url = ...
local agents, calls = math.tointeger(tonumber(agents_s)), math.tointeger(tonumber(calls_s))
if (mode ~= "model" and mode ~= "tool") or (tracing ~= "off" and tracing ~= "store" and tracing ~= "otlp")
    or not agents or not calls or calls < 4 or (tracing == "otlp" and not url) then
  io.stderr:write("usage: agenthost bench/trace_client.lua model|tool off|store|otlp AGENTS CALLS [URL]\n")
  os.exit(2)
end

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local db = ah.store.open(dir .. "/trace.db")
if tracing ~= "off" then
  -- The queue holds every span of the run, so that all are exported and
  -- the figure is the cost of exporting them, not of dropping some.
  trace.enable { store = db, otlp = tracing == "otlp" and
    { url = url, delay = 1, max_queue = agents * calls * 3 } or false }
end

local resp = { text = "ok", usage = { input_tokens = 420, output_tokens = 36 },
               finish_reason = "stop", raw = { id = "chatcmpl-1", model = "mock-1" } }
local result = { content = "{\"p99_ms\": 180}" }

local function model_call()
  local chat = trace.chat("mock-1", "openai")
  task.sleep(0.001)
  trace.chat_end(chat, resp)
end

local function tool_call(call)
  local t = trace.tool(call)
  task.sleep(0.001)
  trace.tool_end(t, result)
end

local function agent(i)
  local run = trace.agent("bench", i, nil)
  if mode == "model" then
    for n = 1, calls do
      local turn = trace.turn(n)
      model_call()
      turn:finish()
    end
  else
    local batch = {}
    for k = 1, 4 do batch[k] = { id = "call_" .. k, name = "metrics", raw_arguments = "{}" } end
    for n = 1, calls // 4 do
      local turn = trace.turn(n)
      task.map(batch, tool_call)
      turn:finish()
    end
  end
  trace.agent_end(run, { turns = calls, usage = resp.usage })
end

local items = {}
for i = 1, agents do items[i] = i end
local r0, t0 = ah.rusage(), ah.clock()
task.map(items, agent)
db:flush()
trace.flush(60)
local r1, t1 = ah.rusage(), ah.clock()
local ncalls = mode == "model" and agents * calls or agents * (calls // 4) * 4
local st = trace.stats()
local ex = st.export or { exported = 0, dropped = 0 }
local okq, stored = pcall(db.first, db, "SELECT count(*) AS n FROM trace_spans")
if not okq then stored = nil end
print(string.format("mode=%s tracing=%s agents=%d calls=%d seconds=%.3f cpu=%.3f cpu_per_call_us=%.2f " ..
  "spans=%d stored=%d exported=%d dropped=%d", mode, tracing, agents, ncalls, t1 - t0, r1.cpu - r0.cpu,
  (r1.cpu - r0.cpu) * 1e6 / ncalls, st.finished, stored and stored.n or 0, ex.exported, ex.dropped))
db:close()
os.execute("rm -rf " .. dir)
