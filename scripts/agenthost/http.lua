-- ah.http: HTTP for tasks.  request{...} waits (without blocking the loop)
-- and returns {status, headers, body}; see docs/http.md.
--
-- On top of the C request this adds JSON (`json = value` sends it encoded
-- with content-type application/json; a JSON response is decoded into
-- res.json) and the get/post helpers.

local core = require "agenthost.core"
local cjson = require "cjson"
local C = core._http

local M = {}

local function has_header(headers, name)
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return true end
  end
  return false
end

-- request{method, url, headers, body, json, timeout, connect_timeout,
--         max_body, follow_redirects} -> {status, headers, body [, json]}
function M.request(opts)
  if type(opts) ~= "table" then
    error(core.error.new("invalid_argument", "ah.http.request: expected a table of options"), 2)
  end
  if opts.json ~= nil then
    local ok, body = pcall(cjson.encode, opts.json)
    if not ok then
      error(core.error.new("invalid_argument", "ah.http.request: json cannot be encoded: " .. tostring(body)), 2)
    end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    local headers = {}
    for k, v in pairs(opts.headers or {}) do headers[k] = v end
    if not has_header(headers, "content-type") then headers["content-type"] = "application/json" end
    if not has_header(headers, "accept") then headers["accept"] = "application/json" end
    o.headers, o.body, o.json = headers, body, nil
    opts = o
  end
  local res = C.request(opts)
  local ctype = res.headers["content-type"]
  if ctype and ctype:find("json", 1, true) and #res.body > 0 then
    local ok, value = pcall(cjson.decode, res.body)
    if ok then res.json = value else res.json_error = tostring(value) end
  end
  return res
end

-- get(url [, opts])
function M.get(url, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url, o.method = url, o.method or "GET"
  return M.request(o)
end

-- post(url, body [, opts]): a string body is sent as is, a table as JSON.
function M.post(url, body, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url, o.method = url, o.method or "POST"
  if type(body) == "table" then o.json = body else o.body = body end
  return M.request(o)
end

M.stats = C.stats

return M
