/*
 * ah_post against ah.json.decode, the decoder channel delivery uses: a
 * text that ah_post accepts must decode on delivery, or it would be
 * reported there and lost to the channel, and a text ah.json.decode
 * takes must not be refused to its poster.  Both run host/json.c's one
 * grammar, so for a set of tricky inputs (every \u escape class, surrogate
 * pairs valid and broken, long and huge numbers, nesting at and past the
 * limit) ah_post accepts exactly when ah.json.decode, run in the host's own
 * Lua state, does; and both refuse what lua-cjson is laxer about than RFC
 * 8259 (leading zeros, hex, Infinity and NaN, raw control characters,
 * invalid UTF-8).  The accepted texts are then delivered through a
 * channel, none reported, and a post's numbers arrive exactly: integers
 * as integers (int8's range, 2^53 + 1), floats as floats (71.0, 0.1 + 0.2).
 */
#include "agenthost.h"
#include "ctest.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int errors_seen;
static char last_error[512];
static long received;

static void on_error(void *ud, const char *msg, const char *tb) {
  (void)ud;
  (void)tb;
  errors_seen++;
  snprintf(last_error, sizeof last_error, "%s", msg);
}

static int c_got(lua_State *L) {
  received += luaL_optinteger(L, 1, 1);
  return 0;
}

/* Whether ah.json.decode, as channel delivery uses it, decodes s. */
static int decode_accepts(lua_State *L, const char *s) {
  int ok;
  lua_getglobal(L, "pcall");
  lua_getglobal(L, "require");
  lua_pushstring(L, "agenthost");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "json");
  lua_getfield(L, -1, "decode");
  lua_remove(L, -2);
  lua_remove(L, -2);
  lua_pushstring(L, s);
  lua_call(L, 2, 1);
  ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

/* A nesting of depth d: [[[ ... 1 ... ]]] or {"a":{"a": ... 1 ... }}. */
static char *nest(int d, int object) {
  const char *open = object ? "{\"a\":" : "[";
  const char *close = object ? "}" : "]";
  size_t lo = strlen(open), n = (size_t)d * (lo + 1) + 2, k = 0;
  char *s = malloc(n);
  int i;
  if (!s) return NULL;
  for (i = 0; i < d; i++, k += lo) memcpy(s + k, open, lo);
  s[k++] = '1';
  for (i = 0; i < d; i++) s[k++] = close[0];
  s[k] = '\0';
  return s;
}

/* A long text: prefix, then c n times, then suffix. */
static char *repeat(const char *prefix, int c, size_t n, const char *suffix) {
  size_t lp = strlen(prefix), ls = strlen(suffix);
  char *s = malloc(lp + n + ls + 1);
  if (!s) return NULL;
  memcpy(s, prefix, lp);
  memset(s + lp, c, n);
  memcpy(s + lp + n, suffix, ls + 1);
  return s;
}

static const char *const both[] = {
    /* \u escapes: plain, NUL, the edges of the BMP */
    "\"\\u0041\"", "\"\\u0000\"", "\"\\u00e9\\u00E9\"", "\"\\uffff\"", "\"\\ud7ff\"",
    "\"\\ue000\"",
    /* surrogate pairs */
    "\"\\ud83d\\ude00\"", "\"\\uD800\\uDC00\"", "\"\\udbff\\udfff\"", "\"a\\ud800\\udc00b\"",
    "{\"\\ud83d\\ude00\":[\"\\ud83d\\ude00\"]}",
    /* broken pairs and lone surrogates */
    "\"\\ud800\"", "\"\\udc00\"", "\"\\udfff\"", "\"\\udbff\"", "\"\\ud800x\"",
    "\"\\ud800\\u0041\"", "\"\\ud800\\ud800\"", "\"\\udc00\\ud800\"", "\"\\udbff\\ue000\"",
    "\"\\ud800\\\"\"", "\"\\ud800\\n\"", "\"\\ud800\\u\"", "\"\\ud800\\udc0\"",
    "{\"\\ud800\":1}", "[\"ok\",\"\\udc00\"]",
    /* other escapes */
    "\"\\u00zz\"", "\"\\u12\"", "\"\\x41\"", "\"\\/\\b\\f\\n\\r\\t\\\"\\\\\"",
    /* numbers */
    "0", "-0", "1e400", "-1e400", "1e-400", "1E+2", "2.5e-3", "1e", "-", ".5", "1.e5x", "--1",
    /* containers */
    "[1,]", "{\"a\":1,}", "[]", "{}", " [ 1 , 2 ] ", "1 2", "",
    NULL};

/* lua-cjson decodes these, RFC 8259 does not: ah_post and ah.json.decode
 * refuse them. */
static const char *const stricter[] = {
    "01", "00", "+1", "1.", "0x10", "Infinity", "-Infinity", "NaN", "inf", "nan",
    "\"\t\"", "\"a\nb\"", "\"\xc3\x28\"", "\"\xed\xa0\x80\"", NULL};

static int check_one(ah_host *h, lua_State *L, const char *s, const char *label) {
  int posted = ah_post(h, "d", s) == AH_OK;
  int decoded = decode_accepts(L, s);
  char name[160];
  char *q;
  snprintf(name, sizeof name, "ah_post %s iff ah.json.decode does: %.60s",
           decoded ? "accepts" : "refuses", label ? label : s);
  for (q = name; *q; q++)
    if ((unsigned char)*q < 0x20) *q = '?';
  CHECK(posted == decoded, name);
  return posted;
}

int main(void) {
  ah_config cfg;
  ah_host *h = NULL;
  lua_State *L;
  long posted = 0;
  int i, d;
  ah_config_init(&cfg);
  cfg.on_error = on_error;
  cfg.post_capacity = 100000;
  cfg.channel_capacity = 100000;
  if (ah_open(&cfg, &h) != AH_OK) {
    CHECK(0, "ah_open");
    return ctest_done();
  }
  ah_register(h, "got", c_got);
  L = ah_lua(h);

  for (i = 0; both[i]; i++) posted += check_one(h, L, both[i], NULL);
  for (d = 999; d <= 1001; d++) {
    char *a = nest(d, 0), *o = nest(d, 1), label[64];
    if (!a || !o) break;
    snprintf(label, sizeof label, "arrays nested %d deep", d);
    posted += check_one(h, L, a, label);
    snprintf(label, sizeof label, "objects nested %d deep", d);
    posted += check_one(h, L, o, label);
    free(a);
    free(o);
  }
  {
    char *big = repeat("1", '0', 5000, ""), *tiny = repeat("0.", '0', 5000, "1");
    char *exp = repeat("1e", '9', 500, ""), *neg = repeat("-1e-", '9', 500, "");
    if (big && tiny && exp && neg) {
      posted += check_one(h, L, big, "a 5001-digit integer");
      posted += check_one(h, L, tiny, "a fraction of 5000 zeros");
      posted += check_one(h, L, exp, "an exponent of 500 digits");
      posted += check_one(h, L, neg, "a negative exponent of 500 digits");
    }
    free(big);
    free(tiny);
    free(exp);
    free(neg);
  }

  for (i = 0; stricter[i]; i++) {
    char name[128], *q;
    snprintf(name, sizeof name, "ah_post and ah.json.decode refuse what only lua-cjson "
             "takes: %.40s", stricter[i]);
    for (q = name; *q; q++)
      if ((unsigned char)*q < 0x20) *q = '?';
    CHECK(ah_post(h, "d", stricter[i]) == AH_EINVAL && !decode_accepts(L, stricter[i]), name);
  }

  /* Every accepted text is delivered and decoded; none is reported. */
  lua_pushinteger(L, posted);
  lua_setglobal(L, "expected");
  CHECK(ah_load_string(h,
                       "local ah = require 'agenthost'\n"
                       "local ch = ah.channel('d')\n"
                       "for _ = 1, expected do ch:recv(); ah.host.got() end",
                       "=receiver") == AH_OK,
        "the receiver loads");
  for (i = 0; i < 10000 && ah_step(h, 1000) != AH_OK; i++) {
  }
  CHECK(received == posted, "every accepted post was delivered");
  CHECK(errors_seen == 0, errors_seen ? last_error : "no post was reported undeliverable");

  /* A post's numbers arrive as they were written. */
  received = 0;
  CHECK(ah_post(h, "n", "{\"id\": 1234567890123456789, \"max\": 9223372036854775807, "
                "\"min\": -9223372036854775808, \"big\": 9007199254740993, "
                "\"tokens\": 71, \"whole\": 71.0, \"f\": 0.30000000000000004, "
                "\"e\": 2.5e3, \"past\": 9223372036854775808}") == AH_OK,
        "a post of numbers is accepted");
  CHECK(ah_load_string(h,
                       "local ah = require 'agenthost'\n"
                       "local v = ah.channel('n'):recv()\n"
                       "local function is(k, want, kind)\n"
                       "  assert(v[k] == want and math.type(v[k]) == kind,\n"
                       "    k .. ' is ' .. tostring(v[k]) .. ' (' .. tostring(math.type(v[k])) .. ')')\n"
                       "end\n"
                       "is('id', 1234567890123456789, 'integer')\n"
                       "is('max', math.maxinteger, 'integer')\n"
                       "is('min', math.mininteger, 'integer')\n"
                       "is('big', 9007199254740993, 'integer')\n"
                       "is('tokens', 71, 'integer')\n"
                       "is('whole', 71.0, 'float')\n"
                       "is('f', 0.1 + 0.2, 'float')\n"
                       "is('e', 2500.0, 'float')\n"
                       "is('past', 2^63, 'float')\n"
                       "ah.host.got()",
                       "=numbers") == AH_OK,
        "the reader of numbers loads");
  for (i = 0; i < 10000 && ah_step(h, 1000) != AH_OK; i++) {
  }
  CHECK(received == 1 && errors_seen == 0,
        errors_seen ? last_error : "a post's integers arrive as integers and its floats as floats, exactly");
  CHECK(ah_close(h) == AH_OK, "closed");
  return ctest_done();
}
