-- The seed agent: decide with a (simulated) model, run the chosen tools
-- concurrently, store memory in the background, answer.
--
--   agenthost scripts/examples/seed_agent.lua
--       one agent, one step; prints the result as JSON
--   agenthost scripts/examples/seed_agent.lua --agents N --steps K
--       N agents, each looping K times; prints one summary line
--   --memory-file PATH   append every stored memory record to PATH (JSON lines)
--
-- The waits are the seed's: web_search 0.8 s, fetch_metrics 0.5 s,
-- call_llm 1.2 s, store_memory 0.2 s (fire-and-forget, via task.detach).
-- Unlike the seed, the memory write is never lost: the host drains detached
-- tasks before it exits.

local ah = require "agenthost"
local task = ah.task

-- Tool implementations --------------------------------------------------------

local function web_search(query)
  task.sleep(0.8) -- simulated network I/O
  return "Search results for: " .. query
end

local function fetch_metrics()
  task.sleep(0.5)
  return { latency_ms = 120.5, throughput = 89.2 }
end

local function call_llm(prompt)
  task.sleep(1.2) -- simulated LLM API call
  return "LLM response to: " .. prompt
end

-- Memory layer ----------------------------------------------------------------

local memory_file -- set by --memory-file
local stored = 0

local function store_memory(record)
  task.sleep(0.2) -- simulated database write
  stored = stored + 1
  if memory_file then
    local f = assert(io.open(memory_file, "a"))
    f:write(ah.json.encode(record), "\n")
    f:close()
  end
end

-- Decision logic -------------------------------------------------------------------

local function decide(observation)
  local response = call_llm("Given this observation, decide tools to call: " .. observation)
  return { llm_response = response, tools = { "search", "metrics" } }
end

-- Tool execution --------------------------------------------------------------------

local function execute_tools(tools, query)
  local fns = {}
  for _, name in ipairs(tools) do
    if name == "search" then
      fns[#fns + 1] = function() return web_search(query) end
    elseif name == "metrics" then
      fns[#fns + 1] = fetch_metrics
    end
  end
  local results = { task.gather(table.unpack(fns)) }
  return { search_result = results[1], metrics = results[2] }
end

-- Agent loop --------------------------------------------------------------------------

local function agent_loop(observation)
  local decision = decide(observation)
  local tool_results = execute_tools(decision.tools, observation)
  local memory_record = {
    observation = observation,
    decision = decision,
    tools = tool_results,
  }
  task.detach(store_memory, memory_record) -- fire-and-forget, never lost
  return { final_response = decision.llm_response, tools_used = tool_results }
end

-- Entry point ---------------------------------------------------------------------------

local function usage(msg)
  io.stderr:write("seed_agent: ", msg, "\n",
    "usage: seed_agent.lua [--agents N --steps K] [--memory-file PATH]\n")
  os.exit(2)
end

local opts = { agents = nil, steps = 1 }
local args = { ... }
local i = 1
while i <= #args do
  local a = args[i]
  if a == "--agents" or a == "--steps" then
    local n = math.tointeger(tonumber(args[i + 1]))
    if not n or n < 1 then usage(a .. " needs a positive integer") end
    opts[a:sub(3)] = n
    i = i + 2
  elseif a == "--memory-file" then
    memory_file = args[i + 1] or usage("--memory-file needs a path")
    i = i + 2
  else
    usage("unknown argument '" .. tostring(a) .. "'")
  end
end

local observation = "Analyze system performance anomalies"

if not opts.agents then
  local result = agent_loop(observation)
  print(ah.json.encode(result))
  return
end

-- N agents x K steps: one summary line.
local n, k = opts.agents, opts.steps
local t0 = ah.clock()
local function agent()
  for _ = 1, k do agent_loop(observation) end
end
local agents = {}
for a = 1, n do agents[a] = task.spawn(agent) end
for a = 1, n do agents[a]:join(); agents[a] = nil end
task.drain() -- the last memory writes are detached tasks: wait for them too
local wall = ah.clock() - t0
local ru = ah.rusage()
print(string.format("agents=%d steps=%d wall=%.3f ideal=%.3f cpu=%.3f maxrss_mb=%.1f",
  n, k, wall, 2.0 * k + 0.2, ru.cpu, ru.maxrss_kb / 1024))
