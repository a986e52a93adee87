/*
 * ah.store's C part: SQLite databases whose writes are group-committed by a
 * writer thread and whose reads run on reader threads (host/store.c), so a
 * task waits for the database without blocking the loop.
 *
 *   db = store.open(path, {synchronous =, readers =, busy_timeout =,
 *                          max_result =, max_queue =})
 *   db:exec(sql, ...)   -> changes, last_insert_rowid, once committed
 *   db:post(sql, ...)   -- queued; a failure goes to the error handler
 *   db:batch{{sql, ...}, ...} -> changes, last_insert_rowid; all or nothing
 *   db:query(sql, ...)  -> array of rows (tables keyed by column name)
 *   db:first(sql, ...)  -> the first row, or nil
 *   db:flush()          -- waits until every write queued so far is committed
 *   db:close()          -- drains the queue, then closes
 *   db:stats()          -> counters
 *
 * Parameters are bound, never spliced: nil, booleans (as 1 and 0), integers,
 * floats and strings (bound as text; SQLite keeps the bytes as given).
 * Errors are structured, with kind sql, constraint, busy, io, too_large,
 * invalid_argument or cancelled, the SQLite result code in `code`, and the
 * statement's text (never its parameters) in `sql`.
 *
 * An open database is anchored in the registry until it is closed; a
 * database still open when the Lua state closes is drained then, so a post
 * is never lost on a normal exit.  Relies on host/store.c and the scheduler.
 */
#include "bindings.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MT "agenthost.store"
#define SQL_IN_MESSAGE 160

static char ANCHOR_KEY;
static char DEFAULT_PATH_KEY; /* the path ah.store.open() opens, if any */

void ah__store_default_path(lua_State *L, const char *path) {
  if (path)
    lua_pushstring(L, path);
  else
    lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &DEFAULT_PATH_KEY);
}

/* The userdata behind a db value. */
typedef struct lstore {
  ah_store *st;       /* NULL once closed */
  ah_sched *S;
  lua_State *L;       /* the main thread, for post error reports */
  ah_task *opener;    /* waiting in open, or NULL */
  ah_task *closer;    /* waiting in close, or NULL */
  ah_store *closing;  /* closed by db:close, until its close callback ran */
  long max_queue;
  ah_defer defer;     /* hands the pass's writes to the writer */
  char path[256];
} lstore;

static void kick(ah_defer *d) {
  lstore *ls = container_of(d, lstore, defer);
  if (ls->st) ah__store_kick(ls->st);
}

/* Queues j; the writes of one scheduler pass go to the writer together. */
static int submit(lstore *ls, ah_store_job *j) {
  int rc = ah__store_submit(ls->st, j);
  if (rc == 1) ah__sched_defer(ls->S, &ls->defer);
  return rc < 0 ? rc : 0;
}

/* ---- results and errors ---------------------------------------------------- */

/* Pushes j's error: a structured error with code and sql fields. */
static void push_job_error(lua_State *L, const ah_store_job *j, const char *what) {
  const ah_store_stmt *s = j->nstmts ? &j->stmts[j->failed] : NULL;
  char snip[SQL_IN_MESSAGE + 4];
  if (s) {
    size_t n = s->sql_len > SQL_IN_MESSAGE ? SQL_IN_MESSAGE : s->sql_len;
    memcpy(snip, s->sql, n);
    strcpy(snip + n, s->sql_len > n ? "..." : "");
    ah__error_push(L, j->kind, j->retryable, "%s: %s (in: %s)",
                   what, j->errmsg ? j->errmsg : "", snip);
  }
  else
    ah__error_push(L, j->kind, j->retryable, "%s: %s", what,
                   j->errmsg ? j->errmsg : "");
  lua_pushinteger(L, j->rc);
  lua_setfield(L, -2, "code");
  if (s) {
    lua_pushlstring(L, s->sql, s->sql_len);
    lua_setfield(L, -2, "sql");
  }
  if (j->nstmts > 1) {
    lua_pushinteger(L, j->failed + 1);
    lua_setfield(L, -2, "index");
  }
}

static void push_value(lua_State *L, const ah_store_job *j, const ah_store_val *v) {
  switch (v->type) {
  case AH_SV_INT: lua_pushinteger(L, (lua_Integer)v->u.i); break;
  case AH_SV_FLOAT: lua_pushnumber(L, v->u.d); break;
  case AH_SV_TEXT:
  case AH_SV_BLOB: lua_pushlstring(L, ah__store_text(j, v), v->len); break;
  default: lua_pushnil(L); break;
  }
}

static void push_row(lua_State *L, const ah_store_job *j, size_t r) {
  int c, n = j->ncols;
  const ah_store_val *row = j->vals + (r + 1) * (size_t)n;
  lua_createtable(L, 0, n);
  for (c = 0; c < n; c++) {
    if (row[c].type == AH_SV_NULL) continue;
    lua_pushlstring(L, ah__store_text(j, &j->vals[c]), j->vals[c].len);
    push_value(L, j, &row[c]);
    lua_rawset(L, -3);
  }
}

/* [job] -> the values a completed job hands to its task. */
static int done_push_p(lua_State *L) {
  ah_store_job *j = lua_touserdata(L, 1);
  if (j->kind) {
    push_job_error(L, j, j->label ? j->label : "db");
    return 1;
  } else if (j->type == AH_JOB_FLUSH) {
    return 0;
  } else if (j->type == AH_JOB_READ && j->first_only) {
    if (j->nrows) push_row(L, j, 0);
    else lua_pushnil(L);
    return 1;
  } else if (j->type == AH_JOB_READ) {
    size_t r;
    lua_createtable(L, (int)(j->nrows > 1000000 ? 1000000 : j->nrows), 0);
    for (r = 0; r < j->nrows; r++) {
      push_row(L, j, r);
      lua_rawseti(L, -2, (lua_Integer)r + 1);
    }
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)j->changes);
  lua_pushinteger(L, (lua_Integer)j->rowid);
  return 2;
}

/* Completion of exec, batch, query, first and flush: wakes the task (with
 * a `resource` error when its result cannot be made for lack of memory). */
static void on_done(ah_store_job *j) {
  ah_task *t = j->data;
  lstore *ls = j->owner;
  if (t) ah__task_wake_with(ls->S, t, done_push_p, j, j->kind != 0);
  ah__store_job_free(j); /* t NULL: the waiter was cancelled */
}

/* [job]: reports a failed post. */
static int post_error_p(lua_State *L) {
  push_job_error(L, lua_touserdata(L, 1), "db:post");
  ah__report(L, -1, NULL);
  return 0;
}

/* A post failed: nobody waits for it, so the error handler gets it. */
static void on_post_error(ah_store_job *j) {
  lstore *ls = j->owner;
  if (ah__protect(ls->L, post_error_p, j, 0) != LUA_OK)
    ah__log(ls->L, 3, "db:post: a write failed and could not be reported "
                      "(out of memory)");
  ah__store_job_free(j);
}

static void store_cancel(ah_sched *S, ah_task *t) {
  ah_store_job *j = ah__task_opdata(t);
  (void)S;
  j->data = NULL; /* on_done frees it */
  ah__store_abandon(j);
}

static const ah_op store_op = {"store", store_cancel, NULL, NULL};

/* ---- building jobs ------------------------------------------------------------ */

static const char *type_hint(int type) {
  return type == LUA_TTABLE ? "; encode tables with ah.json.encode first" : "";
}

/* Size of the parameters from..to of L (strings' bytes), raising on a type
 * that cannot be bound. */
static size_t param_bytes(lua_State *L, int from, int to, const char *what) {
  size_t bytes = 0;
  int i;
  for (i = from; i <= to; i++) {
    int ty = lua_type(L, i);
    if (ty == LUA_TSTRING) bytes += lua_rawlen(L, i);
    else if (ty != LUA_TNIL && ty != LUA_TBOOLEAN && ty != LUA_TNUMBER)
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: parameter %d is a %s; parameters must be nil, "
                      "boolean, number or string%s",
                      what, i - from + 1, lua_typename(L, ty), type_hint(ty));
  }
  return bytes;
}

static void fill_params(lua_State *L, ah_store_job *j, ah_store_val *v, int from,
                        int to) {
  int i;
  for (i = from; i <= to; i++, v++) {
    switch (lua_type(L, i)) {
    case LUA_TBOOLEAN:
      v->type = AH_SV_INT;
      v->u.i = lua_toboolean(L, i);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, i)) {
        v->type = AH_SV_INT;
        v->u.i = (int64_t)lua_tointeger(L, i);
      } else {
        v->type = AH_SV_FLOAT;
        v->u.d = (double)lua_tonumber(L, i);
      }
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, i, &n);
      v->type = AH_SV_TEXT;
      v->len = n;
      v->u.s = ah__store_job_copy(j, s, n);
      break;
    }
    default: v->type = AH_SV_NULL; break;
    }
  }
}

/* A one-statement job from the SQL at 2 and the parameters after it. */
static ah_store_job *job_from_args(lua_State *L, lstore *ls, int type,
                                   const char *what) {
  int top = lua_gettop(L), np = top - 2;
  size_t sql_len, bytes;
  const char *sql;
  ah_store_job *j;
  if (lua_type(L, 2) != LUA_TSTRING)
    ah__error_raise(L, "invalid_argument", 0, "%s: the SQL must be a string", what);
  sql = lua_tolstring(L, 2, &sql_len);
  bytes = sql_len + param_bytes(L, 3, top, what);
  if (!(j = ah__store_job_new(ls->st, type, 1, np, bytes))) ah__nomem(L, what);
  j->label = what;
  j->stmts[0].sql = ah__store_job_copy(j, sql, sql_len);
  j->stmts[0].sql_len = sql_len;
  j->stmts[0].nparams = np;
  fill_params(L, j, j->stmts[0].params, 3, top);
  return j;
}

static lstore *check_db(lua_State *L, const char *what) {
  lstore *ls = luaL_testudata(L, 1, MT);
  if (!ls)
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: call it as a method, db:%s(...)", what,
                    strchr(what, ':') ? strchr(what, ':') + 1 : what);
  if (!ls->st)
    ah__error_raise(L, "invalid_argument", 0, "%s: the database %s is closed",
                    what, ls->path);
  return ls;
}

/* Submits j and suspends the caller until it is done. */
static int submit_wait(lua_State *L, lstore *ls, ah_task *me, ah_store_job *j) {
  int rc;
  j->done = on_done;
  j->data = me;
  j->owner = ls;
  if ((rc = submit(ls, j)) != 0) {
    ah__store_job_free(j);
    return ah__error_raise(L, "invalid_argument", 0, "the database %s is closing",
                           ls->path);
  }
  return ah__task_suspend(L, me, &store_op, j);
}

/* ---- methods ------------------------------------------------------------------- */

static int db_exec(lua_State *L) {
  lstore *ls = check_db(L, "db:exec");
  ah_task *me = ah__task_require(L, "db:exec");
  return submit_wait(L, ls, me, job_from_args(L, ls, AH_JOB_WRITE, "db:exec"));
}

static int db_post(lua_State *L) {
  lstore *ls = check_db(L, "db:post");
  ah_store_job *j = job_from_args(L, ls, AH_JOB_WRITE, "db:post");
  ah_store_stats s;
  ah_task *me;
  /* Backpressure: past max_queue waiting writes, a poster in a task waits
   * for its own write, which lets the writer catch up. */
  if (ls->max_queue > 0 && (me = ah__task_current(L)) != NULL) {
    ah__store_stats(ls->st, &s);
    if (s.queued >= (uint64_t)ls->max_queue) {
      j->owner = ls;
      submit(ls, j);
      if (!(j = ah__store_job_new(ls->st, AH_JOB_FLUSH, 0, 0, 0))) return ah__nomem(L, "db:post");
      lua_settop(L, 1);
      return submit_wait(L, ls, me, j);
    }
  }
  j->owner = ls;
  if (submit(ls, j) != 0) {
    ah__store_job_free(j);
    return ah__error_raise(L, "invalid_argument", 0, "db:post: the database %s is closing",
                           ls->path);
  }
  return 0;
}

/* db:batch{{sql, ...}, ...}: every statement commits, or none does.  An
 * entry may give n = count for parameters that end in nil. */
static int db_batch(lua_State *L) {
  lstore *ls = check_db(L, "db:batch");
  ah_task *me = ah__task_require(L, "db:batch");
  int i, n, np = 0, k;
  size_t bytes = 0;
  ah_store_job *j;
  ah_store_val *v;
  if (!lua_istable(L, 2))
    return ah__error_raise(L, "invalid_argument", 0,
                           "db:batch: expected an array of {sql, params...}");
  lua_settop(L, 2);
  n = (int)lua_rawlen(L, 2);
  if (n == 0) {
    lua_pushinteger(L, 0);
    lua_pushinteger(L, 0);
    return 2;
  }
  for (i = 1; i <= n; i++) {
    int len, top;
    if (lua_rawgeti(L, 2, i) != LUA_TTABLE)
      return ah__error_raise(L, "invalid_argument", 0,
                             "db:batch: entry %d is not a table {sql, params...}", i);
    len = ah__arg_entry_len(L, 100000);
    if (len < 1 || lua_rawgeti(L, -1, 1) != LUA_TSTRING)
      return ah__error_raise(L, "invalid_argument", 0,
                             "db:batch: entry %d must start with the SQL string", i);
    bytes += lua_rawlen(L, -1);
    lua_pop(L, 1);
    top = lua_gettop(L);
    luaL_checkstack(L, len, "db:batch: too many parameters");
    for (k = 2; k <= len; k++) lua_rawgeti(L, top, k);
    bytes += param_bytes(L, top + 1, top + len - 1, "db:batch");
    np += len - 1;
    lua_settop(L, 2);
  }
  if (!(j = ah__store_job_new(ls->st, AH_JOB_WRITE, n, np, bytes))) return ah__nomem(L, "db:batch");
  j->label = "db:batch";
  v = j->stmts[0].params;
  for (i = 1; i <= n; i++) {
    int len, top;
    size_t sl;
    const char *sql;
    lua_rawgeti(L, 2, i);
    len = ah__arg_entry_len(L, 100000);
    lua_rawgeti(L, -1, 1);
    sql = lua_tolstring(L, -1, &sl);
    j->stmts[i - 1].sql = ah__store_job_copy(j, sql, sl);
    j->stmts[i - 1].sql_len = sl;
    j->stmts[i - 1].nparams = len - 1;
    j->stmts[i - 1].params = v;
    lua_pop(L, 1);
    top = lua_gettop(L);
    for (k = 2; k <= len; k++) lua_rawgeti(L, top, k);
    fill_params(L, j, v, top + 1, top + len - 1);
    v += len - 1;
    lua_settop(L, 2);
  }
  return submit_wait(L, ls, me, j);
}

static int read_job(lua_State *L, const char *what, int first) {
  lstore *ls = check_db(L, what);
  ah_task *me = ah__task_require(L, what);
  ah_store_job *j = job_from_args(L, ls, AH_JOB_READ, what);
  j->first_only = first;
  return submit_wait(L, ls, me, j);
}

static int db_query(lua_State *L) { return read_job(L, "db:query", 0); }
static int db_first(lua_State *L) { return read_job(L, "db:first", 1); }

static int db_flush(lua_State *L) {
  lstore *ls = check_db(L, "db:flush");
  ah_task *me = ah__task_require(L, "db:flush");
  ah_store_job *j = ah__store_job_new(ls->st, AH_JOB_FLUSH, 0, 0, 0);
  if (!j) return ah__nomem(L, "db:flush");
  lua_settop(L, 1);
  return submit_wait(L, ls, me, j);
}

static int db_stats(lua_State *L) {
  lstore *ls = ah__arg_udata(L, 1, MT, "db:stats", "a database");
  ah_store_stats s;
  memset(&s, 0, sizeof s);
  if (ls->st) ah__store_stats(ls->st, &s);
  lua_createtable(L, 0, 8);
#define F(name)                                                                \
  lua_pushinteger(L, (lua_Integer)s.name);                                     \
  lua_setfield(L, -2, #name)
  F(transactions);
  F(jobs);
  F(failed);
  F(reads);
  F(posts);
  F(queued);
  F(largest_group);
#undef F
  lua_pushboolean(L, ls->st != NULL);
  lua_setfield(L, -2, "open");
  return 1;
}

static void unanchor(lua_State *L, lstore *ls) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ANCHOR_KEY);
  if (lua_istable(L, -1)) {
    lua_pushlightuserdata(L, ls);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
}

/* The store has drained and closed: the db may go now (it stayed anchored
 * so that this callback and failing posts find it alive). */
static void on_closed(ah_store *st, int err, const char *msg, void *data) {
  lstore *ls = data;
  ah_task *t = ls->closer;
  (void)st, (void)err, (void)msg;
  ls->closer = NULL;
  ls->closing = NULL;
  unanchor(ls->L, ls);
  if (t) ah__task_wake(ls->S, t, 0, 0);
}

static void close_cancel(ah_sched *S, ah_task *t) {
  lstore *ls = ah__task_opdata(t);
  (void)S;
  ls->closer = NULL; /* the close goes on; only the wait is given up */
}

static const ah_op close_op = {"store close", close_cancel, NULL, NULL};

/* db:close(): drains the queued writes and closes.  In a task it waits
 * without blocking the loop; elsewhere it blocks until done. */
static int db_close(lua_State *L) {
  lstore *ls = ah__arg_udata(L, 1, MT, "db:close", "a database");
  ah_task *me = ah__task_current(L);
  ah_store *st = ls->st;
  if (!st) return 0;
  if (!me && ah__store_waiting(st) > 0)
    return ah__error_raise(L, "invalid_argument", 0,
                           "db:close: tasks are waiting on %s; close it from a "
                           "task (it then waits for them without blocking)",
                           ls->path);
  ah__sched_undefer(ls->S, &ls->defer);
  ls->st = NULL;
  if (!me) {
    unanchor(L, ls);
    ah__store_close_now(st);
    return 0;
  }
  ls->closer = me;
  ls->closing = st;
  ah__store_close(st, on_closed, ls);
  lua_settop(L, 1);
  return ah__task_suspend(L, me, &close_op, ls);
}

static int db_gc(lua_State *L) {
  lstore *ls = luaL_checkudata(L, 1, MT);
  if (ls->st) {
    ah__sched_undefer(ls->S, &ls->defer);
    ah__store_close_now(ls->st);
  } else if (ls->closing) {
    ah__store_close_now(ls->closing); /* its callback will not run */
  }
  ls->st = NULL;
  ls->closing = NULL;
  return 0;
}

static int db_tostring(lua_State *L) {
  lstore *ls = ah__arg_udata(L, 1, MT, "db:__tostring", "a database");
  lua_pushfstring(L, "agenthost.store(%s%s)", ls->path, ls->st ? "" : ", closed");
  return 1;
}

/* ---- open ----------------------------------------------------------------------- */

static void on_opened(ah_store *st, int err, const char *msg, void *data) {
  lstore *ls = data;
  ah_task *t = ls->opener;
  lua_State *co;
  ls->opener = NULL;
  if (!t) return;
  co = ah__task_thread(t);
  if (err) {
    ah__error_push(co, "io", 0, "ah.store.open: %s", msg);
    ah__task_wake(ls->S, t, 1, 1);
  } else {
    (void)st;
    ah__task_wake(ls->S, t, 0, 0);
  }
}


static void open_cancel(ah_sched *S, ah_task *t) {
  lstore *ls = ah__task_opdata(t);
  (void)S;
  ls->opener = NULL; /* the db stays anchored; it closes at exit or gc */
}


/* Fails an open that could not even start: raises after cleaning up. */
static int open_error(lua_State *L, lstore *ls, const char *msg) {
  lua_pushnil(L);
  lua_setmetatable(L, -2); /* no __gc for a store that never opened */
  ls->st = NULL;
  return ah__error_raise(L, "io", 0, "ah.store.open: %s: %s", ls->path, msg);
}

static int open_after_error(lua_State *L, lstore *ls) {
  /* Open failed: release the threads, and raise what the writer said. */
  ah_store *st = ls->st;
  ls->st = NULL;
  unanchor(L, ls);
  if (st) ah__store_close(st, NULL, NULL);
  return lua_error(L);
}

static int open_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  if (nargs == 1 && ah__error_is(L, -1, NULL))
    return open_after_error(L, luaL_checkudata(L, 1, MT));
  lua_settop(L, 1);
  return 1;
}

static const ah_op open_op = {"store open", open_cancel, NULL, open_after};

#define FN_OPEN "ah.store.open"
static const char *const sync_words[] = {"normal", "full", NULL};

/* ah.store.open([path [, opts]]) -> db, once the database is ready; no
 * path means the embedding host's database */
static int db_open(lua_State *L) {
  ah_task *me = ah__task_require(L, "ah.store.open");
  ah_store_opts o;
  const char *path;
  size_t plen;
  lstore *ls;
  int rc;
  memset(&o, 0, sizeof o);
  if (lua_isnoneornil(L, 1)) { /* the embedding host's database */
    lua_settop(L, 2);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &DEFAULT_PATH_KEY);
    if (lua_isnil(L, -1))
      return ah__error_raise(L, "invalid_argument", 0,
                             "ah.store.open: no path given, and the host "
                             "configured no database (ah_config.db_path)");
    lua_replace(L, 1);
  }
  if (lua_type(L, 1) != LUA_TSTRING)
    return ah__arg_error(L, FN_OPEN, "the path", "a string");
  path = lua_tolstring(L, 1, &plen);
  if (plen == 0 || plen >= sizeof ls->path || strlen(path) != plen)
    return ah__error_raise(L, "invalid_argument", 0,
                           "ah.store.open: the path must be 1 to %d bytes without NUL",
                           (int)sizeof ls->path - 1);
  ah__arg_options(L, 2, FN_OPEN);
  o.synchronous_full = ah__opt_word(L, 2, FN_OPEN, "synchronous", sync_words, 0);
  o.readers = (int)ah__opt_integer(L, 2, FN_OPEN, "readers", 2, 0, 64);
  o.busy_timeout_ms =
      (int)(ah__opt_number(L, 2, FN_OPEN, "busy_timeout", 5, 0, 3600) * 1000 + 0.5);
  o.max_result = (size_t)ah__opt_integer(L, 2, FN_OPEN, "max_result", 64 << 20,
                                         1024, (lua_Integer)1 << 40);
  ls = lua_newuserdatauv(L, sizeof *ls, 0);
  memset(ls, 0, sizeof *ls);
  memcpy(ls->path, path, plen + 1);
  ls->S = ah__sched_get(L);
  ls->defer.fn = kick;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  ls->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  ls->max_queue = (long)ah__opt_integer(L, 2, FN_OPEN, "max_queue", 1000000, 0,
                                        (lua_Integer)1 << 30);
  luaL_setmetatable(L, MT);
  /* Anchor it: an open database is never collected, so its queue always
   * drains, at the latest when the state closes.  Anchored before the open
   * starts, as anchoring may raise (memory) and nothing may raise once the
   * writer thread will call on_opened for this task. */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ANCHOR_KEY);
  lua_pushlightuserdata(L, ls);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  ls->opener = me;
  if ((rc = ah__store_open(&ls->st, ah__sched_uv(ls->S), path, &o, on_opened, ls)) != 0) {
    unanchor(L, ls);
    return open_error(L, ls, uv_strerror(rc));
  }
  ah__store_on_post_error(ls->st, on_post_error);
  lua_replace(L, 1);
  lua_settop(L, 1);
  return ah__task_suspend(L, me, &open_op, ls);
}

int ah__open_store(lua_State *L) {
  static const luaL_Reg methods[] = {{"exec", db_exec},   {"post", db_post},
                                     {"batch", db_batch}, {"query", db_query},
                                     {"first", db_first}, {"flush", db_flush},
                                     {"close", db_close}, {"stats", db_stats},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", db_gc},
                                  {"__close", db_close},
                                  {"__tostring", db_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg fns[] = {{"open", db_open}, {NULL, NULL}};
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ANCHOR_KEY);
  if (lua_isnil(L, -1)) {
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ANCHOR_KEY);
  }
  lua_pop(L, 1);
  ah__metatable(L, MT, methods, meta, NULL, NULL);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
