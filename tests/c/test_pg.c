/*
 * host/pgtype.c and the error classification of host/pg.c, without a
 * server: text decoding by type (integers, floats, bool, bytea in both
 * forms, json, arrays walked token by token, malformed input refused),
 * shortest exact floats, COPY text escaping, SQLSTATE kinds.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ah_buf scratch;

static int decode(uint32_t oid, const char *s, ah_pg_val *v) {
  return ah__pg_decode(oid, s, strlen(s), v, &scratch);
}

static int is_text(const ah_pg_val *v, int type, const char *want) {
  return v->type == type && v->len == strlen(want) && memcmp(v->u.s, want, v->len) == 0;
}

static void test_scalars(void) {
  ah_pg_val v;
  CHECK(decode(AH_PG_INT8, "9223372036854775807", &v) == 0 && v.type == AH_PGV_INT &&
            v.u.i == INT64_MAX, "int8 max");
  CHECK(decode(AH_PG_INT8, "-9223372036854775808", &v) == 0 && v.type == AH_PGV_INT &&
            v.u.i == INT64_MIN, "int8 min");
  CHECK(decode(AH_PG_INT4, "12x", &v) == 0 && v.type == AH_PGV_TEXT, "a bad integer stays text");
  CHECK(decode(AH_PG_FLOAT8, "0.1", &v) == 0 && v.type == AH_PGV_FLOAT && v.u.d == 0.1, "float8");
  CHECK(decode(AH_PG_FLOAT8, "NaN", &v) == 0 && v.type == AH_PGV_FLOAT && isnan(v.u.d), "NaN");
  CHECK(decode(AH_PG_FLOAT4, "-Infinity", &v) == 0 && v.type == AH_PGV_FLOAT && isinf(v.u.d) &&
            v.u.d < 0, "-Infinity");
  CHECK(decode(AH_PG_BOOL, "t", &v) == 0 && v.type == AH_PGV_BOOL && v.u.i == 1, "true");
  CHECK(decode(AH_PG_BOOL, "f", &v) == 0 && v.type == AH_PGV_BOOL && v.u.i == 0, "false");
  CHECK(decode(AH_PG_NUMERIC, "1.50", &v) == 0 && is_text(&v, AH_PGV_TEXT, "1.50"),
        "numeric stays exact text");
  CHECK(decode(AH_PG_JSONB, "{\"a\": 1}", &v) == 0 && is_text(&v, AH_PGV_JSON, "{\"a\": 1}"),
        "jsonb is JSON text");
  CHECK(decode(1184, "2024-02-29 13:14:15+00", &v) == 0 &&
            is_text(&v, AH_PGV_TEXT, "2024-02-29 13:14:15+00"), "timestamptz as printed");
}

static void test_bytea(void) {
  ah_pg_val v;
  CHECK(decode(AH_PG_BYTEA, "\\x00ff10", &v) == 0 && v.type == AH_PGV_BYTES && v.len == 3 &&
            memcmp(v.u.s, "\0\377\020", 3) == 0, "hex bytea");
  CHECK(decode(AH_PG_BYTEA, "\\x", &v) == 0 && v.type == AH_PGV_BYTES && v.len == 0, "empty bytea");
  CHECK(decode(AH_PG_BYTEA, "a\\\\b\\001\\377", &v) == 0 && v.type == AH_PGV_BYTES && v.len == 5 &&
            memcmp(v.u.s, "a\\b\001\377", 5) == 0, "escape bytea");
  CHECK(decode(AH_PG_BYTEA, "\\x0", &v) < 0, "odd hex refused");
  CHECK(decode(AH_PG_BYTEA, "\\xzz", &v) < 0, "bad hex refused");
  CHECK(decode(AH_PG_BYTEA, "a\\9", &v) < 0, "bad escape refused");
}

/* Walks the array text s of type oid into a compact string of its tokens:
 * "{" "}" and values (i: integers, s"..." strings, N null, b: bytes). */
static const char *walk(uint32_t oid, const char *s, char *out, size_t n) {
  ah_pg_val v, e;
  ah_pg_array a;
  int tok;
  size_t len = 0;
  out[0] = 0;
  if (ah__pg_decode(oid, s, strlen(s), &v, &scratch) != 0 || v.type != AH_PGV_ARRAY) return "not an array";
  ah__pg_array_init(&a, &v);
  while ((tok = ah__pg_array_next(&a, &e, &scratch)) != AH_PGA_END) {
    char piece[128];
    if (tok < 0) return "malformed";
    if (tok == AH_PGA_OPEN) snprintf(piece, sizeof piece, "{");
    else if (tok == AH_PGA_CLOSE) snprintf(piece, sizeof piece, "}");
    else if (e.type == AH_PGV_NULL) snprintf(piece, sizeof piece, "N");
    else if (e.type == AH_PGV_INT) snprintf(piece, sizeof piece, "i%lld", (long long)e.u.i);
    else if (e.type == AH_PGV_BYTES) snprintf(piece, sizeof piece, "b%d", (int)e.len);
    else snprintf(piece, sizeof piece, "s\"%.*s\"", (int)e.len, e.u.s);
    if (len + strlen(piece) + 1 > n) return "too long";
    strcpy(out + len, piece);
    len += strlen(piece);
  }
  return out;
}

static void test_arrays(void) {
  char out[512];
  CHECK(strcmp(walk(1007, "{1,NULL,3}", out, sizeof out), "{i1Ni3}") == 0, "int array with NULL");
  CHECK(strcmp(walk(1007, "{{1,2},{3,4}}", out, sizeof out), "{{i1i2}{i3i4}}") == 0, "two dimensions");
  CHECK(strcmp(walk(1007, "[0:1]={7,8}", out, sizeof out), "{i7i8}") == 0, "bounds skipped");
  CHECK(strcmp(walk(1007, "{}", out, sizeof out), "{}") == 0, "empty array");
  CHECK(strcmp(walk(1009, "{a,\"b c\",\"d\\\"e\",\"f\\\\g\",NULL,\"NULL\"}", out, sizeof out),
               "{s\"a\"s\"b c\"s\"d\"e\"s\"f\\g\"Ns\"NULL\"}") == 0,
        "text array: quotes, escapes, NULL and the string NULL");
  CHECK(strcmp(walk(1001, "{\"\\\\x01ff\",\"\\\\x\"}", out, sizeof out), "{b2b0}") == 0, "bytea array");
  CHECK(strcmp(walk(1007, "{1,2", out, sizeof out), "malformed") == 0, "unclosed");
  CHECK(strcmp(walk(1007, "{1,,2}", out, sizeof out), "malformed") == 0, "empty element");
  CHECK(strcmp(walk(1009, "{\"a}", out, sizeof out), "malformed") == 0, "unclosed quote");
  CHECK(strcmp(walk(1007, "1,2}", out, sizeof out), "malformed") == 0, "no brace");
  CHECK(strcmp(walk(1007, "{1}}", out, sizeof out), "malformed") == 0, "extra close");
  CHECK(ah__pg_array_elem(1007) == AH_PG_INT4 && ah__pg_array_elem(3807) == AH_PG_JSONB &&
            ah__pg_array_elem(AH_PG_INT4) == 0, "element types");
}

static void test_float_text(void) {
  double xs[] = {0.1, 1.0 / 3, 1e300, -2.5e-310, 123456789.125, 5e-324};
  char buf[32];
  size_t i;
  int exact = 1;
  for (i = 0; i < sizeof xs / sizeof xs[0]; i++) {
    ah__pg_format_float(xs[i], buf);
    if (strtod(buf, NULL) != xs[i]) exact = 0;
  }
  CHECK(exact, "floats read back exactly");
  ah__pg_format_float(0.1, buf);
  CHECK(strcmp(buf, "0.1") == 0, "0.1 is written shortest");
  ah__pg_format_float(0.0 / 0.0, buf);
  CHECK(strcmp(buf, "NaN") == 0, "NaN");
  ah__pg_format_float(-HUGE_VAL, buf);
  CHECK(strcmp(buf, "-Infinity") == 0, "-Infinity");
}

static void test_copy(void) {
  ah_buf b;
  ah_pg_val v;
  memset(&b, 0, sizeof b);
  memset(&v, 0, sizeof v);
  v.type = AH_PGV_TEXT;
  v.u.s = "a\tb\nc\\d\re";
  v.len = strlen(v.u.s);
  CHECK(ah__pg_copy_field(&b, &v) == 0 && strcmp(b.data, "a\\tb\\nc\\\\d\\re") == 0,
        "COPY text escapes tab, newline, backslash, carriage return");
  ah__buf_reset(&b);
  v.type = AH_PGV_NULL;
  CHECK(ah__pg_copy_field(&b, &v) == 0 && strcmp(b.data, "\\N") == 0, "NULL is \\N");
  ah__buf_reset(&b);
  v.type = AH_PGV_INT;
  v.u.i = -42;
  CHECK(ah__pg_copy_field(&b, &v) == 0 && strcmp(b.data, "-42") == 0, "integer");
  ah__buf_free(&b);
}

static void test_sqlstate(void) {
  int r;
  CHECK(strcmp(ah__pg_sqlstate_kind("40001", &r), "sql") == 0 && r, "serialization failure retryable");
  CHECK(strcmp(ah__pg_sqlstate_kind("40P01", &r), "sql") == 0 && r, "deadlock retryable");
  CHECK(strcmp(ah__pg_sqlstate_kind("23505", &r), "sql") == 0 && !r, "unique violation not");
  CHECK(strcmp(ah__pg_sqlstate_kind("57P01", &r), "connect") == 0 && r, "admin shutdown is connect");
  CHECK(strcmp(ah__pg_sqlstate_kind("08006", &r), "connect") == 0 && r, "connection failure");
  CHECK(strcmp(ah__pg_sqlstate_kind("08P01", &r), "sql") == 0 && !r, "protocol violation is sql");
}

int main(void) {
  test_scalars();
  test_bytea();
  test_arrays();
  test_float_text();
  test_copy();
  test_sqlstate();
  ah__buf_free(&scratch);
  return ctest_done();
}
