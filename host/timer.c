/*
 * The timer heap: any number of timers on one uv_timer_t.
 *
 * Records that sleep (tasks, timeouts) embed an ah_timer of 32 bytes.  A
 * min-heap orders entries by a 64-bit key made of the deadline in
 * milliseconds and a start sequence, so equal deadlines fire in FIFO order.
 * An entry is a timer, or a lane: the FIFO list of the timers armed with
 * one timeout.  Since the loop's clock never goes back, a lane's deadlines
 * are in start order, and the lane sits in the heap under the key of its
 * first timer; a thousand agents sleeping 1.2 s cost one heap entry, and
 * starting or stopping one of them costs a list operation instead of a
 * sift through the heap.  Only the earliest deadline is armed on the uv
 * timer, and it is re-armed only when the earliest deadline changes.  The
 * uv handle is referenced only while a timer that is not weak is armed.
 * Relies on libuv only.
 */
#include "host.h"

#include <stdlib.h>
#include <string.h>

#define SEQ_BITS 22u
#define SEQ_MASK ((1u << SEQ_BITS) - 1u)

static uint64_t deadline_of(uint64_t key) { return key >> SEQ_BITS; }

/* ---- the heap ------------------------------------------------------------ */

/* The heap keeps each key beside its pointer, so ordering never touches
 * the records themselves; only a moved entry's position is written. */
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
    if (c >= ts->hn) break;
    if (c + 1 < ts->hn && ts->heap[c + 1].key < ts->heap[c].key) c++;
    if (e.key <= ts->heap[c].key) break;
    place(ts, i, ts->heap[c]);
    i = c;
  }
  place(ts, i, e);
}

/* Room for one more entry. */
static int heap_reserve(ah_timers *ts) {
  if (ts->hn == ts->cap) {
    uint32_t cap = ts->cap ? ts->cap * 2 : 64;
    ah_timer_slot *heap = realloc(ts->heap, cap * sizeof *heap);
    if (!heap) return UV_ENOMEM;
    ts->heap = heap;
    ts->cap = cap;
  }
  return 0;
}

static void heap_insert(ah_timers *ts, ah_timer *e) {
  ts->hn++;
  place(ts, ts->hn - 1, (ah_timer_slot){e->key, e});
  sift_up(ts, ts->hn - 1);
}

static void heap_remove(ah_timers *ts, uint32_t i) {
  ah_timer_slot last = ts->heap[--ts->hn];
  ts->heap[i].t->pos = 0;
  if (i == ts->hn) return;
  place(ts, i, last);
  if (i > 0 && ts->heap[(i - 1) / 2].key > last.key)
    sift_up(ts, i);
  else
    sift_down(ts, i);
}

/* The key of the entry at i grew to key. */
static void heap_later(ah_timers *ts, uint32_t i, uint64_t key) {
  ts->heap[i].key = key;
  sift_down(ts, i);
}

/* ---- lanes ----------------------------------------------------------------- */

/* The lane for timeout ms: the one that has it, else an empty one among
 * the few it may hash to (claimed for it), else NULL. */
static ah_timer_lane *lane_for(ah_timers *ts, uint64_t ms) {
  uint32_t h = (uint32_t)((ms * 2654435761u) >> 8), i;
  ah_timer_lane *free_lane = NULL;
  for (i = 0; i < 4; i++) {
    ah_timer_lane *l = &ts->lanes[(h + i) % AH_TIMER_LANES];
    if (l->n > 0 && l->timeout == ms) return l;
    if (l->n == 0 && !free_lane) free_lane = l;
  }
  if (free_lane) free_lane->timeout = ms;
  return free_lane;
}

static ah_timer *lane_first(ah_timer_lane *l) { return l->node.next; }

/* Unlinks t from its lane, keeping the lane's heap entry right. */
static void lane_remove(ah_timers *ts, ah_timer *t) {
  ah_timer_lane *l = &ts->lanes[t->lane - 1];
  int was_first = lane_first(l) == t;
  t->prev->next = t->next;
  t->next->prev = t->prev;
  t->next = t->prev = NULL;
  t->lane = 0;
  if (--l->n == 0)
    heap_remove(ts, l->node.pos - 1);
  else if (was_first)
    heap_later(ts, l->node.pos - 1, lane_first(l)->key);
}

/* ---- arming -------------------------------------------------------------------- */

static void uv_fire(uv_timer_t *h) { ah__timers_run(h->data); }

/* Arms the uv timer for the earliest deadline, if that changed, and
 * references it only while a timer that is not weak is armed. */
static void rearm(ah_timers *ts) {
  if (ts->strong) uv_ref((uv_handle_t *)&ts->handle);
  else uv_unref((uv_handle_t *)&ts->handle);
  if (ts->hn == 0) {
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
  int rc = uv_timer_init(loop, &ts->handle), i;
  if (rc) return rc;
  ts->handle.data = ts;
  ts->heap = NULL;
  ts->hn = ts->cap = ts->n = ts->strong = 0;
  ts->seq = 0;
  ts->armed_for = 0;
  ts->fire = fire;
  memset(ts->lanes, 0, sizeof ts->lanes);
  for (i = 0; i < AH_TIMER_LANES; i++) {
    ah_timer *h = &ts->lanes[i].node;
    h->next = h->prev = h;
    h->head = 1;
  }
  return 0;
}

int ah__timers_armed(const ah_timer *t) { return t->pos != 0 || t->lane != 0; }

/* Disarms t without re-arming the uv timer. */
static void disarm(ah_timers *ts, ah_timer *t) {
  if (t->lane)
    lane_remove(ts, t);
  else
    heap_remove(ts, t->pos - 1);
  ts->n--;
  if (!t->weak) ts->strong--;
}

int ah__timers_start(ah_timers *ts, ah_timer *t, uint64_t timeout_ms) {
  ah_timer_lane *l;
  if (ah__timers_armed(t)) disarm(ts, t);
  /* A lane that is empty needs a heap slot, as a timer of its own does. */
  if (heap_reserve(ts)) {
    rearm(ts);
    return UV_ENOMEM;
  }
  /* The deadline is taken from the real clock rather than the loop's cached
   * time, so a timer started late in a long loop iteration still waits its
   * whole timeout. */
  uv_update_time(ts->handle.loop);
  uint64_t due = uv_now(ts->handle.loop) + timeout_ms;
  t->key = (due << SEQ_BITS) | (ts->seq++ & SEQ_MASK);
  l = lane_for(ts, timeout_ms);
  if (l) {
    ah_timer *h = &l->node;
    t->next = h;
    t->prev = h->prev;
    h->prev->next = t;
    h->prev = t;
    t->lane = (uint8_t)(l - ts->lanes + 1);
    if (l->n++ == 0) {
      h->key = t->key;
      heap_insert(ts, h);
    }
  } else {
    heap_insert(ts, t);
  }
  ts->n++;
  if (!t->weak) ts->strong++;
  rearm(ts);
  return 0;
}

void ah__timers_stop(ah_timers *ts, ah_timer *t) {
  if (!ah__timers_armed(t)) return;
  disarm(ts, t);
  rearm(ts);
}

void ah__timers_run(ah_timers *ts) {
  uint64_t now = uv_now(ts->handle.loop);
  ts->armed_for = 0; /* a one-shot uv timer that fired is no longer armed */
  while (ts->hn > 0 && deadline_of(ts->heap[0].key) <= now) {
    ah_timer *t = ts->heap[0].t;
    if (t->head) t = lane_first(container_of(t, ah_timer_lane, node));
    disarm(ts, t);
    ts->fire(ts, t);
  }
  rearm(ts);
}

int64_t ah__timers_next(const ah_timers *ts) {
  if (ts->hn == 0) return -1;
  uint64_t due = deadline_of(ts->heap[0].key);
  uint64_t now = uv_now(ts->handle.loop);
  return due > now ? (int64_t)(due - now) : 0;
}

void ah__timers_close(ah_timers *ts, uv_close_cb close_cb) {
  int i;
  for (i = 0; i < AH_TIMER_LANES; i++) {
    ah_timer *h = &ts->lanes[i].node;
    while (h->next != h) {
      ah_timer *t = h->next;
      h->next = t->next;
      t->next = t->prev = NULL;
      t->lane = 0;
    }
    h->prev = h;
    ts->lanes[i].n = 0;
  }
  for (uint32_t j = 0; j < ts->hn; j++) ts->heap[j].t->pos = 0;
  ts->hn = ts->n = ts->strong = 0;
  free(ts->heap);
  ts->heap = NULL;
  ts->cap = 0;
  uv_close((uv_handle_t *)&ts->handle, close_cb);
}
