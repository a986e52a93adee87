/*
 * The timer heap: any number of timers on one uv_timer_t.
 *
 * Records that sleep (tasks, timeouts) embed an ah_timer of 16 bytes; the
 * heap holds pointers to them, ordered by a 64-bit key made of the deadline
 * in milliseconds and a start sequence, so equal deadlines fire in FIFO
 * order.  Only the earliest deadline is armed on the uv timer, and it is
 * re-armed only when the earliest deadline changes.  Relies on libuv only.
 */
#include "host.h"

#include <stdlib.h>

#define SEQ_BITS 22u
#define SEQ_MASK ((1u << SEQ_BITS) - 1u)

static uint64_t deadline_of(uint64_t key) { return key >> SEQ_BITS; }

/* The heap keeps each key beside its pointer, so ordering never touches
 * the records themselves; only a moved record's position is written. */
static void place(ah_timers *ts, uint32_t i, ah_timer_slot e) {
  ts->heap[i] = e;
  e.t->pos = i + 1;
}

static void sift_up(ah_timers *ts, uint32_t i) {
  ah_timer_slot e = ts->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (ts->heap[parent].key <= e.key) break;
    place(ts, i, ts->heap[parent]);
    i = parent;
  }
  place(ts, i, e);
}

static void sift_down(ah_timers *ts, uint32_t i) {
  ah_timer_slot e = ts->heap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= ts->n) break;
    if (c + 1 < ts->n && ts->heap[c + 1].key < ts->heap[c].key) c++;
    if (e.key <= ts->heap[c].key) break;
    place(ts, i, ts->heap[c]);
    i = c;
  }
  place(ts, i, e);
}

static void uv_fire(uv_timer_t *h) { ah__timers_run(h->data); }

/* Arms the uv timer for the earliest deadline, if that changed. */
static void rearm(ah_timers *ts) {
  if (ts->n == 0) {
    if (ts->armed_for) uv_timer_stop(&ts->handle);
    ts->armed_for = 0;
    return;
  }
  uint64_t due = deadline_of(ts->heap[0].key);
  if (due == ts->armed_for) return;
  uint64_t now = uv_now(ts->handle.loop);
  uv_timer_start(&ts->handle, uv_fire, due > now ? due - now : 0, 0);
  ts->armed_for = due;
}

int ah__timers_init(ah_timers *ts, uv_loop_t *loop, ah_timer_fire_cb fire) {
  int rc = uv_timer_init(loop, &ts->handle);
  if (rc) return rc;
  ts->handle.data = ts;
  ts->heap = NULL;
  ts->n = ts->cap = 0;
  ts->seq = 0;
  ts->armed_for = 0;
  ts->fire = fire;
  return 0;
}

static void remove_at(ah_timers *ts, uint32_t i) {
  ah_timer_slot last = ts->heap[--ts->n];
  ts->heap[i].t->pos = 0;
  if (i == ts->n) return;
  place(ts, i, last);
  if (i > 0 && ts->heap[(i - 1) / 2].key > last.key)
    sift_up(ts, i);
  else
    sift_down(ts, i);
}

int ah__timers_start(ah_timers *ts, ah_timer *t, uint64_t timeout_ms) {
  if (t->pos) remove_at(ts, t->pos - 1);
  if (ts->n == ts->cap) {
    uint32_t cap = ts->cap ? ts->cap * 2 : 64;
    ah_timer_slot *heap = realloc(ts->heap, cap * sizeof *heap);
    if (!heap) return UV_ENOMEM;
    ts->heap = heap;
    ts->cap = cap;
  }
  /* The deadline is taken from the real clock rather than the loop's cached
   * time, so a timer started late in a long loop iteration still waits its
   * whole timeout. */
  uv_update_time(ts->handle.loop);
  uint64_t due = uv_now(ts->handle.loop) + timeout_ms;
  t->key = (due << SEQ_BITS) | (ts->seq++ & SEQ_MASK);
  ts->n++;
  place(ts, ts->n - 1, (ah_timer_slot){t->key, t});
  sift_up(ts, ts->n - 1);
  rearm(ts);
  return 0;
}

void ah__timers_stop(ah_timers *ts, ah_timer *t) {
  if (!t->pos) return;
  remove_at(ts, t->pos - 1);
  rearm(ts);
}

void ah__timers_run(ah_timers *ts) {
  uint64_t now = uv_now(ts->handle.loop);
  ts->armed_for = 0; /* a one-shot uv timer that fired is no longer armed */
  while (ts->n > 0 && deadline_of(ts->heap[0].key) <= now) {
    ah_timer *t = ts->heap[0].t;
    remove_at(ts, 0);
    ts->fire(ts, t);
  }
  rearm(ts);
}

int64_t ah__timers_next(const ah_timers *ts) {
  if (ts->n == 0) return -1;
  uint64_t due = deadline_of(ts->heap[0].key);
  uint64_t now = uv_now(ts->handle.loop);
  return due > now ? (int64_t)(due - now) : 0;
}

void ah__timers_close(ah_timers *ts, uv_close_cb close_cb) {
  for (uint32_t i = 0; i < ts->n; i++) ts->heap[i].t->pos = 0;
  ts->n = 0;
  free(ts->heap);
  ts->heap = NULL;
  ts->cap = 0;
  uv_close((uv_handle_t *)&ts->handle, close_cb);
}
