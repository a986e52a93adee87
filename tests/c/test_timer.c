/*
 * The timer heap of host/timer.c on a real libuv loop: deadline order for
 * many timers (enough to grow the heap several times), FIFO order for equal
 * deadlines, stop, restart, next, direct runs, callbacks that start and
 * stop timers, lanes (timers of one timeout, in a list instead of the
 * heap), weak timers, and close.  Orders and counts only: no assertion
 * depends on how long anything took.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <stdint.h>
#include <stdlib.h>

#define MANY 1000

typedef struct rec {
  ah_timer tm; /* first member: the record is found from the timer */
  int id;
  uint64_t deadline; /* uv_now at start + timeout */
  int fired;
  int early; /* fired before its deadline */
  unsigned started; /* when it was last started, in starts */
} rec;

static rec recs[MANY];
static int order[MANY * 2];
static int nfired;

static void reset(void) {
  int i;
  for (i = 0; i < MANY; i++) {
    recs[i].tm.key = 0;
    recs[i].tm.pos = 0;
    recs[i].id = i;
    recs[i].deadline = 0;
    recs[i].fired = 0;
    recs[i].early = 0;
  }
  nfired = 0;
}

static void on_fire(ah_timers *ts, ah_timer *t) {
  rec *r = (rec *)(void *)t;
  if (uv_now(ts->handle.loop) < r->deadline) r->early = 1;
  r->fired++;
  if (nfired < MANY * 2) order[nfired] = r->id;
  nfired++;
}

static unsigned starts;
static int start(ah_timers *ts, int id, uint64_t ms) {
  int rc = ah__timers_start(ts, &recs[id].tm, ms);
  recs[id].started = ++starts;
  /* start reads the clock itself; uv_now now returns what it read */
  recs[id].deadline = uv_now(ts->handle.loop) + ms;
  return rc;
}

static int closed_count;
static void on_closed(uv_handle_t *h) {
  (void)h;
  closed_count++;
}

/* Closes the heap and the loop; returns uv_loop_close's status. */
static int finish(uv_loop_t *loop, ah_timers *ts) {
  closed_count = 0;
  ah__timers_close(ts, on_closed);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 && closed_count == 1;
}

static unsigned lcg = 12345u;
static unsigned next_rand(void) {
  lcg = lcg * 1103515245u + 12345u;
  return (lcg >> 16) & 0x7fffu;
}

static void test_deadline_order(void) {
  uv_loop_t loop;
  ah_timers ts;
  int i, ok_order = 1, all_once = 1, none_early = 1, rc_ok = 1;
  reset();
  uv_loop_init(&loop);
  CHECK(ah__timers_init(&ts, &loop, on_fire) == 0, "init on a real loop");
  for (i = 0; i < MANY; i++)
    if (start(&ts, i, next_rand() % 25) != 0) rc_ok = 0;
  CHECK(rc_ok, "starting many timers succeeds (the heap grows)");
  CHECK(ts.n == MANY, "every started timer is in the heap");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nfired == MANY, "every timer fired");
  for (i = 0; i < MANY; i++) {
    if (recs[i].fired != 1) all_once = 0;
    if (recs[i].early) none_early = 0;
    if (recs[i].tm.pos != 0) all_once = 0;
  }
  for (i = 1; i < MANY && i < nfired; i++) {
    rec *a = &recs[order[i - 1]], *b = &recs[order[i]];
    if (a->deadline > b->deadline) ok_order = 0;
    if (a->deadline == b->deadline && a->id > b->id) ok_order = 0;
  }
  CHECK(all_once, "each timer fired exactly once and is disarmed");
  CHECK(none_early, "no timer fired before its deadline");
  CHECK(ok_order, "timers fired in deadline order, ties in start order");
  CHECK(ts.n == 0 && ah__timers_next(&ts) == -1, "the heap is empty afterwards");
  CHECK(finish(&loop, &ts), "close runs its callback and leaves no handle open");
}

static void test_equal_deadlines_fifo(void) {
  uv_loop_t loop;
  ah_timers ts;
  int i, fifo = 1;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  for (i = 0; i < 100; i++) start(&ts, i, 3);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nfired == 100, "100 timers with the same timeout all fired");
  for (i = 0; i < 100 && i < nfired; i++)
    if (order[i] != i) fifo = 0;
  CHECK(fifo, "equal timeouts fire in the order they were started");

  /* Same deadline for sure: fire them from a direct run. */
  reset();
  for (i = 0; i < 50; i++) start(&ts, i, 0);
  ah__timers_run(&ts);
  fifo = nfired == 50;
  for (i = 0; i < 50 && i < nfired; i++)
    if (order[i] != i) fifo = 0;
  CHECK(fifo, "timers due at the same millisecond fire first in, first out");
  CHECK(finish(&loop, &ts), "closed cleanly");
}

static void test_stop(void) {
  uv_loop_t loop;
  ah_timers ts;
  int i;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  for (i = 0; i < 10; i++) start(&ts, i, (uint64_t)(i % 4));
  ah__timers_stop(&ts, &recs[3].tm);
  ah__timers_stop(&ts, &recs[7].tm);
  ah__timers_stop(&ts, &recs[7].tm); /* twice: no effect */
  ah__timers_stop(&ts, &recs[20].tm); /* never started: no effect */
  CHECK(recs[3].tm.pos == 0 && recs[7].tm.pos == 0, "a stopped timer is disarmed");
  CHECK(ts.n == 8, "stopping removes exactly the stopped timers");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nfired == 8, "the other timers fired");
  CHECK(recs[3].fired == 0 && recs[7].fired == 0, "stopped timers never fire");

  /* Stopping the earliest timer re-arms the loop for the next one. */
  reset();
  start(&ts, 0, 0);
  start(&ts, 1, 2);
  ah__timers_stop(&ts, &recs[0].tm);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(recs[0].fired == 0 && recs[1].fired == 1,
        "after the earliest is stopped the next one still fires");

  /* Stopping every timer leaves nothing armed: the loop ends at once. */
  reset();
  start(&ts, 0, 60000);
  start(&ts, 1, 60000);
  ah__timers_stop(&ts, &recs[0].tm);
  ah__timers_stop(&ts, &recs[1].tm);
  CHECK(ah__timers_next(&ts) == -1, "next is -1 once all are stopped");
  CHECK(uv_run(&loop, UV_RUN_NOWAIT) == 0 && nfired == 0,
        "a heap with nothing armed does not keep the loop alive");
  CHECK(finish(&loop, &ts), "closed cleanly");
}

static void test_restart(void) {
  uv_loop_t loop;
  ah_timers ts;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  start(&ts, 0, 50);
  start(&ts, 1, 10);
  start(&ts, 2, 30);
  start(&ts, 0, 0);  /* A moves to the front */
  start(&ts, 1, 60); /* B moves to the back */
  CHECK(ts.n == 3, "restarting an armed timer does not add a second entry");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nfired == 3, "each restarted timer fired once");
  CHECK(nfired == 3 && order[0] == 0 && order[1] == 2 && order[2] == 1,
        "restarted timers fire at their new deadlines");
  CHECK(finish(&loop, &ts), "closed cleanly");
}

static void test_next(void) {
  uv_loop_t loop;
  ah_timers ts;
  int64_t n;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  CHECK(ah__timers_next(&ts) == -1, "next is -1 with nothing armed");
  start(&ts, 0, 1000);
  n = ah__timers_next(&ts);
  CHECK(n == (int64_t)(recs[0].deadline - uv_now(&loop)) && n > 0 && n <= 1000,
        "next reports the time to the only deadline");
  start(&ts, 1, 400);
  n = ah__timers_next(&ts);
  CHECK(n == (int64_t)(recs[1].deadline - uv_now(&loop)) && n > 0 && n <= 400,
        "next reports the earliest deadline");
  start(&ts, 2, 0);
  CHECK(ah__timers_next(&ts) == 0, "next is 0 when a timer is due");
  ah__timers_stop(&ts, &recs[2].tm);
  ah__timers_stop(&ts, &recs[1].tm);
  n = ah__timers_next(&ts);
  CHECK(n == (int64_t)(recs[0].deadline - uv_now(&loop)), "next follows stops");
  ah__timers_stop(&ts, &recs[0].tm);
  CHECK(ah__timers_next(&ts) == -1, "next is -1 again after the last stop");
  CHECK(finish(&loop, &ts), "closed cleanly");
}

static void test_direct_run(void) {
  uv_loop_t loop;
  ah_timers ts;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  start(&ts, 0, 0);
  start(&ts, 1, 60000);
  ah__timers_run(&ts);
  CHECK(recs[0].fired == 1, "a direct run fires a due timer");
  CHECK(recs[1].fired == 0 && ts.n == 1, "a direct run leaves timers not yet due");
  ah__timers_run(&ts);
  CHECK(nfired == 1, "running again fires nothing new");
  CHECK(finish(&loop, &ts), "close with an armed timer never fires it");
  CHECK(recs[1].fired == 0 && recs[1].tm.pos == 0, "close disarms the remaining timers");
}

/* Timer 0 restarts itself three times; its first firing stops timer 1. */
static int ticks;
static void on_fire_chain(ah_timers *ts, ah_timer *t) {
  rec *r = (rec *)(void *)t;
  on_fire(ts, t);
  if (r->id == 0) {
    ah__timers_stop(ts, &recs[1].tm);
    if (++ticks < 3) ah__timers_start(ts, t, 1);
  }
}

static void test_callbacks_start_and_stop(void) {
  uv_loop_t loop;
  ah_timers ts;
  reset();
  ticks = 0;
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire_chain);
  start(&ts, 0, 1);
  start(&ts, 1, 20);
  start(&ts, 2, 25);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(recs[0].fired == 3, "a timer restarted from its own callback fires again");
  CHECK(recs[1].fired == 0, "a timer stopped from a callback never fires");
  CHECK(recs[2].fired == 1, "other timers are unaffected");
  CHECK(finish(&loop, &ts), "closed cleanly");
}

/* Many timers of a few timeouts each: one heap entry per timeout, and
 * the order of deadlines (and of starts for equal ones) across lanes and
 * with timers of their own. */
static void test_lanes(void) {
  uv_loop_t loop;
  ah_timers ts;
  int i, ok_order = 1;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  for (i = 0; i < 600; i++) start(&ts, i, (uint64_t)(i % 3) * 4 + 2);
  CHECK(ts.n == 600 && ts.hn == 3, "600 timers of three timeouts take three heap entries");
  ah__timers_stop(&ts, &recs[0].tm);   /* the first of its lane */
  ah__timers_stop(&ts, &recs[300].tm); /* one in the middle */
  ah__timers_stop(&ts, &recs[599].tm); /* the last of its lane */
  CHECK(ts.n == 597 && !ah__timers_armed(&recs[300].tm), "stopping lane timers disarms them");
  start(&ts, 301, 1); /* moves out of its lane, to a timeout of its own */
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nfired == 597, "the others all fired once");
  CHECK(recs[301].fired == 1, "the restarted timer fired once, at its new deadline");
  for (i = 1; i < 600 && i < nfired; i++) {
    rec *a = &recs[order[i - 1]], *b = &recs[order[i]];
    if (a->deadline > b->deadline) ok_order = 0;
    if (a->deadline == b->deadline && a->started > b->started) ok_order = 0;
  }
  CHECK(ok_order, "lanes fire in deadline order, ties in start order");
  CHECK(recs[0].fired == 0 && recs[300].fired == 0 && recs[599].fired == 0,
        "stopped lane timers never fired");
  CHECK(ts.n == 0 && ts.hn == 0, "nothing is left in the heap");
  /* More timeouts at once than there are lanes: the rest are heap entries. */
  reset();
  for (i = 0; i < 3 * AH_TIMER_LANES; i++)
    start(&ts, i, (uint64_t)(i % (2 * AH_TIMER_LANES)) + 1);
  CHECK(ts.hn > AH_TIMER_LANES, "timeouts without a lane go into the heap");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nfired == 3 * AH_TIMER_LANES, "lanes and heap entries all fired");
  CHECK(finish(&loop, &ts), "closed cleanly");
}

/* A weak timer fires like any other but does not keep the loop alive. */
static void test_weak(void) {
  uv_loop_t loop;
  ah_timers ts;
  reset();
  uv_loop_init(&loop);
  ah__timers_init(&ts, &loop, on_fire);
  recs[0].tm.weak = 1;
  start(&ts, 0, 60000);
  CHECK(uv_run(&loop, UV_RUN_DEFAULT) == 0 && nfired == 0,
        "a loop with only a weak timer armed ends without waiting for it");
  start(&ts, 1, 5);
  start(&ts, 0, 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(recs[0].fired == 1 && recs[1].fired == 1,
        "a weak timer due before a strong one fires while the loop runs for that one");
  recs[0].tm.weak = 0;
  CHECK(finish(&loop, &ts), "closed cleanly");
}

int main(void) {
  test_lanes();
  test_weak();
  test_deadline_order();
  test_equal_deadlines_fifo();
  test_stop();
  test_restart();
  test_next();
  test_direct_run();
  test_callbacks_start_and_stop();
  return ctest_done();
}
