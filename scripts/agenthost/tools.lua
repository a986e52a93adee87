-- agenthost.tools: the tool registry and the argument validator.
--
-- A tool is a table
--
--   { name = "web_search", description = "...",
--     parameters = { type = "object", properties = {...}, required = {...} },  -- JSON Schema
--     run = function(args, ctx) return result end,
--     timeout = 30, needs_approval = false }
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
-- anyOf/oneOf of alternatives.  (pattern is not checked: Lua patterns are
-- not regular expressions.)  Unknown keywords are
-- ignored, as the specification says.

local ah = require "agenthost.core"
local cjson = require "cjson"
local task = ah.task

local M = {}
local Registry = {}
Registry.__index = Registry

M.DEFAULT_TIMEOUT = 60
M.MAX_RESULT = 64 * 1024 -- bytes of a tool result passed back to the model

local null = cjson.null

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
    if next(v) == nil then return "empty" end -- {} and [] decode alike
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
  local ok, s = pcall(cjson.encode, v)
  return ok and s or tostring(v)
end

local function at(path)
  return path == "" and "the arguments" or ("argument " .. path)
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
  if type(schema.items) == "table" then
    for i = 1, n do
      local ok, err = validate(schema.items, v[i], join(path, i))
      if not ok then return nil, err end
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

-- validate(schema, value [, path]) -> true, or nil and a message a model
-- can act on ("argument limit must be <= 10, got 50").
function validate(schema, v, path)
  path = path or ""
  if type(schema) ~= "table" then return true end
  for _, check in ipairs(checks) do
    local ok, err = check(schema, v, path)
    if not ok then return nil, err end
  end
  return true
end
M.validate = validate
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

local function to_text(v)
  if v == nil then return "" end
  if type(v) == "string" then return v end
  local ok, s = pcall(cjson.encode, v)
  return ok and s or tostring(v)
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
-- wants an integer is a Lua integer (JSON decoders give floats).
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

-- reg:call(call, ctx) -> {content = string, is_error = bool, value = raw result}
-- call is {id, name, arguments = table, raw_arguments = string, error = string}
-- as providers return it.  Never raises, except to pass on the caller's
-- own cancellation.
function Registry:call(call, ctx)
  local t = self.byname[call.name or ""]
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
  local ok, err = validate(t.parameters or { type = "object" }, args)
  if not ok then
    return { is_error = true, content = "error: invalid arguments for " .. t.name .. ": " .. err }
  end
  args = normalize(t.parameters or { type = "object" }, args)
  local timeout = t.timeout or M.DEFAULT_TIMEOUT
  -- The tool's own errors come back as values, so that a timeout error
  -- the tool raised (an HTTP timeout, say) is not taken for ours.
  local ok_outer, inner = pcall(task.timeout, timeout, function()
    return table.pack(pcall(t.run, args, ctx or {}))
  end)
  local cur = task.current()
  if not ok_outer then
    if cur and cur:cancelled() then error(inner, 0) end -- our own cancellation goes on
    if ah.error.is(inner, "timeout") then
      return { is_error = true, content = string.format(
        "error: %s did not finish within %g seconds", t.name, timeout) }
    end
    return { is_error = true, content = "error: " .. t.name .. " failed: " .. message_of(inner) }
  end
  if inner[1] then
    return { content = cap(to_text(inner[2])), value = inner[2] }
  end
  err = inner[2]
  if cur and cur:cancelled() then error(err, 0) end
  if ah.error.is(err, "cancelled") then
    -- nothing but the timeout cancels the tool's own task
    return { is_error = true, content = string.format(
      "error: %s did not finish within %g seconds", t.name, timeout) }
  end
  return { is_error = true, content = "error: " .. t.name .. " failed: " .. message_of(err) }
end

return M
