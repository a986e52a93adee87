/*
 * ah.json: the JSON codec of agenthost (docs/json.md).
 *
 *   ah.json.decode(text [, {max_depth = 1000}]) -> value
 *   ah.json.encode(value [, {max_depth = 1000, invalid_utf8 = "replace"}]) -> text
 *   ah.json.array([t]) -> t, marked as an array     ah.json.null   ah.json.array_mt
 *
 * decode builds Lua values from host/json.c's parse, the grammar ah_post
 * checks posts with: numbers without a fraction or an exponent that fit
 * in 64 bits become integers, all others floats; null is ah.null (the
 * light userdata NULL, which is also lua-cjson's null); every array gets
 * the metatable ah.json.array_mt, so that an empty one encodes back as
 * [].  encode writes integers exactly and floats in the fewest digits
 * that read back the same, always as floats (71.0, not 71); a table is an
 * array when its keys are 1..n (or it carries ah.json.array_mt), an object
 * when they are strings, and anything else (holes, mixed keys, other key
 * types), NaN, infinities, functions, userdata and cycles are refused
 * with the place in the value where they are ($.messages[2].content).
 * Invalid UTF-8 in a string is replaced by U+FFFD, or refused with
 * invalid_utf8 = "error".
 *
 * Memory: everything goes through the state's allocator.  Decoded values
 * are Lua objects, an escaped string is unescaped in a luaL_Buffer, and
 * encode writes into a buffer owned by a userdata (an upvalue, reused from
 * call to call, freed by its __gc), so an error raised anywhere, out of
 * memory included, leaves nothing behind.  A text that is not JSON and a
 * value that JSON cannot hold are invalid_argument errors whose message
 * says what and where in the text or the value, without the position of
 * the caller's code (they are about the data: the library's own callers
 * hand the message on as it is); a wrong argument raises as every entry
 * point does (bindings/args.c), out of memory is `resource`.  Neither
 * function calls Lua code or metamethods: tables are read raw.
 *
 * Relies on host/json.c and Lua 5.4 with 64-bit integers.
 */
#include "bindings.h"

#include <stdio.h>
#include <string.h>

#if LUA_MAXINTEGER != INT64_MAX
#error "ah.json needs Lua integers of 64 bits"
#endif

/* Buffers past this size are given back after each encode. */
#define KEEP_BUFFER (1u << 20)

/* ---- decode ----------------------------------------------------------------- */

typedef struct dec {
  ah_json_sink k; /* first: the parser's callbacks get &k */
  lua_State *L;
  int mt; /* stack index of ah.json.array_mt */
} dec;

static int d_open(ah_json_sink *k, int array) {
  dec *d = (dec *)k;
  /* The table, a key, a value and a buffer's slot for each level. */
  if (!lua_checkstack(d->L, 4)) return -1;
  lua_createtable(d->L, 0, 0);
  if (array) {
    lua_pushvalue(d->L, d->mt);
    lua_setmetatable(d->L, -2);
  }
  return 0;
}

static int d_string(ah_json_sink *k, const char *s, size_t len, int escaped) {
  dec *d = (dec *)k;
  if (!escaped) {
    lua_pushlstring(d->L, s, len);
  } else {
    luaL_Buffer b;
    char *out = luaL_buffinitsize(d->L, &b, len);
    luaL_pushresultsize(&b, ah__json_unescape(s, len, out));
  }
  return 0;
}

static int d_number(ah_json_sink *k, const char *s, size_t len, int integral) {
  dec *d = (dec *)k;
  int64_t i;
  double x;
  if (ah__json_number(s, len, integral, &i, &x)) lua_pushinteger(d->L, (lua_Integer)i);
  else lua_pushnumber(d->L, x);
  return 0;
}

static int d_literal(ah_json_sink *k, int c) {
  dec *d = (dec *)k;
  if (c == 'n') lua_pushlightuserdata(d->L, NULL);
  else lua_pushboolean(d->L, c == 't');
  return 0;
}

static int d_item(ah_json_sink *k, int array, size_t n) {
  dec *d = (dec *)k;
  if (array) lua_rawseti(d->L, -2, (lua_Integer)n);
  else lua_rawset(d->L, -3);
  return 0;
}

static int d_close(ah_json_sink *k, int array) {
  (void)k, (void)array;
  return 0;
}

/* ah.json.decode(text [, opts]) -> value; upvalue 1: ah.json.array_mt */
static int j_decode(lua_State *L) {
  static const char *const fn = "ah.json.decode";
  size_t len, pos = 0;
  const char *s = ah__arg_string(L, 1, fn, "the text", &len);
  int max_depth = AH_JSON_MAX_DEPTH, rc;
  dec d;
  if (!lua_isnoneornil(L, 2)) {
    ah__arg_options(L, 2, fn);
    max_depth = (int)ah__opt_integer(L, 2, fn, "max_depth", AH_JSON_MAX_DEPTH, 1,
                                     AH_JSON_MAX_DEPTH);
  }
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  d.k.open = d_open;
  d.k.string = d_string;
  d.k.number = d_number;
  d.k.literal = d_literal;
  d.k.item = d_item;
  d.k.close = d_close;
  d.L = L;
  d.mt = 2;
  rc = ah__json_parse(s, len, max_depth, &d.k, &pos);
  if (rc == AH_JSON_ESINK) return ah__nomem(L, fn);
  if (rc) {
    size_t i, line = 1, col = 1;
    char msg[320];
    for (i = 0; i < pos; i++) {
      if (s[i] == '\n') line++, col = 1;
      else col++;
    }
    if (rc == AH_JSON_EDEPTH)
      snprintf(msg, sizeof msg, "%s: arrays and objects nested deeper than %d at line %lu, "
               "column %lu (byte %lu)", fn, max_depth, (unsigned long)line,
               (unsigned long)col, (unsigned long)pos);
    else
      snprintf(msg, sizeof msg, "%s: %s at line %lu, column %lu (byte %lu)", fn,
               ah__json_strerror(rc), (unsigned long)line, (unsigned long)col,
               (unsigned long)pos);
    ah__error_push(L, "invalid_argument", 0, "%s", msg);
    return lua_error(L);
  }
  return 1;
}

/* ---- encode ----------------------------------------------------------------- */

/* The output buffer: an upvalue of encode, reused; p is allocated with the
 * state's allocator and freed by box_gc. */
typedef struct jbox {
  ah_json_out o; /* first: the writers' grow gets &o */
  lua_Alloc alloc;
  void *aud;
  int busy; /* an encode is writing into it */
} jbox;

static int box_grow(ah_json_out *o, size_t n) {
  jbox *b = (jbox *)o;
  size_t cap = o->cap ? o->cap : 256, need;
  void *p;
  if (n > (size_t)-1 - o->len) return -1;
  need = o->len + n;
  while (cap < need) cap = cap > (size_t)-1 / 2 ? need : cap * 2;
  p = b->alloc(b->aud, o->p, o->cap, cap);
  if (!p) return -1;
  o->p = p;
  o->cap = cap;
  return 0;
}

static void box_release(jbox *b) {
  if (b->o.p) b->alloc(b->aud, b->o.p, b->o.cap, 0);
  b->o.p = NULL;
  b->o.len = b->o.cap = 0;
}

static int box_gc(lua_State *L) {
  box_release(lua_touserdata(L, 1));
  return 0;
}

static jbox *box_new(lua_State *L) {
  jbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  b->o.grow = box_grow;
  b->alloc = lua_getallocf(L, &b->aud);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  return b;
}

/* Where the encoder is: level d is the table at depth d and the key of
 * it being written (a stack index for an object, i for an array). */
typedef struct jlevel {
  const void *t;
  lua_Integer i;
  int key;
} jlevel;

typedef struct enc {
  lua_State *L;
  jbox *b;
  int mt; /* stack index of ah.json.array_mt */
  int replace, max_depth, depth;
  jlevel path[AH_JSON_MAX_DEPTH];
} enc;

static const char *const enc_fn = "ah.json.encode";

/* A key for a message: 'name' (printable ASCII, at most 40 bytes), 12, 1.5,
 * true, or its type. */
static void key_text(lua_State *L, int idx, char *out, size_t size) {
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t n, i, j = 0;
    const char *s = lua_tolstring(L, idx, &n);
    char k[48];
    for (i = 0; i < n && j < 40; i++)
      k[j++] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'' ? s[i] : '?';
    k[j] = '\0';
    snprintf(out, size, "'%s%s'", k, i < n ? "..." : "");
    break;
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) snprintf(out, size, "%lld", (long long)lua_tointeger(L, idx));
    else snprintf(out, size, "%.17g", (double)lua_tonumber(L, idx));
    break;
  case LUA_TBOOLEAN: snprintf(out, size, "%s", lua_toboolean(L, idx) ? "true" : "false"); break;
  default: snprintf(out, size, "a %s", luaL_typename(L, idx)); break;
  }
}

/* The place of levels 0..upto-1 as $.a[2]["b c"], shortened past size. */
static void path_text(enc *e, int upto, char *out, size_t size) {
  size_t n = 0;
  int d;
  n += (size_t)snprintf(out, size, "$");
  for (d = 0; d < upto && n + 8 < size; d++) {
    jlevel *l = &e->path[d];
    if (l->key) {
      size_t len, i, ident = 1;
      const char *s = lua_tolstring(e->L, l->key, &len);
      for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (i > 0 && c >= '0' && c <= '9')))
          ident = 0;
      }
      if (ident && len > 0 && len <= 40) {
        n += (size_t)snprintf(out + n, size - n, ".%s", s);
      } else {
        char k[64];
        key_text(e->L, l->key, k, sizeof k);
        n += (size_t)snprintf(out + n, size - n, "[%s]", k);
      }
    } else {
      n += (size_t)snprintf(out + n, size - n, "[%lld]", (long long)l->i);
    }
  }
  if (d < upto && size > 4) memcpy(out + size - 4, "...", 4);
}

/* Raises invalid_argument "ah.json.encode: " + fmt, where fmt's one %s is
 * the place of levels 0..upto-1 and the rest, already formatted, is in
 * what (which may hold a second place). */
static int enc_fail(enc *e, int upto, const char *fmt, const char *a, const char *b) {
  char where[200], msg[600];
  path_text(e, upto, where, sizeof where);
  snprintf(msg, sizeof msg, fmt, where, a ? a : "", b ? b : "");
  e->b->busy = 0;
  e->b->o.len = 0;
  ah__error_push(e->L, "invalid_argument", 0, "%s: %s", enc_fn, msg);
  return lua_error(e->L);
}

static int enc_nomem(enc *e) {
  e->b->busy = 0;
  e->b->o.len = 0;
  return ah__nomem(e->L, enc_fn);
}

static void put(enc *e, const char *s, size_t n) {
  ah_json_out *o = &e->b->o;
  if (o->cap - o->len < n && o->grow(o, n)) enc_nomem(e);
  memcpy(o->p + o->len, s, n);
  o->len += n;
}

static void put_char(enc *e, char c) {
  ah_json_out *o = &e->b->o;
  if (o->cap == o->len && o->grow(o, 1)) enc_nomem(e);
  o->p[o->len++] = c;
}

static void put_string(enc *e, int idx, int upto, const char *what) {
  size_t len, bad = 0;
  const char *s = lua_tolstring(e->L, idx, &len);
  int rc = ah__json_put_string(&e->b->o, s, len, e->replace, &bad);
  if (rc == -1) enc_nomem(e);
  if (rc) {
    char at[32];
    snprintf(at, sizeof at, "%lu", (unsigned long)bad);
    enc_fail(e, upto, what, at, NULL);
  }
}

/* Refuses the key at index key of the table at idx (level e->depth - 1),
 * saying what is wrong with the table.  n: the array's length, when the
 * table is written as one. */
static int bad_key(enc *e, int idx, int key, lua_Integer n) {
  lua_State *L = e->L;
  int upto = e->depth - 1, strings = 0;
  char k[64], m[64];
  key_text(L, key, k, sizeof k);
  if (lua_type(L, key) == LUA_TSTRING) {
    if (n == 0)
      return enc_fail(e, upto, "the table at %s is marked as an array (ah.json.array) "
                      "but has the key %s", k, NULL);
    snprintf(m, sizeof m, "%lld", (long long)n);
    return enc_fail(e, upto, "the table at %s has both array items (keys 1 to %s) and "
                    "the key %s: JSON has arrays (keys 1..n) and objects (string keys), "
                    "not both", m, k);
  }
  if (lua_isinteger(L, key)) {
    lua_Integer i = lua_tointeger(L, key), miss = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) == LUA_TSTRING) strings = 1;
    }
    if (strings)
      return enc_fail(e, upto, "the table at %s has string keys and the integer key %s: "
                      "JSON has arrays (keys 1..n) and objects (string keys), not both",
                      k, NULL);
    if (i < 1)
      return enc_fail(e, upto, "the table at %s has the key %s, which no JSON array "
                      "holds (arrays have keys 1..n)", k, NULL);
    while (lua_rawgeti(L, idx, miss) != LUA_TNIL) lua_pop(L, 1), miss++;
    snprintf(m, sizeof m, "%lld", (long long)miss);
    return enc_fail(e, upto, "the table at %s is an array with a hole: key %s is missing "
                    "but key %s is there (a JSON array has keys 1..n; put ah.null for "
                    "null)", m, k);
  }
  return enc_fail(e, upto, "the table at %s has the key %s; JSON objects have string "
                  "keys", k, NULL);
}

static void enc_value(enc *e, int idx);

static void enc_array(enc *e, int idx, lua_Integer n) {
  lua_State *L = e->L;
  jlevel *l = &e->path[e->depth - 1];
  lua_Integer i;
  put_char(e, '[');
  for (i = 1; i <= n; i++) {
    if (i > 1) put_char(e, ',');
    l->i = i;
    if (lua_rawgeti(L, idx, i) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushinteger(L, n); /* a key that is there (n is a border) */
      bad_key(e, idx, lua_gettop(L), n);
    }
    enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  /* Nothing but the keys 1..n. */
  if (n > 0) lua_pushinteger(L, n);
  else lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_Integer k;
    if (!lua_isinteger(L, -2) || (k = lua_tointeger(L, -2)) < 1 || k > n)
      bad_key(e, idx, lua_gettop(L) - 1, n);
    lua_pop(L, 1);
  }
  put_char(e, ']');
}

static void enc_object(enc *e, int idx) {
  lua_State *L = e->L;
  jlevel *l = &e->path[e->depth - 1];
  int first = 1;
  put_char(e, '{');
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int key = lua_gettop(L) - 1;
    if (lua_type(L, key) != LUA_TSTRING) bad_key(e, idx, key, 0);
    if (!first) put_char(e, ',');
    first = 0;
    l->key = key;
    put_string(e, key, e->depth, "the key at %s is not valid UTF-8 (byte %s); "
               "pass invalid_utf8 = \"replace\" to replace it");
    put_char(e, ':');
    enc_value(e, key + 1);
    lua_pop(L, 1);
  }
  l->key = 0;
  put_char(e, '}');
}

static void enc_table(enc *e, int idx) {
  lua_State *L = e->L;
  const void *t = lua_topointer(L, idx);
  int d = e->depth, i, marked = 0;
  lua_Integer n;
  if (d == e->max_depth) {
    char m[16];
    snprintf(m, sizeof m, "%d", e->max_depth);
    enc_fail(e, d, "the table at %s is nested deeper than %s", m, NULL);
  }
  for (i = 0; i < d; i++) {
    if (e->path[i].t == t) {
      char other[200];
      path_text(e, i, other, sizeof other);
      enc_fail(e, d, "the table at %s is also at %s, inside itself: a cycle has no JSON "
               "form", other, NULL);
    }
  }
  /* A key and a value for each level, and what bad_key pushes. */
  if (!lua_checkstack(L, 6)) enc_nomem(e);
  e->path[d].t = t;
  e->path[d].i = 0;
  e->path[d].key = 0;
  e->depth = d + 1;
  if (lua_getmetatable(L, idx)) {
    marked = lua_rawequal(L, -1, e->mt);
    lua_pop(L, 1);
  }
  n = (lua_Integer)lua_rawlen(L, idx);
  if (n > 0 || marked) enc_array(e, idx, n);
  else enc_object(e, idx);
  e->depth = d;
}

static void enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
    put_string(e, idx, e->depth, "the string at %s is not valid UTF-8 (byte %s); "
               "pass invalid_utf8 = \"replace\" to replace it");
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      if (ah__json_put_integer(&e->b->o, (int64_t)lua_tointeger(L, idx))) enc_nomem(e);
    } else {
      double v = (double)lua_tonumber(L, idx);
      int rc = ah__json_put_float(&e->b->o, v);
      if (rc == -1) enc_nomem(e);
      if (rc)
        enc_fail(e, e->depth, "the number at %s is %s, which JSON cannot write",
                 v != v ? "NaN" : v > 0 ? "infinity" : "-infinity", NULL);
    }
    break;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx)) put(e, "true", 4);
    else put(e, "false", 5);
    break;
  case LUA_TNIL: /* only at the top: a table holds no nil */
    put(e, "null", 4);
    break;
  case LUA_TTABLE:
    enc_table(e, idx);
    break;
  default:
    /* ah.null is null; any other light userdata, full userdata,
     * functions and threads have no JSON form. */
    if (lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL) put(e, "null", 4);
    else enc_fail(e, e->depth, "the value at %s is a %s, which has no JSON form",
                  luaL_typename(L, idx), NULL);
    break;
  }
}

/* ah.json.encode(value [, opts]) -> text; upvalues: the buffer box and
 * ah.json.array_mt */
static int j_encode(lua_State *L) {
  static const char *const utf8_words[] = {"replace", "error", NULL};
  enc e;
  jbox *b;
  e.replace = 1;
  e.max_depth = AH_JSON_MAX_DEPTH;
  if (lua_gettop(L) < 1) ah__arg_error(L, enc_fn, "the value", "given (nil for null)");
  if (!lua_isnoneornil(L, 2)) {
    ah__arg_options(L, 2, enc_fn);
    e.max_depth = (int)ah__opt_integer(L, 2, enc_fn, "max_depth", AH_JSON_MAX_DEPTH, 1,
                                       AH_JSON_MAX_DEPTH);
    e.replace = ah__opt_word(L, 2, enc_fn, "invalid_utf8", utf8_words, 0) == 0;
  }
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  b = lua_touserdata(L, lua_upvalueindex(1));
  /* Reentered (no Lua code runs during an encode, so this is defensive):
   * a buffer of its own, collected with the call. */
  if (b->busy) b = box_new(L);
  b->busy = 1;
  b->o.len = 0;
  e.L = L;
  e.b = b;
  e.mt = 2;
  e.depth = 0;
  enc_value(&e, 1);
  b->busy = 0;
  /* The string is a copy, made before any collection it may start. */
  lua_pushlstring(L, b->o.p ? b->o.p : "", b->o.len);
  if (b->o.cap > KEEP_BUFFER) box_release(b);
  return 1;
}

/* ---- the module ------------------------------------------------------------- */

/* ah.json.array([t]) -> t (a new table when none), marked as an array */
static int j_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else {
    ah__arg_type(L, 1, LUA_TTABLE, "ah.json.array", "t");
    lua_settop(L, 1);
    if (lua_getmetatable(L, 1)) {
      if (!lua_rawequal(L, -1, lua_upvalueindex(1)))
        return ah__error_raise(L, "invalid_argument", 0,
                               "ah.json.array: t already has a metatable; only a table "
                               "without one can be marked as an array");
      lua_pop(L, 1);
    }
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, 1);
  return 1;
}

int ah__open_json(lua_State *L) {
  int mt;
  lua_createtable(L, 0, 6);
  lua_createtable(L, 0, 1); /* ah.json.array_mt */
  lua_pushliteral(L, "ah.json.array");
  lua_setfield(L, -2, "__name");
  mt = lua_gettop(L);
  lua_pushvalue(L, mt);
  lua_pushcclosure(L, j_decode, 1);
  lua_setfield(L, -3, "decode");
  box_new(L);
  lua_pushvalue(L, mt);
  lua_pushcclosure(L, j_encode, 2);
  lua_setfield(L, -3, "encode");
  lua_pushvalue(L, mt);
  lua_pushcclosure(L, j_array, 1);
  lua_setfield(L, -3, "array");
  lua_setfield(L, -2, "array_mt");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  return 1;
}
