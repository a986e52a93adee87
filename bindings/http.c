/*
 * ah.http's C part: request{...} suspends the calling task until the
 * transfer ends and returns {status, headers, body}; the headers' names are
 * lower case.  A non-2xx status is a response, not an error.  Failures are
 * structured errors of kind dns, connect, timeout, tls, too_large, protocol
 * or invalid_argument whose message names the method and the URL (without
 * credentials); header values never appear in messages.  Cancelling the
 * task aborts the transfer at once.
 *
 * The JSON conveniences and get/post live in scripts/agenthost/http.lua.
 * Relies on host/http.c and the scheduler.
 */
#include "bindings.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT 60.0
#define DEFAULT_CONNECT_TIMEOUT 10.0
#define DEFAULT_MAX_BODY (64u << 20)

static char HTTP_KEY;


/* One request; a userdata kept on the waiting task's stack. */
typedef struct lreq {
  ah_http_req r;
  ah_task *t;       /* the task waiting on it, or NULL */
  ah_sched *S;
  int ended;        /* the transfer is over (stream) */
  int reported;     /* its error was raised (stream) */
  char method[16];
  char *url;        /* malloc'd copy for messages; freed by lreq_gc only */
} lreq;

static int http_open(void **out, uv_loop_t *loop) {
  ah_http *h = NULL;
  int rc = ah__http_open(&h, loop, 0, 0);
  *out = h;
  return rc;
}

static void http_close(void *h) { ah__http_close(h); }

/* The loop's HTTP context (see ah__context). */
static ah_http *get_http(lua_State *L) {
  return ah__context(L, &HTTP_KEY, http_open, http_close,
                     "ah.http: cannot initialise libcurl");
}

static int lreq_gc(lua_State *L) {
  lreq *lr = lua_touserdata(L, 1);
  ah__http_req_free(&lr->r);
  free(lr->url);
  lr->url = NULL;
  return 0;
}

/* Pushes the response headers as a table, names in lower case; repeated
 * headers are joined with ", ". */
static void push_headers(lua_State *L, ah_http_req *r) {
  ah_http_header h;
  size_t pos = 0;
  lua_newtable(L);
  while (ah__http_header_next(r, &pos, &h)) {
    lua_pushlstring(L, h.name, h.name_len);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isstring(L, -1)) {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h.value, h.value_len);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, h.value, h.value_len);
    }
    lua_rawset(L, -3);
  }
}

/* The URL is made safe to show only here, since most requests succeed. */
static void push_error(lua_State *co, lreq *lr) {
  ah_http_req *r = &lr->r;
  char safe_url[512];
  ah__http_safe_url(lr->url, safe_url, sizeof safe_url);
  ah__error_push(co, r->kind, r->retryable, "%s %s: %s", lr->method, safe_url,
                 r->errbuf);
}

/* Streams: wake the waiting task (for headers, data, or the end). */
static void stream_wake(ah_http_req *r) {
  lreq *lr = r->data;
  ah_task *t = lr->t;
  if (!t) return;
  lr->t = NULL;
  ah__task_wake(lr->S, t, 0, 0);
}

static void stream_done(ah_http_req *r) {
  lreq *lr = r->data;
  lr->ended = 1;
  stream_wake(r);
}

/* [lreq] -> the response table, or the transfer's error. */
static int done_push_p(lua_State *L) {
  lreq *lr = lua_touserdata(L, 1);
  ah_http_req *r = &lr->r;
  if (r->kind) {
    push_error(L, lr);
    return 1;
  }
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  push_headers(L, r);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
  lua_setfield(L, -2, "body");
  lua_pushstring(L, r->version == 20   ? "2"
                    : r->version == 30 ? "3"
                    : r->version == 10 ? "1.0"
                                       : "1.1");
  lua_setfield(L, -2, "version");
  return 1;
}

/* Wakes the waiting task with the response or the error (or `resource`
 * when the response cannot be built for lack of memory). */
static void on_done(ah_http_req *r) {
  lreq *lr = r->data;
  ah__task_wake_with(lr->S, lr->t, done_push_p, lr, r->kind != NULL);
  ah__http_req_free(r);
}

static void http_cancel(ah_sched *S, ah_task *t) {
  lreq *lr = ah__task_opdata(t);
  (void)S;
  ah__http_req_free(&lr->r); /* aborts the transfer: no done call */
}

static const ah_op http_op = {"http request", http_cancel, NULL, NULL};

/* Adds the headers table at idx to the request.  host/http.c refuses what
 * could smuggle a header or a request (odd names; CR, LF or NUL in a
 * value); the name is checked first here so that a bad name is reported
 * before its value's type. */
static void add_headers(lua_State *L, int idx, lreq *lr, const char *fn) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t vlen;
    const char *value;
    int rc;
    if (lua_type(L, -2) != LUA_TSTRING || !ah__http_token(lua_tostring(L, -2)))
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: header names must be HTTP tokens "
                      "(letters, digits and !#$%%&'*+-.^_`|~)", fn);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: the value of header '%s' must be a string", fn,
                      lua_tostring(L, -2));
    value = lua_tolstring(L, -1, &vlen);
    rc = ah__http_req_header(&lr->r, lua_tostring(L, -2), value, vlen);
    if (rc == UV_EILSEQ)
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: the value of header '%s' contains a line break or NUL",
                      fn, lua_tostring(L, -2));
    if (rc != 0) ah__nomem(L, fn);
    lua_pop(L, 1);
  }
}

/* A timeout in seconds as curl's milliseconds: at least 1 (0 would mean
 * no timeout to curl) and at most TIMEOUT_MAX_MS, about 11.6 days, so
 * that inf or 1e300 converts to a long without undefined behaviour. */
#define TIMEOUT_MAX_MS 1e9
static long timeout_ms(double seconds) {
  double ms = seconds * 1000 + 0.5;
  if (!(ms >= 1)) return 1;
  return ms > TIMEOUT_MAX_MS ? (long)TIMEOUT_MAX_MS : (long)ms;
}

/* Validates the options table at 1 and starts the transfer; leaves only
 * the request userdata on the stack. */
static lreq *start(lua_State *L, ah_task *me, int stream) {
  /* Every failure below raises (ah__error_raise does not return). */
  ah_sched *S = ah__sched_get(L);
  const char *fn = stream ? "ah.http.stream" : "ah.http.request";
  const char *url, *method, *body = NULL;
  size_t url_len, body_len = 0, i;
  double timeout, connect_timeout, max_body;
  lreq *lr;
  int rc;

  ah__arg_type(L, 1, LUA_TTABLE, fn, "the options");
  lua_settop(L, 1);
  lua_getfield(L, 1, "url"); /* 2 */
  if (lua_type(L, 2) != LUA_TSTRING) ah__arg_error(L, fn, "url", "a string");
  url = lua_tolstring(L, 2, &url_len);
  rc = ah__http_check_url(url, url_len);
  if (rc == UV_ENAMETOOLONG)
    ah__error_raise(L, "invalid_argument", 0, "%s: the url is longer than %d bytes",
                    fn, AH_HTTP_MAX_URL);
  if (rc == UV_EINVAL)
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: the url contains a space or a control character; "
                    "percent-encode it", fn);
  if (rc != 0)
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: only http:// and https:// URLs are allowed", fn);
  lua_getfield(L, 1, "body"); /* 3 */
  if (!lua_isnil(L, 3)) {
    if (lua_type(L, 3) != LUA_TSTRING)
      ah__arg_error(L, fn, "body", "a string (use json = for a table)");
    body = lua_tolstring(L, 3, &body_len);
  }
  lua_getfield(L, 1, "method"); /* 4 */
  method = lua_isnil(L, 4) ? (body ? "POST" : "GET") : lua_tostring(L, 4);
  if (!method || lua_type(L, 4) == LUA_TNUMBER || strlen(method) >= 16 ||
      !ah__http_token(method))
    ah__arg_error(L, fn, "method", "an HTTP method name such as GET or POST");
  timeout = ah__opt_positive(L, 1, fn, "timeout", DEFAULT_TIMEOUT);
  connect_timeout =
      ah__opt_positive(L, 1, fn, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
  max_body = ah__opt_positive(L, 1, fn, "max_body", DEFAULT_MAX_BODY);

  lr = lua_newuserdatauv(L, sizeof *lr, 1); /* 5 */
  memset(lr, 0, sizeof *lr);
  luaL_setmetatable(L, stream ? "agenthost.http_stream" : "agenthost.http_req");
  for (i = 0; method[i]; i++) lr->method[i] = (char)toupper((unsigned char)method[i]);
  if (!(lr->url = malloc(url_len + 1))) ah__nomem(L, fn);
  memcpy(lr->url, url, url_len + 1);
  lua_getfield(L, 1, "headers"); /* 6 */
  if (!lua_isnil(L, 6)) {
    if (!lua_istable(L, 6))
      ah__arg_error(L, fn, "headers", "a table of name = value");
    add_headers(L, 6, lr, fn);
  }
  lr->r.follow = ah__opt_boolean(L, 1, fn, "follow_redirects", 0);
  lr->r.deny_private = !ah__opt_boolean(L, 1, fn, "allow_private", 1);
  /* The CA bundle's path stays on the stack until the transfer has
   * started (curl copies it then). */
  lua_getfield(L, 1, "ca_file");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      ah__arg_error(L, fn, "ca_file", "the path of a PEM file");
    lr->r.ca_file = lua_tostring(L, -1);
  }
  lr->r.url = url;
  lr->r.method = lr->method;
  lr->r.body_data = body;
  lr->r.body_len = body_len;
  lr->r.timeout_ms = timeout_ms(timeout);
  lr->r.connect_timeout_ms = timeout_ms(connect_timeout);
  lr->r.max_body = max_body > 1e15 ? (size_t)1e15 : (size_t)max_body;
  lr->r.done = stream ? stream_done : on_done;
  lr->r.data = lr;
  lr->t = me;
  lr->S = S;
  if (stream) {
    lr->r.stream = 1;
    lr->r.high_water = 64u << 10;
    lr->r.on_headers = stream_wake;
    lr->r.on_data = stream_wake;
    lua_createtable(L, 0, 2);
    lua_setiuservalue(L, 5, 1);
  }
  if ((rc = ah__http_start(get_http(L), &lr->r)) != 0)
    ah__error_raise(L, "resource", 1, "ah.http.request: cannot start: %s",
                    uv_strerror(rc));
  lua_settop(L, 5); /* the request stays on this stack while it runs */
  lua_replace(L, 1);
  lua_settop(L, 1);
  return lr;
}

/* core.http.request{method, url, headers, body, timeout, connect_timeout,
 *                   max_body, follow_redirects} */
static int h_request(lua_State *L) {
  ah_task *me = ah__task_require(L, "ah.http.request");
  lreq *lr = start(L, me, 0);
  return ah__task_suspend(L, me, &http_op, lr);
}

/* ---- streams ------------------------------------------------------------ */

static void stream_cancel(ah_sched *S, ah_task *t) {
  lreq *lr = ah__task_opdata(t);
  (void)S;
  lr->t = NULL;
  lr->ended = 1;
  lr->reported = 1;
  ah__http_req_free(&lr->r); /* a cancelled reader aborts the transfer */
}

static int stream_head_after(lua_State *L, ah_task *t, int nargs);
static int stream_read_after(lua_State *L, ah_task *t, int nargs);
static const ah_op stream_head_op = {"http stream", stream_cancel, NULL,
                                     stream_head_after};
static const ah_op stream_read_op = {"http stream read", stream_cancel, NULL,
                                     stream_read_after};

static int stream_head_after(lua_State *L, ah_task *t, int nargs) {
  lreq *lr = lua_touserdata(L, 1);
  (void)t;
  lua_pop(L, nargs);
  if (!lr->r.headers_done && lr->ended) {
    lr->reported = 1;
    if (lr->r.kind) {
      push_error(L, lr);
      return lua_error(L);
    }
  }
  /* {status, headers} for __index */
  lua_getiuservalue(L, 1, 1);
  lua_pushinteger(L, lr->r.status);
  lua_setfield(L, -2, "status");
  push_headers(L, &lr->r);
  lua_setfield(L, -2, "headers");
  lua_pop(L, 1);
  lua_settop(L, 1);
  return 1;
}

/* core.http.stream{...} -> a stream once the headers are in */
static int h_stream(lua_State *L) {
  ah_task *me = ah__task_require(L, "ah.http.stream");
  lreq *lr = start(L, me, 1);
  return ah__task_suspend(L, me, &stream_head_op, lr);
}

/* s:read() -> the next chunk, or nil at the end; raises a transfer error. */
static int s_read(lua_State *L) {
  lreq *lr = ah__arg_udata(L, 1, "agenthost.http_stream", "stream:read", "a stream");
  if (lr->r.body.len > 0) {
    lua_pushlstring(L, lr->r.body.data, lr->r.body.len);
    ah__buf_reset(&lr->r.body);
    ah__http_resume(&lr->r); /* the consumer caught up */
    return 1;
  }
  if (lr->ended) {
    if (lr->r.kind && !lr->reported) {
      lr->reported = 1;
      push_error(L, lr);
      return lua_error(L);
    }
    return 0;
  }
  return ah__task_suspend_alone(L, "stream:read", "reading this stream", &lr->t,
                                1, &stream_read_op, lr);
}

static int stream_read_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  lua_pop(L, nargs);
  return s_read(L);
}

/* for chunk in stream do ... end */
static int s_call(lua_State *L) {
  lua_settop(L, 1);
  return s_read(L);
}

static int s_close(lua_State *L) {
  lreq *lr = ah__arg_udata(L, 1, "agenthost.http_stream", "stream:close", "a stream");
  if (lr->t) return 0; /* a reader is waiting: it will see the end */
  lr->ended = 1;
  lr->reported = 1;
  ah__http_req_free(&lr->r);
  return 0;
}

/* The response's fields (status, headers, ...), else the methods (the
 * upvalue). */
static int s_index(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  if (!lua_isnil(L, -1)) return 1;
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* ---- server-sent events ------------------------------------------------------ */

typedef struct lsse {
  ah_sse p;
} lsse;

static int push_event(void *ud, const ah_sse_event *ev) {
  lua_State *L = ud;
  lua_createtable(L, 0, 4);
  lua_pushstring(L, ev->event);
  lua_setfield(L, -2, "event");
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_setfield(L, -2, "data");
  lua_pushstring(L, ev->id);
  lua_setfield(L, -2, "id");
  if (ev->retry >= 0) {
    lua_pushinteger(L, ev->retry);
    lua_setfield(L, -2, "retry");
  }
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* parser:feed(chunk) -> array of the events it completed */
static int sse_feed(lua_State *L) {
  lsse *p = ah__arg_udata(L, 1, "agenthost.sse", "parser:feed", "an SSE parser");
  size_t n;
  const char *s = ah__arg_string(L, 2, "parser:feed", "the chunk", &n);
  int rc;
  lua_newtable(L);
  rc = ah__sse_feed(&p->p, s, n, push_event, L);
  if (rc == UV_E2BIG)
    return ah__error_raise(L, "too_large", 0,
                           "server-sent events: a line or event is larger than "
                           "%d bytes",
                           (int)p->p.max);
  if (rc) return ah__nomem(L, "parser:feed");
  return 1;
}

static int sse_gc(lua_State *L) {
  ah__sse_free(&((lsse *)lua_touserdata(L, 1))->p);
  return 0;
}

/* core.http.sse_parser([max_bytes]) */
static int h_sse_parser(lua_State *L) {
  lua_Integer max = lua_isnoneornil(L, 1)
                        ? 16 << 20
                        : ah__arg_integer(L, 1, "ah.http.sse_parser", "max_bytes",
                                          1, LUA_MAXINTEGER);
  lsse *p = lua_newuserdatauv(L, sizeof *p, 0);
  ah__sse_init(&p->p, max > 0 ? (size_t)max : (16u << 20));
  luaL_setmetatable(L, "agenthost.sse");
  return 1;
}

/* Reads the limit k of the table at 1: -1 when absent, else 0..100000. */
static long opt_limit(lua_State *L, const char *k) {
  return (long)ah__opt_integer(L, 1, "ah.http.configure", k, -1, 0, 100000);
}

/* core.http.configure{max_connections =, max_host_connections =,
 *                     start_batch =} */
static int h_configure(lua_State *L) {
  long mc, mh, sb;
  ah__arg_type(L, 1, LUA_TTABLE, "ah.http.configure", "the options");
  mc = opt_limit(L, "max_connections");      /* 0: automatic */
  mh = opt_limit(L, "max_host_connections"); /* 0: no limit */
  sb = opt_limit(L, "start_batch");          /* 0: no limit */
  ah__http_limits(get_http(L), mc, mh);
  ah__http_start_batch(get_http(L), sb);
  return 0;
}

/* core.http.stats() -> {active, queued, sockets} */
static int h_stats(lua_State *L) {
  ah_http *h = ah__context_peek(L, &HTTP_KEY);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, h ? ah__http_queued(h) : 0);
  lua_setfield(L, -2, "queued");
  lua_pushinteger(L, h ? ah__http_active(h) : 0);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, h ? ah__http_sockets(h) : 0);
  lua_setfield(L, -2, "sockets");
  return 1;
}

int ah__open_http(lua_State *L) {
  static const luaL_Reg fns[] = {{"request", h_request},
                                 {"stream", h_stream},
                                 {"sse_parser", h_sse_parser},
                                 {"stats", h_stats},
                                 {"configure", h_configure},
                                 {NULL, NULL}};
  static const luaL_Reg s_methods[] = {{"read", s_read}, {"close", s_close},
                                       {NULL, NULL}};
  static const luaL_Reg sse_methods[] = {{"feed", sse_feed}, {NULL, NULL}};
  static const luaL_Reg sse_meta[] = {{"__gc", sse_gc}, {NULL, NULL}};
  static const luaL_Reg req_meta[] = {{"__gc", lreq_gc}, {NULL, NULL}};
  static const luaL_Reg s_meta[] = {{"__call", s_call}, {"__close", s_close},
                                    {"__gc", lreq_gc}, {NULL, NULL}};
  ah__metatable(L, "agenthost.http_req", NULL, req_meta, NULL, NULL);
  ah__metatable(L, "agenthost.http_stream", s_methods, s_meta, s_index, NULL);
  ah__metatable(L, "agenthost.sse", sse_methods, sse_meta, NULL, NULL);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
