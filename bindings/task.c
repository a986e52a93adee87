/*
 * The scheduler's core: task records, creating, suspending and waking
 * tasks, running them (the one lua_resume), completion, cancellation, task
 * handles, and the ah.task module table.  The combinators, the
 * synchronisation objects, structured errors and the loop drivers are in
 * group.c, sync.c, errors.c and drive.c (see sched.h).
 *
 * A task is a coroutine plus the C record of sched.h, which lives in the
 * full userdata that Lua code holds as the task handle.  While a task has
 * not completed, a registry reference anchors that userdata (released in
 * complete(), its one release point); the coroutine hangs off the userdata
 * as its user value.  The record is found from the coroutine through the
 * thread's LUA_EXTRASPACE, which this file owns.
 *
 * There is one way to suspend (ah__task_suspend: record the operation,
 * yield with a continuation) and one way to resume (ah__task_wake puts the
 * task on the ready queue; drain alone calls lua_resume, from the loop's
 * prepare and check hooks, never from inside another coroutine).
 *
 * Cancellation is of a scope (sched.h): a task's body, or a function a
 * combinator runs in it.  It abandons the pending operation and resumes
 * the task with a `cancelled` error at its await point.  A task that is
 * already woken (its result waits in the ready queue) keeps that result
 * and gets the error at its next await, so no value handed to it (a queue
 * item, a semaphore permit) is ever lost.
 *
 * The threads of finished internal tasks, which no Lua code can reach, go
 * to a pool for the next ones, within the recent high-water mark of live
 * tasks (drive.c's housekeeping lowers it after a burst).  Tasks that a
 * running task starts run as soon as it waits, ahead of the ready queue.
 *
 * Relies on host/ (loop, timers) and Lua 5.4.
 */
#include "sched.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char SCHED_KEY, BORROW_KEY, TASK_MT, TASK_IMT, OOM_KEY, CANCEL_KEY;

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

/* ---- out of memory -------------------------------------------------------- */

/* Code of the scheduler that runs outside any task (completions, the
 * drain, finishing a task) must not raise: there is no protected call to
 * catch the error, and Lua would abort.  What may allocate there runs
 * under ah__protect; when even that fails, the values made when the
 * scheduler was created stand in (an out-of-memory `resource` error and a
 * `cancelled` error), which need no allocation to push. */
int ah__protect(lua_State *L, lua_CFunction fn, void *ud, int nres) {
  int rc;
  if (!lua_checkstack(L, nres + 2)) return LUA_ERRMEM;
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, ud);
  rc = lua_pcall(L, 1, nres, 0);
  if (rc != LUA_OK) lua_pop(L, 1);
  return rc;
}

void ah__push_oom(lua_State *L) { lua_rawgetp(L, LUA_REGISTRYINDEX, &OOM_KEY); }

/* Is the value at idx one of the shared stand-ins (never to be changed)? */
static int is_standin(lua_State *L, int idx) {
  int is;
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &OOM_KEY);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CANCEL_KEY);
  is = lua_rawequal(L, idx, -1) || lua_rawequal(L, idx, -2);
  lua_pop(L, 2);
  return is;
}

typedef struct errspec {
  const char *kind, *msg;
} errspec;

static int push_error_p(lua_State *L) {
  errspec *e = lua_touserdata(L, 1);
  ah__error_push(L, e->kind, 0, "%s", e->msg);
  lua_pushliteral(L, "");
  return 2;
}

/* Pushes on co (which is not running) a structured error and, with tb, an
 * empty traceback after it, without raising: made on the main thread in
 * protected mode, or the stand-in at key. */
static void push_error_on(ah_sched *S, lua_State *co, const char *kind,
                          const char *msg, int tb, const char *key) {
  lua_State *L = S->L;
  errspec e;
  e.kind = kind;
  e.msg = msg;
  lua_checkstack(co, 2); /* a waiting task's frame keeps room for these */
  if (ah__protect(L, push_error_p, &e, 2) == LUA_OK) {
    if (!tb) lua_pop(L, 1);
    lua_xmove(L, co, tb ? 2 : 1);
    return;
  }
  lua_rawgetp(co, LUA_REGISTRYINDEX, key);
  if (tb) lua_pushnil(co);
}

/* ---- the ready queue and waking ----------------------------------------- */

static void enqueue(ah_sched *S, ah_task *t) {
  link_append(&S->ready, &t->link);
  ah__loop_pending(&S->loop, 1);
}

void ah__task_wake(ah_sched *S, ah_task *t, int nargs, int is_error) {
  /* A suspended task, or the running one when its operation completed
   * before it could yield; never one already woken. */
  ah_check(t->state == T_SUSPENDED || t->state == T_RUNNING,
           "ah__task_wake: the task is not waiting");
  t->op = NULL;
  t->opdata = NULL;
  t->nargs = (unsigned short)nargs;
  if (is_error) t->flags |= F_WAKE_ERR;
  t->state = T_READY;
  enqueue(S, t);
}

void ah__task_wake_with(ah_sched *S, ah_task *t, lua_CFunction push, void *ud,
                        int is_error) {
  lua_State *L = S->L;
  int top = lua_gettop(L), n;
  if (lua_checkstack(L, 2)) {
    lua_pushcfunction(L, push);
    lua_pushlightuserdata(L, ud);
    if (lua_pcall(L, 1, LUA_MULTRET, 0) == LUA_OK) {
      n = lua_gettop(L) - top;
      if (lua_checkstack(t->co, n + 1)) {
        lua_xmove(L, t->co, n);
        ah__task_wake(S, t, n, is_error);
        return;
      }
    }
    lua_settop(L, top);
  }
  /* Out of memory: the task fails with `resource` where it waits. */
  ah__push_oom(t->co);
  ah__task_wake(S, t, 1, 1);
}

static int resume_k(lua_State *L, int status, lua_KContext ctx);

int ah__task_suspend(lua_State *L, ah_task *t, const ah_op *op, void *opdata) {
  ah_check(t->co == L && (t->state == T_RUNNING || t->state == T_READY),
           "ah__task_suspend: the task is not the one running");
  t->op = op;
  t->opdata = opdata;
  if (t->cur->pending) {
    /* A cancel arrived while the task was running or already woken:
     * abandon what was just started and raise at this await point. */
    t->cur->pending = 0;
    if (op->cancel) op->cancel(ah__sched_get(L), t);
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
  if (tm == &S->housekeeping) {
    ah__sched_housekeeping(S);
    return;
  }
  if (tm == &S->gc_timer) {
    ah__sched_gc_timer(S);
    return;
  }
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
static int task_sleep(lua_State *L) {
  ah_sched *S = sched_up(L);
  double s = ah__arg_number(L, 1, "task.sleep", "seconds", 0, HUGE_VAL);
  ah_task *t = ah__task_require(L, "task.sleep");
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
static int task_yield(lua_State *L) {
  ah_task *t = ah__task_require(L, "task.yield");
  lua_settop(L, 0);
  return ah__task_suspend(L, t, &yield_op, NULL);
}

/* ---- creating tasks ----------------------------------------------------- */

/* Creates a task running the function at stack position fidx with the
 * values above it as arguments (they are moved to the new thread), and
 * leaves its handle on the top of the stack. */
ah_task *ah__task_new(lua_State *L, ah_sched *S, int fidx, ah_task *parent,
                         int flags) {
  int n = lua_gettop(L) - fidx + 1;
  lua_State *co;
  ah_task *t;
  ah_check(lua_type(L, fidx) == LUA_TFUNCTION, "ah__task_new: not a function");
  if (n > 0xfffe)
    ah__error_raise(L, "invalid_argument", 0,
                    "a task takes at most 65533 arguments");
  if (S->npool > 0 && (flags & F_INTERNAL)) {
    /* The record and thread of a finished internal task: the thread's
     * stack has already grown to what a task needs, and reuse spares the
     * collector two objects per task.  (Only for internal tasks: giving
     * an old object a finalizer costs a walk over every newer object.) */
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
    if (!(flags & F_INTERNAL)) flags |= F_GC;
    lua_rawgetp(L, LUA_REGISTRYINDEX, (flags & F_GC) ? &TASK_MT : &TASK_IMT);
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
  link_init(&t->body.children);
  link_init(&t->sibling);
  link_init(&t->waiters);
  t->cur = &t->body;
  t->nargs = (unsigned short)(n - 1);
  t->flags = (unsigned char)flags;
  t->state = T_NEW;
  t->parent = parent ? parent->cur : NULL;
  link_append(parent ? &parent->cur->children : &S->orphans, &t->sibling);
  if (flags & F_DETACHED) S->detached++;
  if (++S->live > S->hwm) S->hwm = S->live;
  S->spawned++;
  if (S->next_ok) {
    /* Started by a running task: it runs right after that task waits
     * (drain), ahead of the ready queue, so that a child a task waits for
     * starts its own wait at once, not after every task woken before it.
     * Only once in a row: a task that ran ahead puts its own children at
     * the back, so that no chain of tasks can hold the queue. */
    link_append(&S->next, &t->link);
    t->flags |= F_NEXT;
    ah__loop_pending(&S->loop, 1);
  } else {
    enqueue(S, t);
  }
  return t;
}

/* task.spawn(fn, ...) -> handle.  Inside a task the new task is its
 * child; outside any task it is a top-level task that the next task.run,
 * step or ah_step drives (cancelled only by its handle, or at close). */
static int task_spawn(lua_State *L) {
  ah_sched *S = sched_up(L);
  ah__arg_type(L, 1, LUA_TFUNCTION, "task.spawn", "fn");
  ah__task_new(L, S, 1, ah__task_current(L), 0);
  return 1;
}

/* task.detach(fn, ...): fire-and-forget, owned by the host; returns
 * nothing, so the task's thread can be reused as soon as it ends (use
 * task.spawn to keep a handle). */
static int task_detach(lua_State *L) {
  ah__arg_type(L, 1, LUA_TFUNCTION, "task.detach", "fn");
  ah__task_new(L, sched_up(L), 1, NULL, F_DETACHED | F_INTERNAL);
  return 0;
}

static int detach_p(lua_State *L) {
  ah__task_new(L, ah__sched_get(L), 1, NULL, F_DETACHED | F_INTERNAL);
  return 0;
}

int ah__task_detach(lua_State *L, int nargs) {
  int rc;
  if (!lua_checkstack(L, 1)) {
    lua_pop(L, nargs + 1);
    return LUA_ERRMEM;
  }
  lua_pushcfunction(L, detach_p);
  lua_insert(L, -(nargs + 2));
  rc = lua_pcall(L, nargs + 1, 0, 0);
  if (rc != LUA_OK) lua_pop(L, 1);
  return rc;
}

/* ---- completion ------------------------------------------------------------ */

static const ah_op join_op, result_op;

/* Pushes on L the outcome of a completed task: its values, or its error. */
int ah__task_outcome(lua_State *L, ah_task *t, int pcall_shape) {
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

void ah__task_observe(ah_task *t) {
  if (t->state == T_FAILED && !(t->flags & F_OBSERVED)) {
    t->flags |= F_OBSERVED;
    link_remove(&t->link); /* off the unobserved list */
  }
}

/* Doubles the room of the pool's array part (filling it with false), so
 * that storing a thread in it never allocates. */
static int pool_grow_p(lua_State *L) {
  ah_sched *S = lua_touserdata(L, 1);
  int i, cap = S->poolcap * 2;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
  for (i = S->poolcap + 1; i <= cap; i++) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, i);
  }
  S->poolcap = cap;
  return 0;
}

/* Returns the thread of a completed task that no Lua code can reach to the
 * pool.  The pool and the live tasks together stay within the high-water
 * mark of live tasks of the last few seconds (drive.c's housekeeping
 * lowers it after a burst), so a load that comes and goes in waves reuses
 * every thread, and a burst that is over does not pin its memory. */
void ah__task_recycle(ah_sched *S, ah_task *t, lua_State *L, int idx) {
  size_t cap = S->hwm > S->hwm_prev ? S->hwm : S->hwm_prev;
  if (!(t->flags & F_INTERNAL) || t->state < T_DONE) return;
  ah__task_observe(t);
  t->flags &= ~F_INTERNAL; /* recycled once */
  if ((size_t)S->npool + S->live >= cap + AH_POOL_SLACK) return;
  /* Slots up to poolcap are in the table's array part, so storing there
   * cannot fail; the pool grows past it only in protected mode. */
  if (S->npool >= S->poolcap &&
      (!lua_checkstack(L, 4) || ah__protect(L, pool_grow_p, S, 0) != LUA_OK))
    return;
  lua_settop(t->co, 0);
  *slot(t->co) = NULL;
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, ++S->npool);
  lua_pop(L, 1);
  ah__sched_housekeeping_arm(S);
}

/* [S, keep]: a smaller array for a pool that shrank to keep threads. */
static int pool_shrink_p(lua_State *L) {
  ah_sched *S = lua_touserdata(L, 1);
  int i, cap = (int)lua_tointeger(L, 2) * 2;
  if (cap < 64) cap = 64;
  lua_createtable(L, cap, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
  for (i = 1; i <= S->npool; i++) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -3, i);
  }
  lua_pop(L, 1);
  lua_rawseti(L, LUA_REGISTRYINDEX, S->pool);
  S->poolcap = cap;
  return 0;
}

void ah__task_pool_trim(ah_sched *S, int keep) {
  lua_State *L = S->L;
  if (S->npool <= keep || !lua_checkstack(L, 4)) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
  while (S->npool > keep) { /* storing nil never allocates */
    lua_pushnil(L);
    lua_rawseti(L, -2, S->npool--);
  }
  lua_pop(L, 1);
  if (keep < S->poolcap / 4) {
    lua_pushcfunction(L, pool_shrink_p);
    lua_pushlightuserdata(L, S);
    lua_pushinteger(L, keep);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1); /* keeps the big one */
  }
}

static void complete(ah_sched *S, ah_task *t) {
  while (t) {
    ah_scope *parent = t->parent;
    int failed = (t->flags & F_BODY_ERR) != 0;
    t->state = failed ? T_FAILED : T_DONE;
    link_remove(&t->sibling);
    t->parent = NULL;
    if (failed) link_append(&S->unobserved, &t->link);
    while (!link_empty(&t->waiters)) {
      ah_task *w = container_of(t->waiters.next, ah_task, link);
      int n;
      link_remove(&w->link);
      if (failed) ah__task_observe(t);
      n = failed ? 1 : lua_gettop(t->co);
      if (lua_checkstack(w->co, n + 2) && lua_checkstack(t->co, 1)) {
        n = ah__task_outcome(w->co, t, w->op == &result_op);
        ah__task_wake(S, w, n, failed && w->op == &join_op);
      } else {
        ah__push_oom(w->co); /* no room for the values */
        ah__task_wake(S, w, 1, 1);
      }
    }
    if (t->group) {
      ah__group_child_done(S, t);
    } else if (!(t->flags & F_GC)) {
      /* Nobody can take its outcome (a detached task, or a combinator's
       * child whose caller was cancelled) and its handle has no finalizer
       * to report it: its error is reported now, and the thread of an
       * internal task goes back to the pool. */
      if (failed) ah__report_task(S, t);
      lua_rawgeti(S->L, LUA_REGISTRYINDEX, t->ref);
      ah__task_recycle(S, t, S->L, -1);
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
    /* A parent whose body already finished completes with its last child;
     * a function run inline by a combinator is finished with its last. */
    t = NULL;
    if (parent && link_empty(&parent->children)) {
      if (parent->up)
        ah__group_scope_empty(S, parent);
      else if (scope_owner_body(parent)->state == T_CHILDREN)
        t = scope_owner_body(parent);
    }
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

typedef struct bodyfail {
  lua_State *co;
  int status;
} bodyfail;

/* [bodyfail, error] -> error, traceback: the traceback of the failed
 * body, kept in a structured error too; out of memory becomes a
 * `resource` error. */
static int body_fail_p(lua_State *L) {
  bodyfail *b = lua_touserdata(L, 1);
  luaL_traceback(L, b->co, NULL, 0);
  if (b->status == LUA_ERRMEM) {
    ah__error_push(L, "resource", 0, "out of memory");
    lua_replace(L, 2);
  }
  ah__error_keep_traceback(L, 2, 3);
  return 2;
}

void ah__error_keep_traceback(lua_State *L, int erridx, int tbidx) {
  if (!lua_isstring(L, tbidx) || !ah__error_is(L, erridx, NULL) ||
      is_standin(L, erridx))
    return;
  erridx = lua_absindex(L, erridx);
  tbidx = lua_absindex(L, tbidx);
  lua_getfield(L, erridx, "traceback");
  if (lua_isnil(L, -1)) {
    lua_pushvalue(L, tbidx);
    lua_setfield(L, erridx, "traceback");
  }
  lua_pop(L, 1);
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
    bodyfail b;
    b.co = co;
    b.status = status;
    /* Take the traceback before the stack is reset, then keep
     * [error, traceback] as the task's result. */
    if (lua_checkstack(L, 6)) {
      lua_xmove(co, L, 1); /* the error */
      lua_pushcfunction(L, body_fail_p);
      lua_pushlightuserdata(L, &b);
      lua_pushvalue(L, -3);
      if (lua_pcall(L, 2, 2, 0) == LUA_OK) {
        lua_remove(L, -3);
      } else {
        lua_pop(L, 1);
        if (status == LUA_ERRMEM) {
          lua_pop(L, 1);
          ah__push_oom(L);
        }
        lua_pushnil(L);
      }
      resetthread(co, S->from);
      lua_settop(co, 0);
      lua_xmove(L, co, 2);
    } else {
      resetthread(co, S->from);
      lua_settop(co, 0);
      ah__push_oom(co);
      lua_pushnil(co);
    }
    t->flags |= F_BODY_ERR;
  }
  ah_check(t->cur == &t->body, "body_done: a combinator's scope is still open");
  if (!link_empty(&t->body.children)) {
    /* The task completes with its last child; a failed body takes its
     * children down with it. */
    t->state = T_CHILDREN;
    if (status != LUA_OK) ah__scope_cancel_children(S, &t->body);
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
  if (t->state == T_NEW && t->body.pending) {
    /* Cancelled before it started: it completes without running. */
    lua_settop(t->co, 0);
    push_error_on(S, t->co, "cancelled", "task cancelled before it started", 1,
                  &CANCEL_KEY);
    t->flags |= F_BODY_ERR;
    complete(S, t);
    return;
  }
  t->state = T_RUNNING;
  S->resumes++;
  S->step_runs++;
  /* Setting the hook also restarts its count: the budget is per resume. */
  if (S->hook_count) lua_sethook(t->co, budget_hook, LUA_MASKCOUNT, S->hook_count);
  S->next_ok = !(t->flags & F_NEXT);
  t->flags &= ~F_NEXT;
  status = lua_resume(t->co, S->from, t->nargs, &nres);
  S->next_ok = 0;
  if (S->gc_ended) ah__sched_gc_ended(S);
  if (!link_empty(&S->next)) {
    /* The tasks it started go to the front of the ready queue. */
    ah_link *first = S->next.next, *last = S->next.prev;
    last->next = S->ready.next;
    S->ready.next->prev = last;
    S->ready.next = first;
    first->prev = &S->ready;
    link_init(&S->next);
  }
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

int ah__sched_has_work(const ah_sched *S) {
  return !link_empty(&S->ready) || !link_empty(&S->yielded);
}

/* Runs ready tasks.  Work made ready meanwhile (a completion waking its
 * waiter) runs in the same pass, up to DRAIN_BUDGET resumes, after which
 * the loop turns once (timers, I/O) before the rest.  Tasks that yield
 * wait for the next pass and then go behind every task that timers and
 * I/O made ready in between, so a task that keeps yielding delays a woken
 * task by at most one of its slices. */
#define DRAIN_BUDGET 65536
void ah__sched_drain(ah_evloop *lp) {
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
    ah__reports_deliver(S);
  }
  if (budget < DRAIN_BUDGET) ah__sched_gc_busy(S); /* tasks ran */
  while (S->deferred) {
    ah_defer *d = S->deferred;
    S->deferred = d->next;
    d->next = NULL;
    d->queued = 0;
    d->fn(d);
  }
  if (ah__sched_has_work(S)) ah__loop_pending(lp, 1);
  else ah__loop_pending(lp, ah__sched_idle(S));
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

/* Cancelling never completes anything: a task not started yet completes
 * (without running) when the scheduler reaches it, so lists being walked
 * here never change under the walk. */

void ah__scope_cancel_children(ah_sched *S, ah_scope *sc) {
  ah_link *l;
  for (l = sc->children.next; l != &sc->children; l = l->next)
    ah__task_cancel(S, container_of(l, ah_task, sibling));
}

void ah__scope_cancel(ah_sched *S, ah_task *t, ah_scope *sc) {
  ah_scope *x;
  for (x = t->cur;; x = x->up) {
    if (!x->cancelled) {
      x->cancelled = 1;
      x->pending = 1;
      ah__scope_cancel_children(S, x);
    }
    if (x == sc) break;
  }
  /* A waiting task gets it now, where it waits; a running or woken one at
   * its next await point (a value already handed to it stays its own). */
  if (t->state == T_SUSPENDED && t->cur->pending) {
    t->cur->pending = 0;
    if (t->op->cancel) t->op->cancel(S, t);
    push_error_on(S, t->co, "cancelled", "task cancelled", 0, &CANCEL_KEY);
    ah__task_wake(S, t, 1, 1);
  }
}

/* Cancels t and its children, once. */
void ah__task_cancel(ah_sched *S, ah_task *t) {
  if (t->state >= T_DONE || t->body.cancelled) return;
  ah__scope_cancel(S, t, &t->body);
}

void ah__scope_move(ah_scope *sc, ah_scope *to) {
  while (!link_empty(&sc->children)) {
    ah_task *c = container_of(sc->children.next, ah_task, sibling);
    link_remove(&c->sibling);
    link_append(&to->children, &c->sibling);
    c->parent = to;
  }
}

/* ---- handles: join, result, cancel ------------------------------------------ */

static ah_task *check_task(lua_State *L, const char *fn) {
  void *p = lua_touserdata(L, 1);
  if (p && lua_getmetatable(L, 1)) {
    int ok;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &TASK_IMT);
    ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
    if (!ok) {
      lua_rawgetp(L, LUA_REGISTRYINDEX, &TASK_MT);
      ok = lua_rawequal(L, -1, -2);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (ok) return p;
  }
  ah__arg_error(L, fn, "self", "a task (call it with ':')");
  return NULL;
}

int ah__task_wait(lua_State *L, const char *what, ah_link *list, int keep,
                  const ah_op *op, void *opdata) {
  ah_task *me = ah__task_require(L, what);
  lua_settop(L, keep);
  link_append(list, &me->link);
  return ah__task_suspend(L, me, op, opdata);
}

void ah__task_unwait(ah_sched *S, ah_task *t) {
  (void)S;
  link_remove(&t->link);
}
static const ah_op join_op = {"join", ah__task_unwait, NULL, NULL};
static const ah_op result_op = {"result", ah__task_unwait, NULL, NULL};

static int join_or_result(lua_State *L, const ah_op *op) {
  ah_task *t = check_task(L, op == &join_op ? "task:join" : "task:result");
  if (t->state >= T_DONE) {
    int n;
    ah__task_observe(t);
    n = ah__task_outcome(L, t, op == &result_op);
    if (op == &join_op && t->state == T_FAILED) return lua_error(L);
    return n;
  }
  if (ah__task_current(L) == t)
    return ah__error_raise(L, "invalid_argument", 0,
                           "a task cannot wait for itself");
  /* The handle stays on the stack, alive, while we wait. */
  return ah__task_wait(L, op == &join_op ? "task:join" : "task:result",
                       &t->waiters, 1, op, t);
}

static int th_join(lua_State *L) { return join_or_result(L, &join_op); }
static int th_result(lua_State *L) { return join_or_result(L, &result_op); }

static int th_cancel(lua_State *L) {
  ah_task *t = check_task(L, "task:cancel");
  ah__task_cancel(ah__sched_get(L), t);
  return 0;
}

static const char *const state_names[] = {"pending", "ready",  "running",
                                          "waiting", "finishing", "done",
                                          "failed"};

static int th_status(lua_State *L) {
  ah_task *t = check_task(L, "task:status");
  if (t->state == T_FAILED && ah__error_is(t->co, 1, "cancelled"))
    lua_pushliteral(L, "cancelled");
  else
    lua_pushstring(L, state_names[t->state]);
  return 1;
}

/* t:cancelled(): whether t has been cancelled (it may still be unwinding).
 * Asked by t itself inside a function that a combinator runs in it, it is
 * whether that function was cancelled, as a task of its own would see. */
static int th_cancelled(lua_State *L) {
  ah_task *t = check_task(L, "task:cancelled");
  ah_scope *x;
  int c = t->body.cancelled;
  if (ah__task_current(L) == t)
    for (x = t->cur; x && !c; x = x->up) c = x->cancelled;
  lua_pushboolean(L, c);
  return 1;
}

static int th_done(lua_State *L) {
  lua_pushboolean(L, check_task(L, "task:done")->state >= T_DONE);
  return 1;
}

static int th_tostring(lua_State *L) {
  ah_task *t = check_task(L, "task:__tostring");
  lua_pushfstring(L, "task: %p (%s)", (void *)t, state_names[t->state]);
  return 1;
}

/* A failed task whose handle is collected before anybody looked at the
 * error gets it reported (queued: no Lua runs inside a finalizer). */
static int th_gc(lua_State *L) {
  ah_task *t = lua_touserdata(L, 1);
  ah_sched *S = ah__sched_get(L);
  if (S && !S->closed && t->state == T_FAILED && !(t->flags & F_OBSERVED)) {
    lua_getiuservalue(L, 1, 1); /* keep the thread reachable meanwhile */
    ah__report_task(S, t);
    lua_pop(L, 1);
  }
  return 0;
}

/* ---- task.drain, task.current, task.stats ------------------------------------ */

static const ah_op drain_op = {"drain", ah__task_unwait, NULL, NULL};

/* task.drain(): waits until every detached task has finished. */
static int task_drain(lua_State *L) {
  ah_sched *S = sched_up(L);
  ah_task *me = ah__task_require(L, "task.drain");
  if (me->flags & F_DETACHED)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.drain cannot be called from a detached task "
                           "(it would wait for itself)");
  if (S->detached == 0) return 0;
  return ah__task_wait(L, "task.drain", &S->drainers, 0, &drain_op, NULL);
}

/* task.current() -> handle of the running task, or nil */
static int task_current(lua_State *L) {
  ah_task *t = ah__task_current(L);
  if (!t) return 0;
  t->flags &= ~F_INTERNAL; /* its handle escapes: keep the thread */
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
  return 1;
}

/* task.stats() -> counters for tests and metrics */
static int task_stats(lua_State *L) {
  ah_sched *S = sched_up(L);
  size_t ready = 0;
  ah_link *l;
  for (l = S->ready.next; l != &S->ready; l = l->next) ready++;
  for (l = S->yielded.next; l != &S->yielded; l = l->next) ready++;
  for (l = S->next.next; l != &S->next; l = l->next) ready++;
  lua_createtable(L, 0, 7);
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
  lua_pushinteger(L, (lua_Integer)S->npool);
  lua_setfield(L, -2, "pooled");
  return 1;
}

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

void ah__sched_borrow(lua_State *L, uv_loop_t *loop) {
  lua_pushlightuserdata(L, loop);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &BORROW_KEY);
}

/* The scheduler of L, made on first use; left on the stack. */
static ah_sched *sched_create(lua_State *L) {
  ah_sched *S;
  uv_loop_t *borrow;
  static const luaL_Reg task_methods[] = {
      {"join", th_join},     {"result", th_result}, {"cancel", th_cancel},
      {"status", th_status}, {"done", th_done},     {"cancelled", th_cancelled},
      {NULL, NULL}};
  static const luaL_Reg task_meta[] = {
      {"__gc", th_gc}, {"__tostring", th_tostring}, {NULL, NULL}};

  lua_rawgetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  if (!lua_isnil(L, -1)) return lua_touserdata(L, -1);
  lua_pop(L, 1);

  ah__metatable(L, "agenthost.task", task_methods, task_meta, NULL, &TASK_MT);
  /* The handles of internal tasks, which no Lua code holds, need no
   * finalizer (complete() reports their errors): without one a dropped
   * handle goes in one collection instead of two. */
  lua_createtable(L, 0, 3);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &TASK_MT);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "__index");
  lua_getfield(L, -1, "__tostring");
  lua_setfield(L, -3, "__tostring");
  lua_getfield(L, -1, "__name");
  lua_setfield(L, -3, "__name");
  lua_pop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &TASK_IMT);
  ah__errors_init(L);
  ah__sync_init(L);

  /* Threads created from now on copy the main thread's extra space: make
   * it NULL so no coroutine is mistaken for a task. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  *slot(lua_tothread(L, -1)) = NULL;
  lua_pop(L, 1);
  *slot(L) = NULL;

  S = lua_newuserdatauv(L, sizeof *S, 0);
  memset(S, 0, sizeof *S);
  /* Closed until the loop exists; the finalizer is set before anything it
   * must release is made, so an error from here on leaks nothing. */
  S->closed = 1;
  S->on_error = S->reports = S->pool = LUA_NOREF;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, sched_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  S->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  S->from = S->L;
  link_init(&S->ready);
  link_init(&S->unobserved);
  link_init(&S->orphans);
  link_init(&S->drainers);
  link_init(&S->yielded);
  link_init(&S->next);
  lua_createtable(L, 4, 0);
  S->reports = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 64, 0);
  S->pool = luaL_ref(L, LUA_REGISTRYINDEX);
  S->poolcap = 64;
  S->housekeeping.weak = 1;
  S->gc_timer.weak = 1;
  ah__error_push(L, "resource", 0, "out of memory");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &OOM_KEY);
  ah__error_push(L, "cancelled", 0, "task cancelled");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CANCEL_KEY);
  ah__sched_gc_init(L, S);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &BORROW_KEY);
  borrow = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (ah__loop_init(&S->loop, borrow, ah__sched_drain, on_timer) != 0)
    ah__error_raise(L, "resource", 0, "agenthost: cannot create the event loop");
  S->loop.data = S;
  S->closed = 0;
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  return S; /* left on the stack */
}

int ah__open_task(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"spawn", task_spawn},     {"detach", task_detach},
      {"sleep", task_sleep},     {"yield", task_yield},
      {"current", task_current}, {"stats", task_stats},
      {"drain", task_drain},     {NULL, NULL}};
  const luaL_Reg *parts[] = {fns, ah__drive_fns, ah__group_fns, ah__sync_fns,
                             ah__errors_fns};
  size_t i;
  sched_create(L); /* the upvalue of every function */
  lua_newtable(L);
  for (i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, parts[i], 1);
  }
  lua_remove(L, -2);
  return 1;
}
