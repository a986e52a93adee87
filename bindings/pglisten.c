/*
 * ah.pg's LISTEN side and the pool's wait lists (see bindings/pg.h).
 *
 * A subscription (c:subscribe(channel), for pg.lua's listeners) is a FIFO
 * of the notifications of one channel that its connection received
 * (host/pg.c calls ah__pg_notified on the loop thread); sub:recv takes the
 * next or waits for it.  When the connection is lost the waiting receiver
 * is woken with "lost"; once pg.lua has connected again, sub:attach moves
 * the subscription over and puts a "missed" marker in its queue, after
 * what came before.  A subscription keeps its connection alive through its
 * user value; the queue is freed with it.
 *
 * A wait list is a FIFO of tasks with a timeout each (wl:wait), woken in
 * order by wl:wake(n): how the pool's callers wait for a connection.
 *
 * Relies on the scheduler and host/pg.c.
 */
#include "pg.h"

#include <stdlib.h>
#include <string.h>

#define SUB_MAX 10000          /* notifications kept per subscription */

/* One notification waiting in a subscription. */
typedef struct lnote {
  struct lnote *next;
  int pid;
  size_t clen, plen;
  char data[];          /* channel, NUL, payload, NUL */
} lnote;

/* A subscription to one channel (the LISTEN itself is pg.lua's). */
struct lsub {
  lconn *lc;            /* attached to, or NULL */
  lsub *next, *prev;
  ah_sched *S;
  ah_task *waiter;      /* in recv */
  lnote *head, *tail;   /* owned; freed in sub_clear */
  int n;
  int missed;           /* notifications were dropped, or the connection changed */
  int lost;             /* the connection it is attached to was lost */
  char channel[64];
};

/* ---- subscriptions ------------------------------------------------------------------------ */

static void sub_unlink(lsub *s) {
  lconn *lc = s->lc;
  if (!lc) return;
  if (s->prev) s->prev->next = s->next;
  else lc->subs = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
  s->lc = NULL;
}

static void sub_link(lsub *s, lconn *lc) {
  s->lc = lc;
  s->prev = NULL;
  s->next = lc->subs;
  if (lc->subs) lc->subs->prev = s;
  lc->subs = s;
}

static void sub_clear(lsub *s) {
  lnote *n = s->head, *next;
  for (; n; n = next) {
    next = n->next;
    free(n);
  }
  s->head = s->tail = NULL;
  s->n = 0;
}

typedef struct note_view {
  const char *channel, *payload;
  int pid;
} note_view;

static int note_push_p(lua_State *L) {
  note_view *nv = lua_touserdata(L, 1);
  lua_pushstring(L, nv->channel);
  lua_pushstring(L, nv->payload);
  lua_pushinteger(L, nv->pid);
  return 3;
}

static int state_push_p(lua_State *L) {
  lua_pushboolean(L, 0);
  lua_pushstring(L, (const char *)lua_touserdata(L, 1));
  return 2;
}

static void sub_wake_state(lsub *s, const char *state) {
  ah_task *t = s->waiter;
  if (!t) return;
  s->waiter = NULL;
  if (strcmp(state, "missed") == 0) s->missed = 0; /* told; lost stays until attach */
  ah__task_timer_stop(s->S, t);
  ah__task_wake_with(s->S, t, state_push_p, (void *)state, 0);
}

/* Appends a notification (pid < 0: the marker of a gap) to s's queue;
 * past SUB_MAX, or without memory, only the missed flag is set. */
static void sub_push(lsub *s, const char *channel, const char *payload, int pid) {
  size_t cl = strlen(channel), pl = strlen(payload);
  lnote *n = s->n >= SUB_MAX ? NULL : malloc(sizeof *n + cl + pl + 2);
  if (!n) {
    s->missed = 1;
    return;
  }
  n->next = NULL;
  n->pid = pid;
  n->clen = cl;
  n->plen = pl;
  memcpy(n->data, channel, cl + 1);
  memcpy(n->data + cl + 1, payload, pl + 1);
  if (s->tail) s->tail->next = n;
  else s->head = n;
  s->tail = n;
  s->n++;
}

void ah__pg_notified(ah_pg *pg, const char *channel, const char *payload, int pid) {
  lconn *lc = ah__pg_data(pg);
  lsub *s, *next;
  for (s = lc->subs; s; s = next) {
    next = s->next;
    if (strcmp(s->channel, channel) != 0) continue;
    if (s->waiter && !s->head) {
      note_view nv;
      ah_task *t = s->waiter;
      nv.channel = channel;
      nv.payload = payload;
      nv.pid = pid;
      s->waiter = NULL;
      ah__task_timer_stop(s->S, t);
      ah__task_wake_with(s->S, t, note_push_p, &nv, 0);
    } else {
      sub_push(s, channel, payload, pid);
    }
  }
}

void ah__pg_lost(ah_pg *pg) {
  lconn *lc = ah__pg_data(pg);
  lsub *s;
  for (s = lc->subs; s; s = s->next) {
    s->lost = 1;
    sub_wake_state(s, "lost");
  }
}

/* c:subscribe(channel) -> sub */
int ah__pg_subscribe(lua_State *L) {
  lconn *lc = ah__pg_check_conn(L, "pg:listen");
  size_t n;
  const char *ch = ah__arg_string(L, 2, "pg:listen", "the channel", &n);
  lsub *s;
  if (n == 0 || n >= sizeof s->channel || strlen(ch) != n)
    return ah__error_raise(L, "invalid_argument", 0,
                           "pg:listen: the channel must be 1 to 63 bytes without NUL");
  s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->S = lc->S;
  memcpy(s->channel, ch, n + 1);
  luaL_setmetatable(L, SUB_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1); /* the connection lives while s does */
  sub_link(s, lc);
  return 1;
}

static lsub *check_sub(lua_State *L, const char *what) {
  return ah__arg_udata(L, 1, SUB_MT, what, "a subscription");
}

static void sub_cancel(ah_sched *S, ah_task *t) {
  lsub *s = ah__task_opdata(t);
  ah__task_timer_stop(S, t);
  s->waiter = NULL;
}

static void sub_timeout(ah_sched *S, ah_task *t) {
  lsub *s = ah__task_opdata(t);
  s->waiter = NULL;
  ah__task_wake(S, t, 0, 0);
}

static int sub_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  if (nargs == 0) {
    lua_pushnil(L);
    return 1;
  }
  return nargs;
}

static const ah_op sub_op = {"postgres notification", sub_cancel, sub_timeout, sub_after};

/* sub:recv(timeout) */
static int sub_recv(lua_State *L) {
  lsub *s = check_sub(L, "listener:recv");
  double timeout = ah__pg_arg_timeout(L, 2, "listener:recv");
  ah_task *me;
  lnote *n = s->head;
  if (n) {
    s->head = n->next;
    if (!s->head) s->tail = NULL;
    s->n--;
    if (n->pid < 0) { /* the place where the connection changed */
      free(n);
      lua_pushboolean(L, 0);
      lua_pushliteral(L, "missed");
      return 2;
    }
    lua_pushlstring(L, n->data, n->clen);
    lua_pushlstring(L, n->data + n->clen + 1, n->plen);
    lua_pushinteger(L, n->pid);
    free(n);
    return 3;
  }
  if (s->missed || s->lost || !s->lc) {
    const char *state = s->missed ? "missed" : "lost";
    s->missed = 0; /* lost stays until attach */
    lua_pushboolean(L, 0);
    lua_pushstring(L, state);
    return 2;
  }
  me = ah__task_require(L, "listener:recv");
  if (s->waiter)
    return ah__error_raise(L, "invalid_argument", 0,
                           "listener:recv: another task is already receiving");
  s->waiter = me;
  lua_settop(L, 1);
  if (timeout > 0 && ah__task_timer(s->S, me, timeout) != 0) {
    s->waiter = NULL;
    return ah__nomem(L, "listener:recv");
  }
  return ah__task_suspend(L, me, &sub_op, s);
}

/* sub:attach(conn): follows the connection that replaced a lost one;
 * the next recv says "missed" (notifications in between are gone). */
static int sub_attach(lua_State *L) {
  lsub *s = check_sub(L, "listener:attach");
  lconn *lc = luaL_testudata(L, 2, MT);
  if (!lc || !lc->pg) return ah__arg_error(L, "listener:attach", "the connection", "open");
  sub_unlink(s);
  sub_link(s, lc);
  s->lost = 0;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, 1);
  if (s->waiter) {
    s->missed = 1;
    sub_wake_state(s, "missed");
  } else {
    sub_push(s, s->channel, "", -1); /* after what came before the loss */
  }
  return 0;
}

static int sub_close(lua_State *L) {
  lsub *s = check_sub(L, "listener:close");
  ah_task *t = s->waiter;
  sub_unlink(s);
  sub_clear(s);
  if (t) {
    s->waiter = NULL;
    ah__task_timer_stop(s->S, t);
    ah__task_wake_with(s->S, t, state_push_p, (void *)"closed", 0);
  }
  return 0;
}

static int sub_gc(lua_State *L) {
  lsub *s = lua_touserdata(L, 1);
  sub_unlink(s);
  sub_clear(s);
  return 0;
}

static int sub_pending(lua_State *L) {
  lua_pushinteger(L, check_sub(L, "listener:pending")->n);
  return 1;
}

void ah__pg_detach_subs(lconn *lc, int wake) {
  while (lc->subs) {
    lsub *s = lc->subs;
    s->lost = 1;
    if (wake) sub_wake_state(s, "lost");
    sub_unlink(s);
  }
}

/* ---- wait lists: FIFO waiters with a timeout, for the pool ------------------------------------ */

typedef struct lwait lwait;
typedef struct wnode {
  struct wnode *next, *prev;
  ah_task *t;
  lwait *wl;
} wnode;

struct lwait {
  wnode *head, *tail;
  int n;
  ah_sched *S;
};

static void wl_unlink(wnode *w) {
  lwait *wl = w->wl;
  if (!wl) return;
  if (w->prev) w->prev->next = w->next;
  else wl->head = w->next;
  if (w->next) w->next->prev = w->prev;
  else wl->tail = w->prev;
  w->next = w->prev = NULL;
  w->wl = NULL;
  wl->n--;
}

static void wl_cancel(ah_sched *S, ah_task *t) {
  ah__task_timer_stop(S, t);
  wl_unlink(ah__task_opdata(t));
}

static void wl_timeout(ah_sched *S, ah_task *t) {
  wl_unlink(ah__task_opdata(t));
  lua_pushboolean(ah__task_thread(t), 0);
  ah__task_wake(S, t, 1, 0);
}

static const ah_op wl_op = {"postgres pool wait", wl_cancel, wl_timeout, NULL};

int ah__pg_waitlist(lua_State *L) {
  lwait *wl = lua_newuserdatauv(L, sizeof *wl, 0);
  memset(wl, 0, sizeof *wl);
  wl->S = ah__sched_get(L);
  luaL_setmetatable(L, WL_MT);
  return 1;
}

/* wl:wait(timeout [, front]) -> true when woken, false when the time ran
 * out; front puts the caller first in line (one woken but not served). */
static int wl_wait(lua_State *L) {
  lwait *wl = ah__arg_udata(L, 1, WL_MT, "waitlist:wait", "a wait list");
  double timeout = ah__pg_arg_timeout(L, 2, "waitlist:wait");
  int front = lua_toboolean(L, 3);
  ah_task *me = ah__task_require(L, "waitlist:wait");
  wnode *w;
  lua_settop(L, 1);
  w = lua_newuserdatauv(L, sizeof *w, 0); /* on this stack while it waits */
  memset(w, 0, sizeof *w);
  w->t = me;
  w->wl = wl;
  if (front && wl->head) {
    w->next = wl->head;
    wl->head->prev = w;
    wl->head = w;
  } else {
    w->prev = wl->tail;
    if (wl->tail) wl->tail->next = w;
    else wl->head = w;
    wl->tail = w;
  }
  wl->n++;
  if (timeout > 0 && ah__task_timer(wl->S, me, timeout) != 0) {
    wl_unlink(w);
    return ah__nomem(L, "waitlist:wait");
  }
  return ah__task_suspend(L, me, &wl_op, w);
}

/* wl:wake([n]) -> how many were woken (the first n, in order) */
static int wl_wake(lua_State *L) {
  lwait *wl = ah__arg_udata(L, 1, WL_MT, "waitlist:wake", "a wait list");
  lua_Integer n = lua_isnoneornil(L, 2) ? 1 : ah__arg_integer(L, 2, "waitlist:wake", "n", 0,
                                                              1 << 30);
  lua_Integer woken = 0;
  while (woken < n && wl->head) {
    wnode *w = wl->head;
    ah_task *t = w->t;
    wl_unlink(w);
    ah__task_timer_stop(wl->S, t);
    lua_pushboolean(ah__task_thread(t), 1);
    ah__task_wake(wl->S, t, 1, 0);
    woken++;
  }
  lua_pushinteger(L, woken);
  return 1;
}

static int wl_count(lua_State *L) {
  lwait *wl = ah__arg_udata(L, 1, WL_MT, "waitlist:count", "a wait list");
  lua_pushinteger(L, wl->n);
  return 1;
}

void ah__pg_listen_init(lua_State *L) {
  static const luaL_Reg sub_methods[] = {{"recv", sub_recv},   {"attach", sub_attach},
                                         {"close", sub_close}, {"pending", sub_pending},
                                         {NULL, NULL}};
  static const luaL_Reg sub_meta[] = {{"__gc", sub_gc}, {"__close", sub_close}, {NULL, NULL}};
  static const luaL_Reg wl_methods[] = {{"wait", wl_wait}, {"wake", wl_wake},
                                        {"count", wl_count}, {NULL, NULL}};
  ah__metatable(L, SUB_MT, sub_methods, sub_meta, NULL, NULL);
  ah__metatable(L, WL_MT, wl_methods, NULL, NULL, NULL);
}
