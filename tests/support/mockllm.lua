-- Starts and stops the mock LLM server (tests/support/mockllm.c, described
-- in docs/mockllm.md) for specs, through httpd.lua's starter: the returned
-- server has everything an httpd server has (base, url, port, pid, stop,
-- stderr, <close>), and also
--
--   m:stats()   the /stats counters as a table
--   m:reset()   POST /reset: zeroes the counters and the times= counts
--   m:last()    the last chat request ({path, headers, body}), or nil
--   m:provider(kind [, opts])  an agenthost.llm provider of dialect kind
--               ("openai" or "anthropic") for this server (opts go on to
--               llm.provider: headers, max_tokens, ...)
--
-- which work inside a task and outside one (there they run their own
-- task.run).
--
-- mockllm.start{...} takes httpd.start's options (port, bin, limit) and
--   rules         a table in the rules-file format, written to a temporary
--                 file that stop() removes
--   rules_file    a rules file
--   chunk, delay_ms, first_byte_ms, api_key, model   the server's options
-- The binary is AGENTHOST_MOCKLLM, else tests/mockllm next to
-- AGENTHOST_BIN, else build/tests/mockllm.

local httpd = require "support.httpd"
local json = require("agenthost").json

local M = {}

local options = {
  { "rules_file", "--rules" }, { "chunk", "--chunk" }, { "delay_ms", "--delay-ms" },
  { "first_byte_ms", "--first-byte-ms" }, { "api_key", "--api-key" }, { "model", "--model" },
}

-- Runs fn in the current task, or in a task of its own outside one.
local function in_task(fn)
  local ah = require "agenthost"
  if ah.task.current() then return fn() end
  return ah.task.run(fn)
end

local function call(self, method, path)
  local ah = require "agenthost"
  return in_task(function()
    return ah.http.request { method = method, url = self.base .. path, timeout = 10 }
  end)
end

local function stats(self)
  local r = call(self, "GET", "/stats")
  assert(r.status == 200, "mockllm: /stats answered " .. r.status)
  return r.json
end

local function reset(self)
  local r = call(self, "POST", "/reset")
  assert(r.status == 200, "mockllm: /reset answered " .. r.status)
end

local function last(self)
  local r = call(self, "GET", "/last")
  if r.status ~= 200 then return nil end
  return r.json
end

local function provider(self, kind, opts)
  local ah = require "agenthost"
  local o = { kind = kind, model = "mock-1", api_key = "mock-key",
              base_url = kind == "openai" and self.base .. "/v1" or self.base }
  for k, v in pairs(opts or {}) do o[k] = v end
  return ah.llm.provider(o)
end

-- The dialects every agent spec runs in.
M.DIALECTS = { "openai", "anthropic" }

function M.bin() return httpd.bin("mockllm") end

-- Starts a server (see the top of this file for opts).
function M.start(opts)
  opts = opts or {}
  local args, files = {}, {}
  local o = { name = "mockllm", bin = opts.bin, port = opts.port, limit = opts.limit,
              args = args, files = files }
  if opts.rules then
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(json.encode(opts.rules))
    f:close()
    files[#files + 1] = path
    args[#args + 1] = "--rules"
    args[#args + 1] = path
  end
  for _, opt in ipairs(options) do
    local v = opts[opt[1]]
    if v ~= nil then
      args[#args + 1] = opt[2]
      args[#args + 1] = tostring(v)
    end
  end
  local ok, srv = pcall(httpd.start, o)
  if not ok then
    for _, path in ipairs(files) do os.remove(path) end
    error(srv, 2)
  end
  srv.stats, srv.reset, srv.last, srv.provider = stats, reset, last, provider
  return srv
end

return M
