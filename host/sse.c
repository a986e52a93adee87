/*
 * The text/event-stream parser (WHATWG HTML, "Server-sent events",
 * interpreting an event stream).  Byte-oriented and incremental: a chunk
 * may end anywhere, even between the CR and LF of a line end.  Relies on
 * the C library and the host's buffers (buf.c).
 */
#include "host.h"

#include <string.h>

/* Appends to one of the parser's buffers, which hold at most max bytes
 * (their NUL included). */
static int add(ah_buf *b, const char *p, size_t n, size_t max) {
  if (b->len + n + 1 > max) return UV_E2BIG;
  return ah__buf_append(b, p, n);
}

void ah__sse_init(ah_sse *p, size_t max) {
  memset(p, 0, sizeof *p);
  p->retry = -1;
  p->max = max;
  add(&p->id, "", 0, max);
}

void ah__sse_free(ah_sse *p) {
  ah__buf_free(&p->line);
  ah__buf_free(&p->data);
  ah__buf_free(&p->event);
  ah__buf_free(&p->id);
  memset(p, 0, sizeof *p);
}

static int dispatch(ah_sse *p, int (*cb)(void *, const ah_sse_event *),
                    void *ud) {
  ah_sse_event ev;
  int rc = 0;
  if (p->data.len > 0) {
    p->data.data[--p->data.len] = '\0'; /* the last LF goes */
    ev.event = p->event.len ? p->event.data : "message";
    ev.data = p->data.data;
    ev.data_len = p->data.len;
    ev.id = p->id.data ? p->id.data : "";
    ev.retry = p->retry;
    rc = cb(ud, &ev);
  }
  ah__buf_reset(&p->data);
  ah__buf_reset(&p->event);
  p->retry = -1;
  return rc;
}

static int field(ah_sse *p, const char *line, size_t n) {
  const char *colon = memchr(line, ':', n);
  const char *v = colon ? colon + 1 : line + n;
  size_t name_len = colon ? (size_t)(colon - line) : n;
  size_t vlen = (size_t)(line + n - v);
  if (vlen && *v == ' ') {
    v++;
    vlen--;
  }
  if (name_len == 5 && memcmp(line, "event", 5) == 0) {
    ah__buf_reset(&p->event);
    return add(&p->event, v, vlen, p->max);
  }
  if (name_len == 4 && memcmp(line, "data", 4) == 0) {
    int rc = add(&p->data, v, vlen, p->max);
    return rc ? rc : add(&p->data, "\n", 1, p->max);
  }
  if (name_len == 2 && memcmp(line, "id", 2) == 0) {
    if (memchr(v, '\0', vlen)) return 0;
    ah__buf_reset(&p->id);
    return add(&p->id, v, vlen, p->max);
  }
  if (name_len == 5 && memcmp(line, "retry", 5) == 0) {
    long r = 0;
    size_t i;
    if (vlen == 0 || vlen > 15) return 0;
    for (i = 0; i < vlen; i++) {
      if (v[i] < '0' || v[i] > '9') return 0;
      r = r * 10 + (v[i] - '0');
    }
    p->retry = r;
  }
  return 0; /* other fields are ignored */
}

static int line_done(ah_sse *p, int (*cb)(void *, const ah_sse_event *),
                     void *ud) {
  int rc;
  if (p->line.len == 0) return dispatch(p, cb, ud);
  if (p->line.data[0] == ':')
    rc = 0; /* a comment */
  else
    rc = field(p, p->line.data, p->line.len);
  ah__buf_reset(&p->line);
  return rc;
}

int ah__sse_feed(ah_sse *p, const char *s, size_t n,
                 int (*cb)(void *ud, const ah_sse_event *ev), void *ud) {
  size_t i = 0, start;
  int rc;
  static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};
  /* A UTF-8 BOM may open the stream, itself split across chunks. */
  while (!p->started && i < n) {
    if ((unsigned char)s[i] == bom[p->bom]) {
      i++;
      if (++p->bom == 3) p->started = 1;
    } else {
      /* Not a BOM after all: what matched so far is text. */
      if ((rc = add(&p->line, (const char *)bom, (size_t)p->bom, p->max))) return rc;
      p->started = 1;
    }
  }
  while (i < n) {
    if (p->last_cr && s[i] == '\n') { /* the LF of a CRLF split by a chunk */
      p->last_cr = 0;
      i++;
      continue;
    }
    p->last_cr = 0;
    start = i;
    while (i < n && s[i] != '\r' && s[i] != '\n') i++;
    if ((rc = add(&p->line, s + start, i - start, p->max))) return rc;
    if (i == n) break; /* the line goes on in the next chunk */
    if (s[i] == '\r') {
      if (i + 1 < n && s[i + 1] == '\n')
        i++;
      else if (i + 1 == n)
        p->last_cr = 1;
    }
    i++;
    if ((rc = line_done(p, cb, ud))) return rc;
  }
  return 0;
}
