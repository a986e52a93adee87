/*
 * Errors: the structured error values every primitive raises (a table
 * {kind, message, retryable} with a metatable whose __tostring gives
 * "kind: message"), and the reporting of errors nobody waits for.
 *
 * Reports take one route: an error to report (a failed detached task, a
 * failure nobody observed, a failed write posted with db:post, a post that
 * could not be delivered) is queued with its traceback, and the scheduler
 * hands the queue to the error handler (task.on_error, by default stderr)
 * from its drain, outside every task and never from inside a libuv or a
 * worker's callback.
 *
 * Relies on the scheduler core (task.c) and Lua 5.4.
 */
#include "sched.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static char ERROR_MT;

/* ---- structured errors ------------------------------------------------------ */

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

/* Raises the structured error on the top of L with the caller's position
 * in front of its message, as luaL_error does, but the position of the
 * user's code: frames of the library's own Lua wrappers
 * (scripts/agenthost/) are skipped. */
static int raise_here(lua_State *L) {
  push_where(L);
  lua_getfield(L, -2, "message");
  lua_concat(L, 2);
  lua_setfield(L, -2, "message");
  return lua_error(L);
}

int ah__error_raise(lua_State *L, const char *kind, int retryable,
                    const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vpush(L, kind, retryable, fmt, ap);
  va_end(ap);
  return raise_here(L);
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
  const char *kind = ah__arg_string(L, 1, "ah.error.new", "kind", NULL);
  const char *msg = lua_isnoneornil(L, 2)
                        ? kind
                        : ah__arg_string(L, 2, "ah.error.new", "message", NULL);
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

/* ah.error.raise(kind, message [, fields]): raises ah.error.new's error
 * with the position of the user's code in front of its message, as the
 * primitives' own misuse errors have it (frames of the library's scripts
 * are skipped).  For the Lua parts of the library. */
static int err_raise(lua_State *L) {
  err_new(L);
  return raise_here(L);
}

/* ah.error.is(value [, kind]) */
static int err_is(lua_State *L) {
  const char *kind = lua_isnoneornil(L, 2)
                         ? NULL
                         : ah__arg_string(L, 2, "ah.error.is", "kind", NULL);
  lua_pushboolean(L, ah__error_is(L, 1, kind));
  return 1;
}

void ah__error_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"new", err_new}, {"raise", err_raise}, {"is", err_is}, {NULL, NULL}};
  luaL_newlib(L, fns);
}

void ah__errors_init(lua_State *L) {
  static const luaL_Reg meta[] = {{"__tostring", err_tostring}, {NULL, NULL}};
  ah__metatable(L, "agenthost.error", NULL, meta, NULL, &ERROR_MT);
}

/* ---- reporting errors nobody waits for -------------------------------------------- */

static int default_on_error(lua_State *L) {
  const char *msg = luaL_tolstring(L, 1, NULL);
  const char *tb = lua_tostring(L, 2);
  fprintf(stderr, "agenthost: uncaught error in task: %s\n%s\n", msg,
          tb ? tb : "");
  fflush(stderr);
  return 0;
}

/* Calls the error handler with the error at erridx and its traceback; a
 * handler that fails is reported on stderr, and the error too. */
static void report_now(lua_State *L, int erridx, const char *traceback) {
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

/* [S]: hands every queued report to the handler, in protected mode. */
static int reports_deliver_p(lua_State *L) {
  ah_sched *S = lua_touserdata(L, 1);
  int i, n = S->nreports;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->reports);
  /* Start a fresh table first: a handler may cause more reports. */
  lua_createtable(L, 4, 0);
  lua_rawseti(L, LUA_REGISTRYINDEX, S->reports);
  S->nreports = 0;
  for (i = 1; i < n; i += 2) {
    lua_rawgeti(L, -1, i);
    lua_rawgeti(L, -2, i + 1);
    report_now(L, -2, lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  return 0;
}

void ah__reports_deliver(ah_sched *S) {
  if (S->nreports == 0) return;
  if (ah__protect(S->L, reports_deliver_p, S, 0) != LUA_OK) {
    /* Out of memory: what was not delivered is dropped, said on stderr,
     * so that the drain goes on. */
    S->nreports = 0;
    fprintf(stderr, "agenthost: uncaught errors were dropped: out of memory\n");
    fflush(stderr);
  }
}

/* Reports every failure nobody has taken (at the end of task.run). */
void ah__reports_unobserved(ah_sched *S) {
  while (!link_empty(&S->unobserved))
    ah__report_task(S, container_of(S->unobserved.next, ah_task, link));
  ah__reports_deliver(S);
}


/* [S, error, traceback]: appends the pair to the report table; the
 * traceback may be a light userdata (a C string) to turn into a string. */
static int report_queue_p(lua_State *L) {
  ah_sched *S = lua_touserdata(L, 1);
  if (lua_islightuserdata(L, 3)) {
    lua_pushstring(L, lua_touserdata(L, 3));
    lua_replace(L, 3);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->reports);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, S->nreports + 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, S->nreports + 2);
  S->nreports += 2;
  return 0;
}

/* Queues [error, traceback] from the top of L, the main thread (popped),
 * for the handler.  Never raises: out of memory drops the report, said
 * on stderr. */
static void report_queue(ah_sched *S, lua_State *L) {
  int rc;
  if (!lua_checkstack(L, 3)) {
    lua_pop(L, 2);
    rc = LUA_ERRMEM;
  } else {
    lua_pushcfunction(L, report_queue_p);
    lua_pushlightuserdata(L, S);
    lua_rotate(L, -4, 2);
    rc = lua_pcall(L, 3, 0, 0);
    if (rc != LUA_OK) lua_pop(L, 1);
  }
  if (rc != LUA_OK) {
    fprintf(stderr, "agenthost: an uncaught error was dropped: out of memory\n");
    fflush(stderr);
  }
  ah__loop_pending(&S->loop, 1);
}

/* Queues a report of t's error for the error handler, unless somebody has
 * taken it or it is a cancellation. */
void ah__report_task(ah_sched *S, ah_task *t) {
  lua_State *L = S->L;
  if (t->flags & F_OBSERVED) return;
  t->flags |= F_OBSERVED;
  link_remove(&t->link);
  if (ah__error_is(t->co, 1, "cancelled")) return;
  if (!lua_checkstack(t->co, 2) || !lua_checkstack(L, 2)) {
    fprintf(stderr, "agenthost: an uncaught error was dropped: out of memory\n");
    return;
  }
  lua_pushvalue(t->co, 1);
  lua_pushvalue(t->co, 2);
  lua_xmove(t->co, L, 2);
  report_queue(S, L);
}


void ah__report(lua_State *L, int erridx, const char *traceback) {
  ah_sched *S = ah__sched_get(L);
  lua_State *M;
  if (!S || S->closed) {
    report_now(L, erridx, traceback ? traceback : "");
    return;
  }
  M = S->L;
  if (!lua_checkstack(L, 2) || !lua_checkstack(M, 2)) {
    fprintf(stderr, "agenthost: an uncaught error was dropped: out of memory\n");
    return;
  }
  lua_pushvalue(L, erridx);
  lua_pushlightuserdata(L, (void *)(traceback ? traceback : ""));
  lua_xmove(L, M, 2);
  report_queue(S, M);
}

/* task.on_error(fn): where uncaught task errors go; nil restores stderr. */
static int err_on_error(lua_State *L) {
  ah_sched *S = sched_up(L);
  if (!lua_isnoneornil(L, 1))
    ah__arg_type(L, 1, LUA_TFUNCTION, "task.on_error", "the handler");
  luaL_unref(L, LUA_REGISTRYINDEX, S->on_error);
  S->on_error = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);
    S->on_error = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}


const luaL_Reg ah__errors_fns[] = {{"on_error", err_on_error}, {NULL, NULL}};
