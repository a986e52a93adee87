-- agenthost: the module that `require "agenthost"` returns.
--
-- The C core (agenthost.core) provides the scheduler and the I/O bindings;
-- this file adds the parts that are plain Lua on top of them.

local core = require "agenthost.core"
local task = core.task

-- task.map(items, fn [, {limit = n}]) -> results
-- Calls fn(item, i) for every item with at most `limit` calls running at
-- once, and returns the first result of each call at the item's index.  The
-- first error cancels the calls still running and is raised.
function task.map(items, fn, opts)
  if type(items) ~= "table" then
    core.error.raise("invalid_argument", "task.map: items must be a table (an array)")
  end
  if type(fn) ~= "function" then
    core.error.raise("invalid_argument", "task.map: fn must be a function")
  end
  if opts ~= nil and type(opts) ~= "table" then
    core.error.raise("invalid_argument", "task.map: the options must be a table")
  end
  local n = #items
  local limit = opts and opts.limit or math.max(n, 1)
  if math.type(limit) ~= "integer" or limit < 1 then
    core.error.raise("invalid_argument", "task.map: limit must be an integer >= 1")
  end
  if n == 0 then return {} end
  local results, next_index = {}, 0
  local function worker()
    while next_index < n do
      next_index = next_index + 1
      local i = next_index
      results[i] = fn(items[i], i)
    end
  end
  local workers = {}
  for w = 1, math.min(limit, n) do workers[w] = worker end
  task.gather(table.unpack(workers))
  return results
end

core.host = core.host or {}

-- The library's parts load on first use (ah.llm, ah.agent, ...), so that a
-- host that runs a small script opens fast and carries only what it uses:
-- the agent layer (memory, llm, tools, agent and the JSON codec) is most of
-- what a full load costs.  Each is then a plain field of the module.
local parts = {
  reload = "agenthost.reload",
  http = "agenthost.http",
  memory = "agenthost.memory",
  llm = "agenthost.llm",
  tools = "agenthost.tools",
  agent = "agenthost.agent",
  proc = "agenthost.proc",
  config = "agenthost.config",
  channel = "agenthost.channel",
  trace = "agenthost.trace",
  pg = "agenthost.pg",
  fleet = "agenthost.fleet",
}
setmetatable(core, {
  __index = function(t, k)
    local name = parts[k]
    if not name then return nil end
    local m = require(name)
    if k == "channel" then m = m.channel end
    rawset(t, k, m)
    return m
  end,
})

return core
