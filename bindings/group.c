/*
 * The combinators: task.gather (all; the first error cancels the rest),
 * task.race (the first to finish wins; the others are cancelled) and
 * task.timeout (fn within a time limit).  task.map is Lua, on gather
 * (scripts/agenthost/init.lua).
 *
 * gather and race run their first function in the calling task itself,
 * and the others as internal children of it; all report to a group
 * record, and the caller waits until the group is decided and every
 * branch has finished.  The function run inline keeps the contract of a
 * child exactly: it has a scope of its own (sched.h), so the tasks it
 * starts are its children, cancelled with it and waited for; a branch
 * that fails or wins cancels it at its await point, as it cancels the
 * children; its error gets the traceback a task of its own would give it
 * (from where it failed down to the function), and an error that is not
 * the outcome goes to the error handler.  What it saves is a coroutine per
 * call, which at a hundred thousand agents is most of the memory of a
 * parallel step.  task.timeout runs fn as a child: the caller must be
 * free to raise the timeout while fn unwinds.
 *
 * Relies on the scheduler core (task.c).
 */
#include "sched.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { G_GATHER, G_RACE, G_TIMEOUT };

/* The state of the function run inline. */
enum {
  IN_NONE,      /* there is none (task.timeout) */
  IN_RUNNING,   /* it runs in the caller */
  IN_FINISHING, /* it returned or raised; tasks it started still run */
  IN_DONE
};

/* Lives on the waiting task's stack (kept by its suspended C frame):
 *   [1] the group, [2 .. nchild+1] the children's handles, and while the
 *   inline function runs and after it: [nchild+2] the message handler,
 *   then what the function returned (ninl values) or its error.
 * The traceback of the inline function's error waits in the registry
 * under the group's address until the function has unwound. */
struct ah_group {
  ah_sched *S;
  ah_task *waiter;
  ah_task *first;   /* the child that decided: first to fail (gather) or to finish (race) */
  int pending;      /* branches not finished: children, and the inline
                       function until the tasks it started have ended */
  int nchild;
  int ninl;         /* values the inline function left, or 1 (its error) */
  unsigned char kind, timed_out;
  unsigned char inl;        /* IN_* */
  unsigned char inl_first;  /* the inline function decided the group */
  unsigned char inl_failed;
  double seconds;
  ah_scope scope;   /* the inline function's: the tasks it starts */
  ah_task *child[]; /* nchild */
};

static int decided(const ah_group *g) { return g->first || g->inl_first; }

/* Cancels the group's children but `except`, and the inline function with
 * the tasks it started. */
static void group_decide(ah_sched *S, ah_group *g, ah_task *except) {
  int i;
  for (i = 0; i < g->nchild; i++) {
    ah_task *c = g->child[i];
    if (c->group == g && c != except) ah__task_cancel(S, c);
  }
  if (g->inl == IN_RUNNING) {
    ah__scope_cancel(S, g->waiter, &g->scope);
  } else if (g->inl == IN_FINISHING && !g->scope.cancelled) {
    g->scope.cancelled = 1;
    ah__scope_cancel_children(S, &g->scope);
  }
}

/* One branch more has finished: the waiter (suspended in group_op, the
 * only state it can be in while branches remain) wakes after the last. */
static void branch_done(ah_sched *S, ah_group *g) {
  if (--g->pending > 0) return;
  if (g->kind == G_TIMEOUT) ah__task_timer_stop(S, g->waiter);
  ah__task_wake(S, g->waiter, 0, 0);
}

void ah__group_child_done(ah_sched *S, ah_task *c) {
  ah_group *g = c->group;
  int failed = c->state == T_FAILED;
  c->group = NULL;
  if (!decided(g) && (g->kind == G_RACE || (g->kind == G_GATHER && failed))) {
    g->first = c;
    group_decide(S, g, c);
  }
  branch_done(S, g);
}

void ah__group_scope_empty(ah_sched *S, ah_scope *sc) {
  ah_group *g = container_of(sc, ah_group, scope);
  if (g->inl != IN_FINISHING) return; /* the function itself still runs */
  g->inl = IN_DONE;
  branch_done(S, g);
}

/* The waiter is cancelled before the group is over: the children still
 * running are cancelled with it and no longer report to a group that is
 * going away (a failure of theirs is reported when they end); tasks the
 * inline function started join the caller's scope, which waits for them;
 * errors of branches that ended already, the outcome's too, go to the
 * error handler rather than nowhere.  Runs in the waiter or, through
 * group_cancel, while it is suspended: its frame's values are read, no
 * function is called on it. */
static void group_abandon(ah_sched *S, ah_group *g) {
  ah_task *w = g->waiter;
  lua_State *co = w->co;
  int i;
  for (i = 0; i < g->nchild; i++) {
    ah_task *c = g->child[i];
    if (c->group == g) {
      ah__task_cancel(S, c); /* a no-op when the waiter's own cancel did it */
      c->group = NULL;
    } else if (c->state == T_FAILED) {
      ah__report_task(S, c);
    }
  }
  if (g->inl == IN_FINISHING) {
    ah__scope_cancel_children(S, &g->scope);
    ah__scope_move(&g->scope, w->cur);
    g->inl = IN_DONE;
  }
  if (g->inl_failed && lua_checkstack(co, 1)) {
    int err = g->nchild + 3;
    if (!ah__error_is(co, err, "cancelled"))
      ah__report(co, err, lua_tostring(co, err + 1));
  }
  g->inl_failed = 0;
}

static void group_cancel(ah_sched *S, ah_task *w) {
  ah__task_timer_stop(S, w);
  group_abandon(S, w->opdata);
}

static void group_timeout(ah_sched *S, ah_task *w) {
  ah_group *g = w->opdata;
  g->timed_out = 1;
  group_decide(S, g, NULL);
}

static int group_after(lua_State *L, ah_task *t, int nargs);
static int group_gather(lua_State *L);
static int group_race(lua_State *L);
static const ah_op group_op = {"gather", group_cancel, group_timeout,
                               group_after};

/* A group of me for nchild children, inserted at stack position 1. */
static ah_group *group_new(lua_State *L, ah_sched *S, ah_task *me, int kind,
                           int nchild) {
  ah_group *g = lua_newuserdatauv(L, sizeof *g + (size_t)nchild * sizeof(ah_task *), 0);
  memset(g, 0, sizeof *g);
  g->S = S;
  g->waiter = me;
  g->kind = (unsigned char)kind;
  g->nchild = nchild;
  g->pending = nchild;
  link_init(&g->scope.children);
  lua_insert(L, 1);
  return g;
}

/* Stack on entry: the n functions.  Checks them, makes the group (at 1)
 * and spawns functions first..n as children of me reporting to it:
 * leaves [group, handles..., the functions before `first`]. */
static ah_group *group_start(lua_State *L, ah_sched *S, ah_task *me, int kind,
                             int first, const char *fn) {
  int n = lua_gettop(L), nchild = n - first + 1, i;
  ah_group *g;
  for (i = 1; i <= n; i++) {
    if (lua_type(L, i) != LUA_TFUNCTION) {
      char name[32];
      snprintf(name, sizeof name, "argument %d", i);
      ah__arg_error(L, fn, name, "a function");
    }
  }
  luaL_checkstack(L, n + 8, "too many tasks");
  g = group_new(L, S, me, kind, nchild);
  /* The children join the group only once all of them exist: spawning one
   * may raise (memory), and then the others must not report to a group
   * that goes away with the failed call (they are cancelled with it). */
  for (i = first + 1; i <= n + 1; i++) {
    lua_pushvalue(L, i);
    ah__task_new(L, S, lua_gettop(L), me, F_INTERNAL);
  }
  for (i = 0; i < nchild; i++) {
    g->child[i] = lua_touserdata(L, n + 2 + i);
    g->child[i]->group = g;
  }
  /* [group, f1 .. fn, handles] -> [group, handles, f1 .. f(first-1)] */
  lua_rotate(L, 2, -n);
  lua_settop(L, nchild + first);
  return g;
}

/* Hands back the threads of a finished group's children; an error of a
 * child that is neither the group's outcome nor a cancellation is reported,
 * not dropped. */
static void group_release(lua_State *L, ah_group *g) {
  ah_sched *S = g->S;
  int i;
  for (i = 0; i < g->nchild; i++) {
    ah_task *c = g->child[i];
    if (c->state == T_FAILED && c != g->first) ah__report_task(S, c);
    ah__task_recycle(S, c, L, 2 + i);
  }
}

/* Pushes the outcome of a finished group: its results (returns their
 * count) or its error (returns -1 with the error on top). */
static int group_outcome(lua_State *L, ah_group *g) {
  int i, base = g->inl != IN_NONE; /* the inline function is branch 1 */
  int inl = g->nchild + 3;         /* its first value */
  ah_task *c = g->kind == G_TIMEOUT ? g->child[0] : g->first;
  luaL_checkstack(L, g->nchild + g->ninl + 2, "too many results");
  if (g->inl_first && g->inl_failed) {
    lua_pushvalue(L, inl);
    return -1;
  }
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
    if (base) {
      if (g->ninl > 0) lua_pushvalue(L, inl);
      else lua_pushnil(L);
    }
    for (i = 0; i < g->nchild; i++) {
      c = g->child[i];
      if (lua_gettop(c->co) > 0) {
        lua_pushvalue(c->co, 1);
        lua_xmove(c->co, L, 1);
      } else {
        lua_pushnil(L);
      }
    }
    return base + g->nchild;
  }
  if (g->kind == G_RACE) {
    if (g->inl_first) {
      lua_pushinteger(L, 1);
      for (i = 0; i < g->ninl; i++) lua_pushvalue(L, inl + i);
      return 1 + g->ninl;
    }
    for (i = 0; i < g->nchild; i++)
      if (g->child[i] == g->first) lua_pushinteger(L, base + i + 1);
    return ah__task_outcome(L, g->first, 0) + 1;
  }
  return ah__task_outcome(L, c, 0);
}

/* Every branch has finished: returns the group's results or raises its
 * error. */
static int group_finish(lua_State *L, ah_group *g) {
  int k = group_outcome(L, g);
  group_release(L, g);
  if (k < 0) return lua_error(L);
  return k;
}

/* The waiter's continuation once the last branch has finished. */
static int group_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  lua_pop(L, nargs);
  return group_finish(L, lua_touserdata(L, 1));
}

/* ---- the function run in the caller ---------------------------------------- */

/* [group, level]: the traceback the inline function's error would have in
 * a task of its own, built from luaL_traceback's own lines: the levels
 * from `level` (where it failed) to the function itself, with the middle
 * left out as luaL_traceback leaves it out. */
static int inline_traceback_p(lua_State *L) {
  enum { LEVELS1 = 10, LEVELS2 = 11 }; /* lauxlib's */
  static const char head[] = "stack traceback:";
  static const char tail[] = "\n\t(...tail calls...)";
  int first = (int)lua_tointeger(L, 2), bottom, lvl, last, limit;
  lua_Debug ar;
  luaL_Buffer b;
  /* The function itself is the first level from the top that the
   * combinator's frame called: a combinator nested in it catches the
   * errors of its own inline function, so the frame of one above ours can
   * only be the level that raised. */
  for (bottom = first;; bottom++) {
    lua_CFunction f;
    if (!lua_getstack(L, bottom + 1, &ar)) return 0;
    lua_getinfo(L, "f", &ar);
    f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (f == group_gather || f == group_race) break;
  }
  /* As luaL_traceback(L1, ...) from level 0 on a thread whose levels are
   * 0 .. last: levels first .. bottom here. */
  last = bottom - first;
  limit = last > LEVELS1 + LEVELS2 ? LEVELS1 : -1;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, head);
  for (lvl = 0; lvl <= last;) {
    int cur = lvl++;
    if (limit-- == 0) {
      int n = last - lvl - LEVELS2 + 1;
      lua_pushfstring(L, "\n\t...\t(skipping %d levels)", n);
      luaL_addvalue(&b);
      lvl += n;
    } else {
      /* The first entry of luaL_traceback from that level. */
      const char *s, *e;
      size_t len;
      luaL_traceback(L, L, NULL, first + cur);
      s = lua_tolstring(L, -1, &len) + sizeof head - 1;
      e = strstr(s + 2, "\n\t");
      if (e && strncmp(e, tail, sizeof tail - 1) == 0) e = strstr(e + 2, "\n\t");
      if (!e) e = s + strlen(s);
      lua_pushlstring(L, s, (size_t)(e - s));
      lua_remove(L, -2);
      luaL_addvalue(&b);
    }
  }
  luaL_pushresult(&b);
  lua_rawsetp(L, LUA_REGISTRYINDEX, lua_touserdata(L, 1));
  return 0;
}

/* The message handler of the inline call: runs where the error was
 * raised, before the stack unwinds, and keeps its traceback for the
 * continuation (the error itself is left as it is). */
static int inline_msgh(lua_State *L) {
  ah_task *t = ah__task_current(L);
  lua_settop(L, 1);
  if (t && t->cur->up && lua_checkstack(L, 4)) {
    ah_group *g = container_of(t->cur, ah_group, scope);
    lua_pushcfunction(L, inline_traceback_p);
    lua_pushlightuserdata(L, g);
    lua_pushinteger(L, 2); /* 0 is this handler, 1 the protected call */
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}

/* [status, error, traceback]: keeps the traceback on the error, as a
 * task's body does (task.c), and turns out of memory into `resource`. */
static int inline_error_p(lua_State *L) {
  if (lua_tointeger(L, 1) == LUA_ERRMEM) {
    ah__error_push(L, "resource", 0, "out of memory");
    lua_replace(L, 2);
  }
  ah__error_keep_traceback(L, 2, 3);
  lua_settop(L, 2);
  return 1;
}

/* The continuation of the inline call, with the function's values above
 * the message handler, or its error: then [error, traceback] are left
 * there, for an outcome or a report. */
static int inline_k(lua_State *L, int status, lua_KContext ctx) {
  ah_group *g = lua_touserdata(L, 1);
  ah_task *me = g->waiter;
  ah_sched *S = g->S;
  int failed = status != LUA_OK && status != LUA_YIELD;
  int err = g->nchild + 3, cancel_err = 0;
  (void)ctx;
  me->cur = g->scope.up; /* back in the caller's scope */
  if (failed) {
    lua_settop(L, err);
    lua_rawgetp(L, LUA_REGISTRYINDEX, g); /* the traceback, or nil */
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, g); /* (removing a key allocates nothing) */
    /* Protected: when even that fails, the error stays as it is. */
    lua_pushcfunction(L, inline_error_p);
    lua_pushinteger(L, status);
    lua_pushvalue(L, err);
    lua_pushvalue(L, err + 1);
    if (lua_pcall(L, 3, 1, 0) == LUA_OK) lua_replace(L, err);
    else lua_pop(L, 1);
    cancel_err = ah__error_is(L, err, "cancelled");
    g->ninl = 1;
  } else {
    g->ninl = lua_gettop(L) - (g->nchild + 2);
  }
  g->inl_failed = (unsigned char)failed;
  if (link_empty(&g->scope.children)) {
    g->inl = IN_DONE;
    g->pending--;
  } else {
    g->inl = IN_FINISHING;
    /* A function that failed takes the tasks it started down with it. */
    if (failed) ah__scope_cancel_children(S, &g->scope);
  }
  if (me->cur->pending) {
    /* The caller was cancelled while the function ran: it gets the
     * cancellation here, as it would have at its wait for a child. */
    me->cur->pending = 0;
    group_abandon(S, g);
    if (cancel_err) lua_pushvalue(L, err);
    else ah__error_push(L, "cancelled", 0, "task cancelled");
    return lua_error(L);
  }
  if (!decided(g) && (g->kind == G_RACE || failed)) {
    g->inl_first = 1;
    group_decide(S, g, NULL);
  } else if (failed) {
    /* Not the outcome: reported, unless it is the cancellation. */
    if (!cancel_err) ah__report(L, err, lua_tostring(L, err + 1));
    g->inl_failed = 0;
  }
  if (g->pending == 0) return group_finish(L, g);
  return ah__task_suspend(L, me, &group_op, g);
}

/* Combinators nested inline deeper than this run every function in a
 * child: each level is a C call, and Lua allows about 200 of those. */
#define AH_INLINE_DEPTH 64

/* gather and race: the first function runs in the caller, the others in
 * children. */
static int group_run(lua_State *L, int kind, const char *fn) {
  ah_sched *S = sched_up(L);
  ah_task *me = ah__task_require(L, fn);
  ah_group *g;
  int status;
  if (me->cur->pending) {
    /* A cancel already waits for this task: this is its await point. */
    me->cur->pending = 0;
    ah__error_push(L, "cancelled", 0, "task cancelled");
    return lua_error(L);
  }
  if (me->cur->depth >= AH_INLINE_DEPTH) {
    g = group_start(L, S, me, kind, 1, fn); /* [group, handles] */
    return ah__task_suspend(L, me, &group_op, g);
  }
  g = group_start(L, S, me, kind, 2, fn); /* [group, handles, f1] */
  g->pending++;
  g->inl = IN_RUNNING;
  g->scope.up = me->cur;
  g->scope.depth = (unsigned short)(me->cur->depth + 1);
  lua_pushcfunction(L, inline_msgh);
  lua_insert(L, -2);
  me->cur = &g->scope;
  status = lua_pcallk(L, 0, LUA_MULTRET, g->nchild + 2, 0, inline_k);
  return inline_k(L, status, 0);
}

/* task.gather(f, g, ...) -> first result of each */
static int group_gather(lua_State *L) {
  if (lua_gettop(L) == 0) {
    ah__task_require(L, "task.gather");
    return 0;
  }
  return group_run(L, G_GATHER, "task.gather");
}

/* task.race(f, g, ...) -> index, results of the first to finish */
static int group_race(lua_State *L) {
  ah__task_require(L, "task.race");
  if (lua_gettop(L) == 0)
    return ah__arg_error(L, "task.race", "the arguments", "at least one function");
  return group_run(L, G_RACE, "task.race");
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
  luaL_checkstack(L, 4, "too many arguments");
  g = group_new(L, S, me, G_TIMEOUT, 1);
  g->seconds = s;
  lua_remove(L, 2);
  c = ah__task_new(L, S, 2, me, F_INTERNAL);
  if (ah__task_timer(S, me, s))
    return ah__error_raise(L, "resource", 1, "task.timeout: out of memory");
  g->child[0] = c;
  c->group = g; /* only now: the raise above must leave no report to g */
  return ah__task_suspend(L, me, &group_op, g);
}

const luaL_Reg ah__group_fns[] = {{"gather", group_gather},
                                  {"race", group_race},
                                  {"timeout", group_timeout_fn},
                                  {NULL, NULL}};
