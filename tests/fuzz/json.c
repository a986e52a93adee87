/*
 * libFuzzer harness for JSON: host/json.c's grammar, the ah.json codec
 * built on it (bindings/json.c), and lua-cjson as an independent reference.
 *
 * The promises, each a crash when broken:
 *
 * 1. ah.json.decode accepts exactly the texts ah__json_check (what ah_post
 *    takes) accepts: one grammar, so a post that was accepted decodes on
 *    delivery and nothing ah.json decodes is refused to a poster.
 * 2. What decode gives, encode writes as a text the checker accepts, and
 *    that text decodes to the same value: the same keys, strings, number
 *    types and float bits, arrays still marked as arrays.  A second
 *    encode writes a text of the same length (keys may come in another
 *    order: a table's order is its own) that decodes to the same value
 *    again.  The one value encode may refuse is a number past the range
 *    of doubles, which decodes to an infinity; it must then say so.
 * 3. Against lua-cjson, which is laxer than RFC 8259: a text the checker
 *    accepts, cjson.decode decodes.  The other way where cjson is known to
 *    be strict: a text without control characters (cjson takes them raw
 *    in strings), valid UTF-8, that a cjson refusing invalid numbers
 *    (decode_invalid_numbers(false)) decodes, must pass the checker,
 *    unless it holds a number whose point lacks a digit on one side ("1.",
 *    "-.5"), which strtod (and so cjson) takes but RFC 8259 does not.
 *
 * The library (ah.json with it) is linked in, built by clang with the same
 * sanitizers (make fuzz-build).
 */
#include "../../host/host.h"
#include "agenthost.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

/* Sets up the interpreter once: globals lenient and strict (two cjson
 * instances), valid_utf8(s), and roundtrip(s), the ah.json checks of
 * promises 1 and 2 in Lua: it returns whether decode accepted s, and
 * raises when a promise is broken. */
static void setup(void) {
  static const char *code =
      "local json = ...\n"
      "local cjson = require 'cjson'\n"
      "local strict = cjson.new()\n"
      "strict.decode_invalid_numbers(false)\n"
      "lenient = function(s) return (pcall(cjson.decode, s)) end\n"
      "strict_ok = function(s) return (pcall(strict.decode, s)) end\n"
      "valid_utf8 = function(s) return utf8.len(s) ~= nil end\n"
      "local function same(a, b, where)\n"
      "  if type(a) ~= type(b) then error(where .. ': ' .. type(a) .. ' became ' .. type(b)) end\n"
      "  if type(a) == 'number' then\n"
      "    if math.type(a) ~= math.type(b) then error(where .. ': a number changed type') end\n"
      "    if math.type(a) == 'float' and string.pack('<d', a) ~= string.pack('<d', b) then\n"
      "      error(where .. ': ' .. string.format('%a', a) .. ' became ' .. string.format('%a', b))\n"
      "    end\n"
      "  elseif type(a) == 'table' then\n"
      "    if getmetatable(a) ~= getmetatable(b) then error(where .. ': the array mark changed') end\n"
      "    for k, v in pairs(a) do same(v, b[k], where .. '.' .. tostring(k)) end\n"
      "    for k in pairs(b) do if a[k] == nil then error(where .. ': a key appeared') end end\n"
      "  elseif a ~= b then\n"
      "    error(where .. ': ' .. tostring(a) .. ' became ' .. tostring(b))\n"
      "  end\n"
      "end\n"
      "roundtrip = function(s, check)\n"
      "  local ok, v = pcall(json.decode, s)\n"
      "  if ok ~= check then error('ah.json.decode ' .. (ok and 'accepts' or 'refuses') ..\n"
      "    ' a text the checker ' .. (ok and 'refuses' or 'accepts') .. ': ' .. tostring(v)) end\n"
      "  if not ok then return false end\n"
      "  local oke, e1 = pcall(json.encode, v)\n"
      "  if not oke then\n"
      "    if not tostring(e1.message):find('infinity, which JSON cannot write', 1, true) then\n"
      "      error('encode refused a decoded value: ' .. tostring(e1))\n"
      "    end\n"
      "    return true\n"
      "  end\n"
      "  if not check_text(e1) then error('encode wrote a text the checker refuses: ' .. e1) end\n"
      "  local v2 = json.decode(e1)\n"
      "  same(v, v2, '$')\n"
      "  local e2 = json.encode(v2)\n"
      "  if #e2 ~= #e1 then error('a second encode wrote another length: ' .. e1 .. ' / ' .. e2) end\n"
      "  same(v, json.decode(e2), '$')\n"
      "  return true\n"
      "end\n";
  L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  luaL_requiref(L, "agenthost.core", luaopen_agenthost_core, 0);
  lua_getfield(L, -1, "json");
  if (luaL_loadstring(L, code) != 0) {
    fprintf(stderr, "json: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    fprintf(stderr, "json: cannot set up (lua-cjson?): %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
}

static int checked_text(lua_State *S) {
  size_t n;
  const char *s = luaL_checklstring(S, 1, &n);
  lua_pushboolean(S, ah__json_check(s, n) == 0);
  return 1;
}

static int call(const char *fn, const uint8_t *s, size_t n, int extra) {
  int ok;
  lua_getglobal(L, fn);
  lua_pushlstring(L, (const char *)s, n);
  if (extra >= 0) lua_pushboolean(L, extra);
  if (lua_pcall(L, extra >= 0 ? 2 : 1, 1, 0) != 0) {
    fprintf(stderr, "json: %s: %s\n", fn, lua_tostring(L, -1));
    abort();
  }
  ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

/* Does s hold a control character (cjson takes them raw in strings, RFC
 * 8259 does not)? */
static int has_control(const uint8_t *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (s[i] < 0x20) return 1;
  return 0;
}

/* Does s hold, outside strings, a '.' without a digit on both sides
 * ("1.", "-.5")?  strtod, and so cjson, takes those; RFC 8259 does not. */
static int has_loose_point(const uint8_t *s, size_t n) {
  size_t i;
  int in_string = 0;
  for (i = 0; i < n; i++) {
    if (in_string) {
      if (s[i] == '\\') i++;
      else if (s[i] == '"') in_string = 0;
    } else if (s[i] == '"') {
      in_string = 1;
    } else if (s[i] == '.' && (i == 0 || s[i - 1] < '0' || s[i - 1] > '9' || i + 1 == n ||
                               s[i + 1] < '0' || s[i + 1] > '9')) {
      return 1;
    }
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int checked;
  if (!L) {
    setup();
    lua_register(L, "check_text", checked_text);
  }
  checked = ah__json_check((const char *)data, size) == 0;
  call("roundtrip", data, size, checked);
  if (checked && !call("lenient", data, size, -1)) {
    fprintf(stderr, "json: ah__json_check accepts a text cjson.decode refuses\n");
    abort();
  }
  if (!checked && !has_control(data, size) && !has_loose_point(data, size) &&
      call("valid_utf8", data, size, -1) && call("strict_ok", data, size, -1)) {
    fprintf(stderr, "json: strict cjson decodes a text ah__json_check refuses\n");
    abort();
  }
  /* Collected at once: garbage left for later would look like a leak to
   * libFuzzer, which then runs a leak check after every input. */
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
