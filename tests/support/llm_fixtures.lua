-- Canned replies of both dialects, as the APIs send them, for the
-- agenthost.llm specs: non-streamed bodies (JSON text) and streams (SSE
-- text), with the quirks real servers have (ids only on the first delta,
-- empty first arguments, names split across deltas, no usage, pings,
-- unknown events and fields).

local M = {}

local function sse(events)
  local out = {}
  for _, e in ipairs(events) do
    if type(e) == "table" then
      out[#out + 1] = "event: " .. e[1] .. "\ndata: " .. e[2] .. "\n\n"
    else
      out[#out + 1] = "data: " .. e .. "\n\n"
    end
  end
  return table.concat(out)
end
M.sse = sse

-- Percent-encodes s for a query value.
function M.query(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

M.openai = {}

M.openai.text = [[{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
 "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there","refusal":null},
 "logprobs":null,"finish_reason":"stop"}],
 "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15},"system_fingerprint":"fp"}]]

M.openai.tools = [[{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"m",
 "choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
   {"id":"call_a","type":"function","function":{"name":"metrics","arguments":"{\"query\":\"p99\"}"}},
   {"id":"call_b","type":"function","function":{"name":"web_search","arguments":"{\"query\":"}},
   {"id":"call_c","type":"function","function":{"name":"now","arguments":""}}]},
 "finish_reason":"tool_calls"}],
 "usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}]]

-- Text, then two parallel calls reassembled by index: ids only on the first
-- delta, empty first arguments, a name split in two, a chunk with an
-- unknown field, usage in the last chunk.
M.openai.stream = sse {
  [[{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"content":"Let me "},"finish_reason":null}],"usage":null}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"content":"check."},"finish_reason":null}],"usage":null,"x_unknown":{"a":1}}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"met","arguments":""}}]},"finish_reason":null}]}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"rics","arguments":"{\"qu"}}]},"finish_reason":null}]}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"web_search","arguments":""}}]},"finish_reason":null}]}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ery\":\"p99\"}"}}]},"finish_reason":null}]}]],
  [[{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"query\":\"latency\"}"}}]},"finish_reason":null}]}]],
  [[{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}]],
  [[{"id":"c","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":11,"total_tokens":41}}]],
  "[DONE]",
}

-- No usage at all, a finish reason and [DONE].
M.openai.stream_no_usage = sse {
  [[{"choices":[{"index":0,"delta":{"role":"assistant"}}]}]],
  [[{"choices":[{"index":0,"delta":{"content":"ok"}}]}]],
  [[{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}]],
  "[DONE]",
}

-- Cut short: text, then the body ends without a finish reason or [DONE].
M.openai.stream_cut = sse {
  [[{"choices":[{"index":0,"delta":{"content":"partial"}}]}]],
}

-- An error chunk after text, as a server sends when it fails mid-stream.
M.openai.stream_error = sse {
  [[{"choices":[{"index":0,"delta":{"content":"Hel"}}]}]],
  [[{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}]],
}

-- An error chunk before any content.
M.openai.stream_error_first = sse {
  [[{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}]],
  [[{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}]],
}

M.anthropic = {}

M.anthropic.text = [[{"id":"msg_1","type":"message","role":"assistant","model":"m",
 "content":[{"type":"text","text":"Hello there"}],"stop_reason":"end_turn","stop_sequence":null,
 "usage":{"input_tokens":12,"output_tokens":3,"service_tier":"standard"}}]]

M.anthropic.tools = [[{"id":"msg_2","type":"message","role":"assistant","model":"m",
 "content":[{"type":"text","text":"Checking."},
   {"type":"tool_use","id":"toolu_a","name":"metrics","input":{"query":"p99"}},
   {"type":"tool_use","id":"toolu_b","name":"web_search","input":"{\"query\":"}],
 "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":9}}]]

M.anthropic.stream = sse {
  { "message_start", [[{"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":30,"output_tokens":1}}}]] },
  { "content_block_start", [[{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}]] },
  { "ping", [[{"type": "ping"}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"check."}}]] },
  { "content_block_stop", [[{"type":"content_block_stop","index":0}]] },
  { "content_block_start", [[{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"metrics","input":{}}}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"query\": \"p"}}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"99\"}"}}]] },
  { "content_block_stop", [[{"type":"content_block_stop","index":1}]] },
  { "content_block_start", [[{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"now","input":{}}}]] },
  { "content_block_stop", [[{"type":"content_block_stop","index":2}]] },
  { "some_future_event", [[{"type":"some_future_event","x":1}]] },
  { "message_delta", [[{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":5}}]] },
  { "message_delta", [[{"type":"message_delta","delta":{},"usage":{"output_tokens":11}}]] },
  { "message_stop", [[{"type":"message_stop"}]] },
}

M.anthropic.stream_error = sse {
  { "message_start", [[{"type":"message_start","message":{"id":"msg_e","usage":{"input_tokens":3,"output_tokens":1}}}]] },
  { "content_block_start", [[{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}]] },
  { "error", [[{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}]] },
}

M.anthropic.stream_error_first = sse {
  { "message_start", [[{"type":"message_start","message":{"id":"msg_e","usage":{"input_tokens":3,"output_tokens":1}}}]] },
  { "error", [[{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}]] },
}

M.anthropic.stream_bad_json = sse {
  { "message_start", [[{"type":"message_start","message":{"id":"msg_b","usage":{"input_tokens":3,"output_tokens":1}}}]] },
  { "content_block_start", [[{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_x","name":"metrics","input":{}}}]] },
  { "content_block_delta", [[{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\": "}}]] },
  { "content_block_stop", [[{"type":"content_block_stop","index":0}]] },
  { "message_delta", [[{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":4}}]] },
  { "message_stop", [[{"type":"message_stop"}]] },
}

return M
