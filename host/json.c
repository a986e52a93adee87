/*
 * The JSON syntax checker: ah__json_check tells whether a text is exactly
 * one JSON value as RFC 8259 defines it (UTF-8 checked, \u escapes of
 * surrogates only as pairs, nesting bounded), without building anything.
 * What it accepts lua-cjson decodes (tests/c/test_json.c compares them);
 * it is stricter where lua-cjson is laxer than the RFC (leading zeros, hex,
 * Infinity and NaN, raw control characters, invalid UTF-8).  Posts from other threads are checked with it
 * before they are queued (see post.c and ah_post), so a bad text is
 * refused to its poster instead of failing later on the loop thread.
 *
 * A recursive descent over the bytes; any thread may call it.  Relies on
 * nothing but the C library.
 */
#include "host.h"

#include <string.h>

typedef struct jscan {
  const unsigned char *s, *end;
  int depth;
} jscan;

static void skip_ws(jscan *j) {
  while (j->s < j->end &&
         (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r'))
    j->s++;
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_hex(int c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* One UTF-8 sequence at j->s (not ASCII): advances past it, or fails on
 * overlong forms, surrogates and code points above U+10FFFF. */
static int scan_utf8(jscan *j) {
  const unsigned char *s = j->s;
  unsigned c = *s, n, cp, min, i;
  if (c >= 0xc2 && c <= 0xdf) n = 1, cp = c & 0x1f, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef) n = 2, cp = c & 0x0f, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) n = 3, cp = c & 0x07, min = 0x10000;
  else return -1;
  if (j->end - s <= (long)n) return -1;
  for (i = 1; i <= n; i++) {
    if ((s[i] & 0xc0) != 0x80) return -1;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
  j->s += n + 1;
  return 0;
}

/* The four hex digits of a \u escape at j->s (past the 'u'), or -1. */
static long scan_hex4(jscan *j) {
  long v = 0;
  int i;
  for (i = 0; i < 4; i++, j->s++) {
    int c;
    if (j->s >= j->end || !is_hex(c = *j->s)) return -1;
    v = v * 16 + (is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

/* A \u escape, j->s past the 'u'.  A surrogate is valid only as a pair: a
 * high one (D800-DBFF) followed at once by a \u escape of a low one
 * (DC00-DFFF).  A lone one has no UTF-8 form: lua-cjson refuses it, and
 * so must we, or a text we pass would fail on delivery. */
static int scan_uescape(jscan *j) {
  long cp = scan_hex4(j);
  if (cp < 0) return -1;
  if (cp >= 0xdc00 && cp <= 0xdfff) return -1;
  if (cp >= 0xd800 && cp <= 0xdbff) {
    long lo;
    if (j->end - j->s < 2 || j->s[0] != '\\' || j->s[1] != 'u') return -1;
    j->s += 2;
    lo = scan_hex4(j);
    if (lo < 0xdc00 || lo > 0xdfff) return -1;
  }
  return 0;
}

static int scan_string(jscan *j) {
  j->s++; /* the opening quote */
  while (j->s < j->end) {
    int c = *j->s;
    if (c == '"') {
      j->s++;
      return 0;
    }
    if (c < 0x20) return -1;
    if (c == '\\') {
      if (++j->s >= j->end) return -1;
      c = *j->s++;
      if (c == 'u') {
        if (scan_uescape(j)) return -1;
      } else if (!strchr("\"\\/bfnrt", c) || c == 0) {
        return -1;
      }
    } else if (c >= 0x80) {
      if (scan_utf8(j)) return -1;
    } else {
      j->s++;
    }
  }
  return -1;
}

static int scan_number(jscan *j) {
  if (*j->s == '-') j->s++;
  if (j->s >= j->end) return -1;
  if (*j->s == '0') {
    j->s++;
  } else if (is_digit(*j->s)) {
    while (j->s < j->end && is_digit(*j->s)) j->s++;
  } else {
    return -1;
  }
  if (j->s < j->end && *j->s == '.') {
    if (++j->s >= j->end || !is_digit(*j->s)) return -1;
    while (j->s < j->end && is_digit(*j->s)) j->s++;
  }
  if (j->s < j->end && (*j->s == 'e' || *j->s == 'E')) {
    j->s++;
    if (j->s < j->end && (*j->s == '+' || *j->s == '-')) j->s++;
    if (j->s >= j->end || !is_digit(*j->s)) return -1;
    while (j->s < j->end && is_digit(*j->s)) j->s++;
  }
  return 0;
}

static int scan_word(jscan *j, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(j->end - j->s) < n || memcmp(j->s, w, n) != 0) return -1;
  j->s += n;
  return 0;
}

static int scan_value(jscan *j);

/* An array or an object: open is '[' or '{'. */
static int scan_container(jscan *j, int open) {
  int close = open == '[' ? ']' : '}';
  if (++j->depth > AH_JSON_MAX_DEPTH) return -1;
  j->s++;
  skip_ws(j);
  if (j->s < j->end && *j->s == close) {
    j->s++;
    j->depth--;
    return 0;
  }
  for (;;) {
    if (open == '{') {
      if (j->s >= j->end || *j->s != '"' || scan_string(j)) return -1;
      skip_ws(j);
      if (j->s >= j->end || *j->s++ != ':') return -1;
    }
    if (scan_value(j)) return -1;
    skip_ws(j);
    if (j->s >= j->end) return -1;
    if (*j->s == ',') {
      j->s++;
      skip_ws(j);
      continue;
    }
    if (*j->s++ != close) return -1;
    j->depth--;
    return 0;
  }
}

static int scan_value(jscan *j) {
  skip_ws(j);
  if (j->s >= j->end) return -1;
  switch (*j->s) {
  case '{':
  case '[':
    return scan_container(j, *j->s);
  case '"':
    return scan_string(j);
  case 't':
    return scan_word(j, "true");
  case 'f':
    return scan_word(j, "false");
  case 'n':
    return scan_word(j, "null");
  default:
    return scan_number(j);
  }
}

int ah__json_check(const char *s, size_t len) {
  jscan j;
  j.s = (const unsigned char *)s;
  j.end = j.s + len;
  j.depth = 0;
  if (scan_value(&j)) return -1;
  skip_ws(&j);
  return j.s == j.end ? 0 : -1;
}
