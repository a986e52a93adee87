/*
 * The loop: an owned or borrowed uv_loop_t, the hooks that run ready work
 * around every poll, the shared timer heap, and signal delivery: the loop
 * owns every signal handle of the host (SIGINT and SIGTERM for programs
 * that own the process, SIGHUP for its listeners).
 *
 * The owner's drain callback runs in uv_prepare (before the loop blocks)
 * and in uv_check (right after I/O callbacks), so work made ready by timers
 * or I/O runs in the same iteration.  While the owner reports pending work
 * an idle handle keeps the poll from blocking.  Relies on libuv only.
 */
#include "host.h"

#include <signal.h>
#include <string.h>

static ah_evloop *loop_of(uv_handle_t *h) { return h->data; }

static void on_prepare(uv_prepare_t *h) {
  ah_evloop *lp = loop_of((uv_handle_t *)h);
  if (lp->drain) lp->drain(lp);
}

static void on_check(uv_check_t *h) {
  ah_evloop *lp = loop_of((uv_handle_t *)h);
  if (lp->drain) lp->drain(lp);
}

static void on_idle(uv_idle_t *h) { (void)h; }

static void on_signal(uv_signal_t *h, int signum) {
  ah_evloop *lp = loop_of((uv_handle_t *)h);
  if (lp->on_signal) lp->on_signal(lp, signum);
}

static void on_closed(uv_handle_t *h) { loop_of(h)->open_handles--; }

static void on_hup(uv_signal_t *h, int signum) {
  ah_evloop *lp = loop_of((uv_handle_t *)h);
  ah_loop_hup *l, *next;
  (void)signum;
  for (l = lp->hups; l; l = next) {
    next = l->next; /* a listener may remove itself */
    l->fn(l);
  }
}

/* The timer heap's handle points at the heap, whose data is the loop. */
static void on_timers_closed(uv_handle_t *h) {
  ((ah_evloop *)((ah_timers *)h->data)->data)->open_handles--;
}

int ah__loop_init(ah_evloop *lp, uv_loop_t *borrow, ah_loop_drain_cb drain,
                  ah_timer_fire_cb fire) {
  int rc;
  memset(lp, 0, sizeof *lp);
  if (borrow) {
    lp->uv = borrow;
  } else {
    rc = uv_loop_init(&lp->own);
    if (rc) return rc;
    lp->uv = &lp->own;
    lp->owned = 1;
  }
  lp->drain = drain;
  uv_prepare_init(lp->uv, &lp->prepare);
  uv_check_init(lp->uv, &lp->check);
  uv_idle_init(lp->uv, &lp->idle);
  rc = ah__timers_init(&lp->timers, lp->uv, fire);
  if (rc) {
    /* The three inits above cannot fail on Unix; undo them, and an owned
     * loop, so that a failed init leaves nothing behind. */
    lp->prepare.data = lp->check.data = lp->idle.data = lp;
    lp->open_handles = 3;
    uv_close((uv_handle_t *)&lp->prepare, on_closed);
    uv_close((uv_handle_t *)&lp->check, on_closed);
    uv_close((uv_handle_t *)&lp->idle, on_closed);
    while (lp->open_handles > 0) uv_run(lp->uv, UV_RUN_NOWAIT);
    if (lp->owned) uv_loop_close(lp->uv);
    return rc;
  }
  lp->prepare.data = lp->check.data = lp->idle.data = lp;
  lp->timers.data = lp;
  lp->open_handles = 4;
  uv_prepare_start(&lp->prepare, on_prepare);
  uv_check_start(&lp->check, on_check);
  uv_unref((uv_handle_t *)&lp->prepare);
  uv_unref((uv_handle_t *)&lp->check);
  return 0;
}

void ah__loop_pending(ah_evloop *lp, int pending) {
  if (pending && !uv_is_active((uv_handle_t *)&lp->idle))
    uv_idle_start(&lp->idle, on_idle);
  else if (!pending && uv_is_active((uv_handle_t *)&lp->idle))
    uv_idle_stop(&lp->idle);
}

int ah__loop_signals(ah_evloop *lp, ah_loop_signal_cb cb) {
  int rc;
  lp->on_signal = cb;
  if (lp->signals_on) return 0;
  if ((rc = uv_signal_init(lp->uv, &lp->sigint))) return rc;
  if ((rc = uv_signal_init(lp->uv, &lp->sigterm))) {
    uv_close((uv_handle_t *)&lp->sigint, on_closed);
    lp->open_handles++;
    return rc;
  }
  lp->sigint.data = lp->sigterm.data = lp;
  lp->open_handles += 2;
  uv_signal_start(&lp->sigint, on_signal, SIGINT);
  uv_signal_start(&lp->sigterm, on_signal, SIGTERM);
  /* Signal watchers must not keep the loop alive on their own. */
  uv_unref((uv_handle_t *)&lp->sigint);
  uv_unref((uv_handle_t *)&lp->sigterm);
  lp->signals_on = 1;
  return 0;
}

void ah__loop_signals_off(ah_evloop *lp) {
  if (lp->hup_open) {
    lp->hup_open = 0;
    lp->hups = NULL;
    uv_close((uv_handle_t *)&lp->sighup, on_closed);
  }
  if (!lp->signals_on) return;
  lp->signals_on = 0;
  uv_close((uv_handle_t *)&lp->sigint, on_closed);
  uv_close((uv_handle_t *)&lp->sigterm, on_closed);
}

int ah__loop_hup_add(ah_evloop *lp, ah_loop_hup *h) {
  int rc;
  if (lp->closing) return UV_EINVAL;
  if (!lp->hup_open) {
    if ((rc = uv_signal_init(lp->uv, &lp->sighup))) return rc;
    lp->sighup.data = lp;
    lp->hup_open = 1;
    lp->open_handles++;
  }
  if (!lp->hups) {
    if ((rc = uv_signal_start(&lp->sighup, on_hup, SIGHUP))) return rc;
    uv_unref((uv_handle_t *)&lp->sighup);
  }
  h->next = lp->hups;
  lp->hups = h;
  return 0;
}

void ah__loop_hup_remove(ah_evloop *lp, ah_loop_hup *h) {
  ah_loop_hup **pp = &lp->hups;
  while (*pp && *pp != h) pp = &(*pp)->next;
  if (!*pp) return;
  *pp = h->next;
  h->next = NULL;
  /* Without listeners SIGHUP has its default action again. */
  if (!lp->hups && lp->hup_open) uv_signal_stop(&lp->sighup);
}

static void close_stray(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

int ah__loop_close(ah_evloop *lp) {
  int rc = 0;
  if (lp->closing) return 0;
  lp->closing = 1;
  ah__loop_signals_off(lp);
  uv_close((uv_handle_t *)&lp->prepare, on_closed);
  uv_close((uv_handle_t *)&lp->check, on_closed);
  uv_close((uv_handle_t *)&lp->idle, on_closed);
  ah__timers_close(&lp->timers, on_timers_closed);
  while (lp->open_handles > 0) uv_run(lp->uv, UV_RUN_NOWAIT);
  if (lp->owned) {
    if (uv_loop_close(lp->uv) == UV_EBUSY) {
      rc = UV_EBUSY;
      uv_walk(lp->uv, close_stray, NULL);
      uv_run(lp->uv, UV_RUN_DEFAULT);
      uv_loop_close(lp->uv);
    }
  }
  return rc;
}

double ah__now(void) { return (double)uv_hrtime() / 1e9; }
