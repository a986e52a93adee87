/*
 * The embedding API of agenthost.h: an ah_host is a Lua state with the
 * agenthost module loaded, driven by ah_step or ah_run, fed by ah_post.
 *
 * Posts cross threads through host/post.c (a mutex-guarded list and a
 * uv_async_t); on the loop thread each one goes to the Lua channel of its
 * name (scripts/agenthost/channel.lua), which keeps the order and holds a
 * full channel's posts in a backlog.  Until a post is in its channel it
 * counts against post_capacity.
 *
 * The state's memory comes from host/alloc.c's arena unless the embedder
 * gives an allocator (ah_config.alloc), the build uses the system's
 * (AH_ALLOC_SYSTEM, as the sanitizer builds do, so that they see every
 * block) or AGENTHOST_ALLOC=system asks for it at run time (valgrind).
 *
 * Relies on the scheduler (bindings/task.c), the agenthost module,
 * host/post.c, host/json.c (the check of a post's text) and host/alloc.c.
 */
#include "bindings.h"
#include "agenthost.h"

#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 64
/* Bytes a state has before its small blocks come from the arena's slabs
 * (host/alloc.c: below that, malloc's locality serves a small heap better). */
#define AH_ARENA_START ((size_t)16 << 20)
#define CHANNEL_MAX_LEN 256

/* Owned by the embedder: made by ah_open, freed by ah_close. */
struct ah_host {
  lua_State *L;          /* owned; closed in ah_close */
  ah_arena *arena;       /* L's memory, or NULL; destroyed after L is closed */
  ah_sched *S;           /* lives in L */
  uv_loop_t *uv;         /* owned by S (or borrowed from the embedder) */
  ah_posts posts;        /* its handle is closed in ah_close */
  int posts_open;        /* the posts' handle is not closed yet */
  uv_thread_t owner;     /* the thread that opened the host */
  int busy;              /* inside ah_step or ah_run */
  int closing;
  /* Registry refs, all released by lua_close in ah_close. */
  int module_ref;        /* the agenthost module table */
  int post_ref;          /* channel._post */
  int done_ref;          /* the C closure that marks a post delivered */
  ah_log_fn log;
  ah_error_fn on_error;
  void *ud;
  char errmsg[512];
};

static char HOST_KEY;

static const char *const codes[] = {
    "ok",                                 /* AH_OK */
    "error",                              /* AH_ERROR */
    "invalid argument",                   /* AH_EINVAL */
    "misuse (wrong time or wrong thread)", /* AH_EMISUSE */
    "out of memory",                      /* AH_ENOMEM */
    "cannot read the file",               /* AH_EIO */
    "script error",                       /* AH_ESCRIPT */
    "too many posts waiting",             /* AH_EFULL */
    "the host is closing",                /* AH_ECLOSED */
};

const char *ah_strerror(int code) {
  if (code == AH_AGAIN) return "work remains";
  if (code > 0 || -code >= (int)(sizeof codes / sizeof codes[0]))
    return "unknown error";
  return codes[-code];
}

void ah_config_init(ah_config *cfg) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->version = AH_VERSION_NUM;
  cfg->channel_capacity = 1024;
  cfg->post_capacity = 65536;
}

/* Records the message of a failed call and returns code. */
static int fail(ah_host *h, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(h->errmsg, sizeof h->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

/* Every call but ah_post belongs to the opening thread, outside steps. */
static int check_call(ah_host *h, const char *what) {
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &h->owner))
    return fail(h, AH_EMISUSE, "%s: called from a thread other than the one "
                               "that opened the host", what);
  if (h->closing)
    return fail(h, AH_EMISUSE, "%s: the host is closing", what);
  return AH_OK;
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static void log_stderr(void *ud, int level, const char *msg) {
  (void)ud;
  if (level < 0 || level > AH_LOG_ERROR) level = AH_LOG_ERROR;
  fprintf(stderr, "agenthost: %s: %s\n", level_names[level], msg);
  fflush(stderr);
}

static void host_log(ah_host *h, int level, const char *msg) {
  (h->log ? h->log : log_stderr)(h->ud, level, msg);
}

/* task.on_error handler that forwards to cfg.on_error. */
static int forward_error(lua_State *L) {
  ah_host *h = lua_touserdata(L, lua_upvalueindex(1));
  const char *msg = luaL_tolstring(L, 1, NULL);
  h->on_error(h->ud, msg, luaL_optstring(L, 2, ""));
  return 0;
}

/* Marks n posts delivered (called by the channel module). */
static int post_done(lua_State *L) {
  ah_host *h = lua_touserdata(L, lua_upvalueindex(1));
  ah__posts_done(&h->posts, (size_t)luaL_checkinteger(L, 1));
  return 0;
}

/* ---- opening ---------------------------------------------------------------- */

/* Prepends each directory of cfg->script_path (the user's own modules) to
 * package.path; the agenthost library itself is built in (scripts.c). */
static void set_paths(lua_State *L, const char *script_path) {
  luaL_Buffer b;
  const char *p = script_path, *end;
  luaL_buffinit(L, &b);
  while (p && *p) {
    end = strchr(p, ';');
    if (!end) end = p + strlen(p);
    if (end > p) {
      luaL_addlstring(&b, p, (size_t)(end - p));
      luaL_addstring(&b, "/?.lua;");
      luaL_addlstring(&b, p, (size_t)(end - p));
      luaL_addstring(&b, "/?/init.lua;");
    }
    p = *end ? end + 1 : end;
  }
  luaL_pushresult(&b);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushvalue(L, -3);
  lua_insert(L, -2);
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 2);
  ah__scripts_install(L);
}

/* Builds the state, in protected mode: [host, cfg]. */
static int setup(lua_State *L) {
  ah_host *h = lua_touserdata(L, 1);
  const ah_config *cfg = lua_touserdata(L, 2);
  luaL_openlibs(L);
  set_paths(L, cfg->script_path);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_agenthost_core);
  lua_setfield(L, -2, "agenthost.core");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, h);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
  if (cfg->loop) ah__sched_borrow(L, cfg->loop);
  ah__store_default_path(L, cfg->db_path);
  if (cfg->log) ah__log_sink(L, cfg->log, cfg->ud);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "agenthost");
  lua_call(L, 1, 1);
  lua_pushvalue(L, -1);
  h->module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  h->S = ah__sched_get(L);
  h->uv = ah__sched_uv(h->S);
  ah__sched_budget(h->S, cfg->instruction_budget);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "agenthost.channel");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "_capacity");
  lua_pushinteger(L, cfg->channel_capacity);
  lua_call(L, 1, 0);
  lua_getfield(L, -1, "_post");
  h->post_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, post_done, 1);
  h->done_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  if (cfg->on_error) {
    lua_getfield(L, -1, "task");
    lua_getfield(L, -1, "on_error");
    lua_pushlightuserdata(L, h);
    lua_pushcclosure(L, forward_error, 1);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
  }
  return 0;
}

static void deliver(ah_posts *p);

static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "agenthost: PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "error object is not a string");
  fflush(stderr);
  return 0; /* Lua aborts */
}

/* The Lua state of a new host, on the allocator its configuration asks
 * for (see the top of this file). */
static lua_State *open_state(const ah_config *cfg, ah_arena **arena) {
  lua_State *L;
  const char *env = getenv("AGENTHOST_ALLOC");
  *arena = NULL;
  if (cfg->alloc) {
    L = lua_newstate(cfg->alloc, cfg->alloc_ud);
  } else {
#ifndef AH_ALLOC_SYSTEM
    if (!(env && strcmp(env, "system") == 0)) *arena = ah__arena_new(0, AH_ARENA_START);
#else
    (void)env;
#endif
    L = lua_newstate(*arena ? ah__arena_alloc : ah__sysalloc, *arena);
  }
  if (L) lua_atpanic(L, panic);
  return L;
}

int ah_open(const ah_config *cfg, ah_host **out) {
  ah_config defaults;
  ah_host *h;
  lua_State *L;
  int rc;
  if (!out) return AH_EINVAL;
  *out = NULL;
  if (!cfg) {
    ah_config_init(&defaults);
    cfg = &defaults;
  }
  if (cfg->version != AH_VERSION_NUM || cfg->instruction_budget < 0 ||
      cfg->channel_capacity < 1 || cfg->channel_capacity > (1 << 26) ||
      cfg->post_capacity < 0)
    return AH_EINVAL;
  if (!(h = calloc(1, sizeof *h))) return AH_ENOMEM;
  h->owner = uv_thread_self();
  h->log = cfg->log;
  h->on_error = cfg->on_error;
  h->ud = cfg->ud;
  h->module_ref = h->post_ref = h->done_ref = LUA_NOREF;
  L = open_state(cfg, &h->arena);
  if (!L) {
    ah__arena_destroy(h->arena);
    free(h);
    return AH_ENOMEM;
  }
  h->L = L;
  lua_pushcfunction(L, setup);
  lua_pushlightuserdata(L, h);
  lua_pushlightuserdata(L, (void *)cfg);
  rc = lua_pcall(L, 2, 0, 0);
  if (rc == LUA_OK &&
      ah__posts_init(&h->posts, h->uv, (size_t)cfg->post_capacity, deliver) != 0)
    rc = LUA_ERRMEM;
  if (rc != LUA_OK) {
    char msg[600];
    snprintf(msg, sizeof msg, "ah_open: %s",
             rc == LUA_ERRMEM ? "out of memory" : lua_tostring(L, -1));
    host_log(h, AH_LOG_ERROR, msg);
    lua_close(L);
    ah__arena_destroy(h->arena);
    free(h);
    return rc == LUA_ERRMEM ? AH_ENOMEM : AH_ESCRIPT;
  }
  h->posts.data = h;
  h->posts_open = 1;
  *out = h;
  return AH_OK;
}

/* ---- closing ---------------------------------------------------------------- */

static void on_posts_closed(uv_handle_t *handle) {
  ah_host *h = ((ah_posts *)handle->data)->data;
  h->posts_open = 0;
}

int ah_close(ah_host *h) {
  int round, rc;
  if (!h) return AH_EINVAL;
  if ((rc = check_call(h, "ah_close")) != AH_OK) return rc;
  if (h->busy || ah__sched_inside(h->S))
    return fail(h, AH_EMISUSE, "ah_close: called while tasks run (from a host "
                               "function or inside ah_step or ah_run)");
  h->closing = 1;
  ah__posts_close(&h->posts, on_posts_closed);
  while (h->posts_open) uv_run(h->uv, UV_RUN_NOWAIT);
  /* Cancel every task and run what that makes ready: cleanup handlers,
   * <close> variables.  A task that catches its cancellation and waits
   * again is cancelled again, a few times; what still lives then is freed
   * with the state (its pending I/O aborted by the finalizers). */
  for (round = 0; round < 4 && ah__sched_live(h->S) > 0; round++) {
    int turns = 0;
    ah__sched_cancel_all(h->S, round > 0);
    while (ah__sched_busy(h->S) == 2 && turns++ < 1000)
      ah__sched_drive(h->S, h->L, AH_DRIVE_STEP, UINT64_MAX / 2);
  }
  lua_close(h->L); /* closes databases (committing queued writes) and the loop */
  ah__arena_destroy(h->arena);
  ah__posts_free(&h->posts);
  free(h);
  return AH_OK;
}

/* ---- loading ---------------------------------------------------------------- */

/* Starts the chunk on the top of the stack as a detached task. */
static int start_chunk(ah_host *h, int status) {
  lua_State *L = h->L;
  if (status != LUA_OK) {
    int code = status == LUA_ERRFILE ? AH_EIO
               : status == LUA_ERRMEM ? AH_ENOMEM
                                      : AH_ESCRIPT;
    fail(h, code, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "load failed");
    lua_pop(L, 1);
    return code;
  }
  if (ah__task_detach(L, 0) != LUA_OK)
    return fail(h, AH_ENOMEM, "out of memory: the script was not started");
  return AH_OK;
}

int ah_load_file(ah_host *h, const char *path) {
  int rc;
  if (!h) return AH_EINVAL;
  if ((rc = check_call(h, "ah_load_file")) != AH_OK) return rc;
  if (!path || !*path) return fail(h, AH_EINVAL, "ah_load_file: no path");
  return start_chunk(h, luaL_loadfilex(h->L, path, "t"));
}

int ah_load_string(ah_host *h, const char *code, const char *name) {
  int rc;
  if (!h) return AH_EINVAL;
  if ((rc = check_call(h, "ah_load_string")) != AH_OK) return rc;
  if (!code) return fail(h, AH_EINVAL, "ah_load_string: no code");
  return start_chunk(h, luaL_loadbufferx(h->L, code, strlen(code),
                                         name ? name : "=string", "t"));
}

/* ---- driving ------------------------------------------------------------------ */

int ah_step(ah_host *h, int budget_us) {
  int rc;
  if (!h) return AH_EINVAL;
  if ((rc = check_call(h, "ah_step")) != AH_OK) return rc;
  if (budget_us < 0) return fail(h, AH_EINVAL, "ah_step: budget_us must be >= 0");
  if (h->busy || ah__sched_inside(h->S))
    return fail(h, AH_EMISUSE, "ah_step: called while tasks run (inside a step, "
                               "ah_run or the loop's own run)");
  h->busy = 1;
  /* Referenced, the posts' handle makes the loop alive, so that the turn
   * of the loop happens (and takes the posts) even when nothing else of
   * ours is active. */
  uv_ref((uv_handle_t *)&h->posts.async);
  rc = ah__sched_drive(h->S, h->L, AH_DRIVE_STEP, (uint64_t)budget_us * 1000u);
  uv_unref((uv_handle_t *)&h->posts.async);
  h->busy = 0;
  if (rc < 0) return fail(h, AH_EMISUSE, "ah_step: the loop is already running");
  return ah__sched_busy(h->S) > 0 || ah__posts_pending(&h->posts) > 0 ? AH_AGAIN
                                                                      : AH_OK;
}

int ah_run(ah_host *h) {
  int rc;
  if (!h) return AH_EINVAL;
  if ((rc = check_call(h, "ah_run")) != AH_OK) return rc;
  if (h->busy || ah__sched_inside(h->S))
    return fail(h, AH_EMISUSE, "ah_run: called while tasks run (inside a step, "
                               "ah_run or the loop's own run)");
  h->busy = 1;
  /* Posts from other threads are what a task waiting on a channel waits
   * for: they keep the loop alive while ah_run runs. */
  uv_ref((uv_handle_t *)&h->posts.async);
  rc = ah__sched_drive(h->S, h->L, AH_DRIVE_IDLE, 0);
  uv_unref((uv_handle_t *)&h->posts.async);
  h->busy = 0;
  if (rc == UV_EBUSY) return fail(h, AH_EMISUSE, "ah_run: the loop is already running");
  if (rc == UV_EAGAIN)
    return fail(h, AH_ERROR, "ah_run: every task was waiting and nothing could "
                             "wake them; they were cancelled");
  return AH_OK;
}

/* ---- posts ---------------------------------------------------------------------- */

/* Hands one post to its channel, in protected mode: [host, post]. */
static int deliver_one(lua_State *L) {
  ah_host *h = lua_touserdata(L, 1);
  ah_postmsg *m = lua_touserdata(L, 2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->post_ref);
  lua_pushlstring(L, m->channel, m->channel_len);
  lua_pushlstring(L, m->json, m->json_len);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->done_ref);
  lua_call(L, 3, 1);
  return 1;
}

/* [post] with the delivery's error below: reports it. */
static int deliver_failed(lua_State *L) {
  ah_postmsg *m = lua_touserdata(L, 1);
  lua_pushfstring(L, "ah_post to channel '%s': %s", m->channel,
                  luaL_tolstring(L, -2, NULL));
  ah__report(L, -1, "");
  return 0;
}

static void deliver(ah_posts *p) {
  ah_host *h = p->data;
  lua_State *L = h->L;
  ah_postmsg *m = ah__posts_take(p), *next;
  size_t done = 0;
  for (; m; m = next) {
    next = m->next;
    lua_pushcfunction(L, deliver_one);
    lua_pushlightuserdata(L, h);
    lua_pushlightuserdata(L, m);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      /* Out of memory (the text was checked with the grammar ah.json
       * decodes by, so it decodes): reported, not dropped silently. */
      if (ah__protect(L, deliver_failed, m, 0) != LUA_OK) {
        char msg[CHANNEL_MAX_LEN + 80];
        snprintf(msg, sizeof msg, "ah_post to channel '%s': out of memory; "
                 "the post was dropped", m->channel);
        host_log(h, AH_LOG_ERROR, msg);
      }
      lua_pop(L, 1);
      done++;
    } else {
      if (lua_toboolean(L, -1)) done++;
      lua_pop(L, 1);
    }
    free(m);
  }
  if (done) ah__posts_done(p, done);
}

int ah_post(ah_host *h, const char *channel, const char *json) {
  size_t clen, jlen;
  int rc;
  if (!h || !channel || !json) return AH_EINVAL;
  /* Between enter and leave, ah_close waits for this thread. */
  if (ah__posts_enter(&h->posts) != 0) return AH_ECLOSED;
  clen = strlen(channel);
  jlen = strlen(json);
  /* No errmsg here: the message buffer belongs to the host's thread. */
  if (clen == 0 || clen > CHANNEL_MAX_LEN || ah__json_check(json, jlen) != 0)
    rc = UV_EINVAL;
  else
    rc = ah__posts_push(&h->posts, channel, clen, json, jlen);
  ah__posts_leave(&h->posts);
  if (rc == UV_EINVAL) return AH_EINVAL;
  if (rc == UV_EAGAIN) return AH_EFULL;
  if (rc == UV_EPIPE) return AH_ECLOSED;
  if (rc == UV_ENOMEM) return AH_ENOMEM;
  return rc ? AH_ERROR : AH_OK;
}

/* ---- host functions --------------------------------------------------------------- */

static int is_identifier(const char *s) {
  size_t i, n = strlen(s);
  if (n == 0 || n > NAME_MAX_LEN) return 0;
  for (i = 0; i < n; i++) {
    char c = s[i];
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return 0;
  }
  return 1;
}

/* [host, name, fn] in protected mode: ah.host[name] = fn */
static int register_fn(lua_State *L) {
  ah_host *h = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->module_ref);
  lua_getfield(L, -1, "host");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "host");
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

int ah_register(ah_host *h, const char *name, lua_CFunction fn) {
  int rc;
  if (!h) return AH_EINVAL;
  if ((rc = check_call(h, "ah_register")) != AH_OK) return rc;
  if (!name || !fn || !is_identifier(name))
    return fail(h, AH_EINVAL, "ah_register: name must be a Lua identifier of "
                              "1 to %d bytes and fn a function", NAME_MAX_LEN);
  lua_pushcfunction(h->L, register_fn);
  lua_pushlightuserdata(h->L, h);
  lua_pushstring(h->L, name);
  lua_pushcfunction(h->L, fn);
  if (lua_pcall(h->L, 3, 0, 0) != LUA_OK) {
    lua_pop(h->L, 1);
    return fail(h, AH_ENOMEM, "ah_register: out of memory");
  }
  return AH_OK;
}

ah_host *ah_host_of(lua_State *L) {
  ah_host *h;
  if (!L) return NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HOST_KEY);
  h = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return h;
}

/* ---- escape hatches ------------------------------------------------------------------ */

lua_State *ah_lua(ah_host *h) { return h ? h->L : NULL; }
uv_loop_t *ah_loop(ah_host *h) { return h ? h->uv : NULL; }

const char *ah_errmsg(const ah_host *h) {
  return h ? h->errmsg : "no host (NULL)";
}

/* ---- programs that are the whole process ---------------------------------------- */

int ah_handle_signals(ah_host *h) {
  if (!h) return AH_EINVAL;
  if (ah__sched_signals(h->L) != 0)
    return fail(h, AH_ERROR, "ah_handle_signals: cannot install the handlers");
  return AH_OK;
}

int ah_signal_seen(const ah_host *h) {
  return h ? ah__sched_signal_seen(h->L) : 0;
}

const char *ah_traceback(const ah_host *h) {
  const char *tb = h ? ah__last_traceback(h->L) : NULL;
  return tb ? tb : "";
}
