/*
 * Posts: messages handed to the loop thread from any thread.
 *
 * A post is a channel name and a JSON text, copied into one block and
 * appended to a list under a mutex; a uv_async_t wakes the loop thread,
 * which takes the whole list at once and hands each message on.  The
 * count of messages accepted but not yet delivered is bounded, so a
 * producer that outruns the loop gets UV_EAGAIN instead of growing memory
 * without limit.  The JSON check lets a poster learn at once that a text
 * is not JSON, rather than the loop thread finding out later.
 *
 * Relies on libuv only (its mutex and async handle).
 */
#include "host.h"

#include <stdlib.h>
#include <string.h>

static void on_async(uv_async_t *a) {
  ah_posts *p = a->data;
  if (p->deliver) p->deliver(p);
}

int ah__posts_init(ah_posts *p, uv_loop_t *loop, size_t max,
                   void (*deliver)(ah_posts *p)) {
  int rc;
  memset(p, 0, sizeof *p);
  if ((rc = uv_mutex_init(&p->mu))) return rc;
  if ((rc = uv_cond_init(&p->idle))) {
    uv_mutex_destroy(&p->mu);
    return rc;
  }
  if ((rc = uv_async_init(loop, &p->async, on_async))) {
    uv_cond_destroy(&p->idle);
    uv_mutex_destroy(&p->mu);
    return rc;
  }
  p->async.data = p;
  p->tail = &p->head;
  p->max = max;
  p->deliver = deliver;
  /* Pending posts must not keep a loop alive on their own: a borrowing
   * host's uv_run would never end.  ah_run references it while it runs. */
  uv_unref((uv_handle_t *)&p->async);
  return 0;
}

int ah__posts_push(ah_posts *p, const char *channel, size_t clen,
                   const char *json, size_t jlen) {
  ah_postmsg *m;
  int rc = 0;
  uv_mutex_lock(&p->mu);
  if (p->closed)
    rc = UV_EPIPE;
  else if (p->max && p->pending >= p->max)
    rc = UV_EAGAIN;
  else
    p->pending++; /* reserves the place before the copy, outside the lock */
  uv_mutex_unlock(&p->mu);
  if (rc) return rc;
  m = malloc(sizeof *m + clen + 1 + jlen + 1);
  if (!m) {
    ah__posts_done(p, 1);
    return UV_ENOMEM;
  }
  m->next = NULL;
  m->channel_len = clen;
  m->json_len = jlen;
  m->channel = (char *)(m + 1);
  m->json = m->channel + clen + 1;
  memcpy(m->channel, channel, clen);
  m->channel[clen] = '\0';
  memcpy(m->json, json, jlen);
  m->json[jlen] = '\0';
  uv_mutex_lock(&p->mu);
  if (p->closed) {
    /* Closed while copying: the place goes back and the message with it. */
    p->pending--;
    rc = UV_EPIPE;
  } else {
    *p->tail = m;
    p->tail = &m->next;
    p->posted++;
    /* Inside the lock, so that close cannot free the handle meanwhile. */
    uv_async_send(&p->async);
  }
  uv_mutex_unlock(&p->mu);
  if (rc) free(m);
  return rc;
}

ah_postmsg *ah__posts_take(ah_posts *p) {
  ah_postmsg *list;
  uv_mutex_lock(&p->mu);
  list = p->head;
  p->head = NULL;
  p->tail = &p->head;
  uv_mutex_unlock(&p->mu);
  return list;
}

void ah__posts_done(ah_posts *p, size_t n) {
  uv_mutex_lock(&p->mu);
  p->pending -= n <= p->pending ? n : p->pending;
  uv_mutex_unlock(&p->mu);
}

size_t ah__posts_pending(ah_posts *p) {
  size_t n;
  uv_mutex_lock(&p->mu);
  n = p->pending;
  uv_mutex_unlock(&p->mu);
  return n;
}

int ah__posts_enter(ah_posts *p) {
  int rc = 0;
  uv_mutex_lock(&p->mu);
  if (p->closed) rc = UV_EPIPE;
  else p->callers++;
  uv_mutex_unlock(&p->mu);
  return rc;
}

void ah__posts_leave(ah_posts *p) {
  uv_mutex_lock(&p->mu);
  if (--p->callers == 0 && p->closed) uv_cond_broadcast(&p->idle);
  uv_mutex_unlock(&p->mu);
}

void ah__posts_close(ah_posts *p, uv_close_cb cb) {
  ah_postmsg *m, *next;
  uv_mutex_lock(&p->mu);
  p->closed = 1;
  /* A thread still copying its message finds closed set when it takes the
   * lock again, and gives up: wait until none is inside. */
  while (p->callers > 0) uv_cond_wait(&p->idle, &p->mu);
  m = p->head;
  p->head = NULL;
  p->tail = &p->head;
  uv_mutex_unlock(&p->mu);
  for (; m; m = next) {
    next = m->next;
    free(m);
  }
  uv_close((uv_handle_t *)&p->async, cb);
}

void ah__posts_free(ah_posts *p) {
  uv_cond_destroy(&p->idle);
  uv_mutex_destroy(&p->mu);
}

/* ---- JSON syntax (RFC 8259) ------------------------------------------- */

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
        int i;
        for (i = 0; i < 4; i++, j->s++)
          if (j->s >= j->end || !is_hex(*j->s)) return -1;
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
