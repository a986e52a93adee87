-- web_search: searches the web through a SearxNG-compatible JSON API
-- (GET {url}?q=...&format=json -> {results = {{title, url, content}}}).
--
-- The URL comes from web_search.new{url = ...}, else from the run's context
-- (ctx.search_url), else from AGENTHOST_SEARCH_URL.  Results are capped and
-- returned as numbered text a model reads well.

local ah = require "agenthost"

local M = {
  name = "web_search",
  description = "Search the web. Returns the top results as numbered lines: title, URL and a snippet.",
  parameters = {
    type = "object",
    properties = {
      query = { type = "string", minLength = 1, maxLength = 400, description = "What to search for" },
      limit = { type = "integer", minimum = 1, maximum = 10, description = "How many results (default 5)" },
    },
    required = { "query" },
    additionalProperties = false,
  },
  timeout = 20,
}

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function one_line(s, max)
  s = tostring(s or ""):gsub("%s+", " ")
  if #s > max then s = s:sub(1, max) .. "..." end
  return s
end

local function search(url, args)
  if not url then
    error(ah.error.new("invalid_argument",
      "web_search has no search URL: set AGENTHOST_SEARCH_URL or web_search.new{url = ...}"), 0)
  end
  local sep = url:find("?", 1, true) and "&" or "?"
  local res = ah.http.get(url .. sep .. "q=" .. urlencode(args.query) .. "&format=json",
    { timeout = 15, max_body = 4 * 1024 * 1024 })
  if res.status ~= 200 then
    error(ah.error.new("http", string.format("the search service answered HTTP %d", res.status)), 0)
  end
  local results = type(res.json) == "table" and res.json.results
  if type(results) ~= "table" then
    error(ah.error.new("protocol", "the search service did not return JSON results"), 0)
  end
  local out = {}
  for i = 1, math.min(#results, args.limit or 5) do
    local r = results[i]
    if type(r) == "table" then
      out[#out + 1] = string.format("%d. %s\n   %s\n   %s", #out + 1, one_line(r.title, 200),
        one_line(r.url, 500), one_line(r.content, 500))
    end
  end
  if #out == 0 then return "no results for " .. string.format("%q", args.query) end
  return table.concat(out, "\n")
end

function M.run(args, ctx)
  return search((ctx and ctx.search_url) or os.getenv("AGENTHOST_SEARCH_URL"), args)
end

-- web_search.new{url =} -> the tool bound to that search service
function M.new(opts)
  local t = {}
  for k, v in pairs(M) do t[k] = v end
  t.new = nil
  t.run = function(args) return search(opts.url, args) end
  return t
end

return M
