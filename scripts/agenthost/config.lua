-- agenthost.config: which model an agent talks to, from the environment.
--
--   local config = require "agenthost.config"
--   local provider, about = config.provider()     -- about: one line saying what was chosen
--
-- AGENTHOST_PROVIDER   openai | anthropic
-- AGENTHOST_BASE_URL   the API root (e.g. http://127.0.0.1:11434/v1 for Ollama)
-- AGENTHOST_MODEL      the model name
-- OPENAI_API_KEY, ANTHROPIC_API_KEY   the keys (never printed)
--
-- With a provider, a base URL or a key set, that API is used.  With none of
-- them, the bundled mock model is started on a free loopback port for the
-- life of the process, and `about` says so and how to use a real model
-- instead.  The mock also serves /search, which becomes
-- AGENTHOST_SEARCH_URL's default for the web_search tool.
--
-- Where the mock comes from, first found: AGENTHOST_MOCKLLM (the path of a
-- mockllm binary); M.mock_command, a list {program, args...} that the host
-- sets (the agenthost command sets {its own path, "--mock-llm"}: the mock
-- is built into it); else, for other hosts (stock lua5.4 with
-- agenthost.so, embedders), tests/mockllm beside the running binary or
-- build/tests/mockllm of the working directory (`make` builds it).

local ah = require "agenthost.core"
local llm = require "agenthost.llm"

local M = {}

M.defaults = {
  openai = { base_url = "https://api.openai.com/v1", model = "gpt-4o-mini" },
  anthropic = { base_url = "https://api.anthropic.com", model = "claude-3-5-haiku-latest" },
}

local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

M.mock_command = nil -- {program, args...}: how this host runs the mock model

-- The command that starts the mock model: a list {program, args...}, or nil.
local function mock_command()
  local explicit = env("AGENTHOST_MOCKLLM")
  if explicit then return { explicit } end
  if M.mock_command ~= nil then
    if type(M.mock_command) ~= "table" or type(M.mock_command[1]) ~= "string" then
      ah.error.raise("invalid_argument",
        "config.mock_command: the mock command must be a list {program, args...}")
    end
    return M.mock_command
  end
  local exe = arg and arg[-1]
  local candidates = {}
  if exe and exe:find("/", 1, true) then
    local dir = exe:match("^(.*)/[^/]*$")
    candidates[#candidates + 1] = dir .. "/tests/mockllm"
  end
  candidates[#candidates + 1] = "build/tests/mockllm"
  for _, c in ipairs(candidates) do
    local f = io.open(c, "rb")
    if f then
      f:close()
      return { c }
    end
  end
  return nil
end

local mock     -- the running mock: {proc, base}
local starting -- an event set once a start has finished (well or not)

-- Starts the bundled mock model (once per process) and returns its base URL.
-- Concurrent callers wait for the one start.
function M.start_mock(opts)
  while starting do starting:wait() end
  if mock then return mock.base end
  local done = ah.task.event()
  starting = done
  local ok, base = pcall(M._start_mock, opts)
  starting = nil
  done:set()
  if not ok then error(base, 0) end
  return base
end

function M._start_mock(opts)
  local cmd = mock_command()
  if not cmd then
    error(ah.error.new("invalid_argument",
      "no model is configured and this host has no mock model (it is built into the " ..
      "agenthost command; elsewhere set AGENTHOST_MOCKLLM to a mockllm binary, or run " ..
      "`make` for build/tests/mockllm): set AGENTHOST_PROVIDER / OPENAI_API_KEY / " ..
      "ANTHROPIC_API_KEY for a real model"), 2)
  end
  local args = {}
  for i = 2, #cmd do args[#args + 1] = cmd[i] end
  for _, a in ipairs(opts and opts.args or {}) do args[#args + 1] = a end
  -- stdin stays a pipe held by this process: the mock exits when we do.
  local p = ah.proc.spawn { cmd = cmd[1], args = args }
  local ok, line = pcall(ah.task.timeout, 10, p.read_line, p)
  local port = ok and line and line:match("^port=(%d+)$")
  if not port then
    p:close()
    pcall(p.wait, p)
    error(ah.error.new("io", "the bundled mock model did not start: " .. tostring(line)), 2)
  end
  mock = { proc = p, base = "http://127.0.0.1:" .. port }
  return mock.base
end

-- Stops the mock, if this process started one.
function M.stop_mock()
  if not mock then return end
  local p = mock.proc
  mock = nil
  p:close_stdin()
  p:wait()
end

-- config.provider([opts]) -> provider, about
-- opts are passed on to llm.provider (max_concurrency, ...).
function M.provider(opts)
  local kind = env("AGENTHOST_PROVIDER")
  local base = env("AGENTHOST_BASE_URL")
  local model = env("AGENTHOST_MODEL")
  if kind and not M.defaults[kind] then
    error(ah.error.new("invalid_argument", string.format(
      "AGENTHOST_PROVIDER must be openai or anthropic, not %q", kind)), 2)
  end
  if not kind then
    if env("OPENAI_API_KEY") or base then kind = "openai"
    elseif env("ANTHROPIC_API_KEY") then kind = "anthropic" end
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  local about
  if kind then
    o.kind = kind
    o.base_url = base or M.defaults[kind].base_url
    o.model = model or M.defaults[kind].model
    -- The URL may carry user:password; the line is printed.
    about = string.format("model: %s %s at %s", kind, o.model,
      llm.common.redact_urls(o.base_url))
  else
    local mock_base = M.start_mock()
    o.kind = "openai"
    o.base_url = mock_base .. "/v1"
    o.model = model or "mock-1"
    o.api_key = "mock"
    about = "model: the bundled offline mock (no API key set). For a real model set " ..
      "OPENAI_API_KEY (or AGENTHOST_PROVIDER=anthropic and ANTHROPIC_API_KEY), or " ..
      "AGENTHOST_BASE_URL=http://127.0.0.1:11434/v1 AGENTHOST_MODEL=llama3.1 for Ollama."
    M.search_url = M.search_url or (mock_base .. "/search")
  end
  return llm.provider(o), about
end

-- The search service for web_search: AGENTHOST_SEARCH_URL, else the mock's.
function M.search_url_default()
  return env("AGENTHOST_SEARCH_URL") or M.search_url
end

return M
