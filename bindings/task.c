/*
 * The scheduler: tasks, the ready queue, suspend/resume, cancellation, the
 * combinators (gather, race, timeout) and the synchronisation objects
 * (event, semaphore, queue).  This is ah.task.
 *
 * A task is a coroutine plus the C record below, which lives in the full
 * userdata that Lua code holds as the task handle.  While a task has not
 * completed, a registry reference anchors that userdata (released in
 * complete(), its one release point); the coroutine hangs off the userdata
 * as its user value.  The record is found from the coroutine through the
 * thread's LUA_EXTRASPACE, which this module owns.
 *
 * There is one way to suspend (ah__task_suspend: record the operation,
 * yield with a continuation) and one way to resume (ah__task_wake puts the
 * task on the ready queue; drain() alone calls lua_resume, from the loop's
 * prepare and check hooks, never from inside another coroutine).
 *
 * Cancellation abandons the pending operation and resumes the task with a
 * `cancelled` error at its await point.  A task that is already woken (its
 * result waits in the ready queue) keeps that result and gets the error at
 * its next await, so no value handed to it (a queue item, a semaphore
 * permit) is ever lost.
 *
 * Relies on host/ (loop, timers) and Lua 5.4.
 */
#include "bindings.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define container_of(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))

/* ---- records ----------------------------------------------------------- */

typedef struct ah_link {
  struct ah_link *next, *prev;
} ah_link;

static void link_init(ah_link *l) { l->next = l->prev = l; }
static int link_empty(const ah_link *l) { return l->next == l; }
static void link_remove(ah_link *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->next = l->prev = l;
}
static void link_append(ah_link *head, ah_link *l) {
  l->prev = head->prev;
  l->next = head;
  head->prev->next = l;
  head->prev = l;
}

enum {
  T_NEW,       /* queued for its first run */
  T_READY,     /* woken, queued to resume */
  T_RUNNING,
  T_SUSPENDED, /* waiting on t->op */
  T_CHILDREN,  /* body finished, waiting for its children */
  T_DONE,
  T_FAILED
};

enum {
  F_DETACHED = 1,   /* owned by the host; drained before exit */
  F_ROOT = 2,       /* the main task of task.run */
  F_CANCEL = 4,     /* a cancel waits for the next await point */
  F_CANCELLED = 8,  /* cancel() was called on it */
  F_OBSERVED = 16,  /* its error was handed to somebody */
  F_WAKE_ERR = 32,  /* the value for the next resume is an error */
  F_BODY_ERR = 64,  /* the body failed (the task may still wait for children) */
  F_INTERNAL = 128  /* no Lua code holds its handle: its thread is reused */
};

typedef struct ah_group ah_group;

/* Owned by Lua (it is the handle userdata); anchored by `ref` until it
 * completes.  48 + 64 bytes on 64-bit platforms. */
struct ah_task {
  ah_link link;        /* ready queue, a wait list, or the unobserved list */
  ah_link children;    /* head of the list of children */
  ah_link sibling;     /* in the parent's list of children */
  ah_timer timer;      /* sleep, or the deadline of a timed wait */
  lua_State *co;
  ah_task *parent;
  ah_group *group;     /* the combinator this task reports to, if any */
  const ah_op *op;     /* pending operation while suspended */
  void *opdata;
  ah_link waiters;     /* tasks waiting in join/result */
  int ref;
  unsigned short nargs;
  unsigned char state, flags;
};

struct ah_sched {
  ah_evloop loop;
  lua_State *L;      /* the main thread */
  lua_State *from;   /* the thread driving the loop */
  ah_link ready;
  ah_link unobserved; /* failed tasks nobody has taken the error of yet */
  ah_link orphans;   /* tasks without a parent: main and detached tasks */
  ah_link drainers;  /* tasks waiting in task.drain */
  ah_link yielded;   /* tasks that yielded: they run in the next pass */
  size_t live, detached, sleeping;
  unsigned long long spawned, resumes;
  ah_task *root;
  int running;       /* inside task.run, ah__sched_step or ah__sched_run */
  int until_idle;    /* ah__sched_run: stop the loop once nothing is live */
  uint64_t deadline; /* ah__sched_step: hrtime after which drain stops */
  unsigned long long step_runs; /* resumes in the current step */
  int hook_count;    /* instruction budget per resume, 0 for none */
  int draining;
  int on_error;      /* registry ref of the error handler, or LUA_NOREF */
  int reports;       /* registry ref of the table of reports to deliver */
  int nreports;
  int pool;          /* registry ref of the array of reusable threads */
  int npool;
  int signal;        /* last SIGINT/SIGTERM seen by the CLI */
  int closed;
  char *last_tb;     /* traceback of the last failed main task; owned */
  ah_defer *deferred; /* to run at the end of this drain pass */
};

static char SCHED_KEY, BORROW_KEY, TASK_MT, ERROR_MT, EVENT_MT, SEM_MT, QUEUE_MT;

static ah_sched *sched_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

ah_sched *ah__sched_get(lua_State *L) {
  ah_sched *S;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  S = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return S;
}

uv_loop_t *ah__sched_uv(ah_sched *S) { return S->loop.uv; }
ah_evloop *ah__sched_loop(ah_sched *S) { return &S->loop; }
lua_State *ah__task_thread(ah_task *t) { return t->co; }
void *ah__task_opdata(ah_task *t) { return t->opdata; }

static ah_task **slot(lua_State *L) { return (ah_task **)lua_getextraspace(L); }

ah_task *ah__task_current(lua_State *L) {
  ah_task *t = *slot(L);
  return (t && t->co == L) ? t : NULL;
}

ah_task *ah__task_require(lua_State *L, const char *what) {
  ah_task *t = ah__task_current(L);
  if (!t) {
    ah__error_raise(L, "invalid_argument", 0,
                    "%s must be called inside a task: run your code with "
                    "ah.task.run(function() ... end), or start it with "
                    "ah.task.spawn from a task",
                    what);
  }
  return t;
}

/* ---- structured errors ------------------------------------------------- */

static void error_vpush(lua_State *L, const char *kind, int retryable,
                        const char *fmt, va_list ap) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, retryable);
  lua_setfield(L, -2, "retryable");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ERROR_MT);
  lua_setmetatable(L, -2);
}

void ah__error_push(lua_State *L, const char *kind, int retryable,
                    const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vpush(L, kind, retryable, fmt, ap);
  va_end(ap);
}

static void push_where(lua_State *L) {
  lua_Debug ar;
  int level;
  for (level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0) continue;
    if (strstr(ar.source, "/agenthost/") && strstr(ar.source, "scripts/")) continue;
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

int ah__error_raise(lua_State *L, const char *kind, int retryable,
                    const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vpush(L, kind, retryable, fmt, ap);
  va_end(ap);
  /* Misuse errors carry the caller's position, as luaL_error does, but the
   * position of the user's code: frames of the library's own Lua wrappers
   * (scripts/agenthost/) are skipped. */
  push_where(L);
  lua_getfield(L, -2, "message");
  lua_concat(L, 2);
  lua_setfield(L, -2, "message");
  return lua_error(L);
}

int ah__error_is(lua_State *L, int idx, const char *kind) {
  int is;
  if (!lua_getmetatable(L, idx)) return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ERROR_MT);
  is = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (is && kind) {
    lua_getfield(L, idx, "kind");
    is = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), kind) == 0;
    lua_pop(L, 1);
  }
  return is;
}

static int err_tostring(lua_State *L) {
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "error"),
                  luaL_optstring(L, -1, "(no message)"));
  return 1;
}

/* ah.error.new(kind, message [, fields]) */
static int err_new(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *msg = luaL_optstring(L, 2, kind);
  ah__error_push(L, kind, 0, "%s", msg);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, -4);
    }
  }
  return 1;
}

/* ah.error.is(value [, kind]) */
static int err_is(lua_State *L) {
  lua_pushboolean(L, ah__error_is(L, 1, luaL_optstring(L, 2, NULL)));
  return 1;
}

void ah__error_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"new", err_new}, {"is", err_is}, {NULL, NULL}};
  luaL_newlib(L, fns);
}

/* ---- the ready queue and waking ----------------------------------------- */

static void enqueue(ah_sched *S, ah_task *t) {
  link_append(&S->ready, &t->link);
  ah__loop_pending(&S->loop, 1);
}

void ah__task_wake(ah_sched *S, ah_task *t, int nargs, int is_error) {
  t->op = NULL;
  t->opdata = NULL;
  t->nargs = (unsigned short)nargs;
  if (is_error) t->flags |= F_WAKE_ERR;
  t->state = T_READY;
  enqueue(S, t);
}

static int resume_k(lua_State *L, int status, lua_KContext ctx);

int ah__task_suspend(lua_State *L, ah_task *t, const ah_op *op, void *opdata) {
  ah_sched *S = ah__sched_get(L);
  t->op = op;
  t->opdata = opdata;
  if (t->flags & F_CANCEL) {
    /* A cancel arrived while the task was running or already woken:
     * abandon what was just started and raise at this await point. */
    t->flags &= ~F_CANCEL;
    if (op->cancel) op->cancel(S, t);
    t->op = NULL;
    t->opdata = NULL;
    ah__error_push(L, "cancelled", 0, "task cancelled");
    return lua_error(L);
  }
  return lua_yieldk(L, 0, (lua_KContext)(intptr_t)op, resume_k);
}

int ah__task_suspend_alone(lua_State *L, const char *what, const char *busy,
                           ah_task **slot, int keep, const ah_op *op,
                           void *opdata) {
  ah_task *me = ah__task_require(L, what);
  if (*slot)
    return ah__error_raise(L, "invalid_argument", 0,
                           "%s: another task is already %s", what, busy);
  *slot = me;
  lua_settop(L, keep);
  return ah__task_suspend(L, me, op, opdata);
}

static int resume_k(lua_State *L, int status, lua_KContext ctx) {
  const ah_op *op = (const ah_op *)(intptr_t)ctx;
  ah_task *t = ah__task_current(L);
  int nargs = t->nargs;
  (void)status;
  t->nargs = 0;
  if (t->flags & F_WAKE_ERR) {
    t->flags &= ~F_WAKE_ERR;
    return lua_error(L);
  }
  if (op->after) return op->after(L, t, nargs);
  return nargs;
}

/* ---- timers ------------------------------------------------------------- */

static void on_timer(ah_timers *ts, ah_timer *tm) {
  ah_task *t = container_of(tm, ah_task, timer);
  ah_sched *S = ((ah_evloop *)ts->data)->data;
  if (t->op && t->op->timeout) t->op->timeout(S, t);
}

int ah__task_timer(ah_sched *S, ah_task *t, double seconds) {
  double ms = seconds * 1000.0;
  uint64_t ims;
  if (!(ms > 0)) ms = 0;           /* also catches NaN */
  if (ms > 1e15) ms = 1e15;
  ims = (uint64_t)ms;
  if ((double)ims < ms) ims++;     /* never wake before the time asked */
  return ah__timers_start(&S->loop.timers, &t->timer, ims);
}

void ah__task_timer_stop(ah_sched *S, ah_task *t) {
  ah__timers_stop(&S->loop.timers, &t->timer);
}

static void sleep_cancel(ah_sched *S, ah_task *t) {
  ah__task_timer_stop(S, t);
  S->sleeping--;
}
static void sleep_timeout(ah_sched *S, ah_task *t) {
  S->sleeping--;
  ah__task_wake(S, t, 0, 0);
}
static const ah_op sleep_op = {"sleep", sleep_cancel, sleep_timeout, NULL};
static const ah_op yield_op = {"yield", NULL, NULL, NULL};

/* task.sleep(seconds) */
static int t_sleep(lua_State *L) {
  ah_sched *S = sched_of(L);
  double s = luaL_checknumber(L, 1);
  ah_task *t = ah__task_require(L, "task.sleep");
  if (s != s || s < 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.sleep: seconds must be a number >= 0");
  lua_settop(L, 0);
  if (s == 0) {
    int rc = ah__task_suspend(L, t, &yield_op, NULL);
    return rc;
  }
  if (ah__task_timer(S, t, s))
    return ah__error_raise(L, "resource", 1, "task.sleep: out of memory");
  S->sleeping++;
  return ah__task_suspend(L, t, &sleep_op, NULL);
}

/* task.yield(): lets every other ready task run once. */
static int t_yield(lua_State *L) {
  ah_task *t = ah__task_require(L, "task.yield");
  lua_settop(L, 0);
  return ah__task_suspend(L, t, &yield_op, NULL);
}

/* ---- creating tasks ----------------------------------------------------- */

/* Creates a task running the function at stack position fidx with the
 * values above it as arguments (they are moved to the new thread), and
 * leaves its handle on the top of the stack. */
static ah_task *task_new(lua_State *L, ah_sched *S, int fidx, ah_task *parent,
                         int flags) {
  int n = lua_gettop(L) - fidx + 1;
  lua_State *co;
  ah_task *t;
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (n > 0xfffe) luaL_error(L, "too many arguments for a task");
  if (S->npool > 0) {
    /* The record and thread of a finished internal task: the thread's
     * stack has already grown to what a task needs, and reuse spares the
     * collector two objects per task. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
    lua_rawgeti(L, -1, S->npool);
    lua_pushnil(L);
    lua_rawseti(L, -3, S->npool--);
    lua_remove(L, -2);
    t = lua_touserdata(L, -1);
    co = t->co;
    memset(t, 0, sizeof *t);
  } else {
    t = lua_newuserdatauv(L, sizeof *t, 1);
    memset(t, 0, sizeof *t);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &TASK_MT);
    lua_setmetatable(L, -2);
    co = lua_newthread(L);
    lua_setiuservalue(L, -2, 1);
  }
  *slot(co) = t;
  t->co = co;
  lua_insert(L, fidx); /* the handle goes below the function and arguments */
  lua_xmove(L, co, n);
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  link_init(&t->link);
  link_init(&t->children);
  link_init(&t->sibling);
  link_init(&t->waiters);
  t->nargs = (unsigned short)(n - 1);
  t->flags = (unsigned char)flags;
  t->state = T_NEW;
  t->parent = parent;
  link_append(parent ? &parent->children : &S->orphans, &t->sibling);
  if (flags & F_DETACHED) S->detached++;
  S->live++;
  S->spawned++;
  enqueue(S, t);
  return t;
}

/* task.spawn(fn, ...) -> handle.  Inside a task the new task is its
 * child; outside any task it is a top-level task that the next task.run,
 * step or ah_step drives (cancelled only by its handle, or at close). */
static int t_spawn(lua_State *L) {
  ah_sched *S = sched_of(L);
  task_new(L, S, 1, ah__task_current(L), 0);
  return 1;
}

/* task.detach(fn, ...): fire-and-forget, owned by the host; returns
 * nothing, so the task's thread can be reused as soon as it ends (use
 * task.spawn to keep a handle). */
static int t_detach(lua_State *L) {
  task_new(L, sched_of(L), 1, NULL, F_DETACHED | F_INTERNAL);
  return 0;
}

void ah__task_detach(lua_State *L, int nargs) {
  int fidx = lua_gettop(L) - nargs;
  task_new(L, ah__sched_get(L), fidx, NULL, F_DETACHED | F_INTERNAL);
  lua_pop(L, 1);
}

/* ---- completion ------------------------------------------------------------ */

static void cancel_task(ah_sched *S, ah_task *t);
static void group_child_done(ah_sched *S, ah_task *child);
static const ah_op join_op, result_op;

/* Pushes on L the outcome of a completed task: its values, or its error. */
static int push_outcome(lua_State *L, ah_task *t, int pcall_shape) {
  int n = lua_gettop(t->co), i;
  int failed = t->state == T_FAILED;
  if (failed) n = 1; /* the error; the traceback stays behind */
  luaL_checkstack(L, n + 1, "too many results");
  if (pcall_shape) lua_pushboolean(L, !failed);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(t->co, i);
    lua_xmove(t->co, L, 1);
  }
  return n + (pcall_shape ? 1 : 0);
}

static void observe(ah_task *t) {
  if (t->state == T_FAILED && !(t->flags & F_OBSERVED)) {
    t->flags |= F_OBSERVED;
    link_remove(&t->link); /* off the unobserved list */
  }
}

/* Queues a report of t's error for the error handler, unless somebody has
 * taken it or it is a cancellation. */
static void queue_report(ah_sched *S, ah_task *t) {
  lua_State *L = S->L;
  if (t->flags & F_OBSERVED) return;
  t->flags |= F_OBSERVED;
  link_remove(&t->link);
  if (ah__error_is(t->co, 1, "cancelled")) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->reports);
  lua_pushvalue(t->co, 1);
  lua_xmove(t->co, L, 1);
  lua_rawseti(L, -2, ++S->nreports);
  lua_pushvalue(t->co, 2);
  lua_xmove(t->co, L, 1);
  lua_rawseti(L, -2, ++S->nreports);
  lua_pop(L, 1);
  ah__loop_pending(&S->loop, 1);
}

/* Returns the thread of a completed task that no Lua code can reach to the
 * pool.  The pool holds at most as many threads as there are live tasks
 * (plus a few), so a burst does not pin its memory. */
static void recycle(ah_sched *S, ah_task *t, lua_State *L, int idx) {
  if (!(t->flags & F_INTERNAL) || t->state < T_DONE) return;
  observe(t);
  t->flags &= ~F_INTERNAL; /* recycled once */
  if ((size_t)S->npool >= S->live + 256) return;
  lua_settop(t->co, 0);
  *slot(t->co) = NULL;
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, ++S->npool);
  lua_pop(L, 1);
}

static void complete(ah_sched *S, ah_task *t) {
  while (t) {
    ah_task *parent = t->parent;
    int failed = (t->flags & F_BODY_ERR) != 0;
    t->state = failed ? T_FAILED : T_DONE;
    link_remove(&t->sibling);
    t->parent = NULL;
    if (failed) link_append(&S->unobserved, &t->link);
    while (!link_empty(&t->waiters)) {
      ah_task *w = container_of(t->waiters.next, ah_task, link);
      int n;
      link_remove(&w->link);
      if (failed) observe(t);
      n = push_outcome(w->co, t, w->op == &result_op);
      ah__task_wake(S, w, n, failed && w->op == &join_op);
    }
    if (t->group) group_child_done(S, t);
    if (failed && (t->flags & F_DETACHED)) queue_report(S, t);
    if (t->flags & F_DETACHED) {
      lua_rawgeti(S->L, LUA_REGISTRYINDEX, t->ref);
      recycle(S, t, S->L, -1);
      lua_pop(S->L, 1);
    }
    if ((t->flags & F_DETACHED) && --S->detached == 0) {
      while (!link_empty(&S->drainers)) {
        ah_task *w = container_of(S->drainers.next, ah_task, link);
        link_remove(&w->link);
        ah__task_wake(S, w, 0, 0);
      }
    }
    S->live--;
    luaL_unref(S->L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
    /* A parent whose body already finished completes with its last child. */
    t = (parent && parent->state == T_CHILDREN && link_empty(&parent->children))
            ? parent
            : NULL;
  }
}

static void resetthread(lua_State *co, lua_State *from) {
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(co, from);
#else
  (void)from;
  lua_resetthread(co);
#endif
}

/* The body of t returned (nres results on its stack) or raised (status). */
static void body_done(ah_sched *S, ah_task *t, int status, int nres) {
  lua_State *co = t->co;
  if (status == LUA_OK) {
    int extra = lua_gettop(co) - nres;
    if (extra > 0) {
      lua_rotate(co, 1, -extra);
      lua_settop(co, nres);
    }
  } else {
    lua_State *L = S->L;
    /* Take the traceback before the stack is reset, then keep
     * [error, traceback] as the task's result. */
    lua_checkstack(L, 4);
    luaL_traceback(L, co, NULL, 0);
    lua_xmove(co, L, 1); /* the error */
    resetthread(co, S->from);
    lua_settop(co, 0);
    if (ah__error_is(L, -1, NULL)) {
      lua_getfield(L, -1, "traceback");
      if (lua_isnil(L, -1)) {
        lua_pushvalue(L, -3);
        lua_setfield(L, -3, "traceback");
      }
      lua_pop(L, 1);
    }
    lua_xmove(L, co, 1);
    lua_xmove(L, co, 1);
    t->flags |= F_BODY_ERR;
  }
  if (!link_empty(&t->children)) {
    /* The task completes with its last child; a failed body takes its
     * children down with it. */
    t->state = T_CHILDREN;
    if (status != LUA_OK) {
      ah_link *l;
      for (l = t->children.next; l != &t->children; l = l->next)
        cancel_task(S, container_of(l, ah_task, sibling));
    }
    return;
  }
  complete(S, t);
}

/* The count hook of the instruction budget: a task that ran its budget of
 * VM instructions without waiting yields as task.yield does, so that it
 * continues after the loop has polled.  Plain coroutines inside a task, and
 * code that cannot yield (inside a metamethod called from C), run on to
 * the next count. */
static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (ah__task_current(L) && lua_isyieldable(L)) lua_yield(L, 0);
}

static void run_task(ah_sched *S, ah_task *t) {
  int nres = 0, status;
  if (t->state == T_NEW && (t->flags & F_CANCEL)) {
    /* Cancelled before it started: it completes without running. */
    lua_settop(t->co, 0);
    ah__error_push(t->co, "cancelled", 0, "task cancelled before it started");
    lua_pushliteral(t->co, "");
    t->flags |= F_BODY_ERR;
    complete(S, t);
    return;
  }
  t->state = T_RUNNING;
  S->resumes++;
  S->step_runs++;
  /* Setting the hook also restarts its count: the budget is per resume. */
  if (S->hook_count) lua_sethook(t->co, budget_hook, LUA_MASKCOUNT, S->hook_count);
  status = lua_resume(t->co, S->from, t->nargs, &nres);
  if (status == LUA_YIELD) {
    if (t->state == T_READY) return;  /* woken before it even yielded */
    if (t->op == NULL || t->op == &yield_op) {
      /* task.yield() or a plain coroutine.yield(): it runs again after the
       * loop has polled, so a task that keeps yielding cannot starve
       * timers and I/O. */
      if (t->op == NULL) lua_pop(t->co, nres);
      t->op = NULL;
      t->nargs = 0;
      t->state = T_READY;
      link_append(&S->yielded, &t->link);
      return;
    }
    t->state = T_SUSPENDED;
    return;
  }
  body_done(S, t, status, nres);
}

/* ---- error reporting ------------------------------------------------------- */

static int default_on_error(lua_State *L) {
  const char *msg = luaL_tolstring(L, 1, NULL);
  const char *tb = lua_tostring(L, 2);
  fprintf(stderr, "agenthost: uncaught error in task: %s\n%s\n", msg,
          tb ? tb : "");
  fflush(stderr);
  return 0;
}

void ah__report(lua_State *L, int erridx, const char *traceback) {
  ah_sched *S = ah__sched_get(L);
  erridx = lua_absindex(L, erridx);
  if (S && S->on_error != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->on_error);
  else
    lua_pushcfunction(L, default_on_error);
  lua_pushvalue(L, erridx);
  lua_pushstring(L, traceback);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "agenthost: the error handler failed: %s\n",
            luaL_tolstring(L, -1, NULL));
    lua_pop(L, 2);
    lua_pushcfunction(L, default_on_error);
    lua_pushvalue(L, erridx);
    lua_pushstring(L, traceback);
    lua_pcall(L, 2, 0, 0);
  }
}

static void deliver_reports(ah_sched *S) {
  lua_State *L = S->L;
  int i, n = S->nreports;
  if (n == 0) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->reports);
  /* Start a fresh table first: a handler may cause more reports. */
  lua_createtable(L, 4, 0);
  lua_rawseti(L, LUA_REGISTRYINDEX, S->reports);
  S->nreports = 0;
  for (i = 1; i < n; i += 2) {
    lua_rawgeti(L, -1, i);
    lua_rawgeti(L, -2, i + 1);
    ah__report(L, -2, lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
}

/* Reports every failure nobody has taken (at the end of task.run). */
static void report_unobserved(ah_sched *S) {
  while (!link_empty(&S->unobserved))
    queue_report(S, container_of(S->unobserved.next, ah_task, link));
  deliver_reports(S);
}

/* Is any task ready, or waiting to run again after a yield? */
static int has_work(const ah_sched *S) {
  return !link_empty(&S->ready) || !link_empty(&S->yielded);
}

/* Runs ready tasks.  Work made ready meanwhile (a completion waking its
 * waiter) runs in the same pass, up to DRAIN_BUDGET resumes, after which
 * the loop turns once (timers, I/O) before the rest.  Tasks that yield
 * wait for the next pass and then go behind every task that timers and
 * I/O made ready in between, so a task that keeps yielding delays a woken
 * task by at most one of its slices. */
#define DRAIN_BUDGET 65536
static void drain(ah_evloop *lp) {
  ah_sched *S = lp->data;
  int budget = DRAIN_BUDGET;
  if (S->draining || S->closed) return;
  S->draining = 1;
  if (!link_empty(&S->yielded)) {
    ah_link *first = S->yielded.next, *last = S->yielded.prev;
    first->prev = S->ready.prev;
    S->ready.prev->next = first;
    last->next = &S->ready;
    S->ready.prev = last;
    link_init(&S->yielded);
  }
  for (;;) {
    while (!link_empty(&S->ready) && budget-- > 0) {
      ah_task *t;
      /* A step runs at least one task, then stops at its deadline. */
      if (S->deadline && S->step_runs > 0 && uv_hrtime() >= S->deadline) break;
      t = container_of(S->ready.next, ah_task, link);
      link_remove(&t->link);
      run_task(S, t);
    }
    if (S->nreports == 0) break;
    deliver_reports(S);
  }
  while (S->deferred) {
    ah_defer *d = S->deferred;
    S->deferred = d->next;
    d->next = NULL;
    d->queued = 0;
    d->fn(d);
  }
  ah__loop_pending(lp, has_work(S));
  S->draining = 0;
  if (S->running && S->root && S->root->state >= T_DONE && S->detached == 0)
    uv_stop(lp->uv);
  if (S->until_idle && S->live == 0) uv_stop(lp->uv);
}

void ah__sched_defer(ah_sched *S, ah_defer *d) {
  if (d->queued) return;
  if (!S->draining) {
    d->fn(d);
    return;
  }
  d->queued = 1;
  d->next = S->deferred;
  S->deferred = d;
}

void ah__sched_undefer(ah_sched *S, ah_defer *d) {
  ah_defer **pp = &S->deferred;
  if (!d->queued) return;
  while (*pp && *pp != d) pp = &(*pp)->next;
  if (*pp) *pp = d->next;
  d->queued = 0;
  d->next = NULL;
}

/* ---- cancellation ---------------------------------------------------------- */

/* Cancels t and its children, once.  Nothing completes in here: a task
 * not started yet completes (without running) when the scheduler reaches
 * it, so lists being walked here never change under the walk. */
static void cancel_task(ah_sched *S, ah_task *t) {
  ah_link *l;
  if (t->state >= T_DONE || (t->flags & F_CANCELLED)) return;
  t->flags |= F_CANCELLED;
  for (l = t->children.next; l != &t->children; l = l->next)
    cancel_task(S, container_of(l, ah_task, sibling));
  switch (t->state) {
  case T_NEW:
    t->flags |= F_CANCEL;
    break;
  case T_SUSPENDED:
    if (t->op->cancel) t->op->cancel(S, t);
    ah__error_push(t->co, "cancelled", 0, "task cancelled");
    ah__task_wake(S, t, 1, 1);
    break;
  case T_READY:
  case T_RUNNING:
    t->flags |= F_CANCEL;
    break;
  default: /* T_CHILDREN: its children were cancelled above */
    break;
  }
}

/* ---- handles: join, result, cancel ------------------------------------------ */

static ah_task *check_task(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, "agenthost.task");
}

static void wait_cancel(ah_sched *S, ah_task *t) {
  (void)S;
  link_remove(&t->link);
}
static const ah_op join_op = {"join", wait_cancel, NULL, NULL};
static const ah_op result_op = {"result", wait_cancel, NULL, NULL};

static int join_or_result(lua_State *L, const ah_op *op) {
  ah_task *t = check_task(L, 1);
  ah_task *me;
  if (t->state >= T_DONE) {
    int n;
    observe(t);
    n = push_outcome(L, t, op == &result_op);
    if (op == &join_op && t->state == T_FAILED) return lua_error(L);
    return n;
  }
  me = ah__task_require(L, op == &join_op ? "task:join" : "task:result");
  if (me == t)
    return ah__error_raise(L, "invalid_argument", 0,
                           "a task cannot wait for itself");
  lua_settop(L, 1); /* keeps the handle alive while we wait */
  link_append(&t->waiters, &me->link);
  return ah__task_suspend(L, me, op, t);
}

static int h_join(lua_State *L) { return join_or_result(L, &join_op); }
static int h_result(lua_State *L) { return join_or_result(L, &result_op); }

static int h_cancel(lua_State *L) {
  ah_task *t = check_task(L, 1);
  cancel_task(ah__sched_get(L), t);
  return 0;
}

static const char *const state_names[] = {"pending", "ready",  "running",
                                          "waiting", "finishing", "done",
                                          "failed"};

static int h_status(lua_State *L) {
  ah_task *t = check_task(L, 1);
  if (t->state == T_FAILED && ah__error_is(t->co, 1, "cancelled"))
    lua_pushliteral(L, "cancelled");
  else
    lua_pushstring(L, state_names[t->state]);
  return 1;
}

/* t:cancelled(): whether t has been cancelled (it may still be unwinding). */
static int h_cancelled(lua_State *L) {
  lua_pushboolean(L, (check_task(L, 1)->flags & F_CANCELLED) != 0);
  return 1;
}

static int h_done(lua_State *L) {
  lua_pushboolean(L, check_task(L, 1)->state >= T_DONE);
  return 1;
}

static int h_tostring(lua_State *L) {
  ah_task *t = check_task(L, 1);
  lua_pushfstring(L, "task: %p (%s)", (void *)t, state_names[t->state]);
  return 1;
}

/* A failed task whose handle is collected before anybody looked at the
 * error gets it reported (queued: no Lua runs inside a finalizer). */
static int h_gc(lua_State *L) {
  ah_task *t = lua_touserdata(L, 1);
  ah_sched *S = ah__sched_get(L);
  if (S && !S->closed && t->state == T_FAILED && !(t->flags & F_OBSERVED)) {
    lua_getiuservalue(L, 1, 1); /* keep the thread reachable meanwhile */
    queue_report(S, t);
    lua_pop(L, 1);
  }
  return 0;
}

/* ---- groups: gather, race, timeout ---------------------------------------------- */

enum { G_GATHER, G_RACE, G_TIMEOUT };

/* Lives on the waiting task's stack (kept by its suspended C frame). */
struct ah_group {
  ah_task *waiter;
  ah_task *first;   /* first to fail (gather) or to finish (race) */
  int pending;
  int kind;
  int timed_out;
  double seconds;
};

static void cancel_group_children(ah_sched *S, ah_group *g, ah_task *except) {
  ah_link *l, *next;
  ah_task *w = g->waiter;
  for (l = w->children.next; l != &w->children; l = next) {
    ah_task *c = container_of(l, ah_task, sibling);
    next = l->next;
    if (c->group == g && c != except) cancel_task(S, c);
  }
}

static void group_child_done(ah_sched *S, ah_task *c) {
  ah_group *g = c->group;
  int failed = c->state == T_FAILED;
  int last = --g->pending == 0;
  c->group = NULL;
  if (g->kind == G_GATHER && failed && !g->first) {
    g->first = c;
    cancel_group_children(S, g, c);
  } else if (g->kind == G_RACE && !g->first) {
    g->first = c;
    cancel_group_children(S, g, c);
  }
  if (last) {
    if (g->kind == G_TIMEOUT) ah__task_timer_stop(S, g->waiter);
    ah__task_wake(S, g->waiter, 0, 0);
  }
}

/* The waiter is cancelled: the group's children are cancelled with it and
 * must not report to a group that is going away. */
static void group_cancel(ah_sched *S, ah_task *w) {
  ah_group *g = w->opdata;
  ah_link *l;
  ah__task_timer_stop(S, w);
  for (l = w->children.next; l != &w->children; l = l->next) {
    ah_task *c = container_of(l, ah_task, sibling);
    if (c->group == g) {
      cancel_task(S, c); /* a no-op when the waiter's own cancel did it */
      c->group = NULL;
    }
  }
}

static void group_timeout(ah_sched *S, ah_task *w) {
  ah_group *g = w->opdata;
  g->timed_out = 1;
  cancel_group_children(S, g, NULL);
}

static int group_after(lua_State *L, ah_task *t, int nargs);
static const ah_op group_op = {"gather", group_cancel, group_timeout,
                               group_after};

static ah_group *group_new(lua_State *L, ah_task *me, int kind, int n) {
  ah_group *g = lua_newuserdatauv(L, sizeof *g, 0);
  memset(g, 0, sizeof *g);
  g->waiter = me;
  g->kind = kind;
  g->pending = n;
  lua_insert(L, 1);
  return g;
}

/* Stack on entry: the n functions.  Spawns them as children of me reporting
 * to a new group and leaves [group, h1..hn], the layout group_after reads. */
static ah_group *group_start(lua_State *L, ah_sched *S, ah_task *me, int kind,
                             int n) {
  ah_group *g;
  int i;
  for (i = 1; i <= n; i++) luaL_checktype(L, i, LUA_TFUNCTION);
  luaL_checkstack(L, n + 4, "too many tasks");
  g = group_new(L, me, kind, n);
  for (i = 2; i <= n + 1; i++) {
    lua_pushvalue(L, i);
    task_new(L, S, lua_gettop(L), me, F_INTERNAL)->group = g;
  }
  lua_rotate(L, 2, -n);
  lua_settop(L, n + 1);
  return g;
}

/* Hands back the threads of a finished group's children; an error of a
 * child that is neither the group's outcome nor a cancellation is reported,
 * not dropped. */
static void group_release(lua_State *L, ah_group *g, int base, int n) {
  ah_sched *S = ah__sched_get(L);
  int i;
  for (i = 1; i <= n; i++) {
    ah_task *c = lua_touserdata(L, base + i);
    if (c->state == T_FAILED && c != g->first) queue_report(S, c);
    recycle(S, c, L, base + i);
  }
}

/* Pushes the outcome of a finished group: its results (returns their
 * count) or its error (returns -1 with the error on top). */
static int group_outcome(lua_State *L, ah_group *g, int base, int n) {
  int i;
  ah_task *c = g->kind == G_TIMEOUT ? lua_touserdata(L, base + 1) : g->first;
  if (c && c->state == T_FAILED) {
    g->first = c;
    observe(c);
    if (g->kind == G_TIMEOUT && g->timed_out &&
        ah__error_is(c->co, 1, "cancelled"))
      ah__error_push(L, "timeout", 1, "timed out after %f s", g->seconds);
    else
      push_outcome(L, c, 0);
    return -1;
  }
  if (g->kind == G_GATHER) {
    for (i = 1; i <= n; i++) {
      c = lua_touserdata(L, base + i);
      if (lua_gettop(c->co) > 0) {
        lua_pushvalue(c->co, 1);
        lua_xmove(c->co, L, 1);
      } else {
        lua_pushnil(L);
      }
    }
    return n;
  }
  if (g->kind == G_RACE) {
    int idx = 0;
    for (i = 1; i <= n; i++)
      if (lua_touserdata(L, base + i) == g->first) idx = i;
    lua_pushinteger(L, idx);
    return push_outcome(L, g->first, 0) + 1;
  }
  g->first = c;
  return push_outcome(L, c, 0);
}

/* The waiter's continuation.  Stack: [group, h1..hn, nargs wake values]. */
static int group_after(lua_State *L, ah_task *t, int nargs) {
  ah_group *g = lua_touserdata(L, 1);
  int n, k;
  (void)t;
  lua_pop(L, nargs);
  n = lua_gettop(L) - 1;
  k = group_outcome(L, g, 1, n);
  group_release(L, g, 1, n);
  if (k < 0) return lua_error(L);
  return k;
}

/* task.gather(f, g, ...) -> first result of each */
static int t_gather(lua_State *L) {
  ah_sched *S = sched_of(L);
  ah_task *me = ah__task_require(L, "task.gather");
  int n = lua_gettop(L);
  ah_group *g;
  if (n == 0) return 0;
  g = group_start(L, S, me, G_GATHER, n);
  return ah__task_suspend(L, me, &group_op, g);
}

/* task.race(f, g, ...) -> index, results of the first to finish */
static int t_race(lua_State *L) {
  ah_sched *S = sched_of(L);
  ah_task *me = ah__task_require(L, "task.race");
  int n = lua_gettop(L);
  ah_group *g;
  if (n == 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.race needs at least one function");
  g = group_start(L, S, me, G_RACE, n);
  return ah__task_suspend(L, me, &group_op, g);
}

/* task.timeout(seconds, fn, ...) -> fn's results, or raises a timeout error */
static int t_timeout(lua_State *L) {
  ah_sched *S = sched_of(L);
  ah_task *me = ah__task_require(L, "task.timeout");
  double s = luaL_checknumber(L, 1);
  ah_group *g;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (s != s || s < 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.timeout: seconds must be a number >= 0");
  /* The child takes fn and its arguments; [group, handle] stay here. */
  g = group_new(L, me, G_TIMEOUT, 1);
  g->seconds = s;
  lua_remove(L, 2);
  task_new(L, S, 2, me, F_INTERNAL)->group = g;
  if (ah__task_timer(S, me, s))
    return ah__error_raise(L, "resource", 1, "task.timeout: out of memory");
  return ah__task_suspend(L, me, &group_op, g);
}

/* ---- wait lists: event, semaphore, queue ------------------------------------------ */

typedef struct ah_event {
  ah_link waiters;
  int set;
} ah_event;

typedef struct ah_sem {
  ah_link waiters;
  lua_Integer count;
} ah_sem;

/* The ring of items is the user value table, slots 1..cap. */
typedef struct ah_queue {
  ah_link poppers, pushers;
  lua_Integer cap, head, len;
} ah_queue;

static const ah_op event_op = {"event", wait_cancel, NULL, NULL};
static const ah_op sem_op = {"semaphore", wait_cancel, NULL, NULL};
static const ah_op pop_op = {"queue pop", wait_cancel, NULL, NULL};
static const ah_op push_op = {"queue push", wait_cancel, NULL, NULL};

static ah_task *first_waiter(ah_link *l) {
  return link_empty(l) ? NULL : container_of(l->next, ah_task, link);
}

static void *new_obj(lua_State *L, size_t size, int nuv, const void *mtkey) {
  void *p = lua_newuserdatauv(L, size, nuv);
  memset(p, 0, size);
  lua_rawgetp(L, LUA_REGISTRYINDEX, mtkey);
  lua_setmetatable(L, -2);
  return p;
}

static int t_event(lua_State *L) {
  ah_event *e = new_obj(L, sizeof(ah_event), 0, &EVENT_MT);
  link_init(&e->waiters);
  return 1;
}

static int ev_set(lua_State *L) {
  ah_event *e = luaL_checkudata(L, 1, "agenthost.event");
  ah_sched *S = ah__sched_get(L);
  ah_task *w;
  e->set = 1;
  while ((w = first_waiter(&e->waiters))) {
    link_remove(&w->link);
    ah__task_wake(S, w, 0, 0);
  }
  return 0;
}

static int ev_clear(lua_State *L) {
  ((ah_event *)luaL_checkudata(L, 1, "agenthost.event"))->set = 0;
  return 0;
}

static int ev_is_set(lua_State *L) {
  lua_pushboolean(L, ((ah_event *)luaL_checkudata(L, 1, "agenthost.event"))->set);
  return 1;
}

static int ev_wait(lua_State *L) {
  ah_event *e = luaL_checkudata(L, 1, "agenthost.event");
  ah_task *me;
  if (e->set) return 0;
  me = ah__task_require(L, "event:wait");
  lua_settop(L, 1);
  link_append(&e->waiters, &me->link);
  return ah__task_suspend(L, me, &event_op, e);
}

static int t_semaphore(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  ah_sem *s;
  if (n < 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.semaphore(n): n must be an integer >= 0");
  s = new_obj(L, sizeof(ah_sem), 0, &SEM_MT);
  link_init(&s->waiters);
  s->count = n;
  return 1;
}

static int sem_acquire(lua_State *L) {
  ah_sem *s = luaL_checkudata(L, 1, "agenthost.semaphore");
  ah_task *me;
  if (s->count > 0 && link_empty(&s->waiters)) {
    s->count--;
    return 0;
  }
  me = ah__task_require(L, "semaphore:acquire");
  lua_settop(L, 1);
  link_append(&s->waiters, &me->link);
  return ah__task_suspend(L, me, &sem_op, s);
}

static int sem_try_acquire(lua_State *L) {
  ah_sem *s = luaL_checkudata(L, 1, "agenthost.semaphore");
  int ok = s->count > 0 && link_empty(&s->waiters);
  if (ok) s->count--;
  lua_pushboolean(L, ok);
  return 1;
}

/* A permit goes straight to the first waiter, so waiters are served in
 * FIFO order and a late arrival cannot overtake them. */
static int sem_release(lua_State *L) {
  ah_sem *s = luaL_checkudata(L, 1, "agenthost.semaphore");
  ah_task *w = first_waiter(&s->waiters);
  if (w) {
    link_remove(&w->link);
    ah__task_wake(ah__sched_get(L), w, 0, 0);
  } else {
    s->count++;
  }
  return 0;
}

static int sem_available(lua_State *L) {
  lua_pushinteger(L, ((ah_sem *)luaL_checkudata(L, 1, "agenthost.semaphore"))->count);
  return 1;
}

static int t_queue(lua_State *L) {
  lua_Integer cap = luaL_checkinteger(L, 1);
  if (cap < 1 || cap > (1 << 26))
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.queue(capacity): capacity must be an integer "
                           "between 1 and 67108864");
  ah__queue_new(L, cap);
  return 1;
}

/* Appends the value on the top of L to the ring (table at ring). */
static void ring_put(lua_State *L, ah_queue *q, int ring) {
  lua_rawseti(L, ring, (q->head + q->len) % q->cap + 1);
  q->len++;
}

int ah__queue_offer(lua_State *L, int qidx) {
  ah_queue *q = luaL_checkudata(L, qidx, "agenthost.queue");
  ah_task *w;
  qidx = lua_absindex(L, qidx);
  if ((w = first_waiter(&q->poppers))) { /* hand it over */
    link_remove(&w->link);
    lua_xmove(L, w->co, 1);
    ah__task_wake(ah__sched_get(L), w, 1, 0);
    return 1;
  }
  if (q->len < q->cap) {
    lua_getiuservalue(L, qidx, 1);
    lua_insert(L, -2);
    ring_put(L, q, -2);
    lua_pop(L, 1);
    return 1;
  }
  return 0;
}

void ah__queue_new(lua_State *L, lua_Integer cap) {
  ah_queue *q = new_obj(L, sizeof(ah_queue), 1, &QUEUE_MT);
  link_init(&q->poppers);
  link_init(&q->pushers);
  q->cap = cap;
  lua_createtable(L, cap < 1024 ? (int)cap : 1024, 0);
  lua_setiuservalue(L, -2, 1);
}

static void check_item(lua_State *L, const char *what) {
  luaL_checkany(L, 2);
  if (lua_isnil(L, 2))
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: nil cannot be queued; wrap it in a table", what);
  lua_settop(L, 2);
}

static int q_push(lua_State *L) {
  ah_task *me;
  check_item(L, "queue:push");
  if (ah__queue_offer(L, 1)) return 0;
  me = ah__task_require(L, "queue:push (on a full queue)");
  {
    ah_queue *q = lua_touserdata(L, 1);
    link_append(&q->pushers, &me->link);
    return ah__task_suspend(L, me, &push_op, q); /* the item stays at 2 */
  }
}

/* queue:try_push(v) -> true, or false when the queue is full */
static int q_try_push(lua_State *L) {
  check_item(L, "queue:try_push");
  lua_pushboolean(L, ah__queue_offer(L, 1));
  return 1;
}

static int q_pop_now(lua_State *L, ah_queue *q) {
  ah_task *w;
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, q->head + 1);
  lua_pushnil(L);
  lua_rawseti(L, -3, q->head + 1);
  q->head = (q->head + 1) % q->cap;
  q->len--;
  /* A slot is free: the longest-waiting pusher's item moves in. */
  if ((w = first_waiter(&q->pushers))) {
    link_remove(&w->link);
    lua_pushvalue(w->co, 2);
    lua_xmove(w->co, L, 1);
    ring_put(L, q, -3);
    ah__task_wake(ah__sched_get(L), w, 0, 0);
  }
  return 1;
}

static int q_pop(lua_State *L) {
  ah_queue *q = luaL_checkudata(L, 1, "agenthost.queue");
  ah_task *me;
  if (q->len > 0) return q_pop_now(L, q);
  me = ah__task_require(L, "queue:pop (on an empty queue)");
  lua_settop(L, 1);
  link_append(&q->poppers, &me->link);
  return ah__task_suspend(L, me, &pop_op, q);
}

static int q_try_pop(lua_State *L) {
  ah_queue *q = luaL_checkudata(L, 1, "agenthost.queue");
  if (q->len > 0) return q_pop_now(L, q);
  lua_pushnil(L);
  return 1;
}

static int q_len(lua_State *L) {
  lua_pushinteger(L, ((ah_queue *)luaL_checkudata(L, 1, "agenthost.queue"))->len);
  return 1;
}

/* ---- task.run and the loop ---------------------------------------------------- */

static int run_cleanup(lua_State *L, ah_sched *S) {
  S->running = 0;
  S->root = NULL;
  report_unobserved(S);
  (void)L;
  return 0;
}

/* task.run(fn, ...) -> fn's results; runs the loop until fn's task and every
 * detached task have finished. */
static int t_run(lua_State *L) {
  ah_sched *S = sched_of(L);
  ah_task *root;
  int deadlock = 0;
  if (ah__task_current(L))
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.run cannot be called inside a task: use "
                           "task.spawn(fn):join() or call fn directly");
  if (S->running)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.run is already running the loop");
  luaL_checktype(L, 1, LUA_TFUNCTION);
  root = task_new(L, S, 1, NULL, F_ROOT);
  /* stack: [handle] */
  S->root = root;
  S->running = 1;
  S->from = L;
  while (root->state < T_DONE || S->detached > 0) {
    int alive = uv_run(S->loop.uv, UV_RUN_ONCE);
    if (root->state >= T_DONE && S->detached == 0) break;
    if (!alive && !has_work(S) && S->nreports == 0) {
      /* Nothing can wake the waiting tasks: cancel them all so their
       * cleanup runs, then report the deadlock. */
      ah_link *l, *next;
      if (deadlock++) break; /* they did not finish even when cancelled */
      for (l = S->orphans.next; l != &S->orphans; l = next) {
        next = l->next;
        cancel_task(S, container_of(l, ah_task, sibling));
      }
    }
  }
  S->from = S->L;
  if (root->state == T_FAILED) observe(root);
  run_cleanup(L, S);
  if (deadlock) {
    return ah__error_raise(L, "deadlock", 0,
                           "task.run: every task is waiting and nothing can "
                           "wake them (an event never set, a queue never "
                           "filled, a join on a task that waits for its "
                           "joiner?)");
  }
  if (root->state != T_DONE && root->state != T_FAILED) {
    return ah__error_raise(L, "deadlock", 0,
                           "task.run: the main task did not finish");
  }
  if (root->state == T_FAILED) {
    free(S->last_tb);
    S->last_tb = NULL;
    if (lua_isstring(root->co, 2)) {
      size_t len;
      const char *tb = lua_tolstring(root->co, 2, &len);
      S->last_tb = malloc(len + 1);
      if (S->last_tb) memcpy(S->last_tb, tb, len + 1);
    }
  }
  lua_settop(L, 1);
  {
    int n = push_outcome(L, root, 0);
    if (root->state == T_FAILED) return lua_error(L);
    return n;
  }
}

/* ---- stepping: for hosts that own the frame loop --------------------------- */

int ah__sched_inside(const ah_sched *S) { return S->running || S->draining; }

int ah__sched_step(ah_sched *S, lua_State *from, uint64_t budget_ns) {
  if (S->running || S->draining || S->closed) return UV_EBUSY;
  S->running = 1;
  S->from = from;
  S->step_runs = 0;
  S->deadline = uv_hrtime() + budget_ns;
  if (S->deadline < budget_ns) S->deadline = UINT64_MAX; /* no wrap-around */
  if (S->deadline == 0) S->deadline = 1;
  /* Ready work first, then one non-blocking turn of the loop: due timers,
   * I/O callbacks, and the drains around the poll (which stop at the
   * deadline too, leaving the rest for the next step). */
  drain(&S->loop);
  uv_run(S->loop.uv, UV_RUN_NOWAIT);
  S->deadline = 0;
  S->from = S->L;
  S->running = 0;
  return ah__sched_busy(S);
}

int ah__sched_run(ah_sched *S, lua_State *from) {
  int rc = 0;
  if (S->running || S->draining || S->closed) return UV_EBUSY;
  S->running = 1;
  S->until_idle = 1;
  S->from = from;
  while (ah__sched_busy(S)) {
    int alive = uv_run(S->loop.uv, UV_RUN_ONCE);
    if (!alive && !has_work(S) && S->nreports == 0 && S->live > 0) {
      rc = UV_EAGAIN; /* every task waits and nothing can wake them */
      break;
    }
  }
  S->until_idle = 0;
  S->from = S->L;
  S->running = 0;
  return rc;
}

int ah__sched_busy(const ah_sched *S) {
  if (has_work(S) || S->nreports > 0) return 2;
  return S->live > 0;
}

size_t ah__sched_live(const ah_sched *S) { return S->live; }

unsigned long long ah__sched_resumes(const ah_sched *S) { return S->resumes; }

void ah__sched_budget(ah_sched *S, int instructions) {
  S->hook_count = instructions > 0 ? instructions : 0;
}

/* Clears the cancelled mark of t and its children, so that a task that
 * caught its cancellation and waits again can be cancelled again. */
static void uncancel(ah_task *t) {
  ah_link *l;
  t->flags &= ~F_CANCELLED;
  for (l = t->children.next; l != &t->children; l = l->next)
    uncancel(container_of(l, ah_task, sibling));
}

void ah__sched_cancel_all(ah_sched *S, int again) {
  ah_link *l, *next;
  for (l = S->orphans.next; l != &S->orphans; l = next) {
    ah_task *t = container_of(l, ah_task, sibling);
    next = l->next;
    if (again) uncancel(t);
    cancel_task(S, t);
  }
}

const char *ah__last_traceback(lua_State *L) {
  ah_sched *S = ah__sched_get(L);
  return S ? S->last_tb : NULL;
}

static const ah_op drain_op = {"drain", wait_cancel, NULL, NULL};

/* task.drain(): waits until every detached task has finished. */
static int t_drain(lua_State *L) {
  ah_sched *S = sched_of(L);
  ah_task *me = ah__task_require(L, "task.drain");
  if (me->flags & F_DETACHED)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.drain cannot be called from a detached task "
                           "(it would wait for itself)");
  if (S->detached == 0) return 0;
  link_append(&S->drainers, &me->link);
  return ah__task_suspend(L, me, &drain_op, NULL);
}

/* task.current() -> handle of the running task, or nil */
static int t_current(lua_State *L) {
  ah_task *t = ah__task_current(L);
  if (!t) return 0;
  t->flags &= ~F_INTERNAL; /* its handle escapes: keep the thread */
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
  return 1;
}

/* task.on_error(fn): where uncaught task errors go; nil restores stderr. */
static int t_on_error(lua_State *L) {
  ah_sched *S = sched_of(L);
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, S->on_error);
  S->on_error = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);
    S->on_error = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* task.stats() -> counters for tests and metrics */
static int t_stats(lua_State *L) {
  ah_sched *S = sched_of(L);
  size_t ready = 0;
  ah_link *l;
  for (l = S->ready.next; l != &S->ready; l = l->next) ready++;
  for (l = S->yielded.next; l != &S->yielded; l = l->next) ready++;
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)S->live);
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, (lua_Integer)ready);
  lua_setfield(L, -2, "ready");
  lua_pushinteger(L, (lua_Integer)S->sleeping);
  lua_setfield(L, -2, "sleeping");
  lua_pushinteger(L, (lua_Integer)S->detached);
  lua_setfield(L, -2, "detached");
  lua_pushinteger(L, (lua_Integer)S->spawned);
  lua_setfield(L, -2, "spawned");
  lua_pushinteger(L, (lua_Integer)S->resumes);
  lua_setfield(L, -2, "resumes");
  return 1;
}

/* ---- signals (CLI only) ---------------------------------------------------------- */

static void on_signal(ah_evloop *lp, int signum) {
  ah_sched *S = lp->data;
  if (S->signal) _Exit(128 + signum); /* a second signal: leave now */
  S->signal = signum;
  /* Cancel every task that is not detached; detached work drains. */
  if (S->root) cancel_task(S, S->root);
}

int ah__sched_signals(lua_State *L) {
  ah_sched *S = ah__sched_get(L);
  return ah__loop_signals(&S->loop, on_signal);
}

int ah__sched_signal_seen(lua_State *L) { return ah__sched_get(L)->signal; }

/* ---- module -------------------------------------------------------------------- */

static int sched_gc(lua_State *L) {
  ah_sched *S = lua_touserdata(L, 1);
  if (S->closed) return 0;
  S->closed = 1;
  ah__loop_close(&S->loop);
  free(S->last_tb);
  S->last_tb = NULL;
  return 0;
}

void ah__metatable(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *meta) {
  if (luaL_newmetatable(L, name)) {
    if (meta) luaL_setfuncs(L, meta, 0);
    if (methods) {
      lua_newtable(L);
      luaL_setfuncs(L, methods, 0);
      lua_setfield(L, -2, "__index");
    }
  }
  lua_pop(L, 1);
}

/* ah__metatable, also kept in the registry under key for quick lookups. */
static void new_metatable(lua_State *L, const void *key, const char *name,
                          const luaL_Reg *methods, const luaL_Reg *meta) {
  ah__metatable(L, name, methods, meta);
  luaL_getmetatable(L, name);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

void ah__sched_borrow(lua_State *L, uv_loop_t *loop) {
  lua_pushlightuserdata(L, loop);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &BORROW_KEY);
}

static ah_sched *sched_create(lua_State *L) {
  ah_sched *S;
  uv_loop_t *borrow;
  static const luaL_Reg task_methods[] = {
      {"join", h_join},     {"result", h_result}, {"cancel", h_cancel},
      {"status", h_status}, {"done", h_done},     {"cancelled", h_cancelled},
      {NULL, NULL}};
  static const luaL_Reg task_meta[] = {
      {"__gc", h_gc}, {"__tostring", h_tostring}, {NULL, NULL}};
  static const luaL_Reg ev_methods[] = {{"set", ev_set},
                                        {"clear", ev_clear},
                                        {"wait", ev_wait},
                                        {"is_set", ev_is_set},
                                        {NULL, NULL}};
  static const luaL_Reg sem_methods[] = {{"acquire", sem_acquire},
                                         {"try_acquire", sem_try_acquire},
                                         {"release", sem_release},
                                         {"available", sem_available},
                                         {NULL, NULL}};
  static const luaL_Reg q_methods[] = {{"push", q_push},
                                       {"try_push", q_try_push},
                                       {"pop", q_pop},
                                       {"try_pop", q_try_pop},
                                       {"len", q_len},
                                       {NULL, NULL}};
  static const luaL_Reg err_meta[] = {{"__tostring", err_tostring},
                                      {NULL, NULL}};

  lua_rawgetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  if (!lua_isnil(L, -1)) {
    S = lua_touserdata(L, -1);
    return S; /* left on the stack */
  }
  lua_pop(L, 1);

  new_metatable(L, &TASK_MT, "agenthost.task", task_methods, task_meta);
  new_metatable(L, &ERROR_MT, "agenthost.error", NULL, err_meta);
  new_metatable(L, &EVENT_MT, "agenthost.event", ev_methods, NULL);
  new_metatable(L, &SEM_MT, "agenthost.semaphore", sem_methods, NULL);
  new_metatable(L, &QUEUE_MT, "agenthost.queue", q_methods, NULL);

  /* Threads created from now on copy the main thread's extra space: make
   * it NULL so no coroutine is mistaken for a task. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  *slot(lua_tothread(L, -1)) = NULL;
  lua_pop(L, 1);
  *slot(L) = NULL;

  S = lua_newuserdatauv(L, sizeof *S, 0);
  memset(S, 0, sizeof *S);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  S->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  S->from = S->L;
  link_init(&S->ready);
  link_init(&S->unobserved);
  link_init(&S->orphans);
  link_init(&S->drainers);
  link_init(&S->yielded);
  S->on_error = LUA_NOREF;
  lua_createtable(L, 4, 0);
  S->reports = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 64, 0);
  S->pool = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &BORROW_KEY);
  borrow = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (ah__loop_init(&S->loop, borrow, drain, on_timer) != 0)
    luaL_error(L, "agenthost: cannot create the event loop");
  S->loop.data = S;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, sched_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  return S; /* left on the stack */
}

int ah__open_task(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"run", t_run},           {"spawn", t_spawn},
      {"detach", t_detach},     {"sleep", t_sleep},
      {"yield", t_yield},       {"gather", t_gather},
      {"race", t_race},         {"timeout", t_timeout},
      {"event", t_event},       {"semaphore", t_semaphore},
      {"queue", t_queue},       {"current", t_current},
      {"on_error", t_on_error}, {"stats", t_stats},
      {"drain", t_drain},
      {NULL, NULL}};
  lua_newtable(L);
  sched_create(L); /* upvalue for every function */
  luaL_setfuncs(L, fns, 1);
  return 1;
}
