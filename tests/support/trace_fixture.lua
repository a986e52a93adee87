-- A database with what a traced agent leaves behind, for the specs of the
-- trace store and the timeline: memory's tables with two conversations (a
-- run and the sub-run one of its tools started) and the spans of that run,
-- made with the trace API as the agent loop makes them.
--
--   local fixture = require "support.trace_fixture"
--   local info = fixture.build(path)   -- inside a task
--
-- The run "ops": turn 1 asks for three tools at once (metrics, shell,
-- research); shell fails; research runs the sub-agent "researcher" in its
-- own conversation; turn 2 answers.  One stored message holds markup and a
-- script, which the timeline must show as text.  Returns {conversation,
-- sub_conversation, spans = the number of spans, names = their names}.

local ah = require "agenthost"
local trace = ah.trace
local task = ah.task

local M = {}

M.HOSTILE = '<img src=x onerror="window.__injected=true"><script>window.__injected=true</script>'

function M.build(path)
  local mem = ah.memory.open(path)
  local names = {}
  trace.enable { otlp = false, on_span = function(s) names[#names + 1] = s.name end }
  local conv = mem:start_run("ops", { goal = "why is p99 up?" })
  local run = trace.agent("ops", conv, mem)
  mem:append(conv, { role = "user", content = "Why is p99 latency up?" })
  local turn = trace.turn(1)
  local chat = trace.chat("mock-1", "openai")
  task.sleep(0.002)
  trace.chat_end(chat, { usage = { input_tokens = 120, output_tokens = 30 }, finish_reason = "tool_calls" })
  mem:append(conv, { role = "assistant", content = "Let me look at the metrics." })
  local sub_conv
  task.map({ "metrics", "shell", "research" }, function(name, i)
    local t = trace.tool({ id = "call_" .. i, name = name, raw_arguments = "{}" })
    task.sleep(0.001 * i)
    if name == "research" then
      sub_conv = mem:start_run("researcher", { goal = "find causes" })
      local sub = trace.agent("researcher", sub_conv, mem)
      mem:append(sub_conv, { role = "user", content = "find causes" })
      local st = trace.turn(1)
      trace.chat_end(trace.chat("mock-1", "openai"), { usage = { input_tokens = 40, output_tokens = 12 } })
      mem:append(sub_conv, { role = "assistant", content = "GC pauses after the deploy." })
      st:finish()
      trace.agent_end(sub, { turns = 1, usage = { input_tokens = 40, output_tokens = 12 } })
    end
    local res = name == "shell" and { is_error = true, content = "error: exit status 2" }
      or { content = name == "metrics" and M.HOSTILE or "GC pauses after the deploy." }
    mem:append(conv, { role = "tool", name = name, tool_call_id = "call_" .. i, content = res.content })
    trace.tool_end(t, res)
  end)
  turn:finish()
  local turn2 = trace.turn(2)
  trace.chat_end(trace.chat("mock-1", "openai"), { usage = { input_tokens = 200, output_tokens = 40 }, finish_reason = "stop" })
  mem:append(conv, { role = "assistant", content = "p99 is up because of GC pauses; roll back the deploy." })
  turn2:finish()
  trace.agent_end(run, { turns = 2, usage = { input_tokens = 360, output_tokens = 82 } })
  trace.disable()
  mem.db:flush()
  mem:close()
  return { conversation = conv, sub_conversation = sub_conv, spans = #names, names = names }
end

return M
