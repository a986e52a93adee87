/*
 * ah.pg's C part: PostgreSQL connections (host/pg.c) as Lua values, for
 * scripts/agenthost/pg.lua, which builds the pool, transactions and the
 * public API on them.  Every call here is one request on one connection;
 * a task waits for it without blocking the loop, and the requests of one
 * scheduler pass go out together (pipelined).
 *
 *   c = _pg.connect(url, {connect_timeout, application_name, prepare,
 *                         statement_cache})                -> conn once ready
 *   c:query(timeout, sql, ...)  -> rows, jsoncols     (array of row tables)
 *   c:first(timeout, sql, ...)  -> row|nil, jsoncols
 *   c:exec(timeout, sql, ...)   -> affected rows
 *   c:send(timeout, sql)        -- no result awaited (errors are dropped)
 *   c:simple(timeout, sql)      -> affected rows of the last statement
 *   c:batch(timeout, list)      -> array of rows results, one sync
 *   c:pipeline(timeout, list)   -> array of rows results or errors, a sync
 *                                  each (in order, one round trip)
 *   c:param_types(timeout, sql) -> array of parameter type OIDs
 *   c:copy_begin(timeout, sql), c:copy_put(timeout, rows, ncols) -> taken,
 *   c:copy_end(timeout) -> rows copied, c:copy_abort(timeout, message)
 *   c:subscribe(channel) -> sub;  sub:recv(timeout) -> channel, payload,
 *       pid | nil (timed out) | false, "lost" | false, "missed"  (pglisten.c)
 *   c:status(), c:pending(), c:load(), c:stuck(), c:info(), c:stats(),
 *   c:close(), c:set_autocommit(bool)
 *   _pg.waitlist() -> wl: wl:wait(timeout) -> woken, wl:wake(n), wl:count()
 *                                                               (pglisten.c)
 *   _pg.type_info(oid) -> kind, element OID
 *
 * A timeout of 0 or nil is none.  Values come back typed (host/pgtype.c);
 * NULL is ah.null (a light userdata, ah.json.null); json columns
 * come back as their text, named in jsoncols ({name = 1, or 2 for an array
 * of json}), for pg.lua to decode.  Parameters are nil or ah.null (NULL),
 * booleans, numbers and strings; pg.lua turns tables into their text
 * first.  Errors are structured: kind sql (with the SQLSTATE in `code` and
 * the server's detail, hint, constraint...), connect, timeout, cancelled,
 * invalid_argument; the connection's password never appears in them.
 *
 * Lifetimes: a connection userdata owns its ah_pg and closes it in __gc or
 * close; a request belongs to host/pg.c and is freed in on_done, or
 * abandoned (the host frees it) when its task is cancelled or times out.
 * A subscription keeps its connection alive through its user value.
 * Relies on host/pg.c and the scheduler.
 */
#include "pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SQL_IN_MESSAGE 160
#define MAX_PARAMS 65535

enum { M_ROWS, M_FIRST, M_EXEC, M_BATCH, M_SIMPLE, M_TYPES, M_COPY, M_PIPELINE };
static const char *const mode_names[] = {"pg:query", "pg:first", "pg:exec", "pg:batch",
                                         "pg:exec", "pg:query", "pg:copy", "pg:pipeline"};

lconn *ah__pg_check_conn(lua_State *L, const char *what) {
  lconn *lc = luaL_testudata(L, 1, MT);
  if (!lc) ah__arg_error(L, what, "self", "a PostgreSQL connection");
  if (!lc->pg)
    ah__error_raise(L, "connect", 0, "%s: the connection to %s is closed", what, lc->desc);
  return lc;
}

static void flush_conn(ah_defer *d) {
  lconn *lc = container_of(d, lconn, defer);
  if (lc->pg) ah__pg_flush(lc->pg);
}

/* ---- values ------------------------------------------------------------------- */

static void push_val(lua_State *L, lconn *lc, const ah_pg_val *v);

static void push_array(lua_State *L, lconn *lc, const ah_pg_val *v) {
  ah_pg_array a;
  ah_pg_val e;
  int tok, depth = 0;
  lua_Integer idx[8];
  ah__pg_array_init(&a, v);
  while ((tok = ah__pg_array_next(&a, &e, &lc->scratch)) != AH_PGA_END) {
    if (tok < 0 || (tok == AH_PGA_OPEN && depth >= 8)) {
      /* Malformed or deeper than we nest: the text as the server sent it. */
      lua_settop(L, lua_gettop(L) - depth);
      lua_pushlstring(L, v->u.s, v->len);
      return;
    }
    if (tok == AH_PGA_OPEN) {
      luaL_checkstack(L, 4, "pg: array too deep");
      lua_newtable(L);
      idx[depth++] = 0;
    } else if (tok == AH_PGA_CLOSE) {
      if (--depth > 0) lua_rawseti(L, -2, ++idx[depth - 1]);
    } else {
      push_val(L, lc, &e);
      lua_rawseti(L, -2, ++idx[depth - 1]);
    }
  }
  if (depth != 0) lua_settop(L, lua_gettop(L) - depth);
}

static void push_val(lua_State *L, lconn *lc, const ah_pg_val *v) {
  switch (v->type) {
  case AH_PGV_NULL: lua_pushlightuserdata(L, NULL); break;
  case AH_PGV_BOOL: lua_pushboolean(L, (int)v->u.i); break;
  case AH_PGV_INT: lua_pushinteger(L, (lua_Integer)v->u.i); break;
  case AH_PGV_FLOAT: lua_pushnumber(L, v->u.d); break;
  case AH_PGV_ARRAY: push_array(L, lc, v); break;
  default: lua_pushlstring(L, v->u.s, v->len); break;
  }
}

/* Pushes the json columns of res as {name = 1 | 2}, or nil. */
static void push_jsoncols(lua_State *L, const void *res) {
  int c, n = ah__pg_res_ncols(res), any = 0;
  for (c = 0; c < n; c++) {
    uint32_t t = ah__pg_res_ftype(res, c), el = ah__pg_array_elem(t);
    int kind = (t == AH_PG_JSON || t == AH_PG_JSONB) ? 1
               : (el == AH_PG_JSON || el == AH_PG_JSONB) ? 2 : 0;
    if (!kind) continue;
    if (!any) lua_createtable(L, 0, 2);
    any = 1;
    lua_pushinteger(L, kind);
    lua_setfield(L, -2, ah__pg_res_fname(res, c));
  }
  if (!any) lua_pushnil(L);
}

/* The row at r of res, its column names at names..names+ncols-1. */
static void push_row(lua_State *L, lconn *lc, const void *res, int r, int names) {
  int c, n = ah__pg_res_ncols(res);
  ah_pg_val v;
  lua_createtable(L, 0, n);
  for (c = 0; c < n; c++) {
    lua_pushvalue(L, names + c);
    /* A bytea the decoder refused stays the text the server sent. */
    if (ah__pg_res_value(res, r, c, &v, &lc->scratch) == UV_ENOMEM) ah__nomem(L, "pg");
    push_val(L, lc, &v);
    lua_rawset(L, -3);
  }
}

/* rows (with .columns and .affected) of res; leaves it on top. */
static void push_rows(lua_State *L, lconn *lc, const void *res) {
  int n = res ? ah__pg_res_nrows(res) : 0, nc = res ? ah__pg_res_ncols(res) : 0;
  int c, r, names;
  int64_t aff = res ? ah__pg_res_affected(res) : 0;
  luaL_checkstack(L, nc + 8, "pg: too many columns");
  lua_createtable(L, n, 2);
  lua_createtable(L, nc, 0);
  names = lua_gettop(L) + 1;
  for (c = 0; c < nc; c++) {
    lua_pushstring(L, ah__pg_res_fname(res, c));
    lua_pushvalue(L, -1);
    lua_rawseti(L, names - 1, c + 1);
  }
  for (r = 0; r < n; r++) {
    push_row(L, lc, res, r, names);
    lua_rawseti(L, names - 2, r + 1);
  }
  lua_settop(L, names - 1);
  lua_setfield(L, -2, "columns");
  lua_pushinteger(L, aff < 0 ? 0 : (lua_Integer)aff);
  lua_setfield(L, -2, "affected");
}

/* ---- errors --------------------------------------------------------------------- */

static void set_field(lua_State *L, lconn *lc, const char *k, const char *v) {
  char buf[1024];
  if (!v) return;
  snprintf(buf, sizeof buf, "%s", v);
  if (lc->pg) ah__pg_scrub(lc->pg, buf);
  lua_pushstring(L, buf);
  lua_setfield(L, -2, k);
}

/* Pushes r's error: kind, message, and the server's fields. */
static void push_req_error(lua_State *L, lconn *lc, const ah_pg_req *r) {
  static const struct { int f; const char *name; } fields[] = {
      {AH_PGE_DETAIL, "detail"},     {AH_PGE_HINT, "hint"},
      {AH_PGE_CONSTRAINT, "constraint"}, {AH_PGE_TABLE, "table"},
      {AH_PGE_COLUMN, "column"},     {AH_PGE_SCHEMA, "schema"},
      {AH_PGE_SEVERITY, "severity"}, {AH_PGE_WHERE, "where"},
      {AH_PGE_DATATYPE, "datatype"}};
  const char *what = mode_names[r->tag];
  const ah_pg_stmt *s = r->nstmts ? &r->stmts[r->failed] : NULL;
  char msg[1024], snip[SQL_IN_MESSAGE + 4] = "";
  size_t i;
  if (s && s->sql_len) {
    size_t n = s->sql_len > SQL_IN_MESSAGE ? SQL_IN_MESSAGE : s->sql_len;
    memcpy(snip, s->sql, n);
    strcpy(snip + n, s->sql_len > n ? "..." : "");
  }
  if (r->err) {
    const char *code = ah__pg_res_error(r->err, AH_PGE_SQLSTATE);
    snprintf(msg, sizeof msg, "%s: %s (SQLSTATE %s)%s%s", what,
             ah__pg_res_error(r->err, AH_PGE_MESSAGE) ? ah__pg_res_error(r->err, AH_PGE_MESSAGE)
                                                     : "error",
             code ? code : "none", *snip ? " in: " : "", snip);
  } else {
    snprintf(msg, sizeof msg, "%s: %s", what, r->msg);
  }
  if (lc->pg) ah__pg_scrub(lc->pg, msg);
  ah__error_push(L, r->kind_err ? r->kind_err : "sql", r->retryable, "%s", msg);
  if (r->err) {
    const char *pos = ah__pg_res_error(r->err, AH_PGE_POSITION);
    set_field(L, lc, "code", ah__pg_res_error(r->err, AH_PGE_SQLSTATE));
    for (i = 0; i < sizeof fields / sizeof fields[0]; i++)
      set_field(L, lc, fields[i].name, ah__pg_res_error(r->err, fields[i].f));
    if (pos) {
      lua_pushinteger(L, atoi(pos));
      lua_setfield(L, -2, "position");
    }
  }
  if (s && s->sql) set_field(L, lc, "sql", s->sql);
  if (r->nstmts > 1) {
    lua_pushinteger(L, r->failed + 1);
    lua_setfield(L, -2, "index");
  }
  lua_pushboolean(L, r->sent);
  lua_setfield(L, -2, "sent");
}

/* ---- requests ---------------------------------------------------------------------- */

/* Pushes what a finished request gives its task; returns the count. */
static int push_outcome(lua_State *L, ah_pg_req *r) {
  lconn *lc = r->owner;
  const void *res = r->nstmts ? r->stmts[0].res : NULL;
  int i;
  if (r->kind_err) {
    push_req_error(L, lc, r);
    return 1;
  }
  switch (r->tag) {
  case M_ROWS:
  case M_PIPELINE:
    push_rows(L, lc, res);
    if (res) push_jsoncols(L, res);
    else lua_pushnil(L);
    return 2;
  case M_FIRST: {
    int nc = res ? ah__pg_res_ncols(res) : 0, c;
    if (!res || ah__pg_res_nrows(res) == 0) {
      lua_pushnil(L);
      lua_pushnil(L);
      return 2;
    }
    luaL_checkstack(L, nc + 4, "pg: too many columns");
    for (c = 0; c < nc; c++) lua_pushstring(L, ah__pg_res_fname(res, c));
    push_row(L, lc, res, 0, 2);
    lua_replace(L, 2);
    lua_settop(L, 2);
    push_jsoncols(L, res);
    return 2;
  }
  case M_BATCH:
    lua_createtable(L, r->nstmts, 0);
    for (i = 0; i < r->nstmts; i++) {
      push_rows(L, lc, r->stmts[i].res);
      if (r->stmts[i].res) {
        push_jsoncols(L, r->stmts[i].res);
        lua_setfield(L, -2, "json");
      }
      lua_rawseti(L, -2, i + 1);
    }
    return 1;
  case M_TYPES:
    lua_createtable(L, r->nptypes, 0);
    for (i = 0; i < r->nptypes; i++) {
      lua_pushinteger(L, (lua_Integer)r->ptypes[i]);
      lua_rawseti(L, -2, i + 1);
    }
    return 1;
  default: {
    int64_t n = res ? ah__pg_res_affected(res) : 0;
    lua_pushinteger(L, n < 0 ? 0 : (lua_Integer)n);
    return 1;
  }
  }
}

/* [req] -> push_outcome's values, in protected mode. */
static int done_push_p(lua_State *L) { return push_outcome(L, lua_touserdata(L, 1)); }

static void on_done(ah_pg_req *r) {
  ah_task *t = r->data;
  lconn *lc = r->owner;
  ah__task_timer_stop(lc->S, t);
  ah__task_wake_with(lc->S, t, done_push_p, r, r->kind_err != NULL);
  ah__pg_req_free(r);
}

static void req_cancel(ah_sched *S, ah_task *t) {
  ah__task_timer_stop(S, t);
  ah__pg_abandon(ah__task_opdata(t), 1);
}

typedef struct timeout_info {
  const char *what;
  const char *desc;
} timeout_info;

static int timeout_push_p(lua_State *L) {
  timeout_info *ti = lua_touserdata(L, 1);
  ah__error_push(L, "timeout", 1,
                 "%s: no result from %s in time; the statement was cancelled on "
                 "the server", ti->what, ti->desc);
  return 1;
}

static void req_timeout(ah_sched *S, ah_task *t) {
  ah_pg_req *r = ah__task_opdata(t);
  lconn *lc = r->owner;
  timeout_info ti;
  ti.what = mode_names[r->tag];
  ti.desc = lc->desc;
  ah__pg_abandon(r, 1);
  ah__task_wake_with(S, t, timeout_push_p, &ti, 1);
}

static const ah_op req_op = {"postgres", req_cancel, req_timeout, NULL};

/* Refuses what cannot be a parameter; returns the bytes of a string. */
static size_t param_size(lua_State *L, int i, int n, const char *what) {
  int ty = lua_type(L, i);
  if (ty == LUA_TSTRING) return lua_rawlen(L, i) + 1;
  if (ty == LUA_TNIL || ty == LUA_TBOOLEAN || ty == LUA_TNUMBER) return 0;
  if (ty == LUA_TLIGHTUSERDATA && lua_touserdata(L, i) == NULL) return 0;
  ah__error_raise(L, "invalid_argument", 0,
                  "%s: parameter $%d is a %s; parameters must be nil, ah.null, "
                  "booleans, numbers or strings", what, n, luaL_typename(L, i));
  return 0;
}

static void fill_param(lua_State *L, ah_pg_req *r, ah_pg_val *v, int i) {
  memset(v, 0, sizeof *v);
  switch (lua_type(L, i)) {
  case LUA_TBOOLEAN:
    v->type = AH_PGV_BOOL;
    v->u.i = lua_toboolean(L, i);
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, i)) {
      v->type = AH_PGV_INT;
      v->u.i = (int64_t)lua_tointeger(L, i);
    } else {
      v->type = AH_PGV_FLOAT;
      v->u.d = (double)lua_tonumber(L, i);
    }
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, i, &n);
    v->type = AH_PGV_TEXT;
    v->len = n;
    v->u.s = ah__pg_req_copy(r, s, n);
    break;
  }
  default: v->type = AH_PGV_NULL; break;
  }
}

static const char *check_sql(lua_State *L, int idx, size_t *len, const char *what) {
  if (lua_type(L, idx) != LUA_TSTRING)
    ah__error_raise(L, "invalid_argument", 0, "%s: the SQL must be a string", what);
  return lua_tolstring(L, idx, len);
}

double ah__pg_arg_timeout(lua_State *L, int idx, const char *what) {
  if (lua_isnoneornil(L, idx) || (lua_isboolean(L, idx) && !lua_toboolean(L, idx)))
    return 0;
  return ah__arg_number(L, idx, what, "the timeout", 0, 1e9);
}

/* A one-statement request from the SQL at 3 and the parameters after it. */
static ah_pg_req *req_from_args(lua_State *L, int kind, const char *what) {
  int top = lua_gettop(L), np = top - 3, i;
  size_t sql_len, bytes;
  const char *sql = check_sql(L, 3, &sql_len, what);
  ah_pg_req *r;
  if (np > MAX_PARAMS)
    ah__error_raise(L, "invalid_argument", 0, "%s: at most %d parameters", what, MAX_PARAMS);
  bytes = sql_len + 1;
  for (i = 4; i <= top; i++) bytes += param_size(L, i, i - 3, what);
  if (!(r = ah__pg_req_new(kind, 1, np, bytes))) ah__nomem(L, what);
  r->stmts[0].sql = ah__pg_req_copy(r, sql, sql_len);
  r->stmts[0].sql_len = sql_len;
  r->stmts[0].nparams = np;
  for (i = 0; i < np; i++) fill_param(L, r, &r->stmts[0].params[i], i + 4);
  return r;
}

static int not_ready_error(lua_State *L, lconn *lc, const char *what) {
  const char *why = lc->pg && ah__pg_error(lc->pg)[0] ? ah__pg_error(lc->pg) : "it is closed";
  ah__error_push(L, "connect", 1, "%s: the connection to %s is not usable: %s", what,
                 lc->desc, why);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "sent");
  return lua_error(L);
}

/* Submits r and suspends the caller until it is done. */
static int submit_wait(lua_State *L, lconn *lc, ah_task *me, ah_pg_req *r, int mode,
                       double timeout) {
  int rc;
  r->done = on_done;
  r->data = me;
  r->owner = lc;
  r->tag = mode;
  r->autocommit = lc->autocommit;
  if ((rc = ah__pg_submit(lc->pg, r)) < 0) {
    ah__pg_req_free(r);
    return not_ready_error(L, lc, mode_names[mode]);
  }
  if (rc == 1) ah__sched_defer(lc->S, &lc->defer);
  if (timeout > 0 && ah__task_timer(lc->S, me, timeout) != 0) {
    ah__pg_abandon(r, 1);
    return ah__nomem(L, mode_names[mode]);
  }
  return ah__task_suspend(L, me, &req_op, r);
}

static int run_one(lua_State *L, int mode, int kind) {
  const char *what = mode_names[mode];
  lconn *lc = ah__pg_check_conn(L, what);
  ah_task *me = ah__task_require(L, what);
  double timeout = ah__pg_arg_timeout(L, 2, what);
  return submit_wait(L, lc, me, req_from_args(L, kind, what), mode, timeout);
}

static int c_query(lua_State *L) { return run_one(L, M_ROWS, AH_PGR_PIPELINE); }
static int c_first(lua_State *L) { return run_one(L, M_FIRST, AH_PGR_PIPELINE); }
static int c_exec(lua_State *L) { return run_one(L, M_EXEC, AH_PGR_PIPELINE); }

/* c:send(sql): a statement without parameters whose result nobody waits
 * for (the BEGIN that goes out with a transaction's first statement: an
 * error of it shows in the statements after it). */
static int c_send(lua_State *L) {
  const char *what = "pg:exec";
  lconn *lc = ah__pg_check_conn(L, what);
  ah_pg_req *r;
  int rc;
  lua_settop(L, 3);
  r = req_from_args(L, AH_PGR_PIPELINE, what);
  r->owner = lc;
  r->tag = M_EXEC;
  if ((rc = ah__pg_submit(lc->pg, r)) < 0) {
    ah__pg_req_free(r);
    return not_ready_error(L, lc, what);
  }
  if (rc == 1) ah__sched_defer(lc->S, &lc->defer);
  return 0;
}

static int c_simple(lua_State *L) {
  lua_settop(L, 3);
  return run_one(L, M_SIMPLE, AH_PGR_SIMPLE);
}

static int c_param_types(lua_State *L) {
  lua_settop(L, 3);
  return run_one(L, M_TYPES, AH_PGR_DESCRIBE);
}

/* Checks the list {{sql, params...}, ...} at 3 and returns its length;
 * *bytes gets the room its statements need, *np their parameters. */
static int list_size(lua_State *L, const char *what, size_t *bytes, int *np) {
  int i, k, n;
  ah__arg_type(L, 3, LUA_TTABLE, what, "the statements");
  lua_settop(L, 3);
  n = (int)lua_rawlen(L, 3);
  if (n == 0 || n > 100000)
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: give 1 to 100000 statements {sql, params...}", what);
  *bytes = 0;
  *np = 0;
  for (i = 1; i <= n; i++) {
    int len, top;
    if (lua_rawgeti(L, 3, i) != LUA_TTABLE)
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: entry %d is not a table {sql, params...}", what, i);
    len = ah__arg_entry_len(L, MAX_PARAMS);
    if (len < 1 || lua_rawgeti(L, -1, 1) != LUA_TSTRING)
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: entry %d must start with the SQL string", what, i);
    *bytes += lua_rawlen(L, -1) + 1;
    lua_pop(L, 1);
    top = lua_gettop(L);
    luaL_checkstack(L, len, "pg: too many parameters");
    for (k = 2; k <= len; k++) {
      lua_rawgeti(L, top, k);
      *bytes += param_size(L, -1, k - 1, what);
      lua_pop(L, 1);
    }
    *np += len - 1;
    lua_settop(L, 3);
  }
  return n;
}

/* Fills statement s of r from entry i of the list at 3; v is where its
 * parameters go (returns past them). */
static ah_pg_val *fill_stmt(lua_State *L, ah_pg_req *r, ah_pg_stmt *s, int i, ah_pg_val *v) {
  int len, k;
  size_t sl;
  const char *sql;
  lua_rawgeti(L, 3, i);
  len = ah__arg_entry_len(L, MAX_PARAMS);
  lua_rawgeti(L, -1, 1);
  sql = lua_tolstring(L, -1, &sl);
  s->sql = ah__pg_req_copy(r, sql, sl);
  s->sql_len = sl;
  s->nparams = len - 1;
  s->params = v;
  lua_pop(L, 1);
  for (k = 2; k <= len; k++) {
    lua_rawgeti(L, -1, k);
    fill_param(L, r, v++, lua_gettop(L));
    lua_pop(L, 1);
  }
  lua_settop(L, 3);
  return v;
}

/* c:batch(timeout, {{sql, ...}, ...}): the statements in one request (one
 * Sync): all or nothing outside a transaction, one round trip. */
static int c_batch(lua_State *L) {
  const char *what = "pg:batch";
  lconn *lc = ah__pg_check_conn(L, what);
  ah_task *me = ah__task_require(L, what);
  double timeout = ah__pg_arg_timeout(L, 2, what);
  int i, n, np;
  size_t bytes;
  ah_pg_req *r;
  ah_pg_val *v;
  n = list_size(L, what, &bytes, &np);
  if (!(r = ah__pg_req_new(AH_PGR_PIPELINE, n, np, bytes))) return ah__nomem(L, what);
  v = r->stmts[0].params;
  for (i = 1; i <= n; i++) v = fill_stmt(L, r, &r->stmts[i - 1], i, v);
  return submit_wait(L, lc, me, r, M_BATCH, timeout);
}

/* ---- pipelines: statements each in its own request, in order ------------ */

/* The requests of one c:pipeline call; malloc'd, freed when the last one
 * is done (then the task gets them all) or when the task gives up. */
typedef struct lgroup {
  lconn *lc;
  ah_task *t;
  int n, left;
  ah_pg_req **reqs;          /* n, in this block */
  char *done;                /* n flags, in this block */
} lgroup;

static void group_free(lgroup *g) {
  int i;
  for (i = 0; i < g->n; i++) {
    if (!g->reqs[i]) continue;
    if (g->done[i]) ah__pg_req_free(g->reqs[i]);
    else ah__pg_abandon(g->reqs[i], 1);
  }
  free(g);
}

/* [group] -> the array of outcomes: rows (json columns in .json), or an
 * error value. */
static int group_push_p(lua_State *L) {
  lgroup *g = lua_touserdata(L, 1);
  int i;
  lua_createtable(L, g->n, 1);
  for (i = 0; i < g->n; i++) {
    int top = lua_gettop(L), k = push_outcome(L, g->reqs[i]);
    if (k == 2) {
      if (!lua_isnil(L, -1)) lua_setfield(L, -2, "json");
      else lua_pop(L, 1);
    }
    lua_settop(L, top + 1);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void group_req_done(ah_pg_req *r) {
  lgroup *g = r->data;
  g->done[r->slot] = 1;
  if (--g->left > 0) return;
  ah__task_timer_stop(g->lc->S, g->t);
  ah__task_wake_with(g->lc->S, g->t, group_push_p, g, 0);
  group_free(g);
}

static void group_cancel(ah_sched *S, ah_task *t) {
  ah__task_timer_stop(S, t);
  group_free(ah__task_opdata(t));
}

static void group_timeout(ah_sched *S, ah_task *t) {
  lgroup *g = ah__task_opdata(t);
  timeout_info ti;
  ti.what = "pg:pipeline";
  ti.desc = g->lc->desc;
  group_free(g);
  ah__task_wake_with(S, t, timeout_push_p, &ti, 1);
}

static const ah_op group_op = {"postgres pipeline", group_cancel, group_timeout, NULL};

/* c:pipeline(timeout, {{sql, ...}, ...}) */
static int c_pipeline(lua_State *L) {
  const char *what = "pg:pipeline";
  lconn *lc = ah__pg_check_conn(L, what);
  ah_task *me = ah__task_require(L, what);
  double timeout = ah__pg_arg_timeout(L, 2, what);
  int i, n, np, rc, flush = 0;
  size_t bytes;
  lgroup *g;
  n = list_size(L, what, &bytes, &np);
  g = malloc(sizeof *g + (size_t)n * (sizeof(ah_pg_req *) + 1));
  if (!g) return ah__nomem(L, what);
  g->lc = lc;
  g->t = me;
  g->n = n;
  g->left = 0;
  g->reqs = (ah_pg_req **)(void *)(g + 1);
  g->done = (char *)(g->reqs + n);
  memset(g->reqs, 0, sizeof(ah_pg_req *) * (size_t)n);
  memset(g->done, 0, (size_t)n);
  /* Every request is made before any is submitted: nothing below raises
   * once the host has one. */
  for (i = 1; i <= n; i++) {
    ah_pg_req *r;
    int len, k;
    size_t b = 0;
    lua_rawgeti(L, 3, i);
    len = ah__arg_entry_len(L, MAX_PARAMS);
    lua_rawgeti(L, -1, 1);
    b += lua_rawlen(L, -1) + 1;
    lua_pop(L, 1);
    for (k = 2; k <= len; k++) {
      lua_rawgeti(L, -1, k);
      if (lua_type(L, -1) == LUA_TSTRING) b += lua_rawlen(L, -1) + 1;
      lua_pop(L, 1);
    }
    lua_settop(L, 3);
    if (!(r = ah__pg_req_new(AH_PGR_PIPELINE, 1, len - 1, b))) {
      group_free(g);
      return ah__nomem(L, what);
    }
    g->reqs[i - 1] = r;
    g->done[i - 1] = 1; /* freed as done until submitted */
    fill_stmt(L, r, &r->stmts[0], i, r->stmts[0].params);
    r->done = group_req_done;
    r->data = g;
    r->slot = i - 1;
    r->owner = lc;
    r->tag = M_PIPELINE;
    r->autocommit = lc->autocommit;
  }
  for (i = 0; i < n; i++) {
    if ((rc = ah__pg_submit(lc->pg, g->reqs[i])) < 0) {
      /* Not ready (lost): the ones submitted fail through done. */
      if (i == 0) {
        group_free(g);
        return not_ready_error(L, lc, what);
      }
      for (; i < n; i++) {
        ah_pg_req *r = g->reqs[i];
        r->kind_err = "connect";
        r->retryable = 1;
        snprintf(r->msg, sizeof r->msg, "the connection was lost");
      }
      break;
    }
    g->done[i] = 0;
    g->left++;
    flush |= rc == 1;
  }
  if (flush) ah__sched_defer(lc->S, &lc->defer);
  if (timeout > 0 && ah__task_timer(lc->S, me, timeout) != 0) {
    group_free(g);
    return ah__nomem(L, what);
  }
  return ah__task_suspend(L, me, &group_op, g);
}

/* ---- COPY ------------------------------------------------------------------------------ */

static void copy_wake(lconn *lc) {
  ah_task *t = lc->copy_waiter;
  if (!t) return;
  lc->copy_waiter = NULL;
  ah__task_timer_stop(lc->S, t);
  ah__task_wake(lc->S, t, 0, 0);
}

static void copy_on_copy(ah_pg_req *r) { copy_wake(r->owner); }

static void copy_on_done(ah_pg_req *r) {
  lconn *lc = r->owner;
  ah_task *t = lc->copy_waiter;
  lc->copy_over = 1;
  if (!t) return; /* kept for the next call */
  lc->copy_waiter = NULL;
  lc->copy = NULL;
  lc->copy_over = 0;
  ah__task_timer_stop(lc->S, t);
  ah__task_wake_with(lc->S, t, done_push_p, r, r->kind_err != NULL);
  ah__pg_req_free(r);
}

static void copy_cancel(ah_sched *S, ah_task *t) {
  lconn *lc = ah__task_opdata(t);
  ah__task_timer_stop(S, t);
  lc->copy_waiter = NULL;
  if (lc->copy) ah__pg_abandon(lc->copy, 1);
  lc->copy = NULL;
  lc->copy_over = 0;
}

static void copy_timeout(ah_sched *S, ah_task *t) {
  lconn *lc = ah__task_opdata(t);
  timeout_info ti;
  ti.what = "pg:copy";
  ti.desc = lc->desc;
  lc->copy_waiter = NULL;
  if (lc->copy) ah__pg_abandon(lc->copy, 1);
  lc->copy = NULL;
  lc->copy_over = 0;
  ah__task_wake_with(S, t, timeout_push_p, &ti, 1);
}

/* A wait woken by on_copy (no values) returns copy_ret; one woken by the
 * end of the COPY returns what done pushed. */
static int copy_after(lua_State *L, ah_task *t, int nargs) {
  lconn *lc = lua_touserdata(L, 1);
  (void)t;
  if (nargs > 0) return nargs;
  lua_pushboolean(L, lc->copy_ret);
  return 1;
}

static const ah_op copy_op = {"postgres copy", copy_cancel, copy_timeout, copy_after};

/* Suspends until on_copy (the call then returns ret) or the COPY's end. */
static int copy_wait(lua_State *L, lconn *lc, ah_task *me, double timeout, int ret) {
  lc->copy_waiter = me;
  lc->copy_ret = ret;
  lua_settop(L, 1); /* the connection, for copy_after */
  if (timeout > 0 && ah__task_timer(lc->S, me, timeout) != 0) return ah__nomem(L, "pg:copy");
  return ah__task_suspend(L, me, &copy_op, lc);
}

/* The outcome of a COPY whose done came while nobody waited: raised, or
 * the rows copied. */
static int copy_outcome(lua_State *L, lconn *lc) {
  ah_pg_req *r = lc->copy;
  int failed = r->kind_err != NULL;
  lc->copy = NULL;
  lc->copy_over = 0;
  lua_settop(L, 1);
  push_outcome(L, r); /* one value: the error or the count (no memory error leaks r: */
  ah__pg_req_free(r); /* a raise inside push_outcome would, which is accepted) */
  if (failed) return lua_error(L);
  return 1;
}

static lconn *check_copy(lua_State *L, const char *what) {
  lconn *lc = ah__pg_check_conn(L, what);
  if (!lc->copy)
    ah__error_raise(L, "invalid_argument", 0, "%s: no COPY is in progress", what);
  if (lc->copy_waiter)
    ah__error_raise(L, "invalid_argument", 0, "%s: another task is using the COPY", what);
  return lc;
}

static int c_copy_begin(lua_State *L) {
  const char *what = "pg:copy";
  lconn *lc = ah__pg_check_conn(L, what);
  ah_task *me = ah__task_require(L, what);
  double timeout = ah__pg_arg_timeout(L, 2, what);
  ah_pg_req *r;
  int rc;
  lua_settop(L, 3);
  if (lc->copy)
    return ah__error_raise(L, "invalid_argument", 0, "%s: a COPY is already in progress", what);
  r = req_from_args(L, AH_PGR_COPY, what);
  r->done = copy_on_done;
  r->on_copy = copy_on_copy;
  r->owner = lc;
  r->tag = M_COPY;
  if ((rc = ah__pg_submit(lc->pg, r)) < 0) {
    ah__pg_req_free(r);
    return not_ready_error(L, lc, what);
  }
  if (rc == 1) ah__sched_defer(lc->S, &lc->defer);
  lc->copy = r;
  lc->copy_over = 0;
  return copy_wait(L, lc, me, timeout, 1);
}

/* c:copy_put(timeout, rows, ncols) -> true once libpq took the rows, false
 * when they must be put again. */
static int c_copy_put(lua_State *L) {
  const char *what = "pg:copy";
  lconn *lc = check_copy(L, what);
  ah_task *me = ah__task_require(L, what);
  double timeout = ah__pg_arg_timeout(L, 2, what);
  lua_Integer ncols = ah__arg_integer(L, 4, what, "the column count", 1, 1600);
  int i, n, c, rc;
  ah__arg_type(L, 3, LUA_TTABLE, what, "the rows");
  if (lc->copy_over) return copy_outcome(L, lc);
  n = (int)lua_rawlen(L, 3);
  ah__buf_reset(&lc->copybuf);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 3, i) != LUA_TTABLE)
      return ah__error_raise(L, "invalid_argument", 0, "%s: row %d is not a table", what, i);
    for (c = 1; c <= ncols; c++) {
      ah_pg_val v;
      int ty = lua_rawgeti(L, -1, c);
      memset(&v, 0, sizeof v);
      if (ty == LUA_TSTRING) {
        v.type = AH_PGV_TEXT;
        v.u.s = lua_tolstring(L, -1, &v.len);
        if (memchr(v.u.s, 0, v.len))
          return ah__error_raise(L, "invalid_argument", 0,
                                 "%s: row %d, column %d holds a NUL byte, which COPY's "
                                 "text cannot carry", what, i, c);
      } else if (ty == LUA_TNUMBER && lua_isinteger(L, -1)) {
        v.type = AH_PGV_INT;
        v.u.i = (int64_t)lua_tointeger(L, -1);
      } else if (ty == LUA_TNUMBER) {
        v.type = AH_PGV_FLOAT;
        v.u.d = lua_tonumber(L, -1);
      } else if (ty == LUA_TBOOLEAN) {
        v.type = AH_PGV_BOOL;
        v.u.i = lua_toboolean(L, -1);
      } else if (!(ty == LUA_TNIL ||
                   (ty == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL))) {
        return ah__error_raise(L, "invalid_argument", 0,
                               "%s: row %d, column %d is a %s", what, i, c,
                               luaL_typename(L, -1));
      }
      if ((c > 1 && ah__buf_append(&lc->copybuf, "\t", 1) != 0) ||
          ah__pg_copy_field(&lc->copybuf, &v) != 0)
        return ah__nomem(L, what);
      lua_pop(L, 1);
    }
    if (ah__buf_append(&lc->copybuf, "\n", 1) != 0) return ah__nomem(L, what);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  rc = ah__pg_copy_put(lc->copy, lc->copybuf.data ? lc->copybuf.data : "", lc->copybuf.len);
  if (rc == 1) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == 2) return copy_wait(L, lc, me, timeout, 1); /* taken; room first */
  if (rc == 0) return copy_wait(L, lc, me, timeout, 0); /* put it again */
  /* The COPY ended: its error comes with done. */
  if (lc->copy_over) return copy_outcome(L, lc);
  return copy_wait(L, lc, me, timeout, 1);
}

/* c:copy_end(timeout [, abort_message]) -> rows copied (false: call again). */
static int c_copy_end(lua_State *L) {
  const char *what = "pg:copy";
  lconn *lc = check_copy(L, what);
  ah_task *me = ah__task_require(L, what);
  double timeout = ah__pg_arg_timeout(L, 2, what);
  const char *abort_msg = lua_isnoneornil(L, 3) ? NULL : ah__arg_string(L, 3, what, "the message", NULL);
  int rc;
  if (lc->copy_over) return copy_outcome(L, lc);
  rc = ah__pg_copy_end(lc->copy, abort_msg);
  lua_settop(L, 1);
  if (rc == 0) return copy_wait(L, lc, me, timeout, 0); /* call it again */
  if (lc->copy_over) return copy_outcome(L, lc);
  return copy_wait(L, lc, me, timeout, 0);
}

/* ---- the connection object ------------------------------------------------------------------ */

static int c_close(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:close", "a PostgreSQL connection");
  if (!lc->pg) return 0;
  ah__sched_undefer(lc->S, &lc->defer);
  ah__pg_detach_subs(lc, 1);
  if (lc->copy && !lc->copy_waiter) {
    if (lc->copy_over) ah__pg_req_free(lc->copy);
    else ah__pg_abandon(lc->copy, 0);
  }
  lc->copy = NULL;
  ah__pg_close(lc->pg, 1);
  lc->pg = NULL;
  return 0;
}

static int c_gc(lua_State *L) {
  lconn *lc = lua_touserdata(L, 1);
  if (lc->pg) {
    ah__sched_undefer(lc->S, &lc->defer);
    ah__pg_detach_subs(lc, 0);
    if (lc->copy && lc->copy_over) ah__pg_req_free(lc->copy);
    lc->copy = NULL;
    ah__pg_close(lc->pg, 0);
    lc->pg = NULL;
  }
  ah__buf_free(&lc->scratch);
  ah__buf_free(&lc->copybuf);
  return 0;
}

static int c_status(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:status", "a PostgreSQL connection");
  int st = lc->pg ? ah__pg_state(lc->pg) : AH_PG_CLOSED;
  lua_pushstring(L, st == AH_PG_READY ? "ready" : st == AH_PG_CONNECTING ? "connecting"
                    : st == AH_PG_BROKEN ? "broken" : "closed");
  return 1;
}

static int c_pending(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:pending", "a PostgreSQL connection");
  lua_pushinteger(L, lc->pg && ah__pg_state(lc->pg) == AH_PG_READY ? ah__pg_pending(lc->pg)
                                                                     : -1);
  return 1;
}

/* c:load() -> requests pending (-1 when not usable), seconds the running
 * one has run */
static int c_load(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:load", "a PostgreSQL connection");
  if (!lc->pg || ah__pg_state(lc->pg) != AH_PG_READY) {
    lua_pushinteger(L, -1);
    lua_pushnumber(L, 0);
  } else {
    lua_pushinteger(L, ah__pg_pending(lc->pg));
    lua_pushnumber(L, ah__pg_head_age(lc->pg));
  }
  return 2;
}

static int c_stuck(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:stuck", "a PostgreSQL connection");
  lua_pushnumber(L, lc->pg ? ah__pg_stuck(lc->pg) : 0);
  return 1;
}

static int c_set_autocommit(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:set_autocommit", "a PostgreSQL connection");
  lc->autocommit = lua_toboolean(L, 2);
  return 0;
}

static int c_info(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:info", "a PostgreSQL connection");
  lua_createtable(L, 0, 4);
  lua_pushstring(L, lc->desc);
  lua_setfield(L, -2, "server");
  if (lc->pg) {
    lua_pushinteger(L, ah__pg_backend_pid(lc->pg));
    lua_setfield(L, -2, "pid");
    lua_pushinteger(L, ah__pg_server_version(lc->pg));
    lua_setfield(L, -2, "server_version");
    if (ah__pg_error(lc->pg)[0]) {
      lua_pushstring(L, ah__pg_error(lc->pg));
      lua_setfield(L, -2, "error");
    }
  }
  return 1;
}

static int c_stats(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:stats", "a PostgreSQL connection");
  ah_pg_stats s;
  memset(&s, 0, sizeof s);
  if (lc->pg) ah__pg_stats(lc->pg, &s);
  lua_createtable(L, 0, 9);
#define F(name)                                                                \
  lua_pushinteger(L, (lua_Integer)s.name);                                     \
  lua_setfield(L, -2, #name)
  F(requests);
  F(failed);
  F(cancels);
  F(resends);
  F(prepares);
  F(notifies);
  F(cached);
  F(queued);
  F(inflight);
#undef F
  return 1;
}

static int c_tostring(lua_State *L) {
  lconn *lc = ah__arg_udata(L, 1, MT, "pg:__tostring", "a PostgreSQL connection");
  lua_pushfstring(L, "agenthost.pg(%s%s)", lc->desc, lc->pg ? "" : ", closed");
  return 1;
}

static void on_warning(ah_pg *pg, const char *msg) {
  lconn *lc = ah__pg_data(pg);
  char buf[640];
  snprintf(buf, sizeof buf, "postgres %s: %s", lc->desc, msg);
  ah__log(lc->L, 2, buf);
}

/* ---- connecting --------------------------------------------------------------------------------- */

static int connect_error_p(lua_State *L) {
  lconn *lc = lua_touserdata(L, 1);
  char msg[640];
  snprintf(msg, sizeof msg, "%s", ah__pg_error(lc->pg));
  ah__error_push(L, "connect", 1, "pg.connect: %s", msg);
  return 1;
}

static void on_ready(ah_pg *pg) {
  lconn *lc = ah__pg_data(pg);
  ah_task *t = lc->opener;
  lc->opener = NULL;
  if (!t) return;
  ah__task_timer_stop(lc->S, t);
  snprintf(lc->desc, sizeof lc->desc, "%s", ah__pg_describe(pg));
  if (ah__pg_state(pg) == AH_PG_READY) {
    ah__task_wake(lc->S, t, 0, 0);
    return;
  }
  ah__task_wake_with(lc->S, t, connect_error_p, lc, 1);
  ah__pg_close(pg, 0);
  lc->pg = NULL;
}

static void open_cancel(ah_sched *S, ah_task *t) {
  lconn *lc = ah__task_opdata(t);
  ah__task_timer_stop(S, t);
  lc->opener = NULL;
  if (lc->pg) ah__pg_close(lc->pg, 0);
  lc->pg = NULL;
}

static int connect_timeout_p(lua_State *L) {
  lconn *lc = lua_touserdata(L, 1);
  char secs[32];
  snprintf(secs, sizeof secs, "%g", lc->connect_timeout);
  ah__error_push(L, "timeout", 1, "pg.connect: %s did not answer within %s s", lc->desc,
                 secs);
  return 1;
}

static void open_timeout(ah_sched *S, ah_task *t) {
  lconn *lc = ah__task_opdata(t);
  lc->opener = NULL;
  ah__task_wake_with(S, t, connect_timeout_p, lc, 1);
  if (lc->pg) ah__pg_close(lc->pg, 0);
  lc->pg = NULL;
}

static int open_after(lua_State *L, ah_task *t, int nargs) {
  (void)t, (void)nargs;
  lua_settop(L, 1);
  return 1;
}

static const ah_op open_op = {"postgres connect", open_cancel, open_timeout, open_after};

#define FN_CONNECT "pg.connect"

/* _pg.connect(url|nil, opts) -> conn, once ready */
static int pg_connect(lua_State *L) {
  ah_task *me = ah__task_require(L, FN_CONNECT);
  const char *keys[16], *vals[16];
  char ctimeout[16], cache[16];
  const char *url = NULL, *app;
  ah_pg_opts o;
  lconn *lc;
  ah_pg *pg = NULL;
  int k = 0, rc;
  double timeout;
  if (!lua_isnoneornil(L, 1)) url = ah__arg_string(L, 1, FN_CONNECT, "the URL", NULL);
  ah__arg_options(L, 2, FN_CONNECT);
  timeout = ah__opt_positive(L, 2, FN_CONNECT, "connect_timeout", 10);
  o.prepare = ah__opt_boolean(L, 2, FN_CONNECT, "prepare", 1);
  o.cache_max = (int)ah__opt_integer(L, 2, FN_CONNECT, "statement_cache", 256, 1, 100000);
  app = "agenthost";
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "application_name");
    if (lua_type(L, -1) == LUA_TSTRING) app = lua_tostring(L, -1);
    else if (!lua_isnil(L, -1))
      ah__arg_error(L, FN_CONNECT, "application_name", "a string");
    lua_pop(L, 1); /* the options table keeps the string */
  }
  snprintf(ctimeout, sizeof ctimeout, "%d", (int)(timeout + 0.999));
  snprintf(cache, sizeof cache, "%d", o.cache_max);
  /* Defaults come before dbname, which the URL expands into and which so
   * overrides them; client_encoding comes after, as the decoder reads
   * UTF-8. */
  keys[k] = "fallback_application_name", vals[k++] = app;
  keys[k] = "connect_timeout", vals[k++] = ctimeout;
  keys[k] = "keepalives", vals[k++] = "1";
  keys[k] = "keepalives_idle", vals[k++] = "30";
  keys[k] = "keepalives_interval", vals[k++] = "10";
  keys[k] = "keepalives_count", vals[k++] = "3";
  if (url && *url) keys[k] = "dbname", vals[k++] = url;
  keys[k] = "client_encoding", vals[k++] = "UTF8";
  keys[k] = NULL, vals[k] = NULL;
  lua_settop(L, 2);
  lc = lua_newuserdatauv(L, sizeof *lc, 0); /* 3 */
  memset(lc, 0, sizeof *lc);
  lc->S = ah__sched_get(L);
  lc->connect_timeout = timeout;
  lc->defer.fn = flush_conn;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lc->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  snprintf(lc->desc, sizeof lc->desc, "the server");
  luaL_setmetatable(L, MT);
  rc = ah__pg_connect(&pg, ah__sched_uv(lc->S), keys, vals, &o, on_ready, lc);
  if (rc != 0) {
    char msg[640];
    snprintf(msg, sizeof msg, "%s", pg ? ah__pg_error(pg) : "out of memory");
    if (pg) ah__pg_close(pg, 0);
    if (rc == UV_ENOMEM) return ah__nomem(L, FN_CONNECT);
    return ah__error_raise(L, rc == UV_EINVAL ? "invalid_argument" : "connect",
                           rc == UV_EINVAL ? 0 : 1, "%s: %s", FN_CONNECT, msg);
  }
  lc->pg = pg;
  snprintf(lc->desc, sizeof lc->desc, "%s", ah__pg_describe(pg));
  ah__pg_on_notify(pg, ah__pg_notified);
  ah__pg_on_lost(pg, ah__pg_lost);
  ah__pg_on_warning(pg, on_warning);
  lc->opener = me;
  if (ah__task_timer(lc->S, me, timeout) != 0) {
    ah__pg_close(pg, 0);
    lc->pg = NULL;
    return ah__nomem(L, FN_CONNECT);
  }
  lua_replace(L, 1);
  lua_settop(L, 1);
  return ah__task_suspend(L, me, &open_op, lc);
}

/* _pg.type_info(oid) -> "array", element | "json" | "bytea" | "other" */
static int pg_type_info(lua_State *L) {
  lua_Integer oid = ah__arg_integer(L, 1, "pg.type_info", "the type OID", 0, 0xffffffffLL);
  uint32_t el = ah__pg_array_elem((uint32_t)oid);
  if (el) {
    lua_pushliteral(L, "array");
    lua_pushinteger(L, el);
    return 2;
  }
  lua_pushstring(L, oid == AH_PG_JSON || oid == AH_PG_JSONB ? "json"
                    : oid == AH_PG_BYTEA                  ? "bytea"
                                                          : "other");
  return 1;
}

int ah__open_pg(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"query", c_query},         {"first", c_first},
      {"exec", c_exec},           {"simple", c_simple},
      {"send", c_send},
      {"batch", c_batch},         {"param_types", c_param_types},
      {"pipeline", c_pipeline},
      {"copy_begin", c_copy_begin}, {"copy_put", c_copy_put},
      {"copy_end", c_copy_end},   {"subscribe", ah__pg_subscribe},
      {"status", c_status},       {"pending", c_pending},
      {"stuck", c_stuck},         {"set_autocommit", c_set_autocommit},
      {"load", c_load},
      {"info", c_info},           {"stats", c_stats},
      {"close", c_close},         {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", c_gc}, {"__close", c_close},
                                  {"__tostring", c_tostring}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"connect", pg_connect}, {"waitlist", ah__pg_waitlist},
                                 {"type_info", pg_type_info}, {NULL, NULL}};
  ah__metatable(L, MT, methods, meta, NULL, NULL);
  ah__pg_listen_init(L);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
