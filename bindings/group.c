/*
 * The combinators: task.gather (all; the first error cancels the rest),
 * task.race (the first to finish wins; the others are cancelled) and
 * task.timeout (fn within a time limit).  Each spawns its functions as
 * internal children of the calling task reporting to a group record, and
 * suspends the caller until the group is decided.  task.map is Lua, on
 * gather (scripts/agenthost/init.lua).
 *
 * Relies on the scheduler core (task.c).
 */
#include "sched.h"

#include <math.h>
#include <stdio.h>
#include <string.h>


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
    if (c->group == g && c != except) ah__task_cancel(S, c);
  }
}

void ah__group_child_done(ah_sched *S, ah_task *c) {
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
      ah__task_cancel(S, c); /* a no-op when the waiter's own cancel did it */
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
                             int n, const char *fn) {
  ah_group *g;
  int i;
  for (i = 1; i <= n; i++) {
    if (lua_type(L, i) != LUA_TFUNCTION) {
      char name[32];
      snprintf(name, sizeof name, "argument %d", i);
      ah__arg_error(L, fn, name, "a function");
    }
  }
  luaL_checkstack(L, n + 4, "too many tasks");
  g = group_new(L, me, kind, n);
  /* The children join the group only once all of them exist: spawning one
   * may raise (memory), and then the others must not report to a group
   * that goes away with the failed call (they are cancelled with it). */
  for (i = 2; i <= n + 1; i++) {
    lua_pushvalue(L, i);
    ah__task_new(L, S, lua_gettop(L), me, F_INTERNAL);
  }
  for (i = n + 2; i <= 2 * n + 1; i++) ((ah_task *)lua_touserdata(L, i))->group = g;
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
    if (c->state == T_FAILED && c != g->first) ah__report_task(S, c);
    ah__task_recycle(S, c, L, base + i);
  }
}

/* Pushes the outcome of a finished group: its results (returns their
 * count) or its error (returns -1 with the error on top). */
static int group_outcome(lua_State *L, ah_group *g, int base, int n) {
  int i;
  ah_task *c = g->kind == G_TIMEOUT ? lua_touserdata(L, base + 1) : g->first;
  if (c && c->state == T_FAILED) {
    g->first = c;
    ah__task_observe(c);
    if (g->kind == G_TIMEOUT && g->timed_out &&
        ah__error_is(c->co, 1, "cancelled"))
      ah__error_push(L, "timeout", 1, "timed out after %f s", g->seconds);
    else
      ah__task_outcome(L, c, 0);
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
    return ah__task_outcome(L, g->first, 0) + 1;
  }
  g->first = c;
  return ah__task_outcome(L, c, 0);
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
static int group_gather(lua_State *L) {
  ah_sched *S = sched_up(L);
  ah_task *me = ah__task_require(L, "task.gather");
  int n = lua_gettop(L);
  ah_group *g;
  if (n == 0) return 0;
  g = group_start(L, S, me, G_GATHER, n, "task.gather");
  return ah__task_suspend(L, me, &group_op, g);
}

/* task.race(f, g, ...) -> index, results of the first to finish */
static int group_race(lua_State *L) {
  ah_sched *S = sched_up(L);
  ah_task *me = ah__task_require(L, "task.race");
  int n = lua_gettop(L);
  ah_group *g;
  if (n == 0)
    return ah__arg_error(L, "task.race", "the arguments", "at least one function");
  g = group_start(L, S, me, G_RACE, n, "task.race");
  return ah__task_suspend(L, me, &group_op, g);
}

/* task.timeout(seconds, fn, ...) -> fn's results, or raises a timeout error */
static int group_timeout_fn(lua_State *L) {
  ah_sched *S = sched_up(L);
  ah_task *me = ah__task_require(L, "task.timeout");
  double s = ah__arg_number(L, 1, "task.timeout", "seconds", 0, HUGE_VAL);
  ah_group *g;
  ah_task *c;
  ah__arg_type(L, 2, LUA_TFUNCTION, "task.timeout", "fn");
  /* The child takes fn and its arguments; [group, handle] stay here. */
  g = group_new(L, me, G_TIMEOUT, 1);
  g->seconds = s;
  lua_remove(L, 2);
  c = ah__task_new(L, S, 2, me, F_INTERNAL);
  if (ah__task_timer(S, me, s))
    return ah__error_raise(L, "resource", 1, "task.timeout: out of memory");
  c->group = g; /* only now: the raise above must leave no report to g */
  return ah__task_suspend(L, me, &group_op, g);
}

const luaL_Reg ah__group_fns[] = {{"gather", group_gather},
                                  {"race", group_race},
                                  {"timeout", group_timeout_fn},
                                  {NULL, NULL}};
