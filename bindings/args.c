/*
 * The argument and option readers every public entry point uses, so that a
 * wrong argument always raises one shape: a structured error of kind
 * `invalid_argument` whose message reads "function: what must be what"
 * and starts with the position of the user's code (ah__error_raise).  Out
 * of memory raises kind `resource` the same way.
 *
 * Positional readers take the argument's index and its name in messages;
 * option readers take the index of the options table and a key, and
 * return the default when the key is absent or nil.  Numbers must be Lua
 * numbers and strings Lua strings (no conversion between the two: "5" for
 * a timeout is a mistake to report, not to guess at), and NaN is never in
 * range.
 *
 * Relies on the structured errors of the scheduler (bindings/errors.c).
 */
#include "bindings.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int ah__arg_error(lua_State *L, const char *fn, const char *name,
                  const char *what) {
  return ah__error_raise(L, "invalid_argument", 0, "%s: %s must be %s", fn,
                         name, what);
}

int ah__nomem(lua_State *L, const char *fn) {
  return ah__error_raise(L, "resource", 1, "%s: out of memory", fn);
}

/* Describes a range for messages: "a number from 0 to 10", "an integer
 * >= 1", ... */
static const char *range_text(char *buf, size_t size, const char *noun,
                              double lo, double hi) {
  if (lo == -HUGE_VAL && hi == HUGE_VAL)
    snprintf(buf, size, "%s", noun);
  else if (hi == HUGE_VAL)
    snprintf(buf, size, "%s >= %.15g", noun, lo);
  else if (lo == -HUGE_VAL)
    snprintf(buf, size, "%s <= %.15g", noun, hi);
  else
    snprintf(buf, size, "%s from %.15g to %.15g", noun, lo, hi);
  return buf;
}

/* The value at idx as a number in [lo, hi], or raises naming `name`. */
static double number_at(lua_State *L, int idx, const char *fn, const char *name,
                        double lo, double hi) {
  char buf[96];
  double v;
  if (lua_type(L, idx) != LUA_TNUMBER)
    ah__arg_error(L, fn, name, range_text(buf, sizeof buf, "a number", lo, hi));
  v = lua_tonumber(L, idx);
  if (!(v >= lo && v <= hi))
    ah__arg_error(L, fn, name, range_text(buf, sizeof buf, "a number", lo, hi));
  return v;
}

static lua_Integer integer_at(lua_State *L, int idx, const char *fn,
                              const char *name, lua_Integer lo, lua_Integer hi) {
  char buf[96];
  lua_Integer v = 0;
  int ok = lua_type(L, idx) == LUA_TNUMBER;
  if (ok) v = lua_tointegerx(L, idx, &ok);
  if (!ok || v < lo || v > hi)
    ah__arg_error(L, fn, name,
                  range_text(buf, sizeof buf, "an integer",
                             lo == LUA_MININTEGER ? -HUGE_VAL : (double)lo,
                             hi == LUA_MAXINTEGER ? HUGE_VAL : (double)hi));
  return v;
}

static const char *string_at(lua_State *L, int idx, const char *fn,
                             const char *name, size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING) ah__arg_error(L, fn, name, "a string");
  return lua_tolstring(L, idx, len);
}

/* ---- positional arguments ------------------------------------------------ */

double ah__arg_number(lua_State *L, int arg, const char *fn, const char *name,
                      double lo, double hi) {
  return number_at(L, arg, fn, name, lo, hi);
}

lua_Integer ah__arg_integer(lua_State *L, int arg, const char *fn,
                            const char *name, lua_Integer lo, lua_Integer hi) {
  return integer_at(L, arg, fn, name, lo, hi);
}

const char *ah__arg_string(lua_State *L, int arg, const char *fn,
                           const char *name, size_t *len) {
  return string_at(L, arg, fn, name, len);
}

void ah__arg_type(lua_State *L, int arg, int type, const char *fn,
                  const char *name) {
  if (lua_type(L, arg) != type)
    ah__arg_error(L, fn, name,
                  type == LUA_TFUNCTION ? "a function"
                  : type == LUA_TTABLE  ? "a table"
                                        : lua_typename(L, type));
}

void *ah__arg_udata(lua_State *L, int arg, const char *tname, const char *fn,
                    const char *what) {
  void *p = luaL_testudata(L, arg, tname);
  if (!p) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s (call it with ':')", what);
    ah__arg_error(L, fn, arg == 1 ? "self" : "the argument", buf);
  }
  return p;
}

void ah__arg_options(lua_State *L, int arg, const char *fn) {
  int t = lua_type(L, arg);
  if (t != LUA_TNONE && t != LUA_TNIL && t != LUA_TTABLE)
    ah__arg_error(L, fn, "the options", "a table");
}

/* ---- fields of an options table ------------------------------------------ */

/* Pushes field k of the table at idx (nothing when idx is not a table) and
 * returns whether it is set. */
static int field(lua_State *L, int idx, const char *k) {
  if (!lua_istable(L, idx)) {
    lua_pushnil(L);
    return 0;
  }
  lua_getfield(L, idx, k);
  return !lua_isnil(L, -1);
}

double ah__opt_number(lua_State *L, int idx, const char *fn, const char *k,
                      double def, double lo, double hi) {
  double v = def;
  idx = lua_absindex(L, idx);
  if (field(L, idx, k)) v = number_at(L, -1, fn, k, lo, hi);
  lua_pop(L, 1);
  return v;
}

double ah__opt_positive(lua_State *L, int idx, const char *fn, const char *k,
                        double def) {
  double v = def;
  idx = lua_absindex(L, idx);
  if (field(L, idx, k)) {
    v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
    if (!(v > 0)) ah__arg_error(L, fn, k, "a number > 0");
  }
  lua_pop(L, 1);
  return v;
}

lua_Integer ah__opt_integer(lua_State *L, int idx, const char *fn,
                            const char *k, lua_Integer def, lua_Integer lo,
                            lua_Integer hi) {
  lua_Integer v = def;
  idx = lua_absindex(L, idx);
  if (field(L, idx, k)) v = integer_at(L, -1, fn, k, lo, hi);
  lua_pop(L, 1);
  return v;
}

int ah__opt_boolean(lua_State *L, int idx, const char *fn, const char *k,
                    int def) {
  int v = def;
  idx = lua_absindex(L, idx);
  if (field(L, idx, k)) {
    if (!lua_isboolean(L, -1)) ah__arg_error(L, fn, k, "a boolean");
    v = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* The index of the value at idx in words, or raises naming `name`. */
static int word_at(lua_State *L, int idx, const char *fn, const char *name,
                   const char *const words[]) {
  const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : "";
  int i;
  for (i = 0; words[i]; i++)
    if (strcmp(s, words[i]) == 0) return i;
  {
    /* "one of \"a\", \"b\" or \"c\"" */
    luaL_Buffer b;
    int j;
    luaL_buffinit(L, &b);
    for (j = 0; words[j]; j++) {
      if (j > 0) luaL_addstring(&b, words[j + 1] ? ", " : " or ");
      luaL_addchar(&b, '"');
      luaL_addstring(&b, words[j]);
      luaL_addchar(&b, '"');
    }
    luaL_pushresult(&b);
    ah__arg_error(L, fn, name, lua_tostring(L, -1));
  }
  return -1;
}

int ah__arg_word(lua_State *L, int arg, const char *fn, const char *name,
                 const char *const words[]) {
  return word_at(L, arg, fn, name, words);
}

int ah__opt_word(lua_State *L, int idx, const char *fn, const char *k,
                 const char *const words[], int def) {
  int v = def;
  idx = lua_absindex(L, idx);
  if (field(L, idx, k)) v = word_at(L, -1, fn, k, words);
  lua_pop(L, 1);
  return v;
}

int ah__arg_entry_len(lua_State *L, int max) {
  lua_Integer len;
  lua_pushliteral(L, "n");
  lua_rawget(L, -2);
  len = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (lua_Integer)lua_rawlen(L, -2);
  lua_pop(L, 1);
  return len < 0 || len > max ? -1 : (int)len;
}
