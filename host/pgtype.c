/*
 * PostgreSQL values in text form, both ways: decoding what the server
 * prints for a column of a given type (integers, floats, bool, bytea in its
 * hex and escape forms, json, and arrays of any of those, walked token by
 * token), and encoding what agenthost sends (floats in their shortest exact
 * form, fields of COPY's text format).  Pure functions on plain C data; no
 * libpq, no Lua, so the parsers can be tested and fuzzed alone.
 *
 * Relies on the host's buffers (buf.c) for the bytes a decoded value needs
 * of its own (bytea, array elements), which stay valid until the scratch
 * buffer is used again.
 */
#include "host.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The array types whose element type we decode (pg_type.h); a switch,
 * as it is asked for every column of every result. */
uint32_t ah__pg_array_elem(uint32_t oid) {
  switch (oid) {
  case 1000: return AH_PG_BOOL;
  case 1001: return AH_PG_BYTEA;
  case 1002: return 18;   /* "char" */
  case 1003: return 19;   /* name */
  case 1005: return AH_PG_INT2;
  case 1007: return AH_PG_INT4;
  case 1009: return AH_PG_TEXT;
  case 1014: return 1042; /* bpchar */
  case 1015: return 1043; /* varchar */
  case 1016: return AH_PG_INT8;
  case 1021: return AH_PG_FLOAT4;
  case 1022: return AH_PG_FLOAT8;
  case 1028: return AH_PG_OID;
  case 199: return AH_PG_JSON;
  case 3807: return AH_PG_JSONB;
  case 1231: return AH_PG_NUMERIC;
  case 1115: return 1114; /* timestamp */
  case 1185: return 1184; /* timestamptz */
  case 1182: return 1082; /* date */
  case 1183: return 1083; /* time */
  case 1187: return 1186; /* interval */
  case 1270: return 1266; /* timetz */
  case 2951: return 2950; /* uuid */
  case 1041: return 869;  /* inet */
  case 651: return 650;   /* cidr */
  case 1040: return 829;  /* macaddr */
  case 1011: return 28;   /* xid */
  case 1012: return 29;   /* cid */
  default: return 0;
  }
}

static int is_integer_type(uint32_t oid) {
  return oid == AH_PG_INT2 || oid == AH_PG_INT4 || oid == AH_PG_INT8 ||
         oid == AH_PG_OID || oid == 28 /* xid */ || oid == 29 /* cid */;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes bytea text s[0..len) into out, which may be s itself: both forms
 * only ever shrink, so writing behind the reading position is safe.
 * Returns the decoded length, or -1 when the text is malformed. */
static long bytea_decode(const char *s, size_t len, char *out) {
  size_t i = 0, o = 0;
  if (len >= 2 && s[0] == '\\' && s[1] == 'x') { /* hex */
    for (i = 2; i < len;) {
      int hi, lo;
      if (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r') {
        i++;
        continue;
      }
      if (i + 1 >= len || (hi = hexval((unsigned char)s[i])) < 0 ||
          (lo = hexval((unsigned char)s[i + 1])) < 0)
        return -1;
      out[o++] = (char)(hi << 4 | lo);
      i += 2;
    }
    return (long)o;
  }
  while (i < len) { /* escape: \\ and \ooo */
    if (s[i] != '\\') {
      out[o++] = s[i++];
    } else if (i + 1 < len && s[i + 1] == '\\') {
      out[o++] = '\\';
      i += 2;
    } else if (i + 3 < len && s[i + 1] >= '0' && s[i + 1] <= '3' &&
               s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' &&
               s[i + 3] <= '7') {
      out[o++] = (char)((s[i + 1] - '0') << 6 | (s[i + 2] - '0') << 3 |
                        (s[i + 3] - '0'));
      i += 4;
    } else {
      return -1;
    }
  }
  return (long)o;
}

/* Decodes a value held in scratch (an array element), in place. */
static int decode_in_place(uint32_t oid, char *s, size_t len, ah_pg_val *out) {
  if (oid == AH_PG_BYTEA) {
    long n = bytea_decode(s, len, s);
    if (n < 0) return -1;
    out->type = AH_PGV_BYTES;
    out->u.s = s;
    out->len = (size_t)n;
    return 0;
  }
  return ah__pg_decode(oid, s, len, out, NULL);
}

int ah__pg_decode(uint32_t oid, const char *s, size_t len, ah_pg_val *out,
                  ah_buf *scratch) {
  memset(out, 0, sizeof *out);
  out->u.s = s;
  out->len = len;
  out->type = AH_PGV_TEXT;
  if (is_integer_type(oid)) {
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno == 0 && end == s + len && len > 0) {
      out->type = AH_PGV_INT;
      out->u.i = (int64_t)v;
    }
  } else if (oid == AH_PG_FLOAT4 || oid == AH_PG_FLOAT8) {
    char *end;
    double d = strtod(s, &end);
    if (end == s + len && len > 0) {
      out->type = AH_PGV_FLOAT;
      out->u.d = d;
    }
  } else if (oid == AH_PG_BOOL) {
    out->type = AH_PGV_BOOL;
    out->u.i = len > 0 && s[0] == 't';
  } else if (oid == AH_PG_BYTEA) {
    long n;
    if (!scratch) return -1;
    ah__buf_reset(scratch);
    if (ah__buf_reserve(scratch, len + 1) != 0) return UV_ENOMEM;
    if ((n = bytea_decode(s, len, scratch->data)) < 0) return -1;
    scratch->len = (size_t)n;
    out->type = AH_PGV_BYTES;
    out->u.s = scratch->data;
    out->len = (size_t)n;
  } else if (oid == AH_PG_JSON || oid == AH_PG_JSONB) {
    out->type = AH_PGV_JSON;
  } else if ((out->elem = ah__pg_array_elem(oid)) != 0) {
    out->type = AH_PGV_ARRAY;
  }
  return 0;
}

/* ---- arrays ---------------------------------------------------------------- */

void ah__pg_array_init(ah_pg_array *a, const ah_pg_val *v) {
  const char *p = v->u.s, *end = v->u.s + v->len;
  a->elem = v->elem;
  a->depth = 0;
  a->expect = 1;
  /* Bounds other than 1 come first, as in "[0:1]={1,2}": skip them. */
  if (p < end && *p == '[') {
    const char *eq = memchr(p, '=', (size_t)(end - p));
    p = eq ? eq + 1 : end;
  }
  a->p = p;
  a->end = end;
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int ah__pg_array_next(ah_pg_array *a, ah_pg_val *out, ah_buf *scratch) {
  const char *p = a->p, *end = a->end;
  for (;;) {
    while (p < end && is_space(*p)) p++;
    if (p >= end) {
      a->p = p;
      return a->depth == 0 ? AH_PGA_END : -1;
    }
    if (*p == '{') {
      if (!a->expect) return -1;
      a->depth++;
      a->p = p + 1;
      return AH_PGA_OPEN;
    }
    if (*p == '}') {
      if (a->depth == 0) return -1;
      a->depth--;
      a->expect = 0;
      a->p = p + 1;
      return AH_PGA_CLOSE;
    }
    if (*p == ',') {
      if (a->expect || a->depth == 0) return -1;
      a->expect = 1;
      p++;
      continue;
    }
    if (!a->expect || a->depth == 0) return -1;
    a->expect = 0;
    ah__buf_reset(scratch);
    if (*p == '"') { /* quoted: \ escapes the next character */
      for (p++; p < end && *p != '"'; p++) {
        if (*p == '\\' && ++p >= end) return -1;
        if (ah__buf_append(scratch, p, 1) != 0) return UV_ENOMEM;
      }
      if (p >= end) return -1;
      p++;
      if (ah__buf_append(scratch, "", 0) != 0) return UV_ENOMEM;
    } else {
      const char *s = p;
      while (p < end && *p != ',' && *p != '}' && !is_space(*p)) {
        if (*p == '"' || *p == '{') return -1;
        p++;
      }
      if (p - s == 4 && (s[0] == 'N' || s[0] == 'n') && (s[1] == 'U' || s[1] == 'u') &&
          (s[2] == 'L' || s[2] == 'l') && (s[3] == 'L' || s[3] == 'l')) {
        a->p = p;
        memset(out, 0, sizeof *out);
        out->type = AH_PGV_NULL;
        return AH_PGA_VALUE;
      }
      if (ah__buf_append(scratch, s, (size_t)(p - s)) != 0) return UV_ENOMEM;
    }
    a->p = p;
    if (decode_in_place(a->elem, scratch->data ? scratch->data : (char *)"",
                        scratch->len, out) != 0)
      return -1;
    return AH_PGA_VALUE;
  }
}

/* ---- encoding ---------------------------------------------------------------- */

int ah__pg_format_float(double d, char *out) {
  int prec;
  if (d != d) return snprintf(out, 32, "NaN");
  if (isinf(d)) return snprintf(out, 32, d > 0 ? "Infinity" : "-Infinity");
  for (prec = 15; prec < 17; prec++) {
    snprintf(out, 32, "%.*g", prec, d);
    if (strtod(out, NULL) == d) break;
  }
  return snprintf(out, 32, "%.*g", prec, d);
}

int ah__pg_copy_field(ah_buf *b, const ah_pg_val *v) {
  char num[32];
  const char *s, *run;
  size_t i;
  switch (v->type) {
  case AH_PGV_NULL: return ah__buf_append(b, "\\N", 2);
  case AH_PGV_BOOL: return ah__buf_append(b, v->u.i ? "t" : "f", 1);
  case AH_PGV_INT:
    snprintf(num, sizeof num, "%lld", (long long)v->u.i);
    return ah__buf_append(b, num, strlen(num));
  case AH_PGV_FLOAT:
    return ah__buf_append(b, num, (size_t)ah__pg_format_float(v->u.d, num));
  default: break;
  }
  s = run = v->u.s;
  for (i = 0; i < v->len; i++) {
    const char *esc;
    switch (s[i]) {
    case '\\': esc = "\\\\"; break;
    case '\t': esc = "\\t"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    default: continue;
    }
    if (ah__buf_append(b, run, (size_t)(s + i - run)) != 0 ||
        ah__buf_append(b, esc, 2) != 0)
      return UV_ENOMEM;
    run = s + i + 1;
  }
  return ah__buf_append(b, run, (size_t)(s + v->len - run));
}
