-- ah.json: the codec of the whole library (docs/json.md).  Numbers keep
-- their type and every digit both ways, strings are UTF-8 checked on the
-- way in and escaped on the way out, tables are arrays or objects and
-- nothing in between, and every refusal says what and where.

local ah = require "agenthost"
local json = ah.json

-- The error of a call that must fail: a structured invalid_argument whose
-- message holds every piece of `want` (plain text).
local function refused(want, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected a refusal: " .. table.concat(want, " | "))
  assert.is_true(ah.error.is(err, "invalid_argument"), "expected invalid_argument, got " .. tostring(err))
  assert.is_false(err.retryable)
  for _, w in ipairs(want) do
    assert.truthy(err.message:find(w, 1, true), "want '" .. w .. "' in: " .. err.message)
  end
  return err
end

-- The same double, bit for bit (so that -0.0 and 0.0 differ).
local function same_float(a, b)
  return math.type(a) == "float" and math.type(b) == "float" and string.pack("<d", a) == string.pack("<d", b)
end

describe("ah.json numbers", function()
  it("decodes numbers without a fraction or an exponent that fit int8 as integers, exactly", function()
    local cases = {
      { "0", 0 }, { "-0", 0 }, { "71", 71 }, { "-71", -71 },
      { "9223372036854775807", math.maxinteger }, { "-9223372036854775808", math.mininteger },
      { "9007199254740993", 9007199254740993 }, { "1234567890123456789", 1234567890123456789 },
      { "1000000000000000000", 1000000000000000000 },
    }
    for _, c in ipairs(cases) do
      local v = json.decode(c[1])
      assert.equal("integer", math.type(v), c[1])
      assert.equal(c[2], v, c[1])
    end
  end)

  it("decodes every other number as the nearest float (71.0 stays a float)", function()
    local cases = {
      { "71.0", 71.0 }, { "7.1e1", 71.0 }, { "7100E-2", 71.0 }, { "1e2", 100.0 }, { "1E+2", 100.0 },
      { "0.1", 0.1 }, { "0.30000000000000004", 0.1 + 0.2 }, { "1e308", 1e308 },
      { "1.7976931348623157e308", 1.7976931348623157e308 }, { "2.2250738585072014e-308", 2.2250738585072014e-308 },
      { "5e-324", 5e-324 }, { "4.9406564584124654e-324", 5e-324 }, { "1e-400", 0.0 },
      { "1e400", math.huge }, { "-1e400", -math.huge },
      -- past int8: a float, never a wrapped integer
      { "9223372036854775808", 2 ^ 63 }, { "-9223372036854775809", -2 ^ 63 },
      { "123456789012345678901234567890", 1.2345678901234568e29 },
      -- more digits than a double holds, rounded once
      { "0.1000000000000000055511151231257827021181583404541015625", 0.1 },
      { "3.14159265358979323846264338327950288419716939937510", math.pi },
    }
    for _, c in ipairs(cases) do
      local v = json.decode(c[1])
      assert.is_true(same_float(c[2], v), c[1] .. " gave " .. tostring(v) .. " (" .. tostring(math.type(v)) .. ")")
    end
    assert.is_true(same_float(-0.0, json.decode("-0.0")))
    assert.is_true(same_float(-0.0, json.decode("-0e5")))
  end)

  it("rounds halfway cases to even, and a digit far past the last one still counts", function()
    -- 2^53 + 1 is halfway between two doubles: ties go to the even one.
    assert.is_true(same_float(2.0 ^ 53, json.decode("9007199254740993.0")))
    assert.is_true(same_float(2.0 ^ 53 + 2, json.decode("9007199254740993.000000000000000001")))
    -- The deciding digit comes after 800 zeros (past the digits kept).
    local far = "9007199254740993." .. string.rep("0", 800) .. "1"
    assert.is_true(same_float(2.0 ^ 53 + 2, json.decode(far)))
    assert.is_true(same_float(2.0 ^ 53, json.decode("9007199254740993." .. string.rep("0", 900))))
    -- 5000 digits before the point and 5000 zeros after it
    assert.is_true(same_float(1e5000 == math.huge and math.huge or 0, json.decode("1" .. string.rep("0", 5000))))
    assert.is_true(same_float(1e-5, json.decode("0." .. string.rep("0", 4) .. "1" .. string.rep("0", 5000))))
    assert.is_true(same_float(1.0, json.decode("1" .. string.rep("0", 400) .. "e-400")))
  end)

  it("encodes integers exactly, int8's whole range", function()
    assert.equal('{"a":1234567890123456789}', json.encode { a = 1234567890123456789 })
    assert.equal("9223372036854775807", json.encode(math.maxinteger))
    assert.equal("-9223372036854775808", json.encode(math.mininteger))
    assert.equal("9007199254740993", json.encode(math.tointeger(2 ^ 53) + 1))
    assert.equal("0", json.encode(0))
    assert.equal("-71", json.encode(-71))
  end)

  it("encodes floats in the fewest digits that read back the same, always as floats", function()
    local cases = {
      { 0.1, "0.1" }, { 0.1 + 0.2, "0.30000000000000004" }, { 1e308, "1e+308" }, { -0.0, "-0.0" },
      { 0.0, "0.0" }, { 71.0, "71.0" }, { -71.0, "-71.0" }, { 2.0 ^ 53, "9007199254740992.0" },
      { 2.0 ^ 63, "9.223372036854776e+18" }, { 5e-324, "5e-324" }, { 1 / 3, "0.3333333333333333" },
      { math.pi, "3.141592653589793" }, { 1e15, "1e+15" }, { 123456789012345.6, "123456789012345.6" },
      { 1.5e-7, "1.5e-07" }, { 1.7976931348623157e308, "1.7976931348623157e+308" },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[2], json.encode(c[1]))
    end
  end)

  it("round-trips random doubles bit for bit and random integers exactly", function()
    math.randomseed(1)
    for _ = 1, 20000 do
      local bits = string.pack("<I4I4", math.random(0, 0xffffffff), math.random(0, 0xffffffff))
      local x = string.unpack("<d", bits)
      if x == x and x ~= math.huge and x ~= -math.huge then
        local text = json.encode(x)
        assert.is_true(same_float(x, json.decode(text)), text)
        assert.truthy(#text <= 24, text)
      end
      local i = math.random(math.mininteger, math.maxinteger)
      assert.equal(i, json.decode(json.encode(i)))
      assert.equal("integer", math.type(json.decode(json.encode(i))))
    end
  end)

  it("refuses NaN and infinities, naming where they are", function()
    refused({ "ah.json.encode: the number at $ is NaN, which JSON cannot write" }, json.encode, 0 / 0)
    refused({ "the number at $.usage.ratio is infinity" }, json.encode, { usage = { ratio = math.huge } })
    refused({ "the number at $[2] is -infinity" }, json.encode, { 1, -math.huge })
    -- a number too big for a double decodes to math.huge, which then cannot be written
    refused({ "is infinity" }, json.encode, json.decode("[1e999]"))
  end)
end)

describe("ah.json values", function()
  it("decodes null as ah.null, which is lua-cjson's null, and encodes it and nil as null", function()
    assert.equal(ah.null, json.null)
    assert.equal(require("cjson").null, json.null)
    assert.equal(json.null, json.decode("null"))
    local v = json.decode('{"a":null,"b":[null,1]}')
    assert.equal(json.null, v.a)
    assert.equal(json.null, v.b[1])
    assert.equal('[null,1]', json.encode { json.null, 1 })
    assert.equal("null", json.encode(nil))
    assert.equal("true", json.encode(true))
    assert.equal("[true,false]", json.encode(json.decode(" [ true , false ] ")))
  end)

  it("marks decoded arrays with ah.json.array_mt, so that [] encodes back as []", function()
    local v = json.decode('{"required":[],"props":{},"list":[[],{}]}')
    assert.equal(json.array_mt, getmetatable(v.required))
    assert.equal(json.array_mt, getmetatable(v.list))
    assert.is_nil(getmetatable(v))
    assert.is_nil(getmetatable(v.props))
    assert.same({}, v.required)
    assert.equal(0, #v.required)
    local back = json.decode(json.encode(v))
    assert.equal("[]", json.encode(back.required))
    assert.equal("{}", json.encode(back.props))
    assert.equal("[[],{}]", json.encode(back.list))
  end)

  it("encodes an empty table as {} unless it is marked with ah.json.array", function()
    assert.equal("{}", json.encode {})
    assert.equal("[]", json.encode(json.array()))
    local t = { 1, 2 }
    assert.equal(t, json.array(t))
    assert.equal("[1,2]", json.encode(t))
    for i = #t, 1, -1 do t[i] = nil end
    assert.equal("[]", json.encode(t), "an array that was emptied stays one")
    assert.equal(json.array_mt, getmetatable(json.array(json.array())))
    refused({ "ah.json.array: t already has a metatable" }, json.array, setmetatable({}, {}))
    refused({ "the table at $.tags is marked as an array (ah.json.array) but has the key 'x'" },
      json.encode, { tags = json.array { x = 1 } })
  end)

  it("encodes tables by their keys: 1..n is an array, strings an object; other metatables are ignored", function()
    assert.equal("[1,2,3]", json.encode { 1, 2, 3 })
    assert.equal('{"a":1}', json.encode { a = 1 })
    -- a structured error is a table with a metatable: its fields are written
    assert.same({ kind = "tool", message = "m", retryable = false },
      json.decode(json.encode(ah.error.new("tool", "m"))))
    -- the same table twice, not inside itself, is no cycle
    local shared = { 1 }
    assert.equal('[[1],[1]]', json.encode { shared, shared })
    -- an array built backwards, its keys in the hash part
    local back = {}
    for i = 5, 1, -1 do back[i] = i end
    assert.equal("[1,2,3,4,5]", json.encode(back))
    -- the last of duplicate keys wins
    assert.same({ a = 2 }, json.decode('{"a":1,"a":2}'))
  end)

  it("refuses sparse and mixed tables and keys of other types, naming the key and the place", function()
    refused({ "the table at $ is an array with a hole: key 2 is missing but key 3 is there", "ah.null" },
      json.encode, { 1, nil, 3 })
    refused({ "the table at $.a.b is an array with a hole: key 1 is missing but key 3 is there" },
      json.encode, { a = { b = { [3] = 1 } } })
    refused({ "the table at $ has both array items (keys 1 to 2) and the key 'x'" }, json.encode, { 1, 2, x = 3 })
    refused({ "the table at $.args has string keys and the integer key 2" }, json.encode, { args = { x = 1, [2] = 2 } })
    refused({ "the table at $ has the key 0, which no JSON array holds" }, json.encode, { [0] = "zero" })
    refused({ "the table at $ has the key -1" }, json.encode, { [-1] = "x" })
    refused({ "the table at $ has the key true; JSON objects have string keys" }, json.encode, { [true] = 1 })
    refused({ "the table at $[1] has the key 1.5" }, json.encode, { { [1.5] = 1 } })
    refused({ "the table at $ has the key a table" }, json.encode, { [{}] = 1 })
    refused({ "the table at $['a b'].c has both array items (keys 1 to 1) and the key 'd'" }, json.encode, { ["a b"] = { c = { 1, d = 2 } } })
  end)

  it("refuses functions, userdata, threads and cycles, naming where they are", function()
    refused({ "the value at $.run is a function, which has no JSON form" }, json.encode, { run = print })
    refused({ "the value at $.list[2].f is a userdata" }, json.encode, { list = { {}, { f = io.stdout } } })
    refused({ "the value at $ is a thread" }, json.encode, coroutine.create(print))
    refused({ "the value at $[1] is a userdata" }, json.encode, { io.stderr })
    local t = { name = "loop" }
    t.again = { t }
    refused({ "the table at $.again[1] is also at $, inside itself: a cycle has no JSON form" }, json.encode, t)
    local self = {}
    self[1] = self
    refused({ "the table at $[1] is also at $" }, json.encode, self)
  end)

  it("nests 1000 deep both ways, refuses 1001, and takes a lower max_depth", function()
    local function nested(d)
      return string.rep("[", d) .. "1" .. string.rep("]", d)
    end
    local v = json.decode(nested(1000))
    assert.equal(nested(1000), json.encode(v))
    refused({ "ah.json.decode: arrays and objects nested deeper than 1000 at line 1, column 1001 (byte 1000)" },
      json.decode, nested(1001))
    local deep = { 1 }
    for _ = 1, 1000 do deep = { deep } end
    refused({ "is nested deeper than 1000" }, json.encode, deep)
    refused({ "nested deeper than 3" }, json.decode, nested(4), { max_depth = 3 })
    assert.equal(1, json.decode(nested(3), { max_depth = 3 })[1][1][1])
    refused({ "the table at $.a.b is nested deeper than 2" }, json.encode, { a = { b = {} } }, { max_depth = 2 })
    local objs = string.rep('{"a":', 1000) .. "1" .. string.rep("}", 1000)
    assert.equal(objs, json.encode(json.decode(objs)))
  end)
end)

describe("ah.json strings", function()
  it("decodes every escape, \\u0000 and surrogate pairs included", function()
    assert.equal('"\\/\b\f\n\r\t', json.decode([["\"\\\/\b\f\n\r\t"]]))
    assert.equal("a\0b", json.decode([["a\u0000b"]]))
    assert.equal("é€", json.decode([["\u00e9\u20AC"]]))
    assert.equal("😀", json.decode([["\ud83d\ude00"]]))
    assert.equal("\u{10000}\u{10FFFF}", json.decode([["\uD800\uDC00\uDBFF\uDFFF"]]))
    assert.equal("\u{FFFF}\u{E000}\u{D7FF}", json.decode([["\uffff\ue000\ud7ff"]]))
    assert.same({ ["ké y"] = "v" }, json.decode([[{"k\u00e9 y":"v"}]]))
  end)

  it("takes valid UTF-8 as it is, at every edge of its forms", function()
    for _, s in ipairs { "\u{7F}", "\u{80}", "\u{7FF}", "\u{800}", "\u{D7FF}", "\u{E000}", "\u{FFFF}",
                         "\u{10000}", "\u{10FFFF}", "日本語のテキスト", "mixed é 😀 ascii" } do
      assert.equal(s, json.decode('"' .. s .. '"'))
      assert.equal('"' .. s .. '"', json.encode(s))
    end
  end)

  it("refuses lone surrogates, invalid UTF-8 and raw control characters, saying which and where", function()
    local lone = "a \\u escape of a lone surrogate"
    for _, text in ipairs { [["\ud800"]], [["\udc00"]], [["\udbff x"]], [["\ud800\u0041"]], [["\ud800\ud800"]],
                            [["\udc00\ud800"]], [["\ud800\n"]], [[{"\ud800":1}]] } do
      refused({ lone, "(byte " }, json.decode, text)
    end
    for _, bad in ipairs { "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                           "\x80", "\xbf", "\xfe", "\xff", "\xe2\x82", "\xf0\x9f\x98" } do
      refused({ "ah.json.decode: invalid UTF-8 at line 1, column 3 (byte 2)" }, json.decode, '"a' .. bad .. '"')
    end
    refused({ "a raw control character in a string", "column 3 (byte 2)" }, json.decode, '"a\nb"')
    refused({ "a raw control character" }, json.decode, '"\t"')
    refused({ "an invalid escape", "(byte 1)" }, json.decode, [["\x41"]])
    refused({ "\\u must be followed by four hex digits" }, json.decode, [["\u12"]])
    refused({ "\\u must be followed by four hex digits" }, json.decode, [["\u00zz"]])
  end)

  it("escapes quotes, backslashes and control characters, and nothing else", function()
    assert.equal([["a\"b\\c/d"]], json.encode('a"b\\c/d'))
    assert.equal([["\b\f\n\r\t\u0000\u0001\u001f"]], json.encode("\b\f\n\r\t\0\1\31"))
    assert.equal('"\127 é"', json.encode("\127 é"))
    for c = 0, 127 do
      local s = string.char(c)
      assert.equal(s, json.decode(json.encode(s)), "byte " .. c)
    end
  end)

  it("replaces invalid UTF-8 with U+FFFD, one per maximal ill-formed part, or refuses it when asked", function()
    assert.equal('"\u{FFFD}A"', json.encode("\xe2\x82A"))
    assert.equal('"\u{FFFD}\u{FFFD}\u{FFFD}"', json.encode("\xed\xa0\x80"))
    assert.equal('"a\u{FFFD}b"', json.encode("a\xffb"))
    assert.equal('"\u{FFFD}\u{FFFD}"', json.encode("\xc0\x80"))
    assert.equal('"\u{FFFD}"', json.encode("\xf0\x9f\x98"))
    assert.equal('{"k\u{FFFD}":"\u{FFFD}"}', json.encode { ["k\xff"] = "\xfe" })
    refused({ "the string at $.out is not valid UTF-8 (byte 3)" }, json.encode, { out = "abc\xff" },
      { invalid_utf8 = "error" })
    refused({ "the key at $['k?'] is not valid UTF-8 (byte 1)" }, json.encode, { ["k\xff"] = 1 },
      { invalid_utf8 = "error" })
    assert.equal('"ok"', json.encode("ok", { invalid_utf8 = "error" }))
  end)

  it("round-trips big strings and wide tables", function()
    local chunk = "line with \"quotes\", a tab\t, é and 😀\n"
    local big = string.rep(chunk, 16 * 1024 * 1024 // #chunk)
    local text = json.encode { content = big }
    assert.equal(big, json.decode(text).content)
    local plain = string.rep("x", 8 * 1024 * 1024)
    assert.equal(plain, json.decode(json.encode(plain)))
    local wide, list = {}, {}
    for i = 1, 100000 do
      wide["k" .. i] = i
      list[i] = i % 7 == 0 and json.null or i * 0.5
    end
    local back = json.decode(json.encode { wide = wide, list = list })
    assert.same(wide, back.wide)
    assert.same(list, back.list)
    assert.equal("float", math.type(back.list[1]))
  end)
end)

describe("ah.json.decode refusals", function()
  it("say what was wrong and where, for every kind of malformed text", function()
    local cases = {
      { "", "the text ends before the JSON value does at line 1, column 1 (byte 0)" },
      { "   ", "the text ends before the JSON value does at line 1, column 4 (byte 3)" },
      { "[1,", "the text ends before the JSON value does" },
      { '"abc', "the text ends before the JSON value does at line 1, column 5 (byte 4)" },
      { "[1,]", "expected a value (a string, a number, an object, an array, true, false or null) at line 1, column 4" },
      { "@", "expected a value" },
      { "'a'", "expected a value" },
      { "tru", "expected true, false or null at line 1, column 1" },
      { "nul", "expected true, false or null" },
      { "True", "expected a value" },
      { "01", "an invalid number" }, { "1.", "an invalid number" }, { "-", "an invalid number" },
      { "1e", "an invalid number" }, { "1e+", "an invalid number" }, { ".5", "expected a value" },
      { "+1", "expected a value" }, { "0x10", "more than whitespace after the JSON value at line 1, column 2" },
      { "Infinity", "expected a value" }, { "NaN", "expected a value" }, { "-Infinity", "an invalid number" },
      { '{"a" 1}', "expected ':' after an object's key at line 1, column 6 (byte 5)" },
      { '{a:1}', "expected a string (an object's key) at line 1, column 2" },
      { '{"a":1,}', "expected a string (an object's key) at line 1, column 8" },
      { "[1 2]", "expected ',' or ']' after an array item at line 1, column 4" },
      { '{"a":1 "b":2}', "expected ',' or '}' after an object member at line 1, column 8" },
      { "[1] x", "more than whitespace after the JSON value at line 1, column 5 (byte 4)" },
      { "1 2", "more than whitespace after the JSON value" },
      { "[\n  1,\n  2 3]", "expected ',' or ']' after an array item at line 3, column 5 (byte 11)" },
      { "\f1", "expected a value" }, { "1\v", "more than whitespace" }, { "\xc2\xa01", "expected a value" },
    }
    for _, c in ipairs(cases) do
      local err = refused({ "ah.json.decode: " .. c[2] }, json.decode, c[1])
      assert.matches("^ah%.json%.decode: ", err.message, 1)
    end
    assert.equal(1, json.decode(" \t\r\n1\n\t\r "))
  end)

  it("refuse wrong arguments as every entry point does, at the caller", function()
    local err = refused({ "ah.json.decode: the text must be a string" }, json.decode, 42)
    assert.matches("json_spec.lua:%d+: ", err.message)
    refused({ "ah.json.decode: the options must be a table" }, json.decode, "1", 5)
    refused({ "ah.json.decode: max_depth must be an integer from 1 to 1000" }, json.decode, "1", { max_depth = 0 })
    refused({ "ah.json.encode: the value must be given (nil for null)" }, json.encode)
    refused({ "ah.json.encode: max_depth must be an integer from 1 to 1000" }, json.encode, 1, { max_depth = 1001 })
    refused({ 'ah.json.encode: invalid_utf8 must be "replace" or "error"' }, json.encode, 1, { invalid_utf8 = "drop" })
    refused({ "ah.json.array: t must be a table" }, json.array, "x")
  end)
end)
