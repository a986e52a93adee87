/*
 * The loop wrapper of host/loop.c: owning and borrowing a uv_loop_t, the
 * drain callback around every poll, pending work keeping the poll from
 * blocking, signal delivery, and closing (also with handles somebody else
 * left open).  Counts and orders only: no assertion depends on how long
 * anything took.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <signal.h>
#include <string.h>

static int drains, fired, drains_after_fire;
static int last_signal;

static void drain(ah_evloop *lp) {
  (void)lp;
  drains++;
  if (fired) drains_after_fire++;
}

static void fire(ah_timers *ts, ah_timer *t) {
  (void)ts;
  (void)t;
  fired++;
}

static void on_signal(ah_evloop *lp, int signum) {
  (void)lp;
  last_signal = signum;
}

static void reset(void) {
  drains = fired = drains_after_fire = 0;
  last_signal = 0;
}

static void test_owned(void) {
  ah_evloop lp;
  reset();
  CHECK(ah__loop_init(&lp, NULL, drain, fire) == 0, "init with an owned loop");
  CHECK(lp.owned && lp.uv == &lp.own, "the loop is owned");
  CHECK(uv_run(lp.uv, UV_RUN_NOWAIT) == 0,
        "the hooks alone do not keep the loop alive");
  CHECK(ah__loop_close(&lp) == 0, "close of a clean owned loop returns 0");
  CHECK(lp.open_handles == 0, "every handle of ours is closed");
  CHECK(ah__loop_close(&lp) == 0, "closing twice is harmless");
}

static void test_drain(void) {
  ah_evloop lp;
  ah_timer t;
  reset();
  ah__loop_init(&lp, NULL, drain, fire);
  ah__loop_pending(&lp, 1);
  uv_run(lp.uv, UV_RUN_NOWAIT);
  CHECK(drains == 2, "one iteration drains before and after the poll");
  ah__loop_pending(&lp, 0);

  /* Work made ready by a timer is drained in the same iteration. */
  reset();
  memset(&t, 0, sizeof t);
  ah__timers_start(&lp.timers, &t, 1);
  uv_run(lp.uv, UV_RUN_DEFAULT);
  CHECK(fired == 1, "the loop's timer heap fires through the fire callback");
  CHECK(drains_after_fire >= 1, "the drain runs after a timer fired");
  CHECK(ah__loop_close(&lp) == 0, "closed cleanly");
}

static void test_pending(void) {
  ah_evloop lp;
  ah_timer t;
  reset();
  ah__loop_init(&lp, NULL, drain, fire);
  memset(&t, 0, sizeof t);
  /* A far timer keeps the loop alive: a blocking poll would wait for it. */
  ah__timers_start(&lp.timers, &t, 3000);
  ah__loop_pending(&lp, 1);
  CHECK(uv_is_active((uv_handle_t *)&lp.idle), "pending work starts the idle handle");
  ah__loop_pending(&lp, 1);
  uv_run(lp.uv, UV_RUN_ONCE);
  CHECK(fired == 0 && drains >= 1,
        "with pending work one iteration returns without waiting for the timer");
  uv_run(lp.uv, UV_RUN_ONCE);
  CHECK(fired == 0, "and so does the next");
  ah__loop_pending(&lp, 0);
  CHECK(!uv_is_active((uv_handle_t *)&lp.idle), "no pending work stops the idle handle");
  ah__loop_pending(&lp, 0);
  CHECK(!uv_is_active((uv_handle_t *)&lp.idle), "reporting no work twice is harmless");
  CHECK(ah__loop_close(&lp) == 0, "close with an armed timer returns 0");
  CHECK(fired == 0 && t.pos == 0, "the armed timer was disarmed, not fired");
}

static int stray_fired;
static void stray_cb(uv_timer_t *h) {
  (void)h;
  stray_fired++;
}

static void test_stray_handles(void) {
  ah_evloop lp;
  uv_timer_t stray;
  uv_idle_t idle;
  reset();
  ah__loop_init(&lp, NULL, drain, fire);
  uv_timer_init(lp.uv, &stray);
  uv_timer_start(&stray, stray_cb, 600000, 0);
  uv_idle_init(lp.uv, &idle); /* never started */
  CHECK(ah__loop_close(&lp) == UV_EBUSY,
        "close reports handles it did not open with UV_EBUSY");
  CHECK(uv_is_closing((uv_handle_t *)&stray) && uv_is_closing((uv_handle_t *)&idle),
        "the stray handles were closed");
  CHECK(stray_fired == 0, "a stray timer is closed, not run to completion");
  CHECK(lp.open_handles == 0, "our own handles are closed too");
}

static void test_borrowed(void) {
  uv_loop_t mine;
  uv_timer_t host_timer;
  ah_evloop lp;
  reset();
  uv_loop_init(&mine);
  uv_timer_init(&mine, &host_timer);
  CHECK(ah__loop_init(&lp, &mine, drain, fire) == 0, "init with a borrowed loop");
  CHECK(!lp.owned && lp.uv == &mine, "the loop is borrowed");
  ah__loop_pending(&lp, 1);
  uv_run(&mine, UV_RUN_NOWAIT);
  CHECK(drains == 2, "the drain runs on the borrowed loop");
  CHECK(ah__loop_close(&lp) == 0, "close of a borrowed loop returns 0");
  CHECK(!uv_is_closing((uv_handle_t *)&host_timer),
        "the host's own handles are left alone");
  uv_close((uv_handle_t *)&host_timer, NULL);
  uv_run(&mine, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&mine) == 0, "nothing of ours is left on the host's loop");
}

static void test_signals(void) {
  ah_evloop lp;
  int i;
  reset();
  ah__loop_init(&lp, NULL, drain, fire);
  CHECK(ah__loop_signals(&lp, on_signal) == 0, "signal watchers start");
  CHECK(ah__loop_signals(&lp, on_signal) == 0, "starting them again is harmless");
  CHECK(uv_run(lp.uv, UV_RUN_NOWAIT) == 0,
        "signal watchers do not keep the loop alive");
  raise(SIGTERM);
  ah__loop_pending(&lp, 1);
  for (i = 0; i < 1000 && last_signal == 0; i++) uv_run(lp.uv, UV_RUN_NOWAIT);
  CHECK(last_signal == SIGTERM, "SIGTERM reaches the callback instead of killing us");
  last_signal = 0;
  raise(SIGINT);
  for (i = 0; i < 1000 && last_signal == 0; i++) uv_run(lp.uv, UV_RUN_NOWAIT);
  CHECK(last_signal == SIGINT, "SIGINT reaches the callback");
  ah__loop_pending(&lp, 0);
  ah__loop_signals_off(&lp);
  ah__loop_signals_off(&lp);
  CHECK(ah__loop_close(&lp) == 0, "close after the signals are off returns 0");
  CHECK(lp.open_handles == 0, "the signal handles were closed");
}

int main(void) {
  test_owned();
  test_drain();
  test_pending();
  test_stray_handles();
  test_borrowed();
  test_signals();
  return ctest_done();
}
