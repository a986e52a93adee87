-- agenthost.tools: the tool registry and the argument validator.
--
-- A tool is a table
--
--   { name = "web_search", description = "...",
--     parameters = { type = "object", properties = {...}, required = {...} },  -- JSON Schema
--     run = function(args, ctx) return result end,
--     timeout = 30, needs_approval = false,
--     raw_errors = false }   -- true: the model sees the tool's errors with their source positions
--
-- Arguments come from a model and are untrusted: call() validates them
-- against the schema before the tool runs, and everything that can go wrong
-- (an unknown tool, arguments that are not JSON or do not fit the schema, the
-- tool raising, the tool running past its timeout) becomes an error result
-- whose message tells the model what to change.  A result never raises,
-- except for the caller's own cancellation.
--
-- The validator covers the JSON Schema keywords tools use: type (string,
-- number, integer, boolean, object, array, null, or a list of them), enum,
-- const, required, properties, additionalProperties (false or a schema),
-- minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength,
-- maxLength, items, minItems, maxItems, nested objects and arrays, and
-- anyOf/oneOf/allOf of alternatives, and local $ref ("#/$defs/name",
-- "#/definitions/name").  (pattern is not checked: Lua patterns are not
-- regular expressions.)  Unknown keywords are ignored, as the
-- specification says.  A schema whose known keywords have the wrong shape
-- (`"required": [{}]`, a `type` that is no JSON type) is refused with an
-- invalid_argument error naming the keyword and where it is: schemas come
-- from tool authors, MCP servers and structured-output settings, and a bad
-- one must say so rather than fail inside the check.

local ah = require "agenthost.core"
local json = ah.json
local task = ah.task

local M = {}
local Registry = {}
Registry.__index = Registry

M.DEFAULT_TIMEOUT = 60
M.MAX_RESULT = 64 * 1024 -- bytes of a tool result passed back to the model

local null = ah.null

local function bad(msg)
  error(ah.error.new("invalid_argument", msg), 3)
end

-- ---- validation --------------------------------------------------------------

local function is_array(v)
  if type(v) ~= "table" then return false end
  local n = #v
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function json_type(v)
  local t = type(v)
  if v == nil or v == null then return "null" end
  if t == "boolean" or t == "string" then return t end
  if t == "number" then
    if math.type(v) == "integer" or (v == math.floor(v) and v > -2^53 and v < 2^53) then
      return "integer"
    end
    return "number"
  end
  if t == "table" then
    -- An empty table is either, unless ah.json marked it as an array (as
    -- it does every array it decodes).
    if next(v) == nil then return getmetatable(v) == json.array_mt and "array" or "empty" end
    return is_array(v) and "array" or "object"
  end
  return t
end

local function type_ok(want, got)
  if want == got then return true end
  if want == "number" and got == "integer" then return true end
  if got == "empty" and (want == "object" or want == "array") then return true end
  return false
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  local ok, s = pcall(json.encode, v)
  return ok and s or tostring(v)
end

-- How messages name the value checked: the arguments of a tool by
-- default, or what validate's `what` option says.
local WORDS = { root = "the arguments", item = "argument " }
local words = WORDS

local function at(path)
  return path == "" and words.root or (words.item .. path)
end

local function join(path, key)
  if math.type(key) == "integer" then return path .. "[" .. (key - 1) .. "]" end
  return path == "" and key or (path .. "." .. key)
end

local validate

local function check_type(schema, v, path)
  local want = schema.type
  if want == nil then return true end
  local got = json_type(v)
  if type(want) == "table" then
    for _, w in ipairs(want) do
      if type_ok(w, got) then return true end
    end
    return nil, string.format("%s must be of type %s, got %s", at(path),
      table.concat(want, " or "), got == "empty" and "an empty object" or got)
  end
  if type_ok(want, got) then return true end
  if want == "integer" and got == "number" then
    return nil, string.format("%s must be a whole number, got %s", at(path), show(v))
  end
  return nil, string.format("%s must be %s %s, got %s", at(path),
    want:match("^[aeiou]") and "an" or "a", want,
    got == "null" and "null (or nothing)" or (got == "empty" and "an empty object" or
      (got .. " " .. show(v))))
end

local function check_enum(schema, v, path)
  if schema.const ~= nil and v ~= schema.const then
    return nil, string.format("%s must be %s", at(path), show(schema.const))
  end
  if type(schema.enum) == "table" then
    for _, e in ipairs(schema.enum) do
      if v == e then return true end
    end
    local shown = {}
    for i, e in ipairs(schema.enum) do shown[i] = show(e) end
    return nil, string.format("%s must be one of %s, got %s", at(path),
      table.concat(shown, ", "), show(v))
  end
  return true
end

local function num(x)
  return string.format("%.14g", x)
end

local function check_number(schema, v, path)
  if type(v) ~= "number" then return true end
  if v ~= v or v == math.huge or v == -math.huge then
    return nil, string.format("%s must be a finite number, got %s", at(path), tostring(v))
  end
  if schema.minimum and v < schema.minimum then
    return nil, string.format("%s must be >= %s, got %s", at(path), num(schema.minimum), num(v))
  end
  if schema.maximum and v > schema.maximum then
    return nil, string.format("%s must be <= %s, got %s", at(path), num(schema.maximum), num(v))
  end
  if type(schema.exclusiveMinimum) == "number" and v <= schema.exclusiveMinimum then
    return nil, string.format("%s must be > %s, got %s", at(path), num(schema.exclusiveMinimum), num(v))
  end
  if type(schema.exclusiveMaximum) == "number" and v >= schema.exclusiveMaximum then
    return nil, string.format("%s must be < %s, got %s", at(path), num(schema.exclusiveMaximum), num(v))
  end
  return true
end

local function utf8_len(s)
  return utf8.len(s) or #s
end

local function check_string(schema, v, path)
  if type(v) ~= "string" then return true end
  local n = utf8_len(v)
  if schema.minLength and n < schema.minLength then
    return nil, string.format("%s must be at least %d characters long, got %d",
      at(path), schema.minLength, n)
  end
  if schema.maxLength and n > schema.maxLength then
    return nil, string.format("%s must be at most %d characters long, got %d",
      at(path), schema.maxLength, n)
  end
  return true
end

local function check_array(schema, v, path)
  if json_type(v) ~= "array" and json_type(v) ~= "empty" then return true end
  local n = #v
  if schema.minItems and n < schema.minItems then
    return nil, string.format("%s must have at least %d items, got %d", at(path), schema.minItems, n)
  end
  if schema.maxItems and n > schema.maxItems then
    return nil, string.format("%s must have at most %d items, got %d", at(path), schema.maxItems, n)
  end
  local items = schema.items
  local tuple = type(items) == "table" and next(items) ~= nil and is_array(items)
  if items ~= nil and items ~= true then
    for i = 1, n do
      local sub = items
      if tuple then sub = items[i] end
      if sub ~= nil then
        local ok, err = validate(sub, v[i], join(path, i))
        if not ok then return nil, err end
      end
    end
  end
  return true
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = tostring(k) end
  table.sort(ks)
  return ks
end

local function check_object(schema, v, path)
  local jt = json_type(v)
  if jt ~= "object" and jt ~= "empty" then return true end
  local props = type(schema.properties) == "table" and schema.properties or {}
  local required = {}
  if type(schema.required) == "table" then
    for _, name in ipairs(schema.required) do
      required[name] = true
      if v[name] == nil or v[name] == null then
        return nil, string.format("missing required %s", at(join(path, name)))
      end
    end
  end
  for _, k in ipairs(sorted_keys(v)) do
    local sub = props[k]
    local value = v[k]
    if sub ~= nil then
      -- null for an optional property means "not given"
      if not (value == null and not required[k]) then
        local ok, err = validate(sub, value, join(path, k))
        if not ok then return nil, err end
      end
    elseif schema.additionalProperties == false then
      local allowed = sorted_keys(props)
      return nil, string.format("unexpected %s (allowed: %s)", at(join(path, k)),
        #allowed > 0 and table.concat(allowed, ", ") or "none")
    elseif type(schema.additionalProperties) == "table" then
      local ok, err = validate(schema.additionalProperties, value, join(path, k))
      if not ok then return nil, err end
    end
  end
  return true
end

local function check_alternatives(schema, v, path)
  local alts = schema.anyOf or schema.oneOf
  if type(alts) ~= "table" then return true end
  local first
  local matched = 0
  for _, alt in ipairs(alts) do
    local ok, err = validate(alt, v, path)
    if ok then matched = matched + 1 else first = first or err end
  end
  if matched == 0 then
    return nil, first or (at(path) .. " matches none of the allowed forms")
  end
  if schema.oneOf and matched > 1 then
    return nil, at(path) .. " matches more than one of the allowed forms"
  end
  return true
end

local checks = { check_type, check_enum, check_number, check_string, check_array,
                 check_object, check_alternatives }

-- ---- schemas -------------------------------------------------------------------

local JSON_TYPES = { string = true, number = true, integer = true, boolean = true,
                     object = true, array = true, null = true }

local function malformed(where, msg)
  error(ah.error.new("invalid_argument", string.format(
    "tools: the JSON Schema is malformed at %s: %s", where == "" and "its top" or where, msg)), 0)
end

local function is_count(x)
  return type(x) == "number" and x >= 0 and x == math.floor(x)
end

local check_schema

local function check_schema_list(list, where, key)
  if not is_array(list) or #list == 0 then
    malformed(where, key .. " must be a non-empty array of schemas")
  end
  for i, sub in ipairs(list) do check_schema(sub, where .. "/" .. key .. "/" .. (i - 1)) end
end

-- Raises invalid_argument when a keyword validate reads has the wrong
-- shape; where is the JSON pointer of schema within the whole one.
function check_schema(schema, where, seen)
  if type(schema) == "boolean" then return end -- true: anything, false: nothing
  if type(schema) ~= "table" then
    malformed(where, "a schema must be an object, got " .. json_type(schema))
  end
  local t = schema.type
  if t ~= nil then
    local list = type(t) == "table" and t or { t }
    if type(t) == "table" and (not is_array(t) or #t == 0) then
      malformed(where, "type must be a type name or a non-empty array of them")
    end
    for _, name in ipairs(list) do
      if not JSON_TYPES[name] then
        malformed(where, "type " .. show(name) .. " is not a JSON type (string, number, " ..
          "integer, boolean, object, array, null)")
      end
    end
  end
  if schema.enum ~= nil and not is_array(schema.enum) then malformed(where, "enum must be an array") end
  if schema.required ~= nil then
    if not is_array(schema.required) then malformed(where, "required must be an array of property names") end
    for i, name in ipairs(schema.required) do
      if type(name) ~= "string" then
        malformed(where .. "/required/" .. (i - 1), "a required property name must be a string, got " ..
          show(name))
      end
    end
  end
  if schema.properties ~= nil then
    if type(schema.properties) ~= "table" or (next(schema.properties) ~= nil and is_array(schema.properties)) then
      malformed(where, "properties must be an object of schemas")
    end
    for k, sub in pairs(schema.properties) do
      if type(k) ~= "string" then malformed(where, "properties must be an object of schemas") end
      check_schema(sub, where .. "/properties/" .. k)
    end
  end
  local ap = schema.additionalProperties
  if ap ~= nil and type(ap) ~= "boolean" then check_schema(ap, where .. "/additionalProperties") end
  if schema.items ~= nil then
    if type(schema.items) == "table" and next(schema.items) ~= nil and is_array(schema.items) then
      check_schema_list(schema.items, where, "items")
    else
      check_schema(schema.items, where .. "/items")
    end
  end
  for _, k in ipairs { "minimum", "maximum" } do
    if schema[k] ~= nil and type(schema[k]) ~= "number" then malformed(where, k .. " must be a number") end
  end
  for _, k in ipairs { "exclusiveMinimum", "exclusiveMaximum" } do
    local x = schema[k]
    if x ~= nil and type(x) ~= "number" and type(x) ~= "boolean" then
      malformed(where, k .. " must be a number")
    end
  end
  for _, k in ipairs { "minLength", "maxLength", "minItems", "maxItems" } do
    if schema[k] ~= nil and not is_count(schema[k]) then
      malformed(where, k .. " must be a whole number >= 0, got " .. show(schema[k]))
    end
  end
  for _, k in ipairs { "anyOf", "oneOf", "allOf" } do
    if schema[k] ~= nil then check_schema_list(schema[k], where, k) end
  end
  if schema["not"] ~= nil then check_schema(schema["not"], where .. "/not") end
  if schema["$ref"] ~= nil and type(schema["$ref"]) ~= "string" then malformed(where, "$ref must be a string") end
  for _, k in ipairs { "$defs", "definitions" } do
    local defs = schema[k]
    if defs ~= nil then
      if type(defs) ~= "table" then malformed(where, k .. " must be an object of schemas") end
      for name, sub in pairs(defs) do check_schema(sub, where .. "/" .. k .. "/" .. tostring(name)) end
    end
  end
end

-- Schemas already checked, by identity (a tool's schema is checked once,
-- not at every call).
local checked = setmetatable({}, { __mode = "k" })

-- check_schema(schema) -> schema, or raises invalid_argument saying what
-- is malformed.
function M.check_schema(schema)
  if type(schema) == "table" and checked[schema] then return schema end
  check_schema(schema, "")
  if type(schema) == "table" then checked[schema] = true end
  return schema
end

-- The schema a local $ref names, inside root.
local function resolve(root, ref)
  local name = ref:match("^#/%$defs/(.+)$")
  local defs = root and root["$defs"]
  if not name then
    name = ref:match("^#/definitions/(.+)$")
    defs = root and root.definitions
  end
  if ref == "#" then return root end
  local target
  if name and type(defs) == "table" then target = defs[name] end
  if target == nil then
    error(ah.error.new("invalid_argument", "tools: the JSON Schema has a $ref " .. show(ref) ..
      " that names nothing in it (only local #/$defs/NAME and #/definitions/NAME are followed)"), 0)
  end
  return target
end

local root_schema, ref_depth = nil, 0

-- validate(schema, value [, path]) -> true, or nil and a message a model
-- can act on ("argument limit must be <= 10, got 50").
function validate(schema, v, path)
  path = path or ""
  if schema == false then return nil, at(path) .. " is not allowed" end
  if type(schema) ~= "table" then return true end
  local ref = schema["$ref"]
  if ref ~= nil then
    ref_depth = ref_depth + 1
    if ref_depth > 64 then
      ref_depth = 0
      error(ah.error.new("invalid_argument", "tools: the JSON Schema's $ref chain is too deep (a loop?)"), 0)
    end
    local ok, err = validate(resolve(root_schema, ref), v, path)
    ref_depth = ref_depth - 1
    if not ok then return nil, err end
  end
  for _, check in ipairs(checks) do
    local ok, err = check(schema, v, path)
    if not ok then return nil, err end
  end
  if schema.allOf then
    for _, sub in ipairs(schema.allOf) do
      local ok, err = validate(sub, v, path)
      if not ok then return nil, err end
    end
  end
  if schema["not"] ~= nil and validate(schema["not"], v, path) then
    return nil, at(path) .. " matches a form that is not allowed"
  end
  return true
end

-- tools.validate(schema, value [, {root =, item =}]) -> true, or nil and a
-- message.  root and item name the value in messages ("the arguments",
-- "argument "): structured output passes {root = "the answer", item =
-- "field "}.  Raises invalid_argument for a malformed schema.
function M.validate(schema, v, opts)
  M.check_schema(schema)
  local saved_words, saved_root = words, root_schema
  words = type(opts) == "table" and { root = opts.root or WORDS.root, item = opts.item or WORDS.item } or WORDS
  root_schema, ref_depth = schema, 0
  local ok, res, msg = pcall(validate, schema, v, "")
  words, root_schema = saved_words, saved_root
  if not ok then error(res, 0) end
  return res, msg
end
-- is_array(v): whether v is a table whose keys are exactly 1..#v (what
-- JSON calls an array; an empty table counts).
M.is_array = is_array

-- ---- the registry ----------------------------------------------------------------

local function check_tool(t)
  if type(t) ~= "table" then bad("tools: a tool must be a table {name, description, parameters, run}") end
  if type(t.name) ~= "string" or not t.name:match("^[%w_%-]+$") or #t.name > 64 then
    bad("tools: a tool name must be 1 to 64 letters, digits, _ or - (got " .. show(t.name) .. ")")
  end
  if type(t.run) ~= "function" then bad("tools: tool " .. t.name .. " needs a run function") end
  if t.description ~= nil and type(t.description) ~= "string" then
    bad("tools: the description of " .. t.name .. " must be a string")
  end
  if t.parameters ~= nil and (type(t.parameters) ~= "table" or
      (t.parameters.type ~= nil and t.parameters.type ~= "object")) then
    bad("tools: the parameters of " .. t.name .. " must be a JSON Schema of type object")
  end
  if t.parameters ~= nil then
    local ok, err = pcall(M.check_schema, t.parameters)
    if not ok then bad("tools: the parameters of " .. t.name .. ": " .. tostring(err.message or err)) end
  end
  if t.timeout ~= nil and (type(t.timeout) ~= "number" or t.timeout <= 0) then
    bad("tools: the timeout of " .. t.name .. " must be a positive number of seconds")
  end
end

-- tools.registry([list]) -> a registry holding the tools of list
function M.registry(list)
  local r = setmetatable({ byname = {}, order = {} }, Registry)
  for _, t in ipairs(list or {}) do r:add(t) end
  return r
end

function Registry:add(t)
  check_tool(t)
  if self.byname[t.name] then bad("tools: a tool named " .. t.name .. " is already registered") end
  self.byname[t.name] = t
  self.order[#self.order + 1] = t.name
  return self
end

function Registry:remove(name)
  if not self.byname[name] then return end
  self.byname[name] = nil
  for i, n in ipairs(self.order) do
    if n == name then table.remove(self.order, i) break end
  end
end

function Registry:get(name) return self.byname[name] end

-- The tools in the neutral shape providers take: {name, description, parameters}.
function Registry:list()
  local out = {}
  for i, name in ipairs(self.order) do
    local t = self.byname[name]
    out[i] = { name = t.name, description = t.description or "",
               parameters = t.parameters or { type = "object", properties = {} } }
  end
  return out
end

-- The text of a tool's result for the model: a string as it is, anything
-- else as JSON; nil and the error when JSON cannot hold it.
local function to_text(v)
  if v == nil then return "" end
  if type(v) == "string" then return v end
  local ok, s = pcall(json.encode, v)
  if ok then return s end
  return nil, s
end

-- s cut to at most n bytes, never inside a UTF-8 sequence.
local function utf8_cut(s, n)
  if #s <= n then return s end
  local i = n
  while i > 0 and i > n - 3 do
    local b = s:byte(i + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end -- s[i+1] starts a character
    i = i - 1
  end
  return s:sub(1, i)
end
M.utf8_cut = utf8_cut

local function cap(s)
  if #s <= M.MAX_RESULT then return s end
  local kept = utf8_cut(s, M.MAX_RESULT)
  return kept .. string.format("\n[truncated: %d of %d bytes shown]", #kept, #s)
end

-- Arguments as a tool should see them, once they are valid: an optional
-- property given as null is absent, and a whole number where the schema
-- wants an integer is a Lua integer (a model may write 3.0 for 3, which
-- JSON Schema counts as an integer).
local function normalize(schema, v)
  if type(schema) ~= "table" then return v end
  if schema.type == "integer" and math.type(v) == "float" then
    return math.tointeger(v) or v
  end
  local jt = json_type(v)
  if jt == "object" or jt == "empty" then
    local props = type(schema.properties) == "table" and schema.properties or {}
    local extra = type(schema.additionalProperties) == "table" and schema.additionalProperties
    for k, value in pairs(v) do
      if value == null then
        local req = false
        for _, r in ipairs(type(schema.required) == "table" and schema.required or {}) do
          if r == k then req = true end
        end
        if not req then v[k] = nil end
      else
        local sub = props[k] or extra
        if sub then v[k] = normalize(sub, value) end
      end
    end
  elseif jt == "array" and type(schema.items) == "table" then
    for i = 1, #v do v[i] = normalize(schema.items, v[i]) end
  end
  return v
end
M.normalize = normalize

local function message_of(err)
  if type(err) == "table" and err.message then return tostring(err.message) end
  return tostring(err)
end

-- msg without the source positions Lua puts in front of an error message
-- ("tools/x.lua:9: ", "[string \"...\"]:3: "), which the model has no use
-- for and should not see.
local function strip_positions(msg)
  local prev
  repeat
    prev = msg
    msg = msg:gsub('^%[string ".-"%]:%d+: ', ""):gsub("^[^%s:]*%.lua:%d+: ", ""):gsub("^%[C%]: ", "")
  until msg == prev
  return msg
end
M.strip_positions = strip_positions

local function check_call(call, ctx)
  if type(call) ~= "table" then
    error(ah.error.new("invalid_argument", string.format(
      "tools: registry:call(call [, ctx]): call must be a table {id =, name =, arguments =} " ..
      "as a provider returns it, got %s%s", type(call),
      type(call) == "string" and string.format(' (for a tool by name: reg:call{name = %q, arguments = {...}})', call) or "")), 3)
  end
  if type(call.name) ~= "string" then
    error(ah.error.new("invalid_argument", "tools: registry:call: call.name must be a string, got " ..
      type(call.name)), 3)
  end
  local a = call.arguments
  if a ~= nil and a ~= null and type(a) ~= "table" then
    error(ah.error.new("invalid_argument", "tools: registry:call: call.arguments must be a table " ..
      "(the decoded JSON object) or nil, got " .. type(a)), 3)
  end
  if ctx ~= nil and type(ctx) ~= "table" then
    error(ah.error.new("invalid_argument", "tools: registry:call: ctx must be a table or nil, got " ..
      type(ctx)), 3)
  end
end

-- reg:call(call [, ctx]) -> {content, is_error, value, error, traceback}
--
-- call is {id, name, arguments = table, raw_arguments = string, error =
-- string} as providers return it; ctx is handed to the tool's run as its
-- second argument.  content is the text for the model; is_error is a
-- boolean; value the tool's raw result.  When the tool itself failed
-- (raised, or ran past its timeout) the result also has `error` (what it
-- raised, or the timeout error) and, for a raise, `traceback`.  The
-- model's message leaves out source positions unless the tool has
-- raw_errors = true.  Never raises for what the model sent (an unknown
-- tool, bad arguments); raises invalid_argument for a call that is not a
-- call, and passes on the caller's own cancellation.
function Registry:call(call, ctx)
  check_call(call, ctx)
  local t = self.byname[call.name]
  if not t then
    local names = table.concat(self.order, ", ")
    return { is_error = true, content = string.format(
      "error: there is no tool named %s; the tools are: %s", show(call.name), names) }
  end
  if call.error then
    return { is_error = true, content = string.format(
      "error: the arguments for %s are not valid JSON (%s); send a JSON object", t.name,
      tostring(call.error)) }
  end
  local args = call.arguments
  if args == nil or args == null then args = {} end
  local schema = t.parameters or { type = "object" }
  local ok, err = M.validate(schema, args)
  if not ok then
    return { is_error = true, content = "error: invalid arguments for " .. t.name .. ": " .. err }
  end
  args = normalize(schema, args)
  local timeout = t.timeout or M.DEFAULT_TIMEOUT
  local function failed(e, tb)
    local msg = message_of(e)
    if not t.raw_errors then msg = strip_positions(msg) end
    return { is_error = true, content = "error: " .. t.name .. " failed: " .. msg, error = e, traceback = tb }
  end
  local function timed_out(e)
    return { is_error = true, error = e, content = string.format(
      "error: %s did not finish within %g seconds", t.name, timeout) }
  end
  -- The tool's own errors come back as values, so that a timeout error
  -- the tool raised (an HTTP timeout, say) is not taken for ours.
  local tb
  local function handler(e)
    tb = debug.traceback(message_of(e), 2)
    return e
  end
  local ok_outer, inner = pcall(task.timeout, timeout, function()
    return table.pack(xpcall(t.run, handler, args, ctx or {}))
  end)
  local cur = task.current()
  if not ok_outer then
    if cur and cur:cancelled() then error(inner, 0) end -- our own cancellation goes on
    if ah.error.is(inner, "timeout") then return timed_out(inner) end
    return failed(inner)
  end
  if inner[1] then
    local text, why = to_text(inner[2])
    if text then return { content = cap(text), value = inner[2], is_error = false } end
    -- A result that JSON cannot hold (a function, a sparse table) fails
    -- the call, and says why, rather than reaching the model garbled.
    return { is_error = true, value = inner[2], error = why, content = "error: " .. t.name ..
      " returned a value that cannot be sent as JSON: " .. message_of(why) }
  end
  err = inner[2]
  if cur and cur:cancelled() then error(err, 0) end
  if ah.error.is(err, "cancelled") then
    -- nothing but the timeout cancels the tool's own task
    return timed_out(ah.error.new("timeout", string.format("%s did not finish within %g seconds",
      t.name, timeout)))
  end
  return failed(err, tb)
end

return M
