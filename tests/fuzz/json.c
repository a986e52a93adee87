/*
 * libFuzzer harness for the JSON syntax checker (host/json.c), run
 * against lua-cjson, which decodes what ah_post let through on the loop
 * thread (scripts/agenthost/channel.lua).
 *
 * The promise: a text ah__json_check accepts, cjson.decode (default
 * settings, as channel.lua uses it) decodes.  A break of it is a crash.
 * The other way is checked too where cjson is known to be strict: a text
 * without control characters (cjson takes them raw in strings), valid UTF-8, that a cjson refusing invalid numbers
 * (decode_invalid_numbers(false)) decodes, must pass the checker, unless
 * it holds a number whose point lacks a digit on one side ("1.", "-.5"),
 * which strtod (and so cjson) takes but RFC 8259 does not.
 *
 */
#include "../../host/host.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

/* Sets up the interpreter once: globals lenient and strict, two cjson
 * instances, and valid_utf8(s). */
static void setup(void) {
  static const char *code =
      "local cjson = require 'cjson'\n"
      "local strict = cjson.new()\n"
      "strict.decode_invalid_numbers(false)\n"
      "lenient = function(s) return (pcall(cjson.decode, s)) end\n"
      "strict_ok = function(s) return (pcall(strict.decode, s)) end\n"
      "valid_utf8 = function(s) return utf8.len(s) ~= nil end\n";
  L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  if (luaL_dostring(L, code) != 0) {
    fprintf(stderr, "json: cannot load cjson: %s\n", lua_tostring(L, -1));
    abort();
  }
}

static int call(const char *fn, const uint8_t *s, size_t n) {
  int ok;
  lua_getglobal(L, fn);
  lua_pushlstring(L, (const char *)s, n);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    fprintf(stderr, "json: %s failed: %s\n", fn, lua_tostring(L, -1));
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
  int checked, decoded;
  if (!L) setup();
  checked = ah__json_check((const char *)data, size) == 0;
  decoded = call("lenient", data, size);
  if (checked && !decoded) {
    fprintf(stderr, "json: ah__json_check accepts a text cjson.decode refuses\n");
    abort();
  }
  if (!checked && !has_control(data, size) && !has_loose_point(data, size) &&
      call("valid_utf8", data, size) && call("strict_ok", data, size)) {
    fprintf(stderr, "json: strict cjson decodes a text ah__json_check refuses\n");
    abort();
  }
  /* Collected at once: garbage left for later would look like a leak to
   * libFuzzer, which then runs a leak check after every input. */
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
