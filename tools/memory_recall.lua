-- memory_recall: full-text search over what this agent remembers (its
-- earlier messages, in agenthost.memory), best matches first.

local M = {
  name = "memory_recall",
  description = "Search your own memory of earlier conversations. Returns the best matching messages.",
  parameters = {
    type = "object",
    properties = {
      query = { type = "string", minLength = 1, maxLength = 400, description = "Words to look for" },
      k = { type = "integer", minimum = 1, maximum = 20, description = "How many messages (default 5)" },
    },
    required = { "query" },
    additionalProperties = false,
  },
  timeout = 10,
}

function M.run(args, ctx)
  local mem = ctx and ctx.memory
  if not mem then return "no memory is configured for this agent" end
  local hits = mem:recall(ctx.agent and ctx.agent.name or "default", args.query, args.k or 5)
  if #hits == 0 then return "nothing in memory matches " .. string.format("%q", args.query) end
  local out = {}
  for i, h in ipairs(hits) do
    local text = tostring(h.content or ""):gsub("%s+", " ")
    if #text > 400 then text = text:sub(1, 400) .. "..." end
    out[i] = string.format("%d. [conversation %d, %s] %s", i, h.run_id, h.role, text)
  end
  return table.concat(out, "\n")
end

return M
