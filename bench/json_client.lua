-- bench/json_client.lua: decode and encode speed of ah.json against
-- lua-cjson and lua-dkjson on the documents the agent loop handles: a chat
-- completion response with two tool calls and its usage, and a request
-- body of 24 messages with tool definitions (what every turn sends).
--   usage: agenthost bench/json_client.lua SECONDS
-- Prints one line per codec and document: ops per CPU-second each way.
local ah = require "agenthost"
local cjson = require "cjson"
local dkjson = require "dkjson"
local seconds = tonumber(arg and arg[1]) or 0.5

local function response()
  return {
    id = "chatcmpl-9x7YzA1b2C3d4E5f6G7h8I9j0K", object = "chat.completion", created = 1765180800,
    model = "gpt-4o-mini-2024-07-18", system_fingerprint = "fp_0ba0d124f1",
    choices = { {
      index = 0, finish_reason = "tool_calls", logprobs = ah.null,
      message = { role = "assistant", content = ah.null, refusal = ah.null, tool_calls = {
        { id = "call_Qm1x2YbC3dE4fG5hI6jK7lM8", type = "function",
          ["function"] = { name = "search", arguments = '{"query":"high tide Brest tomorrow","limit":5}' } },
        { id = "call_Zz9y8XwV7uT6sR5qP4oN3mL2", type = "function",
          ["function"] = { name = "metrics", arguments = '{"service":"checkout","window_s":3600,"p":0.99}' } },
      } },
    } },
    usage = { prompt_tokens = 1843, completion_tokens = 61, total_tokens = 1904,
              prompt_tokens_details = { cached_tokens = 1536, audio_tokens = 0 },
              completion_tokens_details = { reasoning_tokens = 0, audio_tokens = 0,
                                            accepted_prediction_tokens = 0, rejected_prediction_tokens = 0 } },
  }
end

local function request()
  local msgs = { { role = "system", content = "You are an operations agent. Use the tools to find facts; answer briefly and cite the numbers you used." } }
  for i = 1, 11 do
    msgs[#msgs + 1] = { role = "user", content = "Turn " .. i .. ": the checkout latency rose after the 14:05 deploy; is it the database, the cache or the new pricing call? Keep it short." }
    msgs[#msgs + 1] = { role = "assistant", content = "Checking the metrics for step " .. i .. ": p99 went from 212.5 ms to 845.25 ms, cache hit ratio 0.93, 1843 queries per second." }
  end
  msgs[#msgs + 1] = { role = "tool", tool_call_id = "call_Qm1x2YbC3dE4fG5hI6jK7lM8", content = '{"p99_ms":845.25,"hits":0.93,"qps":1843}' }
  local tools = {}
  for _, name in ipairs { "search", "metrics", "deploys", "rollback" } do
    tools[#tools + 1] = { type = "function", ["function"] = { name = name, description = "The " .. name .. " tool of the operations team.",
      parameters = { type = "object", properties = { query = { type = "string", description = "what to look for" },
                                                      limit = { type = "integer", minimum = 1, maximum = 50 } },
                     required = { "query" } } } }
  end
  return { model = "gpt-4o-mini", messages = msgs, tools = tools, temperature = 0.2, max_tokens = 1024, stream = false }
end

-- dkjson writes ah.null (a light userdata) only through its exception hook.
local dk_state = { exception = function(_, v) if v == ah.null then return "null" end end }
local codecs = {
  { name = "ah.json", encode = ah.json.encode, decode = ah.json.decode },
  { name = "lua-cjson", encode = cjson.encode, decode = cjson.decode },
  { name = "lua-dkjson", encode = function(v) return dkjson.encode(v, dk_state) end,
    decode = function(s) return dkjson.decode(s, 1, ah.null) end },
}

local function rate(fn, arg1)
  local n, batch = 0, 16
  local t0 = os.clock()
  repeat
    for _ = 1, batch do fn(arg1) end
    n = n + batch
  until os.clock() - t0 >= seconds
  return n / (os.clock() - t0)
end

for _, doc in ipairs { { "response", response() }, { "request", request() } } do
  local text = ah.json.encode(doc[2])
  for _, c in ipairs(codecs) do
    local value = c.decode(text)
    collectgarbage()
    local dec = rate(c.decode, text)
    local enc = rate(c.encode, value)
    print(string.format("codec=%s doc=%s bytes=%d decode_per_s=%.0f encode_per_s=%.0f",
                        c.name:gsub(" ", "_"), doc[1], #text, dec, enc))
  end
end
