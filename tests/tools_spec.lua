-- agenthost.tools: schema validation of model-made arguments, and the
-- registry's call, which turns every failure into an error result.

local ah = require "agenthost"
local cjson = require "cjson"
local tools = ah.tools
local task = ah.task

local schema = {
  type = "object",
  properties = {
    query = { type = "string", minLength = 1, maxLength = 10 },
    limit = { type = "integer", minimum = 1, maximum = 10 },
    ratio = { type = "number", exclusiveMinimum = 0, exclusiveMaximum = 1 },
    unit = { type = "string", enum = { "c", "f" } },
    tags = { type = "array", items = { type = "string" }, minItems = 1, maxItems = 3 },
    flag = { type = "boolean" },
    opts = {
      type = "object",
      properties = { depth = { type = "integer" } },
      required = { "depth" },
      additionalProperties = false,
    },
    either = { anyOf = { { type = "string" }, { type = "integer" } } },
    maybe = { type = { "string", "null" } },
  },
  required = { "query" },
  additionalProperties = false,
}

-- { arguments (as JSON, decoded as a model's would be), expected error or nil }
local cases = {
  { '{"query":"tides"}', nil },
  { '{"query":"tides","limit":5,"ratio":0.5,"unit":"c","tags":["a","b"],"flag":true}', nil },
  { '{"query":"x","opts":{"depth":2},"either":"s"}', nil },
  { '{"query":"x","either":3,"maybe":null,"limit":null}', nil },
  { '{"query":"x","limit":5.0}', nil },
  { '{"query":"x","tags":[]}', "argument tags must have at least 1 items, got 0" },
  { '{}', "missing required argument query" },
  { '{"query":null}', "missing required argument query" },
  { '{"query":42}', "argument query must be a string, got integer 42" },
  { '{"query":""}', "argument query must be at least 1 characters long, got 0" },
  { '{"query":"abcdefghijk"}', "argument query must be at most 10 characters long, got 11" },
  { '{"query":"x","limit":0}', "argument limit must be >= 1, got 0" },
  { '{"query":"x","limit":50}', "argument limit must be <= 10, got 50" },
  { '{"query":"x","limit":2.5}', "argument limit must be a whole number, got 2.5" },
  { '{"query":"x","limit":"5"}', 'argument limit must be an integer, got string "5"' },
  { '{"query":"x","ratio":1}', "argument ratio must be < 1, got 1" },
  { '{"query":"x","ratio":0}', "argument ratio must be > 0, got 0" },
  { '{"query":"x","unit":"k"}', 'argument unit must be one of "c", "f", got "k"' },
  { '{"query":"x","tags":["a",2]}', "argument tags[1] must be a string, got integer 2" },
  { '{"query":"x","tags":["a","b","c","d"]}', "argument tags must have at most 3 items, got 4" },
  { '{"query":"x","tags":"a"}', 'argument tags must be an array, got string "a"' },
  { '{"query":"x","flag":"yes"}', 'argument flag must be a boolean, got string "yes"' },
  { '{"query":"x","opts":{}}', "missing required argument opts.depth" },
  { '{"query":"x","opts":{"depth":1,"width":2}}', "unexpected argument opts.width (allowed: depth)" },
  { '{"query":"x","opts":[1]}', "argument opts must be an object, got array [1]" },
  { '{"query":"x","colour":"red"}', "unexpected argument colour (allowed: either, flag, limit, maybe, opts, query, ratio, tags, unit)" },
  { '{"query":"x","either":true}', "argument either must be a string, got boolean true" },
  { '{"query":"x","maybe":3}', "argument maybe must be of type string or null, got integer" },
  { '[1,2]', "the arguments must be an object, got array [1,2]" },
  { '{"query":"x","ratio":NaN}', "argument ratio must be a finite number, got nan" },
  { '"hello"', 'the arguments must be an object, got string "hello"' },
}

describe("tools.validate", function()
  for i, c in ipairs(cases) do
    it(string.format("case %d: %s", i, c[1]), function()
      local ok, err = tools.validate(schema, cjson.decode(c[1]))
      if c[2] == nil then
        assert.is_true(ok, err)
      else
        assert.is_nil(ok)
        assert.equal(c[2], err)
      end
    end)
  end
end)

describe("tools.registry", function()
  local calls = 0
  local reg = tools.registry {
    { name = "add", description = "adds", parameters = {
        type = "object", required = { "a", "b" },
        properties = { a = { type = "number" }, b = { type = "number" } } },
      run = function(args) calls = calls + 1 return args.a + args.b end },
    { name = "boom", run = function() error("disk on fire") end },
    { name = "raise", run = function() error(ah.error.new("http", "upstream said 502")) end },
    { name = "slow", timeout = 0.05, run = function() task.sleep(10) return "late" end },
    { name = "big", run = function() return string.rep("x", tools.MAX_RESULT + 10) end },
    { name = "table", run = function() return { ok = true, n = 3 } end },
  }

  local function call(c) return task.run(function() return reg:call(c) end) end

  it("lists tools in the neutral shape", function()
    local l = reg:list()
    assert.equal(6, #l)
    assert.same({ name = "add", description = "adds", parameters = reg:get("add").parameters }, l[1])
    assert.same({ type = "object", properties = {} }, l[2].parameters)
  end)

  it("runs a tool with valid arguments", function()
    local r = call { id = "1", name = "add", arguments = { a = 2, b = 3 } }
    assert.is_nil(r.is_error)
    assert.equal("5", r.content)
    assert.equal(5, r.value)
    assert.equal('{"n":3,"ok":true}', (call { name = "table" }).content:gsub('"ok":true,"n":3', '"n":3,"ok":true'))
  end)

  it("turns every failure into an error result the model can act on", function()
    local before = calls
    local r = call { name = "nope", arguments = {} }
    assert.is_true(r.is_error)
    assert.matches('no tool named "nope"; the tools are: add, boom', r.content)
    r = call { name = "add", arguments = { a = 1 } }
    assert.is_true(r.is_error)
    assert.equal("error: invalid arguments for add: missing required argument b", r.content)
    r = call { name = "add", raw_arguments = "{a:", error = "expected a value" }
    assert.matches("not valid JSON", r.content)
    assert.equal(before, calls) -- nothing ran
    r = call { name = "boom" }
    assert.is_true(r.is_error)
    assert.matches("boom failed: .*disk on fire", r.content)
    r = call { name = "raise" }
    assert.equal("error: raise failed: upstream said 502", r.content)
    r = call { name = "slow" }
    assert.equal("error: slow did not finish within 0.05 seconds", r.content)
    r = call { name = "big" }
    assert.is_nil(r.is_error)
    assert.matches("%[truncated: %d+ of %d+ bytes shown%]$", r.content)
  end)

  it("hands tools their arguments with nulls dropped and whole numbers as integers", function()
    local seen
    local r2 = tools.registry { { name = "look", parameters = schema, run = function(a) seen = a return "ok" end } }
    task.run(function()
      return r2:call { name = "look", arguments = cjson.decode('{"query":"x","limit":3,"maybe":null,"tags":["a"]}') }
    end)
    assert.equal(3, seen.limit)
    assert.equal("integer", math.type(seen.limit))
    assert.is_nil(seen.maybe)
    assert.same({ "a" }, seen.tags)
  end)

  it("tells a tool's own timeout error from running out of time", function()
    local r2 = tools.registry { { name = "upstream", timeout = 5,
      run = function() error(ah.error.new("timeout", "the upstream API timed out")) end } }
    local r = task.run(function() return r2:call { name = "upstream" } end)
    assert.equal("error: upstream failed: the upstream API timed out", r.content)
  end)

  it("never cuts a result inside a UTF-8 character", function()
    local s = string.rep("é", 10) -- 2 bytes each
    assert.equal(string.rep("é", 2), tools.utf8_cut(s, 5))
    assert.equal(string.rep("é", 3), tools.utf8_cut(s, 6))
    assert.equal(s, tools.utf8_cut(s, 100))
  end)

  it("passes its caller's cancellation on", function()
    task.run(function()
      local t = task.spawn(function() return reg:call { name = "slow" } end)
      task.sleep(0.01)
      t:cancel()
      local ok, err = t:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
    end)
  end)

  it("refuses malformed tools", function()
    for _, t in ipairs {
      { name = "bad name", run = print },
      { name = "x" },
      { name = "x", run = print, parameters = { type = "array" } },
      { name = "x", run = print, timeout = -1 },
      { name = "add", run = print },
    } do
      local ok, err = pcall(reg.add, reg, t)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    end
  end)
end)
