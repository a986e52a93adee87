-- agenthost.agent's structured output against the mock model, in both
-- dialects: the provider's own mechanism (OpenAI response_format
-- json_schema, an Anthropic forced tool), the decoded value in r.output,
-- a mismatch told to the model and tried again, output_invalid after
-- output_retries, tools used before the answer, and a resumed finished
-- conversation giving its output again without a model call.

local ah = require "agenthost"
local mockllm = require "support.mockllm"
local proc = require "support.proc"
local json = require("agenthost").json
local task = ah.task

local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local SCHEMA = { type = "object", required = { "city", "temp_c", "sky" }, additionalProperties = false,
  properties = { city = { type = "string" }, temp_c = { type = "integer" },
                 sky = { type = "string", enum = { "clear", "rain", "snow" } } } }

local RULES = { rules = {
  { system = "stubborn", json = { nope = 1 } },
  { match = "Your answer is not valid", json = { city = "Paris", temp_c = 18, sky = "rain" } },
  { match = "bad weather", json = { city = "Paris", temp_c = "warm" } },
  { match = "weather with tools", tool_calls = { { name = "thermometer", arguments = { city = "Oslo" } } } },
  { when = "tool", json = { city = "Oslo", temp_c = -3, sky = "snow" } },
  { match = "weather in", json = { city = "{{user}}", temp_c = 21, sky = "clear" } },
} }

local n = 0
local function memdb()
  n = n + 1
  return require("support.backend").db(string.format("%s/out%d.sqlite", dir, n))
end

for _, kind in ipairs(mockllm.DIALECTS) do
  describe("structured output (" .. kind .. ")", function()
    local m
    setup(function() m = mockllm.start { rules = RULES } end)
    teardown(function() m:stop() end)

    it("asks in the dialect's own way and returns the decoded answer", function()
      task.run(function()
        local db = memdb()
        local a = ah.agent.new { name = "w", provider = m:provider(kind), output = SCHEMA, memory = db }
        local r = a:run("weather in Lyon")
        assert.same({ city = "weather in Lyon", temp_c = 21, sky = "clear" }, r.output)
        assert.equal("integer", math.type(r.output.temp_c))
        assert.same(r.output, json.decode(r.text))
        assert.equal(1, r.turns)
        local body = json.decode(m:last().body)
        if kind == "openai" then
          assert.equal("json_schema", body.response_format.type)
          assert.equal("final_answer", body.response_format.json_schema.name)
          assert.same(SCHEMA.required, body.response_format.json_schema.schema.required)
        else
          assert.same({ type = "tool", name = "final_answer" }, body.tool_choice)
          assert.equal("final_answer", body.tools[1].name)
          assert.same(SCHEMA.required, body.tools[1].input_schema.required)
        end
        -- resumed: the same output, no model call
        local before = m:stats().requests.total
        local again = a:run(nil, { conversation = r.conversation })
        assert.same(r.output, again.output)
        assert.equal(0, again.turns)
        assert.equal(before, m:stats().requests.total)
        db:close()
      end)
    end)

    it("tells the model what was wrong and takes the corrected answer", function()
      task.run(function()
        local events = {}
        local a = ah.agent.new { name = "w", provider = m:provider(kind), output = SCHEMA,
          on_event = function(ev) if ev.type == "output_invalid" then events[#events + 1] = ev end end }
        local r = a:run("bad weather in Paris")
        assert.same({ city = "Paris", temp_c = 18, sky = "rain" }, r.output)
        assert.equal(2, r.turns)
        assert.equal(1, #events)
        assert.equal("missing required field sky", events[1].reason)
        local correction = r.messages[3]
        assert.equal("user", correction.role)
        assert.matches("missing required field sky", correction.content)
      end)
    end)

    it("raises output_invalid with the last text after output_retries", function()
      task.run(function()
        local db = memdb()
        local a = ah.agent.new { name = "w", provider = m:provider(kind), output = SCHEMA,
                                 output_retries = 1, memory = db, system = "You are stubborn." }
        local ok, err = pcall(a.run, a, "weather in Rome")
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "output_invalid"), tostring(err))
        assert.same({ nope = 1 }, json.decode(err.text))
        assert.matches("after 2 tries", err.message)
        assert.equal(2, err.turn)
        assert.equal("failed", ah.memory.open(db):run(err.conversation).status)
        db:close()
      end)
    end)

    it("lets the model use tools before it answers", function()
      task.run(function()
        local a = ah.agent.new { name = "w", provider = m:provider(kind), output = SCHEMA, tools = {
          { name = "thermometer", parameters = { type = "object", properties = { city = { type = "string" } } },
            run = function(x) return x.city .. ": -3 C, snowing" end } } }
        local r = a:run("weather with tools please")
        assert.same({ city = "Oslo", temp_c = -3, sky = "snow" }, r.output)
        assert.equal(2, r.turns)
        if kind == "anthropic" then
          assert.same({ type = "any" }, json.decode(m:last().body).tool_choice)
        end
      end)
    end)

    it("answers from the schema alone when no rule gives the value, and per run", function()
      task.run(function()
        local schema = { type = "object", required = { "n", "tags" }, properties = {
          n = { type = "integer", minimum = 3 }, tags = { type = "array", minItems = 2, items = { type = "string" } },
          ok = { type = "boolean" } } }
        local a = ah.agent.new { name = "w", provider = m:provider(kind) }
        local r = a:run("anything at all", { output = schema })
        assert.equal(3, r.output.n)
        assert.equal(2, #r.output.tags)
        assert.is_true(r.output.ok)
      end)
    end)
  end)
end

describe("structured output settings", function()
  it("refuses a malformed output schema before any model call", function()
    local ok, err = pcall(ah.agent.new, { name = "x", provider = {}, output = { type = "object", required = { {} } } })
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    assert.matches("output: .*malformed", err.message)
  end)
end)
