-- ops_agent.lua: the seed's scenario for real.  An operations agent is
-- asked to analyze system performance anomalies; the model picks tools, the
-- tools run concurrently, every message is stored in SQLite as it happens
-- (events in the background), and the answer is printed.
--
--   agenthost scripts/examples/ops_agent.lua [--agents N] [--memory PATH]
--                                            [--question TEXT] [--max-turns K]
--
-- The model comes from the environment (see agenthost.config): OPENAI_API_KEY,
-- ANTHROPIC_API_KEY with AGENTHOST_PROVIDER=anthropic, or AGENTHOST_BASE_URL
-- and AGENTHOST_MODEL for any OpenAI-compatible server; with none set, the
-- bundled offline mock model starts on a loopback port.  Memory defaults to
-- var/memory.db.
--
-- With one agent it prints the answer and which tools it used (and whether
-- they ran concurrently); with --agents N it prints a summary line.  On a
-- terminal, stderr shows a live progress line.  Exit status 0 when every
-- agent answered, 1 otherwise.
--
-- Each run is traced (ah.trace, docs/observability.md): its spans are
-- stored in the memory database, exported over OTLP when
-- OTEL_EXPORTER_OTLP_ENDPOINT is set, and the last lines say where they
-- went and how to open the timeline.

local ah = require "agenthost"
local task = ah.task

local QUESTION = "Analyze system performance anomalies: why is p99 latency up " ..
  "and what should we do first?"

local function usage(msg)
  io.stderr:write("ops_agent.lua: ", msg, "\n",
    "usage: ops_agent.lua [--agents N] [--memory PATH] [--question TEXT] [--max-turns K]\n")
  os.exit(2)
end

local args = { ... }
local agents_n, memory_path, question, max_turns = 1, "var/memory.db", QUESTION, 8
local i = 1
while i <= #args do
  local a, v = args[i], args[i + 1]
  if a == "--agents" then
    agents_n = math.tointeger(tonumber(v))
    if not agents_n or agents_n < 1 then usage("--agents needs a positive integer") end
  elseif a == "--memory" then
    memory_path = v or usage("--memory needs a path")
  elseif a == "--question" then
    question = v or usage("--question needs a text")
  elseif a == "--max-turns" then
    max_turns = math.tointeger(tonumber(v))
    if not max_turns or max_turns < 1 then usage("--max-turns needs a positive integer") end
  else
    usage("unknown argument " .. tostring(a))
  end
  i = i + 2
end

-- The memory file's directory (var/ by default) is created when missing.
local dir = memory_path:match("^(.*)/[^/]*$")
if dir and dir ~= "" then
  local r = ah.proc.run { cmd = "mkdir", args = { "-p", dir } }
  if r.code ~= 0 then usage("cannot create " .. dir .. ": " .. r.stderr) end
end

local provider, about = ah.config.provider { max_concurrency = 64 }
io.stderr:write(about, "\n")

local mem = ah.memory.open(memory_path)
-- Spans go to the memory database (and OTLP when configured); the model's
-- and the tools' HTTP requests get spans of their own.
local tracing = ah.trace.enable { store = mem, http = true }
local web_search = require "web_search"
local tools = {
  web_search.new { url = ah.config.search_url_default() },
  (require "metrics"),
  (require "memory_recall"),
}

local progress = {
  done = 0, failed = 0, running = 0, turns = 0, tokens = 0,
  tty = ah.isatty(2), started = ah.clock(),
}

local function show_progress(final)
  if not progress.tty then return end
  local elapsed = math.max(ah.clock() - progress.started, 1e-6)
  io.stderr:write(string.format("\r%d/%d done, %d running, %.1f turns/s, %d tokens%s",
    progress.done, agents_n, progress.running, progress.turns / elapsed, progress.tokens,
    final and "\n" or ""))
end

local function run_agent(n)
  local trace = { used = {}, order = {}, running = 0, overlap = 0 }
  local a = ah.agent.new {
    name = "ops", provider = provider, memory = mem, max_turns = max_turns,
    system = "You are an operations assistant. Use the tools to gather evidence " ..
      "(they can run at the same time), then answer in a few sentences.",
    tools = tools,
    on_event = function(ev)
      if ev.type == "tool_start" then
        trace.running = trace.running + 1
        trace.overlap = math.max(trace.overlap, trace.running)
        if not trace.used[ev.call.name] then
          trace.used[ev.call.name] = true
          trace.order[#trace.order + 1] = ev.call.name
        end
        mem:event(ev.conversation, "tool_start", { name = ev.call.name, id = ev.call.id })
      elseif ev.type == "tool_end" then
        trace.running = trace.running - 1
        mem:event(ev.conversation, "tool_end", { name = ev.call.name, id = ev.call.id,
                                                  is_error = ev.is_error })
      elseif ev.type == "model_response" then
        progress.turns = progress.turns + 1
        local u = ev.response.usage or {}
        progress.tokens = progress.tokens + (u.input_tokens or 0) + (u.output_tokens or 0)
      end
    end,
  }
  progress.running = progress.running + 1
  local span = tracing.start("ops run " .. n)
  local ok, r = pcall(a.run, a, question)
  span:set_conversation(ok and r.conversation or nil):finish(not ok and r or nil)
  progress.running = progress.running - 1
  if ok then progress.done = progress.done + 1 else progress.failed = progress.failed + 1 end
  return ok, r, trace, n
end

local ticker = progress.tty and task.spawn(function()
  while true do
    show_progress(false)
    task.sleep(0.25)
  end
end)

local results = task.map((function()
  local t = {}
  for n = 1, agents_n do t[n] = n end
  return t
end)(), function(n) return table.pack(run_agent(n)) end, { limit = 256 })

if ticker then
  ticker:cancel()
  pcall(ticker.join, ticker)
  show_progress(true)
end

local failed = 0
if agents_n == 1 then
  local ok, r, trace = results[1][1], results[1][2], results[1][3]
  if ok then
    print(r.text)
    print(string.format("\n[%d turns, tools used: %s%s; %d input + %d output tokens; conversation %s in %s]",
      r.turns, #trace.order > 0 and table.concat(trace.order, ", ") or "none",
      trace.overlap > 1 and string.format(" (up to %d at once)", trace.overlap) or "",
      r.usage.input_tokens, r.usage.output_tokens, tostring(r.conversation), memory_path))
  else
    failed = 1
    io.stderr:write("ops_agent.lua: the agent failed: ", tostring(r), "\n")
  end
else
  local turns, tokens = 0, 0
  for _, res in ipairs(results) do
    if res[1] then
      turns = turns + res[2].turns
      tokens = tokens + res[2].usage.input_tokens + res[2].usage.output_tokens
    else
      failed = failed + 1
      if failed <= 3 then io.stderr:write("ops_agent.lua: an agent failed: ", tostring(res[2]), "\n") end
    end
  end
  print(string.format("agents=%d answered=%d failed=%d turns=%d tokens=%d seconds=%.2f",
    agents_n, agents_n - failed, failed, turns, tokens, ah.clock() - progress.started))
end

-- Where the trace went.
local ts = tracing.stats()
local exe = arg and arg[-1] or "agenthost"
local conv = agents_n == 1 and results[1][1] and results[1][2].conversation
print(string.format("[trace: %d spans stored in %s; open the timeline: %s trace %s --html %s%s]",
  ts.stored, memory_path, exe, memory_path,
  (memory_path:match("^(.*)/[^/]*$") or ".") .. "/trace.html",
  conv and (" --conversation " .. tostring(conv)) or ""))
if tracing.exporter() then
  tracing.flush(10)
  local ex = tracing.stats().export
  print(string.format("[trace: %d spans exported to %s, %d dropped]", ex.exported, ex.url, ex.dropped))
end

mem:close()
ah.config.stop_mock()
if failed > 0 then os.exit(1) end
