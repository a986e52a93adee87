/*
 * ah.reload's C part: directory watchers whose changes start a detached
 * task running a Lua handler, the content hash, and SIGHUP.  The staging,
 * validation and swap are Lua (scripts/agenthost/reload.lua).
 *
 *   local w = core.reload.watch(dir, handler [, {debounce_ms =, sighup =, poll =}])
 *     handler(path, content) for a changed file, handler(path, nil, err)
 *     for a deleted or unreadable one; each call runs as its own task.
 *   w:file(path, content)   registers what a file was loaded with
 *   w:rescan()              checks every known file now
 *   w:close()
 *   core.reload.hash(s) -> integer
 *
 * A watcher never keeps the loop alive by itself.  Relies on host/watch.c
 * and the scheduler.
 */
#include "bindings.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* Lua userdata; the ah_watch it points to is freed by ah__watch_close. */
typedef struct rwatch {
  ah_watch *w;
  lua_State *L;
  int handler;   /* registry ref, released in close */
  int self;      /* registry ref to this userdata while open */
  uv_signal_t *hup; /* malloc'd; freed in its close callback */
} rwatch;

static void on_change(ah_watch *w, const char *path, const char *data,
                      size_t len, int err) {
  rwatch *rw = ah__watch_data(w);
  lua_State *L = rw->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rw->handler);
  lua_pushstring(L, path);
  if (data) {
    lua_pushlstring(L, data, len);
    ah__task_detach(L, 2);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, err == UV_ENOENT ? "deleted" : uv_strerror(err));
    ah__task_detach(L, 3);
  }
}

static void on_hup(uv_signal_t *h, int signum) {
  rwatch *rw = h->data;
  (void)signum;
  if (rw->w) ah__watch_rescan(rw->w);
}

static void on_hup_closed(uv_handle_t *h) { free(h); }

static rwatch *check_watch(lua_State *L) {
  rwatch *rw = luaL_checkudata(L, 1, "agenthost.watch");
  if (!rw->w) luaL_error(L, "the watcher is closed");
  return rw;
}

static int w_close(lua_State *L) {
  rwatch *rw = luaL_checkudata(L, 1, "agenthost.watch");
  if (!rw->w) return 0;
  ah__watch_close(rw->w);
  rw->w = NULL;
  if (rw->hup) {
    uv_close((uv_handle_t *)rw->hup, on_hup_closed);
    rw->hup = NULL;
  }
  luaL_unref(L, LUA_REGISTRYINDEX, rw->handler);
  luaL_unref(L, LUA_REGISTRYINDEX, rw->self);
  rw->handler = rw->self = LUA_NOREF;
  return 0;
}

static int w_file(lua_State *L) {
  rwatch *rw = check_watch(L);
  const char *path = luaL_checkstring(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  if (ah__watch_file(rw->w, path, ah__hash(data, len)) != 0)
    return luaL_error(L, "out of memory");
  return 0;
}

static int w_rescan(lua_State *L) {
  ah__watch_rescan(check_watch(L)->w);
  return 0;
}

static int w_add(lua_State *L) {
  rwatch *rw = check_watch(L);
  const char *dir = luaL_checkstring(L, 2);
  int rc = ah__watch_add(rw->w, dir);
  if (rc != 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "cannot watch '%s': %s (give an existing directory)",
                           dir, uv_strerror(rc));
  return 0;
}

static int w_polling(lua_State *L) {
  lua_pushboolean(L, ah__watch_polling(check_watch(L)->w));
  return 1;
}

static int opt_int(lua_State *L, int t, const char *k, int def) {
  int v = def;
  if (lua_istable(L, t)) {
    lua_getfield(L, t, k);
    if (!lua_isnil(L, -1)) v = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  return v;
}

static int opt_bool(lua_State *L, int t, const char *k) {
  int v = 0;
  if (lua_istable(L, t)) {
    lua_getfield(L, t, k);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  return v;
}

/* core.reload.watch(dir, handler [, opts]) -> watcher */
static int r_watch(lua_State *L) {
  ah_sched *S = ah__sched_get(L);
  const char *dir = luaL_checkstring(L, 1);
  int debounce = opt_int(L, 3, "debounce_ms", 50);
  rwatch *rw;
  int rc;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (debounce < 0 || debounce > 60000)
    return ah__error_raise(L, "invalid_argument", 0,
                           "debounce_ms must be between 0 and 60000");
  rw = lua_newuserdatauv(L, sizeof *rw, 0);
  memset(rw, 0, sizeof *rw);
  rw->handler = rw->self = LUA_NOREF;
  luaL_setmetatable(L, "agenthost.watch");
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  rw->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  if ((rc = ah__watch_open(&rw->w, ah__sched_uv(S), (unsigned)debounce,
                           on_change, rw)) != 0)
    return luaL_error(L, "cannot create a watcher: %s", uv_strerror(rc));
  if (opt_bool(L, 3, "poll")) ah__watch_force_polling(rw->w);
  lua_pushvalue(L, 2);
  rw->handler = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  rw->self = luaL_ref(L, LUA_REGISTRYINDEX);
  if ((rc = ah__watch_add(rw->w, dir)) != 0) {
    lua_pushcfunction(L, w_close);
    lua_pushvalue(L, -2);
    lua_call(L, 1, 0);
    return ah__error_raise(L, "invalid_argument", 0,
                           "cannot watch '%s': %s (give an existing directory)",
                           dir, uv_strerror(rc));
  }
  if (opt_bool(L, 3, "sighup")) {
    rw->hup = malloc(sizeof *rw->hup);
    if (rw->hup) {
      uv_signal_init(ah__sched_uv(S), rw->hup);
      rw->hup->data = rw;
      uv_signal_start(rw->hup, on_hup, SIGHUP);
      uv_unref((uv_handle_t *)rw->hup);
    }
  }
  return 1;
}

static int r_hash(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_pushinteger(L, (lua_Integer)ah__hash(s, len));
  return 1;
}

int ah__open_reload(lua_State *L) {
  static const luaL_Reg methods[] = {{"file", w_file},   {"rescan", w_rescan},
                                     {"add", w_add},     {"polling", w_polling},
                                     {"close", w_close}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"watch", r_watch}, {"hash", r_hash},
                                 {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", w_close}, {NULL, NULL}};
  ah__metatable(L, "agenthost.watch", methods, meta);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
