/*
 * JSON text (RFC 8259), both ways, for the whole project.
 *
 * Reading: ah__json_parse is the one grammar.  It walks a text once,
 * iteratively (an explicit stack of AH_JSON_MAX_DEPTH levels, so a deep
 * text costs no C stack), and reports each value to a sink; with no sink
 * it only checks (ah__json_check, which ah_post uses on the poster's
 * thread).  ah.json.decode (bindings/json.c) builds Lua values from the
 * same parse, so what ah_post accepts and what decode accepts are the same
 * set by construction.  It is strict: UTF-8 checked (shortest forms, no
 * surrogates, nothing past U+10FFFF), \u escapes of surrogates only as a
 * high one followed at once by a low one, no raw control characters, no
 * leading zeros, '+', hex, Infinity or NaN, nothing but whitespace around
 * the value.  ah__json_unescape and ah__json_number turn what it reported
 * into bytes and numbers.
 *
 * Writing: ah__json_put_string, _integer and _float append to a buffer the
 * caller owns and grows (the codec grows it with Lua's allocator).  Floats
 * are written in the fewest digits that read back as the same double.
 *
 * Relies on the C library only; nothing here allocates, and any thread may
 * call it.
 */
#include "host.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes that end a run of plain string characters, reading or writing:
 * '"', '\\', the control characters and every byte from 0x80 (the start of
 * a UTF-8 sequence, checked on its own). */
static const unsigned char special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10 */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20: '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x30 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50: '\\' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x60 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x70 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x80 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x90 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xa0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xb0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xc0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xd0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xe0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xf0 */
};

static int is_digit(int c) { return c >= '0' && c <= '9'; }

static int hex_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* The four hex digits at s (there are at least four bytes), or -1. */
static long hex4(const unsigned char *s) {
  long v = 0;
  int i;
  for (i = 0; i < 4; i++) {
    int h = hex_value(s[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

int ah__utf8_len(const unsigned char *s, const unsigned char *end) {
  unsigned c = s[0], lo = 0x80, hi = 0xbf;
  int n, i;
  if (c < 0x80) return 1;
  if (c < 0xc2) return -1; /* a continuation byte, or an overlong lead */
  if (c < 0xe0) {
    n = 2;
  } else if (c < 0xf0) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;      /* no overlong forms */
    else if (c == 0xed) hi = 0x9f; /* no surrogates */
  } else if (c < 0xf5) {
    n = 4;
    if (c == 0xf0) lo = 0x90;      /* no overlong forms */
    else if (c == 0xf4) hi = 0x8f; /* nothing past U+10FFFF */
  } else {
    return -1;
  }
  for (i = 1; i < n; i++) {
    if (s + i >= end || s[i] < lo || s[i] > hi) return -i;
    lo = 0x80, hi = 0xbf;
  }
  return n;
}

/* ---- reading ---------------------------------------------------------------- */

const char *ah__json_strerror(int code) {
  switch (code) {
  case AH_JSON_EEND: return "the text ends before the JSON value does";
  case AH_JSON_EVALUE:
    return "expected a value (a string, a number, an object, an array, true, false or null)";
  case AH_JSON_ELITERAL: return "expected true, false or null";
  case AH_JSON_ENUMBER:
    return "an invalid number (JSON has no leading zeros, '+', hex, Infinity or NaN, "
           "and needs digits after '.' and 'e')";
  case AH_JSON_ECONTROL:
    return "a raw control character in a string (JSON escapes them: \\n, \\t, \\u0001)";
  case AH_JSON_EESCAPE:
    return "an invalid escape (JSON has \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX)";
  case AH_JSON_EHEX: return "\\u must be followed by four hex digits";
  case AH_JSON_ESURROGATE:
    return "a \\u escape of a lone surrogate (a high one, D800-DBFF, must be followed "
           "at once by a \\u escape of a low one, DC00-DFFF)";
  case AH_JSON_EUTF8: return "invalid UTF-8";
  case AH_JSON_EKEY: return "expected a string (an object's key)";
  case AH_JSON_ECOLON: return "expected ':' after an object's key";
  case AH_JSON_EARRAY: return "expected ',' or ']' after an array item";
  case AH_JSON_EOBJECT: return "expected ',' or '}' after an object member";
  case AH_JSON_EDEPTH: return "arrays and objects nested too deep";
  case AH_JSON_ETRAILING: return "more than whitespace after the JSON value";
  case AH_JSON_ESINK: return "the value could not be built";
  default: return "invalid JSON";
  }
}

typedef struct jparse {
  const unsigned char *s, *end; /* s: where the parse is */
  ah_json_sink *k;              /* NULL: only check */
  int err;                      /* the AH_JSON_E code once failed */
  const unsigned char *at;      /* where it went wrong */
} jparse;

static int fail(jparse *p, int err, const unsigned char *at) {
  p->err = err;
  p->at = at;
  return -1;
}

static const unsigned char *skip_ws(const unsigned char *s, const unsigned char *end) {
  while (s < end && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
  return s;
}

/* A \u escape at s (its backslash), as a whole: a surrogate is valid only
 * as a high one followed at once by a \u escape of a low one, since a lone
 * one has no UTF-8 form.  Returns the byte past it, or NULL. */
static const unsigned char *scan_uescape(jparse *p, const unsigned char *s) {
  const unsigned char *end = p->end;
  long cp, lo;
  if (end - s < 6 || (cp = hex4(s + 2)) < 0) return fail(p, AH_JSON_EHEX, s), NULL;
  if (cp >= 0xdc00 && cp <= 0xdfff) return fail(p, AH_JSON_ESURROGATE, s), NULL;
  if (cp >= 0xd800 && cp <= 0xdbff) {
    if (end - s < 12 || s[6] != '\\' || s[7] != 'u' || (lo = hex4(s + 8)) < 0xdc00 ||
        lo > 0xdfff)
      return fail(p, AH_JSON_ESURROGATE, s), NULL;
    return s + 12;
  }
  return s + 6;
}

/* The string at p->s (its opening quote), reported to the sink. */
static int scan_string(jparse *p) {
  const unsigned char *s = p->s + 1, *end = p->end, *body = s;
  int escaped = 0;
  for (;;) {
    int n;
    while (s < end && !special[*s]) s++;
    if (s == end) return fail(p, AH_JSON_EEND, s);
    if (*s == '"') break;
    if (*s == '\\') {
      escaped = 1;
      if (end - s < 2) return fail(p, AH_JSON_EEND, end);
      switch (s[1]) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        s += 2;
        break;
      case 'u':
        if (!(s = scan_uescape(p, s))) return -1;
        break;
      default:
        return fail(p, AH_JSON_EESCAPE, s);
      }
    } else if (*s < 0x20) {
      return fail(p, AH_JSON_ECONTROL, s);
    } else if ((n = ah__utf8_len(s, end)) < 0) {
      return fail(p, AH_JSON_EUTF8, s);
    } else {
      s += n;
    }
  }
  p->s = s + 1;
  if (p->k && p->k->string(p->k, (const char *)body, (size_t)(s - body), escaped))
    return fail(p, AH_JSON_ESINK, body);
  return 0;
}

/* The number at p->s, reported to the sink. */
static int scan_number(jparse *p) {
  const unsigned char *s = p->s, *end = p->end, *start = s;
  int integral = 1;
  if (*s == '-') s++;
  if (s == end || !is_digit(*s)) return fail(p, AH_JSON_ENUMBER, start);
  if (*s == '0') {
    if (++s < end && is_digit(*s)) return fail(p, AH_JSON_ENUMBER, start);
  } else {
    while (s < end && is_digit(*s)) s++;
  }
  if (s < end && *s == '.') {
    integral = 0;
    if (++s == end || !is_digit(*s)) return fail(p, AH_JSON_ENUMBER, start);
    while (s < end && is_digit(*s)) s++;
  }
  if (s < end && (*s == 'e' || *s == 'E')) {
    integral = 0;
    if (++s < end && (*s == '+' || *s == '-')) s++;
    if (s == end || !is_digit(*s)) return fail(p, AH_JSON_ENUMBER, start);
    while (s < end && is_digit(*s)) s++;
  }
  p->s = s;
  if (p->k && p->k->number(p->k, (const char *)start, (size_t)(s - start), integral))
    return fail(p, AH_JSON_ESINK, start);
  return 0;
}

static int scan_literal(jparse *p) {
  static const char *const words[] = {"true", "false", "null"};
  const char *w = words[*p->s == 't' ? 0 : *p->s == 'f' ? 1 : 2];
  size_t n = strlen(w);
  int c = *p->s;
  if ((size_t)(p->end - p->s) < n || memcmp(p->s, w, n) != 0)
    return fail(p, AH_JSON_ELITERAL, p->s);
  p->s += n;
  if (p->k && p->k->literal(p->k, c)) return fail(p, AH_JSON_ESINK, p->s - n);
  return 0;
}

/* The open containers: 1 for an array, 0 for an object, and how many
 * items each has so far. */
typedef struct jstack {
  unsigned char array[AH_JSON_MAX_DEPTH];
  size_t n[AH_JSON_MAX_DEPTH];
} jstack;

static int parse(jparse *p, jstack *st, int max_depth) {
  ah_json_sink *k = p->k;
  int depth = 0;
  for (;;) {
    /* A value is expected at p->s. */
    p->s = skip_ws(p->s, p->end);
    if (p->s == p->end) return fail(p, AH_JSON_EEND, p->s);
    switch (*p->s) {
    case '[':
    case '{': {
      int array = *p->s == '[';
      if (depth == max_depth) return fail(p, AH_JSON_EDEPTH, p->s);
      if (k && k->open(k, array)) return fail(p, AH_JSON_ESINK, p->s);
      st->array[depth] = (unsigned char)array;
      st->n[depth++] = 0;
      p->s = skip_ws(p->s + 1, p->end);
      if (p->s < p->end && *p->s == (array ? ']' : '}')) {
        p->s++;
        depth--;
        if (k && k->close(k, array)) return fail(p, AH_JSON_ESINK, p->s - 1);
        break; /* an empty one is a value */
      }
      if (array) continue;
      goto key;
    }
    case '"':
      if (scan_string(p)) return -1;
      break;
    case 't':
    case 'f':
    case 'n':
      if (scan_literal(p)) return -1;
      break;
    default:
      if (*p->s != '-' && !is_digit(*p->s)) return fail(p, AH_JSON_EVALUE, p->s);
      if (scan_number(p)) return -1;
      break;
    }

    /* A value ended: what follows it in its container. */
    for (;;) {
      int array;
      if (depth == 0) return 0;
      array = st->array[depth - 1];
      if (k && k->item(k, array, ++st->n[depth - 1])) return fail(p, AH_JSON_ESINK, p->s);
      p->s = skip_ws(p->s, p->end);
      if (p->s == p->end) return fail(p, AH_JSON_EEND, p->s);
      if (*p->s == ',') {
        p->s++;
        break;
      }
      if (*p->s != (array ? ']' : '}'))
        return fail(p, array ? AH_JSON_EARRAY : AH_JSON_EOBJECT, p->s);
      p->s++;
      depth--;
      if (k && k->close(k, array)) return fail(p, AH_JSON_ESINK, p->s - 1);
    }
    if (st->array[depth - 1]) continue;

  key:
    /* An object's key, then ':', then its value. */
    p->s = skip_ws(p->s, p->end);
    if (p->s == p->end) return fail(p, AH_JSON_EEND, p->s);
    if (*p->s != '"') return fail(p, AH_JSON_EKEY, p->s);
    if (scan_string(p)) return -1;
    p->s = skip_ws(p->s, p->end);
    if (p->s == p->end) return fail(p, AH_JSON_EEND, p->s);
    if (*p->s != ':') return fail(p, AH_JSON_ECOLON, p->s);
    p->s++;
  }
}

int ah__json_parse(const char *s, size_t len, int max_depth, ah_json_sink *k,
                   size_t *pos) {
  jparse p;
  jstack st;
  p.s = (const unsigned char *)s;
  p.end = p.s + len;
  p.k = k;
  p.err = 0;
  p.at = p.s;
  if (max_depth < 1 || max_depth > AH_JSON_MAX_DEPTH) max_depth = AH_JSON_MAX_DEPTH;
  if (parse(&p, &st, max_depth) == 0) {
    p.s = skip_ws(p.s, p.end);
    if (p.s == p.end) return 0;
    fail(&p, AH_JSON_ETRAILING, p.s);
  }
  if (pos) *pos = (size_t)(p.at - (const unsigned char *)s);
  return p.err;
}

int ah__json_check(const char *s, size_t len) {
  return ah__json_parse(s, len, AH_JSON_MAX_DEPTH, NULL, NULL) == 0 ? 0 : -1;
}

static size_t put_utf8(unsigned char *o, long cp) {
  if (cp < 0x80) {
    o[0] = (unsigned char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (unsigned char)(0xc0 | (cp >> 6));
    o[1] = (unsigned char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (unsigned char)(0xe0 | (cp >> 12));
    o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (unsigned char)(0xf0 | (cp >> 18));
  o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
  o[3] = (unsigned char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Every escape is at least as long as what it stands for (\uXXXX, 6 bytes,
 * is at most 3 of UTF-8; a pair, 12, is 4), so out needs len bytes.  The
 * text was checked by the parse; the bounds are kept anyway. */
size_t ah__json_unescape(const char *in, size_t len, char *out) {
  const unsigned char *s = (const unsigned char *)in, *end = s + len;
  unsigned char *o = (unsigned char *)out;
  while (s < end) {
    const unsigned char *q = memchr(s, '\\', (size_t)(end - s));
    long cp, lo;
    if (!q) q = end;
    memcpy(o, s, (size_t)(q - s));
    o += q - s;
    s = q;
    if (end - s < 2) break;
    switch (s[1]) {
    case 'b': *o++ = '\b'; break;
    case 'f': *o++ = '\f'; break;
    case 'n': *o++ = '\n'; break;
    case 'r': *o++ = '\r'; break;
    case 't': *o++ = '\t'; break;
    case 'u':
      if (end - s < 6 || (cp = hex4(s + 2)) < 0) return (size_t)(o - (unsigned char *)out);
      if (cp >= 0xd800 && cp <= 0xdbff && end - s >= 12 && (lo = hex4(s + 8)) >= 0xdc00 &&
          lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        s += 6;
      }
      o += put_utf8(o, cp);
      s += 4;
      break;
    default: *o++ = s[1]; break; /* " \ / */
    }
    s += 2;
  }
  return (size_t)(o - (unsigned char *)out);
}

/* Powers of ten that a double holds exactly. */
static const double exact_pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Significant digits kept for strtod.  Telling apart the doubles on either
 * side of a halfway point needs at most 767; digits past the kept ones
 * only matter as "some were not zero", which one more digit 1 says. */
#define KEPT_DIGITS 800

/* The double nearest to the JSON number s[0..end) (its sign removed). */
static double to_double(const unsigned char *s, const unsigned char *end) {
  char buf[KEPT_DIGITS + 24];
  int nd = 0, dropped = 0;
  long e = 0; /* the value is buf's digits times 10^e */
  for (; s < end && is_digit(*s); s++) {
    if (nd == 0 && *s == '0') continue;
    if (nd < KEPT_DIGITS) buf[nd++] = (char)*s;
    else e++, dropped |= *s != '0';
  }
  if (s < end && *s == '.') {
    for (s++; s < end && is_digit(*s); s++) {
      if (nd == 0 && *s == '0') e--;
      else if (nd < KEPT_DIGITS) buf[nd++] = (char)*s, e--;
      else dropped |= *s != '0';
    }
  }
  if (s < end && (*s == 'e' || *s == 'E')) {
    long x = 0;
    int neg = 0;
    if (++s < end && (*s == '+' || *s == '-')) neg = *s++ == '-';
    for (; s < end && is_digit(*s); s++)
      if (x < 100000000) x = x * 10 + (*s - '0');
    e += neg ? -x : x;
  }
  if (nd == 0) return 0.0;
  if (dropped) {
    buf[nd++] = '1';
    e--;
  } else {
    while (nd > 1 && buf[nd - 1] == '0') nd--, e++;
  }
  /* Up to 15 digits and a power of ten that a double holds: one exactly
   * rounded multiplication or division gives the nearest double. */
  if (nd <= 15 && e >= -22 && e <= 22 + 15 - nd) {
    double m = 0;
    int i;
    for (i = 0; i < nd; i++) m = m * 10 + (buf[i] - '0');
    if (e < 0) return m / exact_pow10[-e];
    if (e > 22) m *= exact_pow10[e - 22], e = 22;
    return m * exact_pow10[e];
  }
  /* Digits and an exponent, with no decimal point: the same in every
   * locale. */
  snprintf(buf + nd, sizeof buf - (size_t)nd, "e%ld", e);
  return strtod(buf, NULL);
}

int ah__json_number(const char *text, size_t len, int integral, int64_t *i, double *d) {
  const unsigned char *s = (const unsigned char *)text, *end = s + len;
  int neg = s < end && *s == '-';
  s += neg;
  if (integral && end - s <= 19) {
    uint64_t v = 0;
    const unsigned char *q;
    for (q = s; q < end; q++) v = v * 10 + (uint64_t)(*q - '0');
    if (v <= (uint64_t)INT64_MAX) {
      *i = neg ? -(int64_t)v : (int64_t)v;
      return 1;
    }
    if (neg && v == (uint64_t)INT64_MAX + 1) {
      *i = INT64_MIN;
      return 1;
    }
  }
  *d = to_double(s, end);
  if (neg) *d = -*d;
  return 0;
}

/* ---- writing ---------------------------------------------------------------- */

/* Room for n more bytes in o. */
static int room(ah_json_out *o, size_t n) {
  if (o->cap - o->len >= n) return 0;
  return o->grow(o, n);
}

int ah__json_put_string(ah_json_out *o, const char *str, size_t len, int replace,
                        size_t *bad) {
  static const char hexd[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)str, *end = s + len;
  if (room(o, len + 2)) return -1; /* plain text needs no more */
  o->p[o->len++] = '"';
  while (s < end) {
    const unsigned char *run = s;
    char *w;
    int n = 1, c;
    /* Plain characters and valid UTF-8 go out as they are. */
    while (s < end && (!special[*s] || (*s >= 0x80 && (n = ah__utf8_len(s, end)) > 0)))
      s += special[*s] ? n : 1;
    if (s > run) {
      if (room(o, (size_t)(s - run) + 1)) return -1;
      memcpy(o->p + o->len, run, (size_t)(s - run));
      o->len += (size_t)(s - run);
    }
    if (s == end) break;
    if (room(o, 6)) return -1;
    w = o->p + o->len;
    c = *s;
    if (c >= 0x80) { /* ill-formed: n is minus its length */
      if (!replace) {
        if (bad) *bad = (size_t)(s - (const unsigned char *)str);
        return AH_JSON_EUTF8;
      }
      memcpy(w, "\xef\xbf\xbd", 3);
      o->len += 3;
      s += -n;
      continue;
    }
    s++;
    w[0] = '\\';
    switch (c) {
    case '"': w[1] = '"'; break;
    case '\\': w[1] = '\\'; break;
    case '\b': w[1] = 'b'; break;
    case '\f': w[1] = 'f'; break;
    case '\n': w[1] = 'n'; break;
    case '\r': w[1] = 'r'; break;
    case '\t': w[1] = 't'; break;
    default:
      memcpy(w + 1, "u00", 3);
      w[4] = hexd[c >> 4];
      w[5] = hexd[c & 15];
      o->len += 6;
      continue;
    }
    o->len += 2;
  }
  if (room(o, 1)) return -1;
  o->p[o->len++] = '"';
  return 0;
}

int ah__json_put_integer(ah_json_out *o, int64_t v) {
  char tmp[24];
  size_t n = 0;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    tmp[sizeof tmp - ++n] = (char)('0' + u % 10);
  } while (u /= 10);
  if (v < 0) tmp[sizeof tmp - ++n] = '-';
  if (room(o, n)) return -1;
  memcpy(o->p + o->len, tmp + sizeof tmp - n, n);
  o->len += n;
  return 0;
}

int ah__json_put_float(ah_json_out *o, double v) {
  char b[40];
  int prec, n, i, j, point = 0;
  if (!isfinite(v)) return AH_JSON_ENUMBER;
  if (v == floor(v) && fabs(v) < 1e15) {
    /* What %.15g would write, without formatting it. */
    if (v == 0 && signbit(v)) n = snprintf(b, sizeof b, "-0");
    else {
      int64_t x = (int64_t)v;
      uint64_t u = x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
      char *q = b + sizeof b;
      do *--q = (char)('0' + u % 10);
      while (u /= 10);
      if (x < 0) *--q = '-';
      n = (int)(b + sizeof b - q);
      memmove(b, q, (size_t)n);
    }
  } else {
    /* The fewest digits: from 15, which a normal double that was written
     * in at most 15 digits reads back from (its rounding to 15 digits is
     * those digits), to 17, which every double reads back from.  A
     * subnormal one has fewer bits, so its search starts at 1. */
    for (prec = fabs(v) < DBL_MIN ? 1 : 15;; prec++) {
      n = snprintf(b, sizeof b, "%.*g", prec, v);
      if (prec == 17 || strtod(b, NULL) == v) break;
    }
    /* The locale's decimal point (read back by strtod above, in the same
     * locale; it may be more than one byte) becomes JSON's. */
    for (i = 0, j = 0; i < n; i++) {
      if (is_digit(b[i]) || b[i] == '-' || b[i] == '+' || b[i] == 'e') {
        point |= b[i] == 'e';
        b[j++] = b[i];
      } else if (j == 0 || b[j - 1] != '.') {
        b[j++] = '.';
        point = 1;
      }
    }
    n = j;
  }
  if (!point) b[n++] = '.', b[n++] = '0'; /* so that it reads back as a float */
  if (room(o, (size_t)n)) return -1;
  memcpy(o->p + o->len, b, (size_t)n);
  o->len += (size_t)n;
  return 0;
}
