-- agenthost.tools: schema validation of model-made arguments, and the
-- registry's call, which turns every failure into an error result.

local ah = require "agenthost"
local json = require("agenthost").json
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
  { '"hello"', 'the arguments must be an object, got string "hello"' },
}

describe("tools.validate", function()
  it("refuses numbers that are not finite (which JSON cannot carry, but a Lua caller can pass)", function()
    assert.same({ nil, "argument ratio must be a finite number, got inf" },
      { tools.validate(schema, { query = "x", ratio = math.huge }) })
    -- NaN in a model's arguments never reaches the check: it is not JSON
    assert.is_false((pcall(json.decode, '{"query":"x","ratio":NaN}')))
  end)

  for i, c in ipairs(cases) do
    it(string.format("case %d: %s", i, c[1]), function()
      local ok, err = tools.validate(schema, json.decode(c[1]))
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
    assert.is_false(r.is_error)
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
    assert.equal("error: boom failed: disk on fire", r.content) -- no source position for the model
    assert.matches("tools_spec%.lua:%d+: disk on fire", r.error)
    assert.matches("stack traceback", r.traceback)
    r = call { name = "raise" }
    assert.equal("error: raise failed: upstream said 502", r.content)
    r = call { name = "slow" }
    assert.equal("error: slow did not finish within 0.05 seconds", r.content)
    r = call { name = "big" }
    assert.is_false(r.is_error)
    assert.matches("%[truncated: %d+ of %d+ bytes shown%]$", r.content)
  end)

  it("hands tools their arguments with nulls dropped and whole numbers as integers", function()
    local seen
    local r2 = tools.registry { { name = "look", parameters = schema, run = function(a) seen = a return "ok" end } }
    task.run(function()
      return r2:call { name = "look", arguments = json.decode('{"query":"x","limit":3,"maybe":null,"tags":["a"]}') }
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

describe("tools.validate on malformed schemas", function()
  -- Each schema is refused with invalid_argument naming the keyword and
  -- where it is; none may raise a raw Lua error.
  local cases = {
    { { type = "object", required = { {} } }, "at /required/0: a required property name must be a string" },
    { { type = "object", required = { {}, {} } }, "at /required/0" },
    { { type = "thing" }, 'type "thing" is not a JSON type' },
    { { type = { "string", 3 } }, "type 3 is not a JSON type" },
    { { type = {} }, "type must be a type name or a non-empty array" },
    { { properties = { a = 42 } }, "at /properties/a: a schema must be an object, got integer" },
    { { properties = { "x" } }, "properties must be an object of schemas" },
    { { properties = { a = { items = "x" } } }, "at /properties/a/items: a schema must be an object" },
    { { minLength = -1 }, "minLength must be a whole number >= 0, got -1" },
    { { maxItems = 2.5 }, "maxItems must be a whole number >= 0" },
    { { minimum = "3" }, "minimum must be a number" },
    { { enum = "a" }, "enum must be an array" },
    { { anyOf = {} }, "anyOf must be a non-empty array of schemas" },
    { { oneOf = { 1 } }, "at /oneOf/0: a schema must be an object" },
    { { additionalProperties = "no" }, "at /additionalProperties: a schema must be an object" },
    { { ["$ref"] = "#/$defs/missing" }, "names nothing in it" },
    { "not a schema", "a schema must be an object, got string" },
  }
  for i, c in ipairs(cases) do
    it("case " .. i .. ": " .. c[2], function()
      local ok, err = pcall(tools.validate, c[1], { a = 1 })
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      assert.matches(c[2], err.message, 1, true)
    end)
  end

  it("refuses a tool with a malformed schema when it is registered", function()
    local ok, err = pcall(tools.registry, { { name = "x", run = print,
      parameters = { type = "object", required = { {} } } } })
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    assert.matches("the parameters of x: .*required", err.message)
  end)

  it("follows local $refs, allOf, not and tuple items", function()
    local s = { type = "object", ["$defs"] = { pos = { type = "integer", minimum = 1 } },
      properties = { n = { ["$ref"] = "#/$defs/pos" },
                     both = { allOf = { { type = "string" }, { maxLength = 2 } } },
                     never = { ["not"] = { type = "string" } },
                     pair = { type = "array", items = { { type = "string" }, { type = "integer" } } } } }
    assert.is_true(tools.validate(s, { n = 3, both = "ab", never = 1, pair = { "a", 2 } }))
    assert.same({ nil, "argument n must be >= 1, got 0" }, { tools.validate(s, { n = 0 }) })
    assert.same({ nil, "argument both must be at most 2 characters long, got 3" }, { tools.validate(s, { both = "abc" }) })
    assert.same({ nil, "argument never matches a form that is not allowed" }, { tools.validate(s, { never = "s" }) })
    assert.same({ nil, 'argument pair[1] must be an integer, got string "x"' }, { tools.validate(s, { pair = { "a", "x" } }) })
  end)

  it("names the value as asked", function()
    local s = { type = "object", required = { "city" }, properties = { temp = { type = "number" } } }
    assert.same({ nil, "missing required field city" },
      { tools.validate(s, {}, { root = "the answer", item = "field " }) })
    assert.same({ nil, "the answer must be an object, got integer 3" },
      { tools.validate(s, 3, { root = "the answer", item = "field " }) })
    assert.same({ nil, "missing required argument city" }, { tools.validate(s, {}) }) -- the default is back
  end)
end)

describe("tools.registry:call misuse", function()
  local reg = tools.registry { { name = "echo", run = function(a) return a.s end } }
  it("raises invalid_argument for a call that is not a call", function()
    for _, f in ipairs {
      function() return reg:call("echo", { s = "x" }) end,
      function() return reg:call({ arguments = {} }) end,
      function() return reg:call({ name = "echo", arguments = "{}" }) end,
      function() return reg:call({ name = "echo" }, "ctx") end,
    } do
      local ok, err = pcall(task.run, f)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
      assert.matches("registry:call", err.message)
    end
    local ok, err = pcall(task.run, function() return reg:call("echo", {}) end)
    assert.is_false(ok)
    assert.matches('reg:call{name = "echo", arguments = {...}}', err.message, 1, true)
  end)

  it("keeps source positions from the model unless the tool opts in", function()
    assert.equal("plain", tools.strip_positions("scripts/x.lua:9: plain"))
    assert.equal("nested", tools.strip_positions('a.lua:1: [string "chunk"]:3: nested'))
    assert.equal("host:80: refused", tools.strip_positions("host:80: refused"))
    local r2 = tools.registry { { name = "loud", raw_errors = true, run = function() error("oops") end } }
    local r = task.run(function() return r2:call { name = "loud" } end)
    assert.matches("^error: loud failed: .*tools_spec%.lua:%d+: oops$", r.content)
  end)
end)
