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
 *   core.reload.cwd() -> the working directory (to compare module paths)
 *
 * A watcher never keeps the loop alive by itself.  Relies on host/watch.c,
 * host/loop.c (which owns the SIGHUP handle) and the scheduler.
 */
#include "bindings.h"

#include <string.h>

/* Lua userdata; the ah_watch it points to is freed by ah__watch_close. */
typedef struct rwatch {
  ah_watch *w;
  lua_State *L;
  int handler;   /* registry ref, released in close */
  int self;      /* registry ref to this userdata while open */
  ah_evloop *loop;
  ah_loop_hup hup;  /* added to the loop while sighup is on */
  int hup_on;
} rwatch;

typedef struct change {
  rwatch *rw;
  const char *path, *data;
  size_t len;
  int err;
} change;

/* [change]: starts the handler as a detached task, in protected mode. */
static int change_p(lua_State *L) {
  change *c = lua_touserdata(L, 1);
  int rc;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->rw->handler);
  lua_pushstring(L, c->path);
  if (c->data) {
    lua_pushlstring(L, c->data, c->len);
    rc = ah__task_detach(L, 2);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, c->err == UV_ENOENT ? "deleted" : uv_strerror(c->err));
    rc = ah__task_detach(L, 3);
  }
  if (rc != LUA_OK) return ah__nomem(L, "reload");
  return 0;
}

static void on_change(ah_watch *w, const char *path, const char *data,
                      size_t len, int err) {
  rwatch *rw = ah__watch_data(w);
  lua_State *L = rw->L;
  change c;
  c.rw = rw;
  c.path = path;
  c.data = data;
  c.len = len;
  c.err = err;
  if (ah__protect(L, change_p, &c, 0) != LUA_OK)
    ah__log(L, 3, "reload: out of memory; a change was not handled");
}

static void on_hup(ah_loop_hup *h) {
  rwatch *rw = container_of(h, rwatch, hup);
  if (rw->w) ah__watch_rescan(rw->w);
}

static rwatch *check_watch(lua_State *L, const char *fn) {
  rwatch *rw = ah__arg_udata(L, 1, "agenthost.watch", fn, "a watcher");
  if (!rw->w)
    ah__error_raise(L, "invalid_argument", 0, "%s: the watcher is closed", fn);
  return rw;
}

static int w_close(lua_State *L) {
  rwatch *rw = ah__arg_udata(L, 1, "agenthost.watch", "watcher:close", "a watcher");
  if (!rw->w) return 0;
  ah__watch_close(rw->w);
  rw->w = NULL;
  if (rw->hup_on) {
    ah__loop_hup_remove(rw->loop, &rw->hup);
    rw->hup_on = 0;
  }
  luaL_unref(L, LUA_REGISTRYINDEX, rw->handler);
  luaL_unref(L, LUA_REGISTRYINDEX, rw->self);
  rw->handler = rw->self = LUA_NOREF;
  return 0;
}

static int w_file(lua_State *L) {
  rwatch *rw = check_watch(L, "watcher:file");
  const char *path = ah__arg_string(L, 2, "watcher:file", "path", NULL);
  size_t len;
  const char *data = ah__arg_string(L, 3, "watcher:file", "content", &len);
  if (ah__watch_file(rw->w, path, ah__hash(data, len)) != 0)
    return ah__nomem(L, "watcher:file");
  return 0;
}

static int w_rescan(lua_State *L) {
  ah__watch_rescan(check_watch(L, "watcher:rescan")->w);
  return 0;
}

static int w_add(lua_State *L) {
  rwatch *rw = check_watch(L, "watcher:add");
  const char *dir = ah__arg_string(L, 2, "watcher:add", "dir", NULL);
  int rc = ah__watch_add(rw->w, dir);
  if (rc != 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "cannot watch '%s': %s (give an existing directory)",
                           dir, uv_strerror(rc));
  return 0;
}

static int w_polling(lua_State *L) {
  lua_pushboolean(L, ah__watch_polling(check_watch(L, "watcher:polling")->w));
  return 1;
}

#define FN_WATCH "ah.reload.watch"

/* core.reload.watch(dir, handler [, opts]) -> watcher */
static int r_watch(lua_State *L) {
  ah_sched *S = ah__sched_get(L);
  const char *dir = ah__arg_string(L, 1, FN_WATCH, "dir", NULL);
  int debounce, poll, sighup;
  rwatch *rw;
  int rc;
  ah__arg_type(L, 2, LUA_TFUNCTION, FN_WATCH, "handler");
  ah__arg_options(L, 3, FN_WATCH);
  debounce = (int)ah__opt_integer(L, 3, FN_WATCH, "debounce_ms", 50, 0, 60000);
  poll = ah__opt_boolean(L, 3, FN_WATCH, "poll", 0);
  sighup = ah__opt_boolean(L, 3, FN_WATCH, "sighup", 0);
  rw = lua_newuserdatauv(L, sizeof *rw, 0);
  memset(rw, 0, sizeof *rw);
  rw->handler = rw->self = LUA_NOREF;
  luaL_setmetatable(L, "agenthost.watch");
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  rw->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  if ((rc = ah__watch_open(&rw->w, ah__sched_uv(S), (unsigned)debounce,
                           on_change, rw)) != 0)
    return ah__error_raise(L, "resource", 1, "%s: cannot create a watcher: %s",
                           FN_WATCH, uv_strerror(rc));
  rw->loop = ah__sched_loop(S);
  rw->hup.fn = on_hup;
  if (poll) ah__watch_force_polling(rw->w);
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
  if (sighup) rw->hup_on = ah__loop_hup_add(rw->loop, &rw->hup) == 0;
  return 1;
}

static int r_hash(lua_State *L) {
  size_t len;
  const char *s = ah__arg_string(L, 1, "ah.reload.hash", "the text", &len);
  lua_pushinteger(L, (lua_Integer)ah__hash(s, len));
  return 1;
}

/* core.reload.cwd() -> the absolute path of the working directory */
static int r_cwd(lua_State *L) {
  char buf[4096];
  size_t len = sizeof buf;
  int rc = uv_cwd(buf, &len);
  if (rc != 0)
    return ah__error_raise(L, "io", 0, "ah.reload.cwd: %s", uv_strerror(rc));
  lua_pushlstring(L, buf, len);
  return 1;
}

int ah__open_reload(lua_State *L) {
  static const luaL_Reg methods[] = {{"file", w_file},   {"rescan", w_rescan},
                                     {"add", w_add},     {"polling", w_polling},
                                     {"close", w_close}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"watch", r_watch}, {"hash", r_hash},
                                 {"cwd", r_cwd},     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", w_close}, {NULL, NULL}};
  ah__metatable(L, "agenthost.watch", methods, meta, NULL, NULL);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
