/*
 * PostgreSQL connections on the loop thread, through libpq in non-blocking
 * mode: PQconnectStartParams/PQconnectPoll to connect, then pipeline mode
 * for every request, with the socket watched by a uv_poll_t and results
 * read with PQconsumeInput/PQisBusy/PQgetResult as they arrive.
 *
 * Requests go out in the order they were submitted, each ended by its own
 * Sync (so each is its own implicit transaction outside an explicit one,
 * and an error aborts only its own statements).  Those submitted in one
 * scheduler pass are written together: with more than one, a TCP socket is
 * corked while libpq writes them, so they leave in as few segments as the
 * kernel can make.  Statements with parameters run as named prepared
 * statements: the first use on a connection prepares and describes the
 * statement (one round trip), and the known parameter types decide how
 * values are sent (a string for a bytea parameter goes in binary, so it
 * may hold any bytes).  The cache is an LRU; an evicted statement is
 * deallocated in the pipeline, after the requests that used it.  A request
 * that fails with "cached plan must not change result type" (the table
 * changed under the statement) is prepared again and sent again when it
 * ran outside an explicit transaction.
 *
 * A SIMPLE request (several statements in one text, no parameters) and a
 * COPY run alone: the pipeline is drained, pipeline mode left for them, and
 * entered again after.
 *
 * Cancellation: libpq 15's cancel request is blocking (it opens a new
 * connection to the server), so it runs on libuv's thread pool.  It stops
 * whatever the session runs at the moment, so it is sent only once the
 * abandoned request is the one running; a request sent behind it that the
 * cancel hit by mistake (query_canceled without having been abandoned)
 * is sent again when it ran outside an explicit transaction, since the
 * server rolled it back.
 *
 * The socket may be closed by libpq inside any of its calls (a lost
 * connection): after each call that can do so the socket is checked and
 * the poll handle closed at once, before anything else can open a file
 * with the same number.
 *
 * Relies on libpq, libuv and the host's buffers.  Ownership: ah_pg is
 * malloc'd by ah__pg_connect and freed once the owner has closed it, its
 * poll handle and timer have closed, and its cancel jobs have come back
 * (refs); a request belongs to the connection from submit until done (or,
 * abandoned, until the connection frees it).
 */
#define _DEFAULT_SOURCE /* TCP_CORK */
#include "host.h"

#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BUCKETS 256          /* hash buckets of the statement cache */
#define CACHE_MAX 256        /* prepared statements kept by default */
#define EXPOSE_S 1.0         /* seconds after a cancel request returned in
                              * which a request sent may still be hit */
#define MAX_RESENDS 2
#define SMALL_PARAMS 16

enum { W_NONE, W_SEND, W_FLY };                 /* where a request is */
enum { IR_USER, IR_PREPARE, IR_DESCRIBE, IR_DEALLOC }; /* what it is */
enum { CP_START, CP_ACTIVE, CP_ENDED };          /* a COPY's phase */

/* The poll handle on the connection's socket; replaced when libpq changes
 * sockets (while connecting).  Freed in poll_closed. */
typedef struct pgpoll {
  uv_poll_t h;
  ah_pg *pg;
} pgpoll;

/* A prepared statement of the cache. */
typedef struct pstmt {
  struct pstmt *hnext;         /* hash chain */
  struct pstmt *prev, *next;   /* LRU list, most recent first */
  uint64_t hash;
  unsigned id;                 /* its server-side name is "ah_<id>" */
  int ready;                   /* prepared and described */
  int nparams;
  uint32_t *ptypes;            /* malloc'd; freed with the entry */
  char name[16];               /* "ah_<id>" */
  size_t len;
  char sql[];
} pstmt;

typedef struct cancel_job {
  uv_work_t w;
  PGcancel *cancel;
  ah_pg *pg;
  char err[256];
} cancel_job;

struct ah_pg {
  uv_loop_t *loop;
  PGconn *conn;                /* PQfinish'd at close */
  pgpoll *poll;                /* the current poll handle, or NULL */
  int fd;                      /* the socket it watches, or -1 */
  int events;
  uv_timer_t kick;             /* runs the processing soon; closed at close */
  int kick_open;
  int state;                   /* AH_PG_* */
  int setup;                   /* connecting: the setup SET runs */
  int tcp;                     /* the socket is TCP: corkable */
  int pipeline;                /* in pipeline mode */
  int flush_wanted;            /* a submit asked the owner for a flush */
  int refs;
  ah_pg_opts o;
  ah_pg_req *sq, *sq_tail;     /* submitted, not sent (FIFO) */
  ah_pg_req *fq, *fq_tail;     /* sent, results pending (FIFO) */
  int nsend, nfly;             /* requests of the owner in each */
  pstmt *tab[BUCKETS];
  pstmt lru;                   /* sentinel of the LRU list */
  int ncached;
  unsigned next_id;
  ah_buf scratch;              /* parameters' text while sending */
  char *secrets[3];            /* passwords to scrub from messages */
  char errmsg[512];
  char desc[256];
  void (*ready)(ah_pg *pg);
  void (*notify)(ah_pg *pg, const char *channel, const char *payload, int pid);
  void (*lost_cb)(ah_pg *pg);
  void (*warning)(ah_pg *pg, const char *msg);
  void *data;
  int cancels;                 /* cancel jobs on the thread pool */
  double expose_until;
  double stuck_since;          /* when the running request was abandoned */
  uint64_t head_since;         /* uv_now when the running request began */
  ah_pg_stats st;
  ah_pg_resolve *res;          /* host names being looked up, or NULL */
};

static void process(ah_pg *pg);
static void send_queue(ah_pg *pg);
static void after_io(ah_pg *pg);
static void lost(ah_pg *pg, const char *why);

/* ---- memory and references ------------------------------------------------------ */

static void cache_free_all(ah_pg *pg) {
  int i;
  for (i = 0; i < BUCKETS; i++) {
    pstmt *ps = pg->tab[i], *next;
    for (; ps; ps = next) {
      next = ps->hnext;
      free(ps->ptypes);
      free(ps);
    }
    pg->tab[i] = NULL;
  }
  pg->ncached = 0;
  pg->lru.next = pg->lru.prev = &pg->lru;
}

static void unref(ah_pg *pg) {
  int i;
  if (--pg->refs > 0) return;
  cache_free_all(pg);
  ah__buf_free(&pg->scratch);
  for (i = 0; i < 3; i++) {
    if (!pg->secrets[i]) continue;
    memset(pg->secrets[i], 0, strlen(pg->secrets[i]));
    free(pg->secrets[i]);
  }
  free(pg);
}

ah_pg_req *ah__pg_req_new(int kind, int nstmts, int nparams, size_t bytes) {
  size_t head = sizeof(ah_pg_req) + (size_t)nstmts * sizeof(ah_pg_stmt) +
                (size_t)nparams * sizeof(ah_pg_val);
  ah_pg_req *r = malloc(head + bytes + (size_t)nstmts + 1);
  if (!r) return NULL;
  memset(r, 0, head);
  r->kind = kind;
  r->nstmts = nstmts;
  r->stmts = (ah_pg_stmt *)(void *)(r + 1);
  if (nstmts > 0) r->stmts[0].params = (ah_pg_val *)(void *)(r->stmts + nstmts);
  r->bytes = (char *)r + head;
  r->room = bytes + (size_t)nstmts + 1;
  return r;
}

const char *ah__pg_req_copy(ah_pg_req *r, const char *s, size_t n) {
  char *p = r->bytes;
  if (n + 1 > r->room) return NULL; /* the owner sized it: cannot happen */
  memcpy(p, s, n);
  p[n] = 0;
  r->bytes += n + 1;
  r->room -= n + 1;
  return p;
}

static void clear_results(ah_pg_req *r) {
  int i;
  for (i = 0; i < r->nstmts; i++) {
    PQclear(r->stmts[i].res);
    r->stmts[i].res = NULL;
  }
  PQclear(r->err);
  r->err = NULL;
  r->kind_err = NULL;
  r->retryable = 0;
  r->msg[0] = 0;
}

void ah__pg_req_free(ah_pg_req *r) {
  if (!r) return;
  clear_results(r);
  free(r->ptypes);
  free(r);
}

/* ---- messages -------------------------------------------------------------------- */

void ah__pg_scrub(const ah_pg *pg, char *s) {
  int i;
  for (i = 0; i < 3; i++) {
    const char *secret = pg->secrets[i];
    size_t n;
    char *p;
    if (!secret || (n = strlen(secret)) < 3) continue;
    while ((p = strstr(s, secret)) != NULL) {
      size_t rest = strlen(p + n);
      memcpy(p, "***", 3);
      memmove(p + 3, p + n, rest + 1);
    }
  }
}

/* Copies a libpq message into out (size n), without its trailing newline
 * and without any password. */
static void set_text(const ah_pg *pg, char *out, size_t n, const char *msg) {
  size_t len;
  char *p;
  snprintf(out, n, "%s", msg && *msg ? msg : "unknown error");
  len = strlen(out);
  while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == ' ')) out[--len] = 0;
  for (p = out; *p; p++) /* one line, single spaces */
    if (*p == '\n' || *p == '\t' || *p == '\r') *p = ' ';
  for (p = out; *p; p++)
    if (p[0] == ' ' && p[1] == ' ') memmove(p, p + 1, strlen(p + 1) + 1), p--;
  ah__pg_scrub(pg, out);
}

static void add_secret(ah_pg *pg, const char *s) {
  int i;
  if (!s || !*s) return;
  for (i = 0; i < 3; i++) {
    if (pg->secrets[i] && strcmp(pg->secrets[i], s) == 0) return;
    if (!pg->secrets[i]) {
      pg->secrets[i] = strdup(s);
      return;
    }
  }
}

/* The password of a postgres:// URL that libpq could not parse, taken by
 * hand so that its error message can be scrubbed of it. */
static void add_url_secret(ah_pg *pg, const char *url) {
  const char *p = strstr(url, "://"), *at, *colon;
  char buf[256];
  size_t n;
  if (!p) return;
  p += 3;
  at = strrchr(p, '@');
  if (!at) return;
  colon = memchr(p, ':', (size_t)(at - p));
  if (!colon || (n = (size_t)(at - colon - 1)) == 0 || n >= sizeof buf) return;
  memcpy(buf, colon + 1, n);
  buf[n] = 0;
  add_secret(pg, buf);
  memset(buf, 0, sizeof buf);
}

const char *ah__pg_sqlstate_kind(const char *code, int *retryable) {
  *retryable = 0;
  if (!code || !*code) return "sql";
  if ((code[0] == '0' && code[1] == '8' && strcmp(code, "08P01") != 0) ||
      strcmp(code, "57P01") == 0 || strcmp(code, "57P02") == 0 ||
      strcmp(code, "57P03") == 0) {
    *retryable = 1;
    return "connect";
  }
  *retryable = strcmp(code, "40001") == 0 || strcmp(code, "40P01") == 0;
  return "sql";
}

static const char *sqlstate(const ah_pg_req *r) {
  const char *c = r->err ? PQresultErrorField(r->err, PG_DIAG_SQLSTATE) : NULL;
  return c ? c : "";
}

/* Sets r's kind from its server error; an error libpq made itself (no
 * SQLSTATE) is the connection's when the connection is gone. */
static void classify(ah_pg *pg, ah_pg_req *r) {
  const char *code;
  if (!r->err || r->kind_err) return;
  code = sqlstate(r);
  if (!*code && pg->conn && PQstatus(pg->conn) == CONNECTION_BAD) {
    r->kind_err = "connect";
    r->retryable = 1;
    return;
  }
  r->kind_err = ah__pg_sqlstate_kind(code, &r->retryable);
}

static void fail_req(ah_pg_req *r, const char *kind, int retryable,
                     const char *fmt, ...) {
  va_list ap;
  r->kind_err = kind;
  r->retryable = retryable;
  va_start(ap, fmt);
  vsnprintf(r->msg, sizeof r->msg, fmt, ap);
  va_end(ap);
}

/* ---- queues ------------------------------------------------------------------------ */

static void push_tail(ah_pg_req **head, ah_pg_req **tail, ah_pg_req *r) {
  r->next = NULL;
  if (*tail) (*tail)->next = r;
  else *head = r;
  *tail = r;
}

static void push_front(ah_pg_req **head, ah_pg_req **tail, ah_pg_req *r) {
  r->next = *head;
  *head = r;
  if (!*tail) *tail = r;
}

static ah_pg_req *pop_head(ah_pg_req **head, ah_pg_req **tail) {
  ah_pg_req *r = *head;
  if (!r) return NULL;
  *head = r->next;
  if (!*head) *tail = NULL;
  r->next = NULL;
  return r;
}

static void unlink_req(ah_pg_req **head, ah_pg_req **tail, ah_pg_req *r) {
  ah_pg_req *p = *head, *prev = NULL;
  for (; p && p != r; prev = p, p = p->next) {}
  if (!p) return;
  if (prev) prev->next = r->next;
  else *head = r->next;
  if (*tail == r) *tail = prev;
  r->next = NULL;
}

static void send_push(ah_pg *pg, ah_pg_req *r, int front) {
  r->where = W_SEND;
  if (front) push_front(&pg->sq, &pg->sq_tail, r);
  else push_tail(&pg->sq, &pg->sq_tail, r);
  if (!r->internal) pg->nsend++;
}

static ah_pg_req *send_pop(ah_pg *pg) {
  ah_pg_req *r = pop_head(&pg->sq, &pg->sq_tail);
  if (r && !r->internal) pg->nsend--;
  if (r) r->where = W_NONE;
  return r;
}

static void fly_push(ah_pg *pg, ah_pg_req *r) {
  r->where = W_FLY;
  r->sent = 1;
  r->step = r->got = 0;
  if (pg->cancels > 0 || (pg->expose_until > 0 && ah__now() < pg->expose_until))
    r->exposed = 1;
  if (!pg->fq) pg->head_since = uv_now(pg->loop);
  push_tail(&pg->fq, &pg->fq_tail, r);
  if (!r->internal) pg->nfly++;
}

static ah_pg_req *fly_pop(ah_pg *pg) {
  ah_pg_req *r = pop_head(&pg->fq, &pg->fq_tail);
  if (r && !r->internal) pg->nfly--;
  if (r) r->where = W_NONE;
  pg->stuck_since = 0;
  pg->head_since = uv_now(pg->loop);
  return r;
}

/* The request has ended: to its owner, or freed. */
static void finish(ah_pg *pg, ah_pg_req *r) {
  r->where = W_NONE;
  if (r->internal || r->abandoned || !r->done) {
    ah__pg_req_free(r);
    return;
  }
  pg->st.requests++;
  if (r->kind_err) pg->st.failed++;
  r->done(r);
}

/* Clears the prepares' pointers to a request that goes away. */
static void forget_waiter(ah_pg *pg, ah_pg_req *r) {
  ah_pg_req *p;
  for (p = pg->fq; p; p = p->next)
    if (p->waiter == r) p->waiter = NULL;
}

/* Every request ends with an error: the connection was lost or closed. */
static void fail_all(ah_pg *pg, const char *kind, int retryable, const char *msg,
                     int call_done) {
  ah_pg_req *r;
  while ((r = fly_pop(pg)) || (r = send_pop(pg))) {
    clear_results(r);
    fail_req(r, kind, retryable, "%s", msg);
    if (!call_done) r->abandoned = 1;
    finish(pg, r);
  }
}

/* ---- the socket ------------------------------------------------------------------- */

static void poll_closed(uv_handle_t *h) {
  pgpoll *pp = (pgpoll *)(void *)h;
  ah_pg *pg = pp->pg;
  free(pp);
  unref(pg);
}

static void unwatch(ah_pg *pg) {
  if (!pg->poll) return;
  uv_close((uv_handle_t *)&pg->poll->h, poll_closed);
  pg->poll = NULL;
  pg->fd = -1;
  pg->events = 0;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches the connection's socket for events; a new handle when the socket
 * changed (or when fresh is set: while connecting, libpq may close a
 * socket and open another with the same number). */
static int watch(ah_pg *pg, int events, int fresh) {
  int fd = PQsocket(pg->conn), rc;
  pgpoll *pp;
  if (fd < 0) return UV_EBADF;
  if (pg->poll && pg->fd == fd && !fresh) {
    if (events != pg->events) {
      if ((rc = uv_poll_start(&pg->poll->h, events, on_poll)) != 0) return rc;
      pg->events = events;
    }
    return 0;
  }
  unwatch(pg);
  if (!(pp = malloc(sizeof *pp))) return UV_ENOMEM;
  if ((rc = uv_poll_init(pg->loop, &pp->h, fd)) != 0) {
    free(pp);
    return rc;
  }
  pp->pg = pg;
  pg->refs++;
  pg->poll = pp;
  pg->fd = fd;
  pg->events = events;
  return uv_poll_start(&pp->h, events, on_poll);
}

/* Did libpq lose (and maybe close) the socket in its last call? */
static int socket_gone(const ah_pg *pg) {
  return PQstatus(pg->conn) == CONNECTION_BAD || PQsocket(pg->conn) != pg->fd;
}

static void cork(ah_pg *pg, int on) {
#ifdef TCP_CORK
  if (pg->tcp && pg->fd >= 0)
    (void)setsockopt(pg->fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
#else
  (void)pg, (void)on;
#endif
}

static int is_tcp(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return 0;
  return ss.ss_family == AF_INET || ss.ss_family == AF_INET6;
}

/* The connection is lost: everything fails with a retryable `connect`
 * error, and the owner hears of it. */
static void lost(ah_pg *pg, const char *why) {
  if (pg->state != AH_PG_READY && pg->state != AH_PG_CONNECTING) return;
  unwatch(pg);
  {
    char tmp[sizeof pg->errmsg];
    set_text(pg, tmp, sizeof tmp, why ? why : PQerrorMessage(pg->conn));
    snprintf(pg->errmsg, sizeof pg->errmsg, "the connection to %.200s was lost: %.280s",
             pg->desc, tmp);
  }
  if (pg->state == AH_PG_CONNECTING) {
    pg->state = AH_PG_BROKEN;
    if (pg->ready) pg->ready(pg);
    return;
  }
  pg->state = AH_PG_BROKEN;
  fail_all(pg, "connect", 1, pg->errmsg, 1);
  if (pg->lost_cb) pg->lost_cb(pg);
}

/* ---- the statement cache ---------------------------------------------------------- */

static pstmt *cache_find(ah_pg *pg, const char *sql, size_t len) {
  uint64_t h = ah__hash(sql, len);
  pstmt *ps = pg->tab[h % BUCKETS];
  for (; ps; ps = ps->hnext)
    if (ps->hash == h && ps->len == len && memcmp(ps->sql, sql, len) == 0) return ps;
  return NULL;
}

static pstmt *cache_find_id(ah_pg *pg, unsigned id) {
  pstmt *ps;
  for (ps = pg->lru.next; ps != &pg->lru; ps = ps->next)
    if (ps->id == id) return ps;
  return NULL;
}

static void lru_unlink(pstmt *ps) {
  ps->prev->next = ps->next;
  ps->next->prev = ps->prev;
}

static void lru_front(ah_pg *pg, pstmt *ps) {
  ps->next = pg->lru.next;
  ps->prev = &pg->lru;
  pg->lru.next->prev = ps;
  pg->lru.next = ps;
}

static void cache_remove(ah_pg *pg, pstmt *ps) {
  pstmt **pp = &pg->tab[ps->hash % BUCKETS];
  for (; *pp && *pp != ps; pp = &(*pp)->hnext) {}
  if (*pp) *pp = ps->hnext;
  lru_unlink(ps);
  pg->ncached--;
  free(ps->ptypes);
  free(ps);
}

/* A request's Sync.  libpq 17 can queue it without writing; before
 * that PQpipelineSync writes at once, one send() per request (the cork
 * makes those cheap). */
static int send_sync(ah_pg *pg) {
#ifdef LIBPQ_HAS_SEND_PIPELINE_SYNC
  return PQsendPipelineSync(pg->conn) ? 0 : -1;
#else
  return PQpipelineSync(pg->conn) ? 0 : -1;
#endif
}

/* Sends DEALLOCATE for a statement dropped from the cache; the requests
 * that used it were sent before, and run before it. */
static void deallocate(ah_pg *pg, pstmt *ps) {
  char sql[32];
  ah_pg_req *r;
  if (ps->ready && (r = ah__pg_req_new(AH_PGR_PIPELINE, 0, 0, 0)) != NULL) {
    snprintf(sql, sizeof sql, "DEALLOCATE ah_%u", ps->id);
    r->internal = IR_DEALLOC;
    if (PQsendQueryParams(pg->conn, sql, 0, NULL, NULL, NULL, NULL, 0) &&
        send_sync(pg) == 0)
      fly_push(pg, r);
    else
      ah__pg_req_free(r);
  }
  cache_remove(pg, ps);
}

/* Starts preparing sql as a new cache entry; `waiter` is the request that
 * waits for it. */
static int prepare(ah_pg *pg, const char *sql, size_t len, ah_pg_req *waiter) {
  pstmt *ps = malloc(sizeof *ps + len + 1);
  ah_pg_req *r = ah__pg_req_new(AH_PGR_PIPELINE, 0, 0, 0);
  if (!ps || !r) {
    free(ps);
    ah__pg_req_free(r);
    return UV_ENOMEM;
  }
  memset(ps, 0, sizeof *ps);
  ps->hash = ah__hash(sql, len);
  ps->id = ++pg->next_id;
  snprintf(ps->name, sizeof ps->name, "ah_%u", ps->id);
  ps->len = len;
  memcpy(ps->sql, sql, len);
  ps->sql[len] = 0;
  ps->hnext = pg->tab[ps->hash % BUCKETS];
  pg->tab[ps->hash % BUCKETS] = ps;
  lru_front(pg, ps);
  pg->ncached++;
  r->internal = IR_PREPARE;
  r->psid = ps->id;
  r->waiter = waiter;
  if (!PQsendPrepare(pg->conn, ps->name, ps->sql, 0, NULL) ||
      !PQsendDescribePrepared(pg->conn, ps->name) || send_sync(pg) != 0) {
    ah__pg_req_free(r);
    return -1;
  }
  pg->st.prepares++;
  fly_push(pg, r);
  return 0;
}

/* Is ps one of the statements the request first in line waits for? */
static int needed_next(const ah_pg *pg, const pstmt *ps) {
  const ah_pg_req *r = pg->sq;
  int i;
  for (i = 0; r && i < r->nstmts; i++)
    if (r->stmts[i].sql_len == ps->len && memcmp(r->stmts[i].sql, ps->sql, ps->len) == 0)
      return 1;
  return 0;
}

/* Drops least recently used statements past the cache's bound (not those
 * the next request needs, so that a batch of more statements than the
 * cache holds still goes). */
static void cache_trim(ah_pg *pg) {
  pstmt *ps = pg->lru.prev;
  while (pg->ncached > pg->o.cache_max && ps != &pg->lru) {
    pstmt *prev = ps->prev;
    if (ps->ready && !needed_next(pg, ps)) deallocate(pg, ps);
    ps = prev;
  }
}

int ah__pg_param_types(ah_pg *pg, const char *sql, size_t len,
                       const uint32_t **types) {
  pstmt *ps = pg->o.prepare ? cache_find(pg, sql, len) : NULL;
  if (!ps || !ps->ready) return -1;
  *types = ps->ptypes;
  return ps->nparams;
}

/* ---- sending ------------------------------------------------------------------------ */

/* Are all the statements of r prepared (when they need to be)?  Starts
 * the prepares that are missing.  -1 when one could not be started. */
static int prepared(ah_pg *pg, ah_pg_req *r) {
  int i, ready = 1;
  if (!pg->o.prepare) return 1;
  for (i = 0; i < r->nstmts; i++) {
    ah_pg_stmt *s = &r->stmts[i];
    pstmt *ps;
    if (s->nparams == 0 && r->kind != AH_PGR_DESCRIBE) continue;
    ps = cache_find(pg, s->sql, s->sql_len);
    s->ps = ps;
    if (!ps) {
      if (prepare(pg, s->sql, s->sql_len, r) != 0) return -1;
      ready = 0;
    } else if (!ps->ready) {
      ready = 0;
    }
  }
  return ready;
}

/* Checks r's parameters against its statements' types before anything of
 * it is sent; fails r (0) when one cannot be sent. */
static int check_params(ah_pg *pg, ah_pg_req *r) {
  int i, k;
  for (i = 0; i < r->nstmts; i++) {
    ah_pg_stmt *s = &r->stmts[i];
    /* prepared() just looked the statement up (nothing since can have
     * dropped it from the cache). */
    pstmt *ps = pg->o.prepare && (s->nparams > 0 || r->kind == AH_PGR_DESCRIBE) ? s->ps : NULL;
    s->psid = ps ? ps->id : 0;
    s->ps = ps;
    if (ps) {
      lru_unlink(ps);
      lru_front(pg, ps);
      if (r->kind != AH_PGR_DESCRIBE && ps->nparams != s->nparams) {
        r->failed = i;
        fail_req(r, "invalid_argument", 0,
                 "the statement takes %d parameter%s ($1...), %d given",
                 ps->nparams, ps->nparams == 1 ? "" : "s", s->nparams);
        return 0;
      }
    }
    for (k = 0; k < s->nparams; k++) {
      const ah_pg_val *v = &s->params[k];
      if (v->type == AH_PGV_TEXT && memchr(v->u.s, 0, v->len) &&
          !(ps && ps->ptypes[k] == AH_PG_BYTEA)) {
        r->failed = i;
        fail_req(r, "invalid_argument", 0,
                 "parameter $%d holds a NUL byte, which only a bytea "
                 "parameter can take", k + 1);
        return 0;
      }
    }
  }
  return 1;
}

/* The decimal text of i in out (32 bytes); returns its length. */
static int format_int(int64_t i, char *out) {
  char tmp[24];
  int n = 0, len = 0;
  uint64_t u = i < 0 ? (uint64_t)0 - (uint64_t)i : (uint64_t)i;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (i < 0) out[len++] = '-';
  while (n) out[len++] = tmp[--n];
  out[len] = 0;
  return len;
}

/* Writes one statement: text parameters, except strings for bytea
 * parameters, which go in binary. */
static int send_stmt(ah_pg *pg, ah_pg_stmt *s) {
  const char *vs[SMALL_PARAMS];
  int ls[SMALL_PARAMS], fs[SMALL_PARAMS];
  size_t os[SMALL_PARAMS];
  const char **vals = vs;
  int *lens = ls, *fmts = fs, n = s->nparams, i, ok;
  size_t *offs = os;
  pstmt *ps = s->ps;
  void *block = NULL;
  if (n > SMALL_PARAMS) {
    size_t each = sizeof(char *) + 2 * sizeof(int) + sizeof(size_t);
    if (!(block = malloc(each * (size_t)n))) return UV_ENOMEM;
    vals = block;
    offs = (size_t *)(void *)(vals + n);
    lens = (int *)(void *)(offs + n);
    fmts = lens + n;
  }
  ah__buf_reset(&pg->scratch);
  for (i = 0; i < n; i++) {
    const ah_pg_val *v = &s->params[i];
    char num[32];
    int nl;
    vals[i] = NULL;
    lens[i] = 0;
    fmts[i] = 0;
    offs[i] = (size_t)-1;
    switch (v->type) {
    case AH_PGV_BOOL: vals[i] = v->u.i ? "true" : "false"; break;
    case AH_PGV_INT:
    case AH_PGV_FLOAT:
      nl = v->type == AH_PGV_INT ? format_int(v->u.i, num) : ah__pg_format_float(v->u.d, num);
      offs[i] = pg->scratch.len;
      if (ah__buf_append(&pg->scratch, num, (size_t)nl + 1) != 0) {
        free(block);
        return UV_ENOMEM;
      }
      break;
    case AH_PGV_TEXT:
    case AH_PGV_JSON:
    case AH_PGV_BYTES:
      vals[i] = v->u.s;
      lens[i] = (int)v->len;
      if (ps && ps->ptypes[i] == AH_PG_BYTEA) fmts[i] = 1;
      break;
    default: break;
    }
  }
  for (i = 0; i < n; i++)
    if (offs[i] != (size_t)-1) vals[i] = pg->scratch.data + offs[i];
  if (ps) {
    ok = PQsendQueryPrepared(pg->conn, ps->name, n, vals, lens, fmts, 0);
  } else {
    ok = PQsendQueryParams(pg->conn, s->sql, n, NULL, vals, lens, fmts, 0);
  }
  free(block);
  return ok ? 0 : -1;
}

/* DESCRIBE without the cache: the unnamed statement is prepared and
 * described, and its types kept in the request. */
static int send_describe(ah_pg *pg, ah_pg_req *r) {
  r->internal = IR_USER;
  if (!PQsendPrepare(pg->conn, "", r->stmts[0].sql, 0, NULL) ||
      !PQsendDescribePrepared(pg->conn, "") || send_sync(pg) != 0)
    return -1;
  return 0;
}

static int send_req(ah_pg *pg, ah_pg_req *r) {
  int i;
  if (r->kind == AH_PGR_DESCRIBE) return send_describe(pg, r);
  for (i = 0; i < r->nstmts; i++) {
    int rc = send_stmt(pg, &r->stmts[i]);
    if (rc != 0) return rc;
  }
  return send_sync(pg);
}

/* Starts a request that runs alone (SIMPLE, COPY): out of pipeline mode. */
static void start_alone(ah_pg *pg, ah_pg_req *r) {
  if (!PQexitPipelineMode(pg->conn)) {
    send_push(pg, r, 1);
    lost(pg, "cannot leave pipeline mode");
    return;
  }
  pg->pipeline = 0;
  if (!PQsendQuery(pg->conn, r->stmts[0].sql)) {
    send_push(pg, r, 1);
    lost(pg, NULL);
    return;
  }
  r->copy = CP_START;
  fly_push(pg, r);
}

/* Sends what can be sent of the send queue, in order. */
static void send_queue(ah_pg *pg) {
  ah_pg_req *r;
  int corked = 0, rc;
  while (pg->state == AH_PG_READY && pg->pipeline && (r = pg->sq) != NULL) {
    if (r->kind == AH_PGR_SIMPLE || r->kind == AH_PGR_COPY) {
      if (pg->fq) break;
      send_pop(pg);
      start_alone(pg, r);
      break;
    }
    if ((rc = prepared(pg, r)) == 0) break;
    if (rc < 0) {
      lost(pg, NULL);
      break;
    }
    send_pop(pg);
    if (!check_params(pg, r)) {
      finish(pg, r);
      continue;
    }
    if (r->kind == AH_PGR_DESCRIBE && pg->o.prepare) {
      /* Prepared already: the types are the cache's. */
      pstmt *ps = r->stmts[0].ps;
      r->nptypes = ps ? ps->nparams : 0;
      if (ps && ps->nparams > 0) {
        if (!(r->ptypes = malloc(sizeof(uint32_t) * (size_t)ps->nparams))) {
          fail_req(r, "resource", 0, "out of memory");
        } else {
          memcpy(r->ptypes, ps->ptypes, sizeof(uint32_t) * (size_t)ps->nparams);
        }
      }
      finish(pg, r);
      continue;
    }
    if (!corked && pg->tcp && pg->sq) {
      cork(pg, 1);
      corked = 1;
    }
    if ((rc = send_req(pg, r)) != 0) {
      send_push(pg, r, 1);
      if (rc == UV_ENOMEM) {
        send_pop(pg);
        fail_req(r, "resource", 0, "out of memory");
        finish(pg, r);
        continue;
      }
      lost(pg, NULL);
      break;
    }
    fly_push(pg, r);
    if (socket_gone(pg)) {
      lost(pg, NULL);
      break;
    }
  }
  if (corked) cork(pg, 0);
}

int ah__pg_submit(ah_pg *pg, ah_pg_req *r) {
  if (pg->state != AH_PG_READY) return UV_EPIPE;
  r->pg = pg;
  send_push(pg, r, 0);
  if (pg->flush_wanted) return 0;
  pg->flush_wanted = 1;
  return 1;
}

void ah__pg_flush(ah_pg *pg) {
  pg->flush_wanted = 0;
  if (pg->state != AH_PG_READY) return;
  pg->refs++;
  send_queue(pg);
  after_io(pg);
  unref(pg);
}

/* ---- cancel requests ---------------------------------------------------------------- */

static void cancel_work(uv_work_t *w) {
  cancel_job *j = container_of(w, cancel_job, w);
  (void)PQcancel(j->cancel, j->err, (int)sizeof j->err);
}

static void cancel_after(uv_work_t *w, int status) {
  cancel_job *j = container_of(w, cancel_job, w);
  ah_pg *pg = j->pg;
  (void)status;
  PQfreeCancel(j->cancel);
  free(j);
  pg->cancels--;
  pg->expose_until = ah__now() + EXPOSE_S;
  unref(pg);
}

/* Asks the server to cancel what the session runs; every request in
 * flight behind may be hit. */
static void send_cancel(ah_pg *pg) {
  cancel_job *j;
  PGcancel *c;
  ah_pg_req *r;
  if (pg->state != AH_PG_READY || !(c = PQgetCancel(pg->conn))) return;
  if (!(j = malloc(sizeof *j))) {
    PQfreeCancel(c);
    return;
  }
  j->cancel = c;
  j->pg = pg;
  if (uv_queue_work(pg->loop, &j->w, cancel_work, cancel_after) != 0) {
    PQfreeCancel(c);
    free(j);
    return;
  }
  pg->refs++;
  pg->cancels++;
  pg->st.cancels++;
  for (r = pg->fq; r; r = r->next) r->exposed = 1;
}

/* The request at the head of the flight queue is the one running. */
static void head_changed(ah_pg *pg) {
  ah_pg_req *r = pg->fq;
  if (r && r->abandoned && r->cancel_at_head) {
    r->cancel_at_head = 0;
    pg->stuck_since = ah__now();
    send_cancel(pg);
  }
}

static void kick_soon(ah_pg *pg);

void ah__pg_abandon(ah_pg_req *r, int cancel) {
  ah_pg *pg = r->pg;
  if (!pg || r->where == W_NONE) {
    ah__pg_req_free(r);
    return;
  }
  if (r->where == W_SEND) {
    unlink_req(&pg->sq, &pg->sq_tail, r);
    if (!r->internal) pg->nsend--;
    forget_waiter(pg, r);
    ah__pg_req_free(r);
    kick_soon(pg); /* what waited behind it may go now */
    return;
  }
  r->abandoned = 1;
  if (!cancel || pg->state != AH_PG_READY) return;
  if (r->kind == AH_PGR_COPY) {
    if (r->copy == CP_ACTIVE) {
      (void)PQputCopyEnd(pg->conn, "the COPY was cancelled by the client");
      r->copy = CP_ENDED;
      kick_soon(pg);
    }
    /* CP_START: ended with an error when the server asks for data. */
    return;
  }
  r->cancel_at_head = 1;
  if (pg->fq == r) head_changed(pg);
}

/* ---- results ------------------------------------------------------------------------- */

static void keep_result(ah_pg_req *r, PGresult *res) {
  int i = r->step < r->nstmts ? r->step : r->nstmts - 1;
  if (r->abandoned || i < 0 || r->internal) {
    PQclear(res);
    return;
  }
  PQclear(r->stmts[i].res);
  r->stmts[i].res = res;
}

static void keep_error(ah_pg_req *r, PGresult *res) {
  if (r->err) {
    PQclear(res);
    return;
  }
  r->err = res;
  r->failed = r->step < r->nstmts ? r->step : (r->nstmts > 0 ? r->nstmts - 1 : 0);
}

/* The types of a described statement: into the cache entry or r. */
static void keep_types(ah_pg *pg, ah_pg_req *r, PGresult *res) {
  int n = PQnparams(res), i;
  uint32_t *types = n > 0 ? malloc(sizeof(uint32_t) * (size_t)n) : NULL;
  if (n > 0 && !types) {
    fail_req(r, "resource", 0, "out of memory");
    PQclear(res);
    return;
  }
  for (i = 0; i < n; i++) types[i] = (uint32_t)PQparamtype(res, i);
  PQclear(res);
  if (r->internal == IR_PREPARE) {
    pstmt *ps = cache_find_id(pg, r->psid);
    if (!ps) {
      free(types);
      return;
    }
    free(ps->ptypes);
    ps->ptypes = types;
    ps->nparams = n;
  } else {
    free(r->ptypes);
    r->ptypes = types;
    r->nptypes = n;
  }
}

static void resend(ah_pg *pg, ah_pg_req *r) {
  clear_results(r);
  r->exposed = 0;
  r->resends++;
  pg->st.resends++;
  send_push(pg, r, 1);
}

/* A prepare has ended: the statement is ready, or the request waiting for
 * it fails with its error. */
static void prepare_done(ah_pg *pg, ah_pg_req *p) {
  pstmt *ps = cache_find_id(pg, p->psid);
  ah_pg_req *w = p->waiter;
  if (!p->err && !p->kind_err) {
    if (ps) ps->ready = 1;
    cache_trim(pg);
    ah__pg_req_free(p);
    return;
  }
  if (w && w->where == W_SEND && pg->sq == w) {
    int i;
    send_pop(pg);
    w->err = p->err;
    p->err = NULL;
    if (!w->err) fail_req(w, p->kind_err, p->retryable, "%s", p->msg);
    for (i = 0; i < w->nstmts; i++)
      if (ps && w->stmts[i].sql_len == ps->len &&
          memcmp(w->stmts[i].sql, ps->sql, ps->len) == 0)
        w->failed = i;
    classify(pg, w);
    finish(pg, w);
  }
  /* Only now: the waiter's statements were compared with ps's text. */
  if (ps) cache_remove(pg, ps);
  ah__pg_req_free(p);
}

/* A request's last result is in. */
static void complete(ah_pg *pg, ah_pg_req *r) {
  if (r->internal == IR_PREPARE) {
    prepare_done(pg, r);
    return;
  }
  if (r->err) classify(pg, r);
  if (r->err && !r->abandoned && r->autocommit && r->resends < MAX_RESENDS) {
    const char *code = sqlstate(r);
    if (r->exposed && strcmp(code, "57014") == 0) {
      resend(pg, r);
      return;
    }
    if (strcmp(code, "0A000") == 0 && r->failed < r->nstmts &&
        r->stmts[r->failed].psid) {
      pstmt *ps = cache_find_id(pg, r->stmts[r->failed].psid);
      if (ps) deallocate(pg, ps);
      resend(pg, r);
      return;
    }
  }
  finish(pg, r);
}

/* Results of a request that runs alone; returns 0 when it must wait. */
static int process_alone(ah_pg *pg, ah_pg_req *r) {
  PGresult *res;
  if (r->kind == AH_PGR_COPY && r->copy == CP_ACTIVE) return 0;
  if (PQisBusy(pg->conn)) return 0;
  res = PQgetResult(pg->conn);
  if (socket_gone(pg)) {
    PQclear(res);
    lost(pg, NULL);
    return 0;
  }
  if (!res) {
    fly_pop(pg);
    if (!PQenterPipelineMode(pg->conn)) {
      send_push(pg, r, 1);
      lost(pg, "cannot enter pipeline mode");
      return 0;
    }
    pg->pipeline = 1;
    if (r->kind == AH_PGR_COPY && r->copy == CP_START && !r->err && !r->kind_err)
      fail_req(r, "invalid_argument", 0,
               "the statement is not a COPY ... FROM STDIN");
    complete(pg, r);
    head_changed(pg);
    return 1;
  }
  switch (PQresultStatus(res)) {
  case PGRES_COPY_IN:
    PQclear(res);
    if (r->kind == AH_PGR_COPY && r->copy == CP_START && !r->abandoned) {
      r->copy = CP_ACTIVE;
      if (r->on_copy) r->on_copy(r);
      return 0;
    }
    (void)PQputCopyEnd(pg->conn, r->abandoned
                                     ? "the COPY was cancelled by the client"
                                     : "COPY FROM STDIN runs through copy()");
    r->copy = CP_ENDED;
    return 1;
  case PGRES_COPY_OUT:
  case PGRES_COPY_BOTH:
    PQclear(res);
    lost(pg, "COPY TO STDOUT is not supported: read the rows with a query");
    return 0;
  case PGRES_TUPLES_OK:
  case PGRES_COMMAND_OK:
  case PGRES_EMPTY_QUERY: keep_result(r, res); return 1;
  default: keep_error(r, res); return 1;
  }
}

static void process(ah_pg *pg) {
  int nulls = 0;
  while (pg->state == AH_PG_READY && pg->fq) {
    ah_pg_req *r = pg->fq;
    PGresult *res;
    if (r->kind == AH_PGR_SIMPLE || r->kind == AH_PGR_COPY) {
      if (!process_alone(pg, r)) return;
      continue;
    }
    if (PQisBusy(pg->conn)) return;
    res = PQgetResult(pg->conn);
    if (socket_gone(pg)) {
      PQclear(res);
      lost(pg, NULL);
      return;
    }
    if (!res) {
      if (r->got) {
        r->step++;
        r->got = 0;
        nulls = 0;
      } else if (++nulls > 1) {
        return; /* nothing more to read now */
      }
      continue;
    }
    nulls = 0;
    switch (PQresultStatus(res)) {
    case PGRES_PIPELINE_SYNC:
      PQclear(res);
      fly_pop(pg);
      complete(pg, r);
      head_changed(pg);
      break;
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
      r->got = 1;
      if ((r->internal == IR_PREPARE || r->kind == AH_PGR_DESCRIBE) && r->step == 1)
        keep_types(pg, r, res);
      else
        keep_result(r, res);
      break;
    case PGRES_PIPELINE_ABORTED:
      r->got = 1;
      PQclear(res);
      break;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
      PQclear(res);
      lost(pg, "COPY cannot run as a query: use copy() for COPY FROM STDIN");
      return;
    default:
      r->got = 1;
      keep_error(r, res);
      break;
    }
  }
}

static void drain_notifies(ah_pg *pg) {
  PGnotify *n;
  while (pg->state == AH_PG_READY && (n = PQnotifies(pg->conn)) != NULL) {
    pg->st.notifies++;
    if (pg->notify) pg->notify(pg, n->relname, n->extra ? n->extra : "", n->be_pid);
    PQfreemem(n);
  }
}

/* Flushes libpq's output and watches for what comes next; lets a COPY
 * that waited for room go on. */
static void after_io(ah_pg *pg) {
  int rc;
  ah_pg_req *r;
  if (pg->state != AH_PG_READY) return;
  rc = PQflush(pg->conn);
  if (rc < 0 || socket_gone(pg)) {
    lost(pg, NULL);
    return;
  }
  if (watch(pg, UV_READABLE | (rc == 1 ? UV_WRITABLE : 0), 0) != 0) {
    lost(pg, "cannot watch the socket");
    return;
  }
  r = pg->fq;
  if (rc == 0 && r && r->kind == AH_PGR_COPY && r->copy == CP_ACTIVE && r->copy_wait) {
    r->copy_wait = 0;
    if (r->on_copy) r->on_copy(r);
  }
}

static void on_kick(uv_timer_t *t) {
  ah_pg *pg = container_of(t, ah_pg, kick);
  if (pg->state != AH_PG_READY) return;
  pg->refs++;
  process(pg);
  drain_notifies(pg);
  send_queue(pg);
  after_io(pg);
  unref(pg);
}

static void kick_soon(ah_pg *pg) {
  if (pg->kick_open && pg->state == AH_PG_READY) uv_timer_start(&pg->kick, on_kick, 0, 0);
}

/* ---- connecting ------------------------------------------------------------------------ */

static void on_notice(void *arg, const PGresult *res) {
  ah_pg *pg = arg;
  const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  char msg[512];
  if (!pg->warning || !sev || strcmp(sev, "WARNING") != 0) return;
  set_text(pg, msg, sizeof msg, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
  pg->warning(pg, msg);
}

static void connect_failed(ah_pg *pg, const char *why) {
  char tmp[sizeof pg->errmsg];
  unwatch(pg);
  set_text(pg, tmp, sizeof tmp, why ? why : PQerrorMessage(pg->conn));
  snprintf(pg->errmsg, sizeof pg->errmsg, "%s", tmp);
  pg->state = AH_PG_BROKEN;
  if (pg->ready) pg->ready(pg);
}

static void become_ready(ah_pg *pg) {
  if (!PQenterPipelineMode(pg->conn)) {
    connect_failed(pg, "cannot enter pipeline mode");
    return;
  }
  pg->pipeline = 1;
  pg->state = AH_PG_READY;
  add_secret(pg, PQpass(pg->conn));
  if (watch(pg, UV_READABLE, 0) != 0) {
    connect_failed(pg, "cannot watch the socket");
    return;
  }
  if (pg->ready) pg->ready(pg);
}

/* Connected: makes the session speak what the decoder reads (ISO dates,
 * postgres intervals, all float digits on servers before 12), with one
 * SET only when the server's settings differ. */
static void begin_setup(ah_pg *pg) {
  char set[160] = "";
  const char *ds = PQparameterStatus(pg->conn, "DateStyle");
  const char *is = PQparameterStatus(pg->conn, "IntervalStyle");
  PQsetnonblocking(pg->conn, 1);
  PQsetNoticeReceiver(pg->conn, on_notice, pg);
  pg->fd = PQsocket(pg->conn);
  pg->tcp = is_tcp(pg->fd);
  if (!ds || strncmp(ds, "ISO", 3) != 0) strcat(set, "SET DateStyle = ISO;");
  if (is && strcmp(is, "postgres") != 0) strcat(set, "SET IntervalStyle = postgres;");
  if (PQserverVersion(pg->conn) < 120000) strcat(set, "SET extra_float_digits = 3;");
  if (!*set) {
    become_ready(pg);
    return;
  }
  if (!PQsendQuery(pg->conn, set)) {
    connect_failed(pg, NULL);
    return;
  }
  pg->setup = 1;
  if (watch(pg, UV_READABLE | (PQflush(pg->conn) == 1 ? UV_WRITABLE : 0), 1) != 0)
    connect_failed(pg, "cannot watch the socket");
}

static void setup_results(ah_pg *pg) {
  PGresult *res;
  int rc = PQflush(pg->conn);
  if (rc < 0 || watch(pg, UV_READABLE | (rc == 1 ? UV_WRITABLE : 0), 0) != 0) {
    connect_failed(pg, NULL);
    return;
  }
  while (!PQisBusy(pg->conn)) {
    res = PQgetResult(pg->conn);
    if (!res) {
      pg->setup = 0;
      if (pg->errmsg[0]) connect_failed(pg, pg->errmsg);
      else become_ready(pg);
      return;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK && !pg->errmsg[0])
      set_text(pg, pg->errmsg, sizeof pg->errmsg, PQresultErrorMessage(res));
    PQclear(res);
  }
}

static void connect_step(ah_pg *pg) {
  switch (PQconnectPoll(pg->conn)) {
  case PGRES_POLLING_FAILED: connect_failed(pg, NULL); return;
  case PGRES_POLLING_OK: begin_setup(pg); return;
  case PGRES_POLLING_READING:
    if (watch(pg, UV_READABLE, 1) != 0) connect_failed(pg, NULL);
    return;
  default:
    if (watch(pg, UV_WRITABLE, 1) != 0) connect_failed(pg, NULL);
    return;
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  pgpoll *pp = container_of(h, pgpoll, h);
  ah_pg *pg = pp->pg;
  if (pg->poll != pp) return;
  pg->refs++;
  /* On an error (POLLERR) libuv has stopped the handle: watch() must
   * start it again, and reading tells what happened. */
  if (status < 0) pg->events = 0;
  if (pg->state == AH_PG_CONNECTING && !pg->setup) {
    connect_step(pg);
  } else if (status < 0 || (events & UV_READABLE)) {
    if (!PQconsumeInput(pg->conn) || socket_gone(pg)) {
      lost(pg, NULL);
    } else if (pg->state == AH_PG_CONNECTING) {
      setup_results(pg);
    } else {
      process(pg);
      drain_notifies(pg);
      send_queue(pg);
      after_io(pg);
    }
  } else if (pg->state == AH_PG_CONNECTING) {
    setup_results(pg);
  } else {
    after_io(pg);
  }
  unref(pg);
}

static void kick_closed(uv_handle_t *h) {
  unref(container_of((uv_timer_t *)(void *)h, ah_pg, kick));
}

/* Hands the connection to libpq.  A failure is returned, and reported
 * to ready when that is set (after the host names were looked up). */
static int start_libpq(ah_pg *pg, const char *const *keys, const char *const *vals) {
  int rc;
  pg->conn = PQconnectStartParams(keys, vals, 1);
  if (!pg->conn) {
    connect_failed(pg, "out of memory");
    return UV_ENOMEM;
  }
  add_secret(pg, PQpass(pg->conn));
  snprintf(pg->desc, sizeof pg->desc, "%s@%s:%s/%s", PQuser(pg->conn) ? PQuser(pg->conn) : "",
           PQhost(pg->conn) ? PQhost(pg->conn) : "", PQport(pg->conn) ? PQport(pg->conn) : "",
           PQdb(pg->conn) ? PQdb(pg->conn) : "");
  ah__pg_scrub(pg, pg->desc);
  if (PQstatus(pg->conn) == CONNECTION_BAD) {
    connect_failed(pg, NULL);
    return UV_EINVAL;
  }
  if ((rc = watch(pg, UV_WRITABLE, 1)) != 0) {
    connect_failed(pg, "cannot watch the socket");
    return rc;
  }
  return 0;
}

static int resolved_start(ah_pg *pg, ah_pg_resolve *r) {
  const char *const *keys, *const *vals;
  const char *err = ah__pg_resolve_error(r);
  int rc;
  if (err) {
    connect_failed(pg, err);
    rc = UV_EAI_NONAME;
  } else {
    ah__pg_resolve_params(r, &keys, &vals);
    rc = start_libpq(pg, keys, vals);
  }
  ah__pg_resolve_free(r);
  return rc;
}

static void on_resolved(ah_pg_resolve *r, void *data) {
  ah_pg *pg = data;
  pg->res = NULL;
  pg->refs++;
  (void)resolved_start(pg, r); /* a failure went to ready */
  unref(pg);
}

int ah__pg_connect(ah_pg **out, uv_loop_t *loop, const char *const *keys,
                   const char *const *vals, const ah_pg_opts *o,
                   void (*ready)(ah_pg *pg), void *data) {
  ah_pg *pg = calloc(1, sizeof *pg);
  int i, rc;
  *out = NULL;
  if (!pg) return UV_ENOMEM;
  pg->loop = loop;
  pg->refs = 1;
  pg->fd = -1;
  pg->lru.next = pg->lru.prev = &pg->lru;
  pg->ready = NULL; /* until started: a failure before is returned */
  pg->data = data;
  pg->o.prepare = o ? o->prepare : 1;
  pg->o.cache_max = o && o->cache_max > 0 ? o->cache_max : CACHE_MAX;
  pg->state = AH_PG_CONNECTING;
  for (i = 0; keys[i]; i++) {
    if (strcmp(keys[i], "password") == 0) add_secret(pg, vals[i]);
    if (strcmp(keys[i], "dbname") == 0 && vals[i]) add_url_secret(pg, vals[i]);
  }
  add_secret(pg, getenv("PGPASSWORD"));
  if ((rc = uv_timer_init(loop, &pg->kick)) != 0) {
    unref(pg);
    return rc;
  }
  pg->kick_open = 1;
  pg->refs++;
  *out = pg;
  rc = ah__pg_resolve_start(&pg->res, loop, keys, vals, on_resolved, pg);
  if (rc < 0) {
    connect_failed(pg, "out of memory");
    return rc;
  }
  if (rc == 1) { /* looked up at once (no lookup could start) */
    ah_pg_resolve *r = pg->res;
    pg->res = NULL;
    if ((rc = resolved_start(pg, r)) != 0) return rc;
  } else if (pg->res) {
    snprintf(pg->desc, sizeof pg->desc, "%s", ah__pg_resolve_host(pg->res));
    ah__pg_scrub(pg, pg->desc);
  } else if ((rc = start_libpq(pg, keys, vals)) != 0) {
    return rc;
  }
  pg->ready = ready;
  return 0;
}

void ah__pg_close(ah_pg *pg, int fail_pending) {
  if (!pg || pg->state == AH_PG_CLOSED) return;
  pg->refs++;
  pg->state = AH_PG_CLOSED;
  pg->ready = NULL;
  pg->lost_cb = NULL;
  pg->notify = NULL;
  pg->warning = NULL;
  if (pg->res) ah__pg_resolve_cancel(pg->res);
  pg->res = NULL;
  unwatch(pg);
  fail_all(pg, "connect", 0, "the connection was closed", fail_pending);
  if (pg->conn) PQfinish(pg->conn);
  pg->conn = NULL;
  if (pg->kick_open) {
    pg->kick_open = 0;
    uv_close((uv_handle_t *)&pg->kick, kick_closed);
  }
  unref(pg); /* ours */
  unref(pg); /* the owner's */
}

/* ---- small accessors ------------------------------------------------------------------ */

void *ah__pg_data(const ah_pg *pg) { return pg->data; }
int ah__pg_state(const ah_pg *pg) { return pg->state; }
const char *ah__pg_error(const ah_pg *pg) { return pg->errmsg; }
const char *ah__pg_describe(const ah_pg *pg) { return pg->desc; }
int ah__pg_backend_pid(const ah_pg *pg) { return pg->conn ? PQbackendPID(pg->conn) : 0; }
int ah__pg_server_version(const ah_pg *pg) { return pg->conn ? PQserverVersion(pg->conn) : 0; }
int ah__pg_pending(const ah_pg *pg) { return pg->nsend + pg->nfly; }

double ah__pg_head_age(const ah_pg *pg) {
  return pg->fq ? (double)(uv_now(pg->loop) - pg->head_since) / 1000.0 : 0;
}

double ah__pg_stuck(const ah_pg *pg) {
  return pg->fq && pg->fq->abandoned && pg->stuck_since > 0 ? ah__now() - pg->stuck_since : 0;
}

void ah__pg_on_notify(ah_pg *pg, void (*fn)(ah_pg *, const char *, const char *, int)) {
  pg->notify = fn;
}
void ah__pg_on_lost(ah_pg *pg, void (*fn)(ah_pg *pg)) { pg->lost_cb = fn; }
void ah__pg_on_warning(ah_pg *pg, void (*fn)(ah_pg *pg, const char *msg)) {
  pg->warning = fn;
}

void ah__pg_stats(const ah_pg *pg, ah_pg_stats *out) {
  *out = pg->st;
  out->cached = pg->ncached;
  out->queued = pg->nsend;
  out->inflight = pg->nfly;
}

/* ---- COPY ---------------------------------------------------------------------------------- */

int ah__pg_copy_put(ah_pg_req *r, const char *data, size_t len) {
  ah_pg *pg = r->pg;
  int rc;
  if (pg->state != AH_PG_READY || r->copy != CP_ACTIVE || len > 0x7fffffff) return -1;
  rc = PQputCopyData(pg->conn, data, (int)len);
  if (rc < 0 || socket_gone(pg)) {
    /* The server ended the COPY (its error is read next), or the
     * connection failed (which ends r through lost, soon). */
    r->copy = CP_ENDED;
    kick_soon(pg);
    return -1;
  }
  if (rc == 0) {
    r->copy_wait = 1;
    after_io(pg);
    return 0;
  }
  rc = PQflush(pg->conn);
  if (rc < 0) {
    r->copy = CP_ENDED;
    kick_soon(pg);
    return -1;
  }
  if (rc == 1) {
    r->copy_wait = 1;
    if (watch(pg, UV_READABLE | UV_WRITABLE, 0) != 0) kick_soon(pg);
    return 2;
  }
  return 1;
}

int ah__pg_copy_end(ah_pg_req *r, const char *errmsg) {
  ah_pg *pg = r->pg;
  int rc;
  if (pg->state != AH_PG_READY || r->copy != CP_ACTIVE) return 1;
  rc = PQputCopyEnd(pg->conn, errmsg);
  if (rc == 0) {
    r->copy_wait = 1;
    after_io(pg);
    return 0;
  }
  r->copy = CP_ENDED;
  r->copy_wait = 0;
  kick_soon(pg);
  return 1;
}

/* ---- results ----------------------------------------------------------------------------------- */

int ah__pg_res_nrows(const void *res) { return PQntuples(res); }
int ah__pg_res_ncols(const void *res) { return PQnfields(res); }
const char *ah__pg_res_fname(const void *res, int col) { return PQfname(res, col); }
uint32_t ah__pg_res_ftype(const void *res, int col) { return (uint32_t)PQftype(res, col); }

int64_t ah__pg_res_affected(const void *res) {
  const char *s = PQcmdTuples((PGresult *)(uintptr_t)res);
  if (!s || !*s) return PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) : -1;
  return (int64_t)strtoll(s, NULL, 10);
}

int ah__pg_res_value(const void *res, int row, int col, ah_pg_val *out,
                     ah_buf *scratch) {
  if (PQgetisnull(res, row, col)) {
    memset(out, 0, sizeof *out);
    out->type = AH_PGV_NULL;
    return 0;
  }
  return ah__pg_decode((uint32_t)PQftype(res, col), PQgetvalue(res, row, col),
                       (size_t)PQgetlength(res, row, col), out, scratch);
}

const char *ah__pg_res_error(const void *res, int field) {
  static const int codes[] = {
      PG_DIAG_SQLSTATE,        PG_DIAG_MESSAGE_PRIMARY, PG_DIAG_MESSAGE_DETAIL,
      PG_DIAG_MESSAGE_HINT,    PG_DIAG_CONSTRAINT_NAME, PG_DIAG_TABLE_NAME,
      PG_DIAG_COLUMN_NAME,     PG_DIAG_SCHEMA_NAME,     PG_DIAG_SEVERITY_NONLOCALIZED,
      PG_DIAG_STATEMENT_POSITION, PG_DIAG_CONTEXT,      PG_DIAG_DATATYPE_NAME};
  if (field < 0 || field >= (int)(sizeof codes / sizeof codes[0])) return NULL;
  return PQresultErrorField(res, codes[field]);
}
