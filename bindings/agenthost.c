/*
 * The Lua module entry points.  luaopen_agenthost_core builds the table of
 * C parts (task, error, json, clock, rusage); scripts/agenthost/init.lua adds the
 * Lua parts on top of it and is what `require "agenthost"` returns.
 *
 * luaopen_agenthost serves a stock lua5.4 that finds agenthost.so on its
 * LUA_CPATH: it adds the built-in Lua library's searcher (scripts.c) and
 * loads the library's init, so the .so needs nothing beside it.
 */
#include "bindings.h"
#include "agenthost.h"

#include <stdio.h>
#include <string.h>

const char *ah_version(void) { return AH_VERSION_STRING; }

/* ah.clock() -> monotonic seconds */
static int m_clock(lua_State *L) {
  lua_pushnumber(L, ah__now());
  return 1;
}

/* ah.wallclock() -> seconds since the Unix epoch, to the microsecond (the
 * system's real-time clock, which may step; ah.clock for intervals) */
static int m_wallclock(lua_State *L) {
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) != 0) return 0;
  lua_pushnumber(L, (double)tv.tv_sec + tv.tv_usec / 1e6);
  return 1;
}

/* ah.rusage() -> {utime, stime, cpu, maxrss_kb} of this process */
static int m_rusage(lua_State *L) {
  uv_rusage_t ru;
  if (uv_getrusage(&ru) != 0) return 0;
  lua_createtable(L, 0, 4);
  lua_pushnumber(L, (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
  lua_setfield(L, -2, "utime");
  lua_pushnumber(L, (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  lua_setfield(L, -2, "stime");
  lua_pushnumber(L, (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                        (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  lua_setfield(L, -2, "cpu");
  lua_pushinteger(L, (lua_Integer)ru.ru_maxrss);
  lua_setfield(L, -2, "maxrss_kb");
  return 1;
}

/* ah.isatty(fd) -> whether the descriptor is a terminal (0, 1, 2 ...) */
static int m_isatty(lua_State *L) {
  lua_Integer fd = ah__arg_integer(L, 1, "ah.isatty", "fd", 0, 1 << 20);
  lua_pushboolean(L, uv_guess_handle((int)fd) == UV_TTY);
  return 1;
}

/* ---- logging ---------------------------------------------------------------- */

/* Where ah.log goes: a light userdata to this record in the registry, set
 * by the embedding host; none means stderr. */
typedef struct log_sink {
  void (*fn)(void *ud, int level, const char *msg);
  void *ud;
} log_sink;

static char LOG_KEY;
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};

void ah__log_sink(lua_State *L, void (*fn)(void *ud, int level, const char *msg),
                  void *ud) {
  log_sink *s = NULL;
  if (fn) {
    s = lua_newuserdatauv(L, sizeof *s, 0);
    s->fn = fn;
    s->ud = ud;
  } else {
    lua_pushnil(L);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &LOG_KEY);
}

/* ah.log(level, ...): the values as print shows them, joined by spaces. */
static int m_log(lua_State *L) {
  int level = ah__arg_word(L, 1, "ah.log", "level", log_levels);
  int i, n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (i = 2; i <= n; i++) {
    if (i > 2) luaL_addchar(&b, ' ');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  ah__log(L, level, lua_tostring(L, -1));
  return 0;
}

void ah__log(lua_State *L, int level, const char *msg) {
  log_sink *s;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &LOG_KEY);
  s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (s) {
    s->fn(s->ud, level, msg);
  } else {
    fprintf(stderr, "agenthost: %s: %s\n", log_levels[level], msg);
    fflush(stderr);
  }
}

/* ah.step([budget_seconds]) -> true while tasks are live.  For a Lua host
 * that owns its frame loop: runs ready tasks for at most the budget (at
 * least one; default 0.001 s), then turns the loop once without blocking. */
static int m_step(lua_State *L) {
  double s = lua_isnoneornil(L, 1)
                 ? 0.001
                 : ah__arg_number(L, 1, "ah.step", "the budget (seconds)", 0, 3600);
  ah_sched *S = ah__sched_get(L);
  int rc;
  if (ah__task_current(L))
    return ah__error_raise(L, "invalid_argument", 0,
                           "ah.step cannot be called inside a task: it is for "
                           "the host's frame loop");
  rc = ah__sched_drive(S, L, AH_DRIVE_STEP, (uint64_t)(s * 1e9));
  if (rc == UV_EBUSY)
    return ah__error_raise(L, "invalid_argument", 0,
                           "ah.step: the loop is already running (task.run "
                           "or another step)");
  lua_pushboolean(L, ah__sched_busy(S) > 0);
  return 1;
}

/* ---- per-state contexts ------------------------------------------------------ */

typedef struct context_box {
  void *p;
  void (*close)(void *p);
} context_box;

static int context_gc(lua_State *L) {
  context_box *b = lua_touserdata(L, 1);
  if (b->p) b->close(b->p);
  b->p = NULL;
  return 0;
}

void *ah__context_peek(lua_State *L, const void *key) {
  context_box *b;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  b = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return b ? b->p : NULL;
}

void *ah__context(lua_State *L, const void *key, ah_context_open open,
                  void (*close)(void *p), const char *what) {
  context_box *b;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  b = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (b) return b->p;
  b = lua_newuserdatauv(L, sizeof *b, 0);
  b->p = NULL;
  b->close = close;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, context_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if (open(&b->p, ah__sched_uv(ah__sched_get(L))) != 0)
    ah__error_raise(L, "resource", 1, "%s", what);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  return b->p;
}

void ah__metatable(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *meta, lua_CFunction index, const void *key) {
  if (luaL_newmetatable(L, name)) {
    if (meta) luaL_setfuncs(L, meta, 0);
    if (methods) {
      lua_newtable(L);
      luaL_setfuncs(L, methods, 0);
      if (index) lua_pushcclosure(L, index, 1);
      lua_setfield(L, -2, "__index");
    }
  }
  if (key) lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  else lua_pop(L, 1);
}

int luaopen_agenthost_core(lua_State *L) {
  static const luaL_Reg fns[] = {{"clock", m_clock}, {"rusage", m_rusage},
                                 {"wallclock", m_wallclock},
                                 {"isatty", m_isatty}, {"log", m_log},
                                 {"step", m_step},     {NULL, NULL}};
  lua_createtable(L, 0, 12);
  ah__open_task(L);
  lua_setfield(L, -2, "task");
  ah__error_open(L);
  lua_setfield(L, -2, "error");
  ah__open_reload(L);
  lua_setfield(L, -2, "_reload");
  ah__open_http(L);
  lua_setfield(L, -2, "_http");
  ah__open_store(L);
  lua_setfield(L, -2, "store");
  ah__open_proc(L);
  lua_setfield(L, -2, "_proc");
  ah__open_pg(L);
  lua_setfield(L, -2, "_pg");
  ah__open_json(L);
  lua_setfield(L, -2, "json");
  /* JSON null and SQL NULL: the light userdata NULL (ah.json.null, and
   * lua-cjson's null too). */
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  luaL_setfuncs(L, fns, 0);
  lua_pushliteral(L, AH_VERSION_STRING);
  lua_setfield(L, -2, "version");
  return 1;
}

int luaopen_agenthost(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_agenthost_core);
  lua_setfield(L, -2, "agenthost.core");
  lua_pop(L, 2);
  ah__scripts_install(L);
  /* Load the library's init under the name "agenthost", so that the module
   * is one: from the user's own paths when they hold one (a source tree on
   * LUA_PATH, AGENTHOST_SOURCE), else the built-in copy. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushliteral(L, "agenthost");
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 1);
  if (lua_isstring(L, -1)) {
    if (luaL_loadfile(L, lua_tostring(L, -1)) != LUA_OK) return lua_error(L);
  } else if (ah__scripts_load(L, "agenthost") != LUA_OK) {
    return lua_error(L);
  }
  lua_pushliteral(L, "agenthost");
  lua_call(L, 1, 1);
  return 1;
}
