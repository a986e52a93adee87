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

core.reload = require "agenthost.reload"
core.http = require "agenthost.http"
core.memory = require "agenthost.memory"
core.llm = require "agenthost.llm"
core.tools = require "agenthost.tools"
core.agent = require "agenthost.agent"
core.channel = require("agenthost.channel").channel
core.host = core.host or {}
core.proc = require "agenthost.proc"
core.config = require "agenthost.config"

return core
