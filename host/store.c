/*
 * SQLite off the loop thread.  Per database file: one writer thread with
 * its own connection, which takes every write job queued since its last
 * round and runs them in one BEGIN IMMEDIATE ... COMMIT (group commit), each
 * job inside its own SAVEPOINT so that a failing job rolls back alone; and
 * reader threads, each with its own connection, for queries.  Completions
 * are handed to the loop thread through one uv_async_t.
 *
 * The connections are in WAL mode, so readers never block the writer nor
 * each other; synchronous=NORMAL (the default) keeps every committed
 * transaction across a crash of the process and may lose the last ones on a
 * power cut or an OS crash; FULL also survives those at the cost of an
 * fsync per commit.  busy_timeout is set on every connection.
 *
 * Jobs never contain transaction control of their own: an authorizer
 * refuses BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ATTACH and DETACH in the
 * caller's SQL, because they would break the group's transaction.  A
 * statement that still ends the transaction (INSERT OR ROLLBACK, an I/O
 * error) fails its job, and the group is run again without it, so the
 * other jobs are neither lost nor doubled.
 *
 * Relies on libuv (threads, mutexes, async), sqlite3 and the host's buffers
 * (buf.c).  Ownership: the ah_store is malloc'd and freed in the close
 * callback of its async handle; each job belongs to the store from submit
 * until its done callback.
 */
#include "host.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_MAX 128      /* prepared statements kept per connection */
#define GROUP_RETRIES 8    /* reruns of a group whose transaction was lost */
#define JOB_BLOCK 512      /* size of the pooled job blocks */
#define POOL_MAX 16384     /* pooled blocks kept per store, at most */

/* ---- connections and their statement caches --------------------------------- */

typedef struct centry {
  struct centry *hnext;        /* hash chain */
  struct centry *prev, *next;  /* LRU list, most recent first */
  uint64_t hash;
  sqlite3_stmt *stmt;
  size_t len;
  int extra;                   /* SQL text follows the first statement */
  int pragma;                  /* PRAGMA_* flags of the statement */
  char sql[];
} centry;

typedef struct conn {
  sqlite3 *db;
  centry *tab[256];
  centry lru;                  /* sentinel */
  int n;
  int internal;                /* running our own statements */
  int reader;                  /* a reader's connection (query_only) */
  int reading;                 /* preparing a query's statement */
  int denied;                  /* the authorizer refused a statement */
  int pragma;                  /* PRAGMA_* flags of the statement being
                                  prepared, set by the authorizer */
} conn;

/* What the authorizer saw of the pragmas in a statement. */
#define PRAGMA_SEEN 1              /* the statement is a PRAGMA */
#define PRAGMA_IMPURE 2            /* one that is not a pure read (pragma_pure) */

typedef struct reader {
  uv_thread_t thread;
  ah_store *st;
  conn c;
} reader;

struct ah_store {
  uv_loop_t *loop;
  uv_async_t async;            /* completions; freed in its close callback */
  char *path;
  ah_store_opts o;
  uv_thread_t writer;
  reader *readers;
  int nreaders;
  conn w;                      /* the writer's connection */
  sqlite3_stmt *s_begin, *s_commit, *s_rollback, *s_save, *s_release, *s_undo;

  uv_mutex_t mu;               /* guards everything below */
  uv_cond_t wcv, rcv;
  ah_store_job *whead, *wtail; /* write jobs for the writer */
  ah_store_job *rhead, *rtail; /* reads for the readers */
  ah_store_job *dhead, *dtail; /* completions for the loop */
  int closing;                 /* no more rounds once the queue is empty */
  int opened, exited;          /* set by the writer */
  int open_rc;
  char open_msg[384];
  ah_store_stats stats;
  ah_store_job *recycled;      /* pooled blocks freed by the threads */
  int nrecycled;

  /* loop thread only */
  ah_store_job *lhead, *ltail; /* collected, not yet handed to the writer */
  uint64_t lcount, lposts;
  ah_store_job *lfree;         /* pooled blocks ready for ah__store_job_new */
  int nlfree;
  unsigned refills;            /* times lfree was found empty */
  int open_reported, close_started, close_reported;
  int waiting;                 /* jobs with a done callback in flight */
  ah_store_cb opened_cb, closed_cb;
  void *opened_data, *closed_data;
  void (*post_error)(ah_store_job *j);
};

static uint64_t hash_sql(const char *s, size_t n) { return ah__hash(s, n); }

/* Whether PRAGMA name, with arg (NULL when none), only reads.  A pragma
 * given a value sets something (journal_mode=DELETE takes the database out
 * of WAL, query_only=0 makes a reader writable, busy_timeout=0 changes the
 * connection), except the introspection pragmas whose argument names a
 * table or index; a few act even without one.  sqlite3_stmt_readonly does
 * not tell these apart, so queries are checked against this list. */
static int pragma_pure(const char *name, const char *arg) {
  static const char *const named[] = {
      "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo",
      "index_list", "foreign_key_list", "foreign_key_check", "integrity_check",
      "quick_check", NULL};
  static const char *const acting[] = {
      "wal_checkpoint", "optimize", "incremental_vacuum", "shrink_memory", NULL};
  int i;
  if (!name) return 0;
  if (arg) {
    for (i = 0; named[i]; i++)
      if (sqlite3_stricmp(name, named[i]) == 0) return 1;
    return 0;
  }
  for (i = 0; acting[i]; i++)
    if (sqlite3_stricmp(name, acting[i]) == 0) return 0;
  return 1;
}

static int authorize(void *ud, int action, const char *a, const char *b,
                     const char *c, const char *d) {
  conn *cn = ud;
  (void)c, (void)d;
  if (cn->internal) return SQLITE_OK;
  if (action == SQLITE_TRANSACTION || action == SQLITE_SAVEPOINT ||
      action == SQLITE_ATTACH || action == SQLITE_DETACH) {
    cn->denied = 1;
    return SQLITE_DENY;
  }
  /* A query is a pure read: a reader refuses any other pragma (query_only
   * stops writes to the file, not journal_mode, wal_checkpoint or a
   * change of query_only itself).  So does the writer while it prepares
   * a query (for a database without readers); when it prepares a write it
   * marks the statement, which a query may find in its cache later. */
  if (action == SQLITE_PRAGMA) {
    cn->pragma |= PRAGMA_SEEN;
    if (!pragma_pure(a, b)) {
      cn->pragma |= PRAGMA_IMPURE;
      if (cn->reader || cn->reading) {
        cn->denied = 2;
        return SQLITE_DENY;
      }
    }
  }
  return SQLITE_OK;
}

static void lru_unlink(centry *e) {
  e->prev->next = e->next;
  e->next->prev = e->prev;
}

static void lru_front(conn *c, centry *e) {
  e->next = c->lru.next;
  e->prev = &c->lru;
  c->lru.next->prev = e;
  c->lru.next = e;
}

static void cache_drop(conn *c, centry *e) {
  centry **pp = &c->tab[e->hash & 255];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(e);
  sqlite3_finalize(e->stmt);
  free(e);
  c->n--;
}

static int only_space(const char *s) {
  for (; *s; s++)
    if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' && *s != ';')
      return 0;
  return 1;
}

/* A prepared statement for sql, from the cache when it is there.  *extra is
 * set when the text holds more than one statement (only the first runs). */
static int cache_get(conn *c, const char *sql, size_t len, sqlite3_stmt **out,
                     int *extra, int *pragma) {
  uint64_t h = hash_sql(sql, len);
  centry *e;
  const char *tail = NULL;
  sqlite3_stmt *st = NULL;
  int rc;
  for (e = c->tab[h & 255]; e; e = e->hnext)
    if (e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0) {
      lru_unlink(e);
      lru_front(c, e);
      *out = e->stmt;
      *extra = e->extra;
      *pragma = e->pragma;
      return SQLITE_OK;
    }
  c->pragma = 0;
  rc = sqlite3_prepare_v3(c->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &st,
                          &tail);
  if (rc != SQLITE_OK) return rc;
  if (!st) return SQLITE_MISUSE; /* nothing but comments or space */
  if (!(e = malloc(sizeof *e + len + 1))) {
    sqlite3_finalize(st);
    return SQLITE_NOMEM;
  }
  if (c->n >= CACHE_MAX) cache_drop(c, c->lru.prev);
  e->hash = h;
  e->stmt = st;
  e->len = len;
  memcpy(e->sql, sql, len);
  e->sql[len] = '\0';
  e->extra = tail && !only_space(tail);
  e->pragma = c->pragma;
  e->hnext = c->tab[h & 255];
  c->tab[h & 255] = e;
  lru_front(c, e);
  c->n++;
  *out = st;
  *extra = e->extra;
  *pragma = e->pragma;
  return SQLITE_OK;
}

static void conn_init(conn *c) {
  memset(c, 0, sizeof *c);
  c->lru.next = c->lru.prev = &c->lru;
}

static void conn_close(conn *c) {
  while (c->n) cache_drop(c, c->lru.prev);
  if (c->db) sqlite3_close_v2(c->db);
  c->db = NULL;
}

/* Runs one of our own statements (or a pragma) to its end. */
static int conn_exec(conn *c, const char *sql, char *out, size_t outsz) {
  sqlite3_stmt *st;
  int rc;
  c->internal = 1;
  rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
  if (rc == SQLITE_OK) {
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
      if (out) snprintf(out, outsz, "%s", (const char *)sqlite3_column_text(st, 0));
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
    sqlite3_finalize(st);
  }
  c->internal = 0;
  return rc;
}

static int step_internal(conn *c, sqlite3_stmt *st) {
  int rc;
  c->internal = 1;
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  c->internal = 0;
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Opens c on path and sets it up; a message goes to msg on failure. */
static int conn_open(conn *c, const ah_store_opts *o, const char *path,
                     int writer, char *msg, size_t msgsz) {
  char mode[32] = "";
  int rc = sqlite3_open_v2(path, &c->db,
                           SQLITE_OPEN_READWRITE |
                               (writer ? SQLITE_OPEN_CREATE : 0) |
                               SQLITE_OPEN_NOMUTEX,
                           NULL);
  if (rc != SQLITE_OK) goto fail;
  sqlite3_extended_result_codes(c->db, 1);
  sqlite3_busy_timeout(c->db, o->busy_timeout_ms);
  if (writer) {
    /* On a new file, switching to WAL can meet another connection doing
     * the same; it does not go through the busy handler, so wait here. */
    int waited = 0;
    while ((rc = conn_exec(c, "PRAGMA journal_mode=WAL", mode, sizeof mode)) ==
               SQLITE_BUSY &&
           waited < o->busy_timeout_ms) {
      sqlite3_sleep(10);
      waited += 10;
    }
    if (rc) goto fail;
    if (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0) {
      snprintf(msg, msgsz, "%s: cannot use WAL mode (journal_mode is %s)", path,
               mode);
      sqlite3_close_v2(c->db);
      c->db = NULL;
      return SQLITE_CANTOPEN;
    }
    rc = conn_exec(c, o->synchronous_full ? "PRAGMA synchronous=FULL"
                                          : "PRAGMA synchronous=NORMAL",
                   NULL, 0);
    if (rc) goto fail;
  } else if ((rc = conn_exec(c, "PRAGMA query_only=1", NULL, 0))) {
    goto fail;
  }
  if ((rc = conn_exec(c, "PRAGMA foreign_keys=ON", NULL, 0))) goto fail;
  sqlite3_set_authorizer(c->db, authorize, c);
  return SQLITE_OK;
fail:
  snprintf(msg, msgsz, "%s: %s", path,
           c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
  if (c->db) rc = sqlite3_extended_errcode(c->db);
  if (c->db) sqlite3_close_v2(c->db);
  c->db = NULL;
  return rc ? rc : SQLITE_CANTOPEN;
}

/* ---- jobs ------------------------------------------------------------------ */

static void free_list(ah_store_job *j) {
  while (j) {
    ah_store_job *next = j->next;
    free(j);
    j = next;
  }
}

ah_store_job *ah__store_job_new(ah_store *st, int type, int nstmts, int nparams,
                                size_t bytes) {
  size_t head = sizeof(ah_store_job) + (size_t)nstmts * sizeof(ah_store_stmt) +
                (size_t)nparams * sizeof(ah_store_val);
  ah_store_job *j = NULL;
  int pooled = 0;
  if (nstmts < 0 || nparams < 0) return NULL;
  bytes += (size_t)nstmts + (size_t)nparams; /* a NUL after each copy */
  if (st && head + bytes <= JOB_BLOCK) {
    /* Refill from what the threads gave back: under the lock, so only
     * every 8th time the loop's own list is empty. */
    if (!st->lfree && (++st->refills & 7) == 1) {
      uv_mutex_lock(&st->mu);
      st->lfree = st->recycled;
      st->nlfree = st->nrecycled;
      st->recycled = NULL;
      st->nrecycled = 0;
      uv_mutex_unlock(&st->mu);
    }
    if ((j = st->lfree) != NULL) {
      st->lfree = j->next;
      st->nlfree--;
    } else {
      j = malloc(JOB_BLOCK);
    }
    pooled = 1;
  } else {
    j = malloc(head + bytes);
  }
  if (!j) return NULL;
  memset(j, 0, sizeof *j);
  j->type = type;
  j->pooled = pooled;
  j->st = st;
  j->nstmts = nstmts;
  j->stmts = (ah_store_stmt *)(j + 1);
  if (nstmts) j->stmts[0].params = (ah_store_val *)(j->stmts + nstmts);
  j->bytes = (char *)j + head;
  return j;
}

const char *ah__store_job_copy(ah_store_job *j, const char *s, size_t n) {
  char *d = j->bytes;
  memcpy(d, s, n);
  d[n] = '\0';
  j->bytes += n + 1;
  return d;
}

/* Frees what a job holds besides its block. */
static void job_clear(ah_store_job *j) {
  free(j->vals);
  ah__buf_free(&j->space);
  free(j->errmsg);
  j->vals = NULL;
  j->errmsg = NULL;
}

void ah__store_job_free(ah_store_job *j) {
  ah_store *st;
  if (!j) return;
  job_clear(j);
  st = j->st;
  if (j->pooled && st && st->nlfree + st->nrecycled < POOL_MAX) {
    j->next = st->lfree;
    st->lfree = j;
    st->nlfree++;
    return;
  }
  free(j);
}

/* Frees a job on a worker thread (mu held). */
static void job_free_locked(ah_store *st, ah_store_job *j) {
  job_clear(j);
  if (j->pooled && st->nrecycled < POOL_MAX) {
    j->next = st->recycled;
    st->recycled = j;
    st->nrecycled++;
    return;
  }
  free(j);
}

const char *ah__store_text(const ah_store_job *j, const ah_store_val *v) {
  return j->space.data + v->u.off;
}

/* The error kind of rc, and in *retryable whether the job may succeed when
 * run again: only when another connection held the lock it needed. */
static const char *kind_of(int rc, int *retryable) {
  *retryable = 0;
  switch (rc & 0xff) {
  case SQLITE_BUSY:
  case SQLITE_LOCKED: *retryable = 1; return "busy";
  case SQLITE_CONSTRAINT: return "constraint";
  case SQLITE_CANTOPEN:
  case SQLITE_IOERR:
  case SQLITE_READONLY:
  case SQLITE_FULL:
  case SQLITE_PERM:
  case SQLITE_NOTADB:
  case SQLITE_CORRUPT:
  case SQLITE_NOLFS: return "io";
  case SQLITE_INTERRUPT: return "cancelled";
  case SQLITE_TOOBIG: return "too_large";
  case SQLITE_NOMEM: return "resource";
  case SQLITE_RANGE:
  case SQLITE_MISMATCH:
  case SQLITE_AUTH: return "invalid_argument";
  default: return "sql";
  }
}

/* Fails j with rc and msg, of the kind rc implies unless kind is given;
 * only a kind that rc implies may be retryable. */
static void job_fail(ah_store_job *j, int rc, const char *kind, const char *msg,
                     int index) {
  j->rc = rc ? rc : SQLITE_ERROR;
  if (kind) {
    j->kind = kind;
    j->retryable = 0;
  } else {
    j->kind = kind_of(j->rc, &j->retryable);
  }
  j->failed = index;
  free(j->errmsg);
  j->errmsg = strdup(msg ? msg : "");
}

/* Copies n bytes of text into j's result space and points v at them. */
static int add_text(ah_store_job *j, ah_store_val *v, const void *p, size_t n) {
  size_t off = j->space.len;
  /* The NUL that ah__buf_append puts after the text is kept: each text
   * in the space ends with one. */
  if (ah__buf_append(&j->space, p, n) != 0) return -1;
  j->space.len++;
  v->u.off = off;
  v->len = n;
  return 0;
}

/* Appends the current row of st to j's results. */
static int add_row(ah_store_job *j, sqlite3_stmt *st, size_t max) {
  int i, n = sqlite3_column_count(st);
  size_t need = (size_t)n;
  if (j->nrows == 0 && j->vals == NULL) {
    j->ncols = n;
    need += (size_t)n; /* the names come first */
  }
  if (j->space.len > max) return SQLITE_TOOBIG;
  if ((j->nrows + 2) * (size_t)n * sizeof(ah_store_val) > max) return SQLITE_TOOBIG;
  {
    size_t used = (j->nrows + 1) * (size_t)n; /* names + rows so far */
    if (j->vals == NULL) used = 0;
    if (used + need > j->vals_cap) {
      size_t cap = j->vals_cap ? j->vals_cap * 2 : 16 * (size_t)(n ? n : 1);
      ah_store_val *v;
      while (cap < used + need) cap *= 2;
      if (!(v = realloc(j->vals, cap * sizeof *v))) return SQLITE_NOMEM;
      j->vals = v;
      j->vals_cap = cap;
    }
  }
  if (j->nrows == 0 && need > (size_t)n) {
    for (i = 0; i < n; i++) {
      const char *name = sqlite3_column_name(st, i);
      ah_store_val *v = &j->vals[i];
      v->type = AH_SV_TEXT;
      if (!name) name = "?";
      if (add_text(j, v, name, strlen(name))) return SQLITE_NOMEM;
    }
  }
  for (i = 0; i < n; i++) {
    ah_store_val *v = &j->vals[(j->nrows + 1) * (size_t)n + (size_t)i];
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
      v->type = AH_SV_INT;
      v->u.i = sqlite3_column_int64(st, i);
      break;
    case SQLITE_FLOAT:
      v->type = AH_SV_FLOAT;
      v->u.d = sqlite3_column_double(st, i);
      break;
    case SQLITE_NULL: v->type = AH_SV_NULL; break;
    case SQLITE_BLOB: {
      const void *p = sqlite3_column_blob(st, i);
      v->type = AH_SV_BLOB;
      if (add_text(j, v, p, (size_t)sqlite3_column_bytes(st, i))) return SQLITE_NOMEM;
      break;
    }
    default: {
      const unsigned char *p = sqlite3_column_text(st, i);
      v->type = AH_SV_TEXT;
      if (add_text(j, v, p, (size_t)sqlite3_column_bytes(st, i))) return SQLITE_NOMEM;
      break;
    }
    }
  }
  j->nrows++;
  return SQLITE_OK;
}

#define READ_ONLY_MSG                                                      \
  "db:query and db:first are for reads: this statement writes or changes "  \
  "the database or its connection (a PRAGMA with a value, journal_mode, "   \
  "wal_checkpoint, ...); use db:exec, db:post or db:batch"

/* Runs statement `index` of j on c; rows are collected when collect is set.
 * On failure the job holds the error and the code is returned. */
static int run_stmt(conn *c, ah_store_job *j, int index, int collect, size_t max) {
  ah_store_stmt *s = &j->stmts[index];
  sqlite3_stmt *st;
  int rc, i, extra = 0, pragma = 0, want;
  char msg[320];
  c->denied = 0;
  c->reading = j->type == AH_JOB_READ;
  rc = cache_get(c, s->sql, s->sql_len, &st, &extra, &pragma);
  c->reading = 0;
  if (rc == SQLITE_MISUSE) {
    job_fail(j, rc, "invalid_argument", "the SQL text holds no statement", index);
    return rc;
  }
  if (rc != SQLITE_OK) {
    if (c->denied == 2)
      job_fail(j, SQLITE_AUTH, "invalid_argument", READ_ONLY_MSG, index);
    else if (c->denied)
      job_fail(j, SQLITE_AUTH, "invalid_argument",
               "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) and "
               "ATTACH are not allowed: every call is already atomic; use "
               "db:batch for several statements",
               index);
    else
      job_fail(j, sqlite3_extended_errcode(c->db), NULL, sqlite3_errmsg(c->db),
               index);
    return j->rc;
  }
  if (extra) {
    job_fail(j, SQLITE_MISUSE, "invalid_argument",
             "the SQL text holds more than one statement; pass one per call "
             "(db:batch takes several)",
             index);
    return j->rc;
  }
  /* Checked before the statement runs, so that a refused statement is
   * never reported as busy nor half done.  sqlite3_stmt_readonly says no
   * to every pragma, reads included, so a pragma is judged by its name. */
  if (j->type == AH_JOB_READ &&
      (pragma ? (pragma & PRAGMA_IMPURE) != 0 : !sqlite3_stmt_readonly(st))) {
    job_fail(j, SQLITE_AUTH, "invalid_argument", READ_ONLY_MSG, index);
    return j->rc;
  }
  want = sqlite3_bind_parameter_count(st);
  if (want != s->nparams) {
    snprintf(msg, sizeof msg,
             "the statement takes %d parameter%s, %d value%s given", want,
             want == 1 ? "" : "s", s->nparams, s->nparams == 1 ? " was" : "s were");
    job_fail(j, SQLITE_RANGE, "invalid_argument", msg, index);
    return j->rc;
  }
  for (i = 0; i < s->nparams && rc == SQLITE_OK; i++) {
    const ah_store_val *v = &s->params[i];
    switch (v->type) {
    case AH_SV_INT: rc = sqlite3_bind_int64(st, i + 1, v->u.i); break;
    case AH_SV_FLOAT: rc = sqlite3_bind_double(st, i + 1, v->u.d); break;
    case AH_SV_TEXT:
      rc = sqlite3_bind_text64(st, i + 1, v->u.s, v->len, SQLITE_STATIC, SQLITE_UTF8);
      break;
    case AH_SV_BLOB:
      rc = sqlite3_bind_blob64(st, i + 1, v->u.s, v->len, SQLITE_STATIC);
      break;
    default: rc = sqlite3_bind_null(st, i + 1); break;
    }
  }
  sqlite3_set_last_insert_rowid(c->db, 0);
  if (rc == SQLITE_OK) {
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (!collect) continue;
      if ((rc = add_row(j, st, max)) != SQLITE_OK) break;
      if (j->first_only) {
        rc = SQLITE_DONE;
        break;
      }
    }
  }
  if (rc == SQLITE_DONE) {
    if (!sqlite3_stmt_readonly(st)) {
      j->changes += sqlite3_changes64(c->db);
      j->rowid = sqlite3_last_insert_rowid(c->db);
    }
    rc = SQLITE_OK;
  } else if (rc == SQLITE_TOOBIG && collect) {
    snprintf(msg, sizeof msg, "the result is larger than %zu bytes; add a LIMIT "
             "or raise max_result", max);
    job_fail(j, rc, "too_large", msg, index);
  } else if (rc == SQLITE_NOMEM) {
    job_fail(j, rc, "resource", "out of memory", index);
  } else {
    job_fail(j, sqlite3_extended_errcode(c->db), NULL, sqlite3_errmsg(c->db), index);
    rc = j->rc;
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc;
}

/* ---- completions ------------------------------------------------------------- */

/* Hands finished jobs to the loop (mu held).  A post that succeeded is
 * freed here. */
static void complete_locked(ah_store *st, ah_store_job *j) {
  j->next = NULL;
  if (j->type == AH_JOB_WRITE) {
    st->stats.jobs++;
    if (j->kind) st->stats.failed++;
  } else if (j->type == AH_JOB_READ) {
    st->stats.reads++;
  }
  if (!j->done && !j->kind) {
    job_free_locked(st, j);
    return;
  }
  if (st->dtail) st->dtail->next = j;
  else st->dhead = j;
  st->dtail = j;
}

/* ---- the writer ------------------------------------------------------------- */

static void reset_results(ah_store_job *j) {
  j->changes = 0;
  j->rowid = 0;
  j->nrows = 0;
  j->ncols = 0;
  ah__buf_reset(&j->space);
  free(j->vals);
  j->vals = NULL;
  j->vals_cap = 0;
}

/* Runs the jobs of one round in one transaction. */
static void run_group(ah_store *st, ah_store_job *list) {
  conn *c = &st->w;
  ah_store_job *j, *k;
  int rc, attempts = 0, n;
again:
  n = 0;
  if (!c->db) {
    rc = st->open_rc ? st->open_rc : SQLITE_CANTOPEN;
    for (j = list; j; j = j->next)
      if (!j->kind && j->type != AH_JOB_FLUSH) job_fail(j, rc, "io", st->open_msg, 0);
    return;
  }
  if ((rc = step_internal(c, st->s_begin)) != SQLITE_OK) {
    char msg[384];
    snprintf(msg, sizeof msg, "cannot start a write transaction: %s",
             sqlite3_errmsg(c->db));
    rc = sqlite3_extended_errcode(c->db);
    for (j = list; j; j = j->next)
      if (!j->kind && j->type != AH_JOB_FLUSH) job_fail(j, rc, NULL, msg, 0);
    return;
  }
  for (j = list; j; j = j->next) {
    int i, failed = 0;
    if (j->kind || j->type == AH_JOB_FLUSH) continue;
    reset_results(j);
    step_internal(c, st->s_save);
    for (i = 0; i < j->nstmts && !failed; i++)
      failed = run_stmt(c, j, i, j->type == AH_JOB_READ, st->o.max_result) != 0;
    if (failed && sqlite3_get_autocommit(c->db)) {
      /* The statement ended the whole transaction: run the group again
       * without this job (it keeps its error). */
      if (++attempts < GROUP_RETRIES) goto again;
      for (k = list; k; k = k->next)
        if (!k->kind && k->type != AH_JOB_FLUSH) {
          job_fail(k, j->rc, j->kind,
                   "the transaction was rolled back by a failing statement in "
                   "the same group",
                   0);
          k->retryable = j->retryable; /* it failed for j's reason */
        }
      return;
    }
    if (failed) step_internal(c, st->s_undo);
    step_internal(c, st->s_release);
    n++;
  }
  if ((rc = step_internal(c, st->s_commit)) != SQLITE_OK) {
    char msg[384];
    snprintf(msg, sizeof msg, "commit failed: %s", sqlite3_errmsg(c->db));
    rc = sqlite3_extended_errcode(c->db);
    if (!sqlite3_get_autocommit(c->db)) step_internal(c, st->s_rollback);
    for (j = list; j; j = j->next)
      if (!j->kind && j->type != AH_JOB_FLUSH) job_fail(j, rc, NULL, msg, 0);
    return;
  }
  uv_mutex_lock(&st->mu);
  st->stats.transactions++;
  if ((uint64_t)n > st->stats.largest_group) st->stats.largest_group = (uint64_t)n;
  uv_mutex_unlock(&st->mu);
}

static int writer_prepare(ah_store *st) {
  conn *c = &st->w;
  static const char *const sql[] = {"BEGIN IMMEDIATE", "COMMIT", "ROLLBACK",
                                    "SAVEPOINT ah_job", "RELEASE ah_job",
                                    "ROLLBACK TO ah_job"};
  sqlite3_stmt **dst[] = {&st->s_begin, &st->s_commit, &st->s_rollback,
                          &st->s_save, &st->s_release, &st->s_undo};
  size_t i;
  int rc = SQLITE_OK;
  c->internal = 1;
  for (i = 0; i < sizeof sql / sizeof *sql && rc == SQLITE_OK; i++)
    rc = sqlite3_prepare_v3(c->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, dst[i],
                            NULL);
  c->internal = 0;
  return rc;
}

static void writer_finalize(ah_store *st) {
  sqlite3_finalize(st->s_begin);
  sqlite3_finalize(st->s_commit);
  sqlite3_finalize(st->s_rollback);
  sqlite3_finalize(st->s_save);
  sqlite3_finalize(st->s_release);
  sqlite3_finalize(st->s_undo);
}

static void writer_main(void *arg) {
  ah_store *st = arg;
  char msg[384] = "";
  int rc, i;
  conn_init(&st->w);
  rc = conn_open(&st->w, &st->o, st->path, 1, msg, sizeof msg);
  if (rc == SQLITE_OK && (rc = writer_prepare(st)) != SQLITE_OK) {
    snprintf(msg, sizeof msg, "%s: %s", st->path, sqlite3_errmsg(st->w.db));
    writer_finalize(st);
    conn_close(&st->w);
  }
  uv_mutex_lock(&st->mu);
  st->opened = 1;
  st->open_rc = rc;
  snprintf(st->open_msg, sizeof st->open_msg, "%s", msg);
  uv_mutex_unlock(&st->mu);
  uv_async_send(&st->async);

  for (;;) {
    ah_store_job *list, *j, *next;
    uv_mutex_lock(&st->mu);
    while (!st->whead && !st->closing) uv_cond_wait(&st->wcv, &st->mu);
    list = st->whead;
    st->whead = st->wtail = NULL;
    st->stats.queued = 0;
    uv_mutex_unlock(&st->mu);
    if (!list) break; /* closing and drained */
    run_group(st, list);
    uv_mutex_lock(&st->mu);
    for (j = list; j; j = next) {
      next = j->next;
      complete_locked(st, j);
    }
    uv_mutex_unlock(&st->mu);
    uv_async_send(&st->async);
  }

  /* The readers go first, so that the writer's connection is the last to
   * close and checkpoints the WAL into the database. */
  uv_mutex_lock(&st->mu);
  uv_cond_broadcast(&st->rcv);
  uv_mutex_unlock(&st->mu);
  for (i = 0; i < st->nreaders; i++) uv_thread_join(&st->readers[i].thread);
  if (st->w.db) writer_finalize(st);
  conn_close(&st->w);
  uv_mutex_lock(&st->mu);
  st->exited = 1;
  uv_mutex_unlock(&st->mu);
  uv_async_send(&st->async);
}

/* ---- readers ------------------------------------------------------------------ */

static void reader_main(void *arg) {
  reader *r = arg;
  ah_store *st = r->st;
  char msg[384];
  conn_init(&r->c);
  r->c.reader = 1;
  for (;;) {
    ah_store_job *j;
    int rc = SQLITE_OK, skip;
    uv_mutex_lock(&st->mu);
    while (!st->rhead && !(st->closing && !st->whead)) uv_cond_wait(&st->rcv, &st->mu);
    j = st->rhead;
    if (j) {
      st->rhead = j->next;
      if (!st->rhead) st->rtail = NULL;
    }
    uv_mutex_unlock(&st->mu);
    if (!j) break;
    if (!r->c.db) rc = conn_open(&r->c, &st->o, st->path, 0, msg, sizeof msg);
    /* The job names its connection (for an interrupt) only once the
     * connection is open, and under the lock that abandon takes. */
    uv_mutex_lock(&st->mu);
    skip = j->abandoned;
    if (rc == SQLITE_OK && !skip) j->conn = &r->c;
    uv_mutex_unlock(&st->mu);
    if (rc != SQLITE_OK) job_fail(j, rc, NULL, msg, 0);
    else if (!skip) run_stmt(&r->c, j, 0, 1, st->o.max_result);
    uv_mutex_lock(&st->mu);
    j->conn = NULL;
    complete_locked(st, j);
    uv_mutex_unlock(&st->mu);
    uv_async_send(&st->async);
  }
  conn_close(&r->c);
}

/* ---- the loop side --------------------------------------------------------------- */

static void update_ref(ah_store *st) {
  if (st->waiting > 0 || !st->open_reported || (st->close_started && !st->close_reported))
    uv_ref((uv_handle_t *)&st->async);
  else
    uv_unref((uv_handle_t *)&st->async);
}

static void store_free(uv_handle_t *h) {
  ah_store *st = h->data;
  free_list(st->lfree);
  free_list(st->recycled);
  uv_mutex_destroy(&st->mu);
  uv_cond_destroy(&st->wcv);
  uv_cond_destroy(&st->rcv);
  free(st->readers);
  free(st->path);
  free(st);
}

static void on_async(uv_async_t *a) {
  ah_store *st = a->data;
  ah_store_job *list, *next;
  int opened, exited;
  uv_mutex_lock(&st->mu);
  list = st->dhead;
  st->dhead = st->dtail = NULL;
  opened = st->opened;
  exited = st->exited;
  uv_mutex_unlock(&st->mu);
  if (opened && !st->open_reported) {
    st->open_reported = 1;
    if (st->opened_cb)
      st->opened_cb(st, st->open_rc ? -1 : 0, st->open_msg, st->opened_data);
  }
  for (; list; list = next) {
    next = list->next;
    if (list->done) {
      st->waiting--;
      list->done(list);
    } else if (st->post_error) {
      st->post_error(list);
    } else {
      ah__store_job_free(list);
    }
  }
  if (exited && st->close_started && !st->close_reported) {
    st->close_reported = 1;
    uv_thread_join(&st->writer);
    if (st->closed_cb) st->closed_cb(st, 0, NULL, st->closed_data);
    uv_close((uv_handle_t *)&st->async, store_free);
    return;
  }
  update_ref(st);
}

int ah__store_open(ah_store **out, uv_loop_t *loop, const char *path,
                   const ah_store_opts *o, ah_store_cb opened, void *data) {
  ah_store *st = calloc(1, sizeof *st);
  int rc, i;
  if (!st) return UV_ENOMEM;
  st->loop = loop;
  st->o = *o;
  if (st->o.max_result == 0) st->o.max_result = (size_t)64 << 20;
  if (!(st->path = strdup(path))) {
    free(st);
    return UV_ENOMEM;
  }
  /* A private in-memory database is one connection: reads go to the writer. */
  if (strcmp(path, ":memory:") == 0 || path[0] == '\0') st->o.readers = 0;
  st->nreaders = st->o.readers;
  if (st->nreaders > 0 && !(st->readers = calloc((size_t)st->nreaders, sizeof *st->readers))) {
    free(st->path);
    free(st);
    return UV_ENOMEM;
  }
  st->opened_cb = opened;
  st->opened_data = data;
  uv_mutex_init(&st->mu);
  uv_cond_init(&st->wcv);
  uv_cond_init(&st->rcv);
  if ((rc = uv_async_init(loop, &st->async, on_async)) != 0) {
    st->async.data = st; /* never initialised: just free */
    store_free((uv_handle_t *)&st->async);
    return rc;
  }
  st->async.data = st;
  for (i = 0; i < st->nreaders; i++) {
    st->readers[i].st = st;
    if ((rc = uv_thread_create(&st->readers[i].thread, reader_main, &st->readers[i])) != 0)
      break;
  }
  if (rc == 0) rc = uv_thread_create(&st->writer, writer_main, st);
  if (rc != 0) {
    /* Stop the readers that did start, then free once the handle closed. */
    int started = i;
    uv_mutex_lock(&st->mu);
    st->closing = 1;
    uv_cond_broadcast(&st->rcv);
    uv_mutex_unlock(&st->mu);
    for (i = 0; i < started && i < st->nreaders; i++) uv_thread_join(&st->readers[i].thread);
    uv_close((uv_handle_t *)&st->async, store_free);
    return rc;
  }
  *out = st;
  return 0;
}

void ah__store_on_post_error(ah_store *st, void (*cb)(ah_store_job *j)) {
  st->post_error = cb;
}

int ah__store_submit(ah_store *st, ah_store_job *j) {
  int first = 0;
  if (st->close_started) return UV_EPIPE;
  j->st = st;
  j->next = NULL;
  if (j->done) {
    st->waiting++;
    update_ref(st);
  }
  if (j->type == AH_JOB_READ && st->nreaders > 0) {
    uv_mutex_lock(&st->mu);
    if (st->rtail) st->rtail->next = j;
    else st->rhead = j;
    st->rtail = j;
    uv_cond_signal(&st->rcv);
    uv_mutex_unlock(&st->mu);
    return 0;
  }
  if (st->ltail) st->ltail->next = j;
  else {
    st->lhead = j;
    first = 1;
  }
  st->ltail = j;
  st->lcount++;
  if (j->type == AH_JOB_WRITE && !j->done) st->lposts++;
  return first;
}

void ah__store_kick(ah_store *st) {
  if (!st->lhead) return;
  uv_mutex_lock(&st->mu);
  if (st->wtail) st->wtail->next = st->lhead;
  else {
    st->whead = st->lhead;
    uv_cond_signal(&st->wcv);
  }
  st->wtail = st->ltail;
  st->stats.queued += st->lcount;
  st->stats.posts += st->lposts;
  uv_mutex_unlock(&st->mu);
  st->lhead = st->ltail = NULL;
  st->lcount = st->lposts = 0;
}

void ah__store_abandon(ah_store_job *j) {
  ah_store *st = j->st;
  uv_mutex_lock(&st->mu);
  j->abandoned = 1;
  if (j->conn) sqlite3_interrupt(((conn *)j->conn)->db);
  uv_mutex_unlock(&st->mu);
}

int ah__store_waiting(const ah_store *st) { return st->waiting; }

void ah__store_stats(ah_store *st, ah_store_stats *out) {
  uv_mutex_lock(&st->mu);
  *out = st->stats;
  uv_mutex_unlock(&st->mu);
  out->queued += st->lcount;
}

static void begin_close(ah_store *st) {
  ah__store_kick(st);
  st->close_started = 1;
  uv_mutex_lock(&st->mu);
  st->closing = 1;
  uv_cond_signal(&st->wcv);
  uv_cond_broadcast(&st->rcv);
  uv_mutex_unlock(&st->mu);
}

void ah__store_close(ah_store *st, ah_store_cb cb, void *data) {
  if (st->close_started) return;
  st->closed_cb = cb;
  st->closed_data = data;
  begin_close(st);
  update_ref(st);
}

void ah__store_close_now(ah_store *st) {
  ah_store_job *j, *next;
  if (!st->close_started) begin_close(st);
  else if (st->close_reported) return;
  st->closed_cb = NULL;
  st->opened_cb = NULL;
  uv_thread_join(&st->writer);
  st->close_reported = 1;
  uv_mutex_lock(&st->mu);
  j = st->dhead;
  st->dhead = st->dtail = NULL;
  uv_mutex_unlock(&st->mu);
  for (; j; j = next) {
    next = j->next;
    if (!j->done && st->post_error) st->post_error(j);
    else ah__store_job_free(j);
  }
  uv_close((uv_handle_t *)&st->async, store_free);
}
