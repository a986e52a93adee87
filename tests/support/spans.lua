-- Finished spans for the trace specs: collect() turns tracing on (no OTLP
-- export) with an on_span that keeps every finished span in a list, and
-- the helpers read that list.
--
--   local spans = require "support.spans"
--   local list = spans.collect { http = true }   -- trace.enable's options
--   spans.one(list, "turn 1")  spans.named(list, "chat m")
--   spans.children(list, parent)  spans.names(list_of_spans)

local M = {}

-- Enables tracing with opts (otlp = false, on_span set) and returns the
-- list the finished spans go to.
function M.collect(opts)
  local list = {}
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.otlp = false
  o.on_span = function(s) list[#list + 1] = s end
  require("agenthost").trace.enable(o)
  return list
end

-- The spans of list called name.
function M.named(list, name)
  local out = {}
  for _, s in ipairs(list) do if s.name == name then out[#out + 1] = s end end
  return out
end

-- The one span of list called name (an error when there are none or more).
function M.one(list, name)
  local found = M.named(list, name)
  if #found ~= 1 then error(#found .. " spans named " .. name, 2) end
  return found[1]
end

-- The children of parent in list, in the order they started.
function M.children(list, parent)
  local out = {}
  for _, s in ipairs(list) do if s.parent_id == parent.span_id then out[#out + 1] = s end end
  table.sort(out, function(a, b) return a.start_ns < b.start_ns end)
  return out
end

-- The names of a list of spans, in its order.
function M.names(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = s.name end
  return out
end

return M
