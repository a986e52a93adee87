/*
 * Posts: messages handed to the loop thread from any thread.
 *
 * A post is a channel name and a JSON text, copied into one block and
 * appended to a list under a mutex; a uv_async_t wakes the loop thread,
 * which takes the whole list at once and hands each message on.  The
 * count of messages accepted but not yet delivered is bounded, so a
 * producer that outruns the loop gets UV_EAGAIN instead of growing memory
 * without limit.  A poster checks its text with ah__json_check (json.c)
 * before pushing it, so that it learns at once that the text is not JSON
 * rather than the loop thread finding out later.
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
