/*
 * Internal interface of the host layer: the event loop wrapper and the
 * timer heap, file watching, the growable buffer, HTTP transfers and
 * server-sent events, the SQLite store, PostgreSQL connections, posts from
 * other threads, the JSON syntax check and subprocesses.  Everything here
 * knows libuv and plain C only (libcurl, sqlite3 and libpq stay inside
 * their .c files); nothing here includes Lua.  Names with the ah__ prefix
 * are shared between the files of the project and are not part of the
 * public API (see agenthost.h).
 */
#ifndef AH_HOST_H
#define AH_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The struct of type T whose member m is at p. */
#ifndef container_of
#define container_of(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))
#endif

/* ---- timer heap ------------------------------------------------------ */

/*
 * A timer is a node embedded in the caller's own record: starting it
 * allocates nothing (the heap array grows geometrically and is reused).
 * All timers of one heap share a single uv_timer_t armed for the earliest
 * deadline, so a record carries 32 bytes instead of a whole uv handle.
 * Equal deadlines fire in the order they were started.
 *
 * Timeouts that recur (every agent sleeping the same 1.2 s) go into a
 * lane: a FIFO list of the timers started with one timeout, whose
 * deadlines are therefore in order, so that starting, stopping and firing
 * one costs O(1) and only each lane's first timer is in the heap.  The
 * first AH_TIMER_LANES distinct timeouts armed at once get a lane; the
 * others are heap entries of their own.
 */
typedef struct ah_timer {
  uint64_t key;   /* deadline in ms (high bits) and start sequence (low bits) */
  struct ah_timer *next, *prev; /* in its lane, while it has one */
  uint32_t pos;   /* index in the heap + 1; 0 when not in the heap */
  uint8_t lane;   /* its lane + 1; 0 when in none */
  uint8_t weak;   /* set by the owner: an armed weak timer does not keep
                     the loop alive (for housekeeping) */
  uint8_t head;   /* a lane's own node (timer.c) */
} ah_timer;

typedef struct ah_timer_slot {
  uint64_t key;
  ah_timer *t;
} ah_timer_slot;

#define AH_TIMER_LANES 16
typedef struct ah_timer_lane {
  ah_timer node;     /* list head, and the lane's heap entry while not empty */
  uint64_t timeout;  /* ms */
  uint32_t n;        /* timers in the lane */
} ah_timer_lane;

typedef struct ah_timers ah_timers;
typedef void (*ah_timer_fire_cb)(ah_timers *ts, ah_timer *t);

/* Owned by whoever embeds it; closed with ah__timers_close. */
struct ah_timers {
  uv_timer_t handle;       /* armed for heap[0]; freed only in close cb */
  ah_timer_slot *heap;     /* min-heap on key; owned, malloc'd */
  uint32_t hn, cap;        /* heap entries, slots */
  uint32_t n;              /* armed timers */
  uint32_t strong;         /* armed timers that are not weak */
  uint32_t seq;
  uint64_t armed_for;      /* deadline the uv timer is armed for, or 0 */
  ah_timer_fire_cb fire;
  void *data;              /* for the owner */
  ah_timer_lane lanes[AH_TIMER_LANES];
};

int ah__timers_init(ah_timers *ts, uv_loop_t *loop, ah_timer_fire_cb fire);
/* Arms t to fire after timeout_ms from now (the loop's current time).
 * Restarting an armed timer moves it.  Returns 0 or UV_ENOMEM. */
int ah__timers_start(ah_timers *ts, ah_timer *t, uint64_t timeout_ms);
void ah__timers_stop(ah_timers *ts, ah_timer *t);
/* Is t armed? */
int ah__timers_armed(const ah_timer *t);
/* Fires every due timer now; called by the uv timer and usable by hosts
 * that step the loop themselves. */
void ah__timers_run(ah_timers *ts);
/* Milliseconds until the earliest deadline, or -1 when none is armed. */
int64_t ah__timers_next(const ah_timers *ts);
/* Stops every timer (without firing) and closes the uv handle; close_cb
 * runs from the loop once the handle is closed, and only then may the
 * memory holding ts be freed. */
void ah__timers_close(ah_timers *ts, uv_close_cb close_cb);

/* ---- the arena (alloc.c) ----------------------------------------------- */

/*
 * A size-class allocator for one Lua state, with lua_Alloc's signature
 * (host/ does not include Lua; the signature is plain C).  Used by one
 * thread at a time.  Blocks of up to AH_ARENA_MAX_SMALL bytes come from
 * 64 KiB slabs of one class in a reserved range of address space, larger
 * ones (and all of them while the heap is small) from malloc; empty slabs
 * are returned to the system beyond a reserve, and all of them by
 * ah__arena_trim.
 */
#define AH_ARENA_MAX_SMALL 4096
typedef struct ah_arena ah_arena;
typedef struct ah_arena_stats {
  size_t small;       /* bytes of small blocks handed out */
  size_t resident;    /* bytes of slabs made and not released (an upper
                         bound on what the arena holds resident) */
  size_t slabs;       /* slabs made so far */
  size_t empty;       /* empty slabs kept for reuse */
  size_t released;    /* empty slabs whose pages went back */
  unsigned long long releases; /* slab releases so far */
} ah_arena_stats;

/* Reserves `reserve` bytes of address space (0: 64 GiB, or less when the
 * system refuses); NULL when not even a little can be had (use
 * ah__sysalloc then).  Until `start` bytes are in use every block comes
 * from malloc (0: from the start on, small blocks come from slabs). */
ah_arena *ah__arena_new(size_t reserve, size_t start);
/* Frees the arena and every slab; the blocks of malloc must have been
 * freed (lua_close does). */
void ah__arena_destroy(ah_arena *a);
/* lua_Alloc with ud the arena. */
void *ah__arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Returns the pages of every empty slab to the system. */
void ah__arena_trim(ah_arena *a);
void ah__arena_stats(const ah_arena *a, ah_arena_stats *st);
/* lua_Alloc on realloc and free (what luaL_newstate uses). */
void *ah__sysalloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* ---- loop ------------------------------------------------------------ */

/*
 * The loop either owns its uv_loop_t or borrows one from an embedding host.
 * It runs the owner's drain function before every poll and after every poll
 * phase (uv_prepare and uv_check), which is where ready work is run; both
 * handles are unreferenced so they never keep the loop alive by themselves.
 */
typedef struct ah_evloop ah_evloop;
typedef void (*ah_loop_drain_cb)(ah_evloop *lp);
typedef void (*ah_loop_signal_cb)(ah_evloop *lp, int signum);

/* A listener for SIGHUP, embedded in its owner's record; fn runs on the
 * loop thread.  Linked while added. */
typedef struct ah_loop_hup {
  struct ah_loop_hup *next;
  void (*fn)(struct ah_loop_hup *h);
} ah_loop_hup;

struct ah_evloop {
  uv_loop_t *uv;
  uv_loop_t own;
  int owned;
  int closing;
  uv_prepare_t prepare;
  uv_check_t check;
  uv_idle_t idle;          /* active while work is pending: no blocking poll */
  uv_signal_t sigint, sigterm;
  int signals_on;
  uv_signal_t sighup;      /* started while hups is not empty */
  int hup_open;            /* sighup is initialised (closed at loop close) */
  ah_loop_hup *hups;       /* the SIGHUP listeners */
  ah_timers timers;        /* every timer of this loop */
  ah_loop_drain_cb drain;
  ah_loop_signal_cb on_signal;
  void *data;              /* for the owner */
  int open_handles;        /* handles of ours not yet closed */
};

/* borrow may be NULL to own a loop.  fire is the timer callback. */
int ah__loop_init(ah_evloop *lp, uv_loop_t *borrow, ah_loop_drain_cb drain,
                  ah_timer_fire_cb fire);
/* Keeps the next poll from blocking, because work is waiting. */
void ah__loop_pending(ah_evloop *lp, int pending);
/* Delivers SIGINT and SIGTERM to cb instead of the default action.  The
 * loop owns every signal handle of the host (these and SIGHUP's). */
int ah__loop_signals(ah_evloop *lp, ah_loop_signal_cb cb);
void ah__loop_signals_off(ah_evloop *lp);
/* Adds or removes a SIGHUP listener.  While any is added SIGHUP goes to
 * them all instead of its default action (ending the process). */
int ah__loop_hup_add(ah_evloop *lp, ah_loop_hup *h);
void ah__loop_hup_remove(ah_evloop *lp, ah_loop_hup *h);
/* Closes our handles, runs the loop until they are closed, and closes an
 * owned loop.  Returns 0, or UV_EBUSY when other handles are still open on
 * an owned loop (they are walked and closed first, so this is a report). */
int ah__loop_close(ah_evloop *lp);

/* ---- file watching ---------------------------------------------------- */

/*
 * Watches directories (and their subdirectories) for changed *.lua files.
 * After a quiet period of debounce_ms, each changed file is read on the
 * thread pool and cb is called on the loop thread with its content, only
 * when the content differs from the last one reported or registered with
 * ah__watch_file.  A deleted file gives data == NULL and err = UV_ENOENT; an
 * unreadable one data == NULL and another negative err.
 */
typedef struct ah_watch ah_watch;
typedef void (*ah_watch_cb)(ah_watch *w, const char *path, const char *data,
                            size_t len, int err);

int ah__watch_open(ah_watch **out, uv_loop_t *loop, unsigned debounce_ms,
                   ah_watch_cb cb, void *data);
void *ah__watch_data(ah_watch *w);
int ah__watch_add(ah_watch *w, const char *dir);
int ah__watch_file(ah_watch *w, const char *path, uint64_t hash);
void ah__watch_rescan(ah_watch *w);
int ah__watch_polling(const ah_watch *w);
/* For tests: use uv_fs_poll as where inotify is unavailable. */
void ah__watch_force_polling(ah_watch *w);
/* Frees everything once its handles have closed and reads come back. */
void ah__watch_close(ah_watch *w);
/* FNV-1a, the content hash used to tell a real change from a re-save. */
uint64_t ah__hash(const void *p, size_t n);

/* ---- growable buffer (buf.c) ------------------------------------------ */

/*
 * A byte buffer that grows by doubling.  The content is data[0..len) and
 * cap is the size of data.  Owned by whoever embeds it: data is malloc'd
 * (NULL until the first reserve) and freed by ah__buf_free; a zeroed
 * ah_buf is an empty buffer.
 */
typedef struct ah_buf {
  char *data;          /* owned; NULL when nothing was reserved yet */
  size_t len, cap;
} ah_buf;

/* Makes room for at least n bytes past len, so that a read may write into
 * data + len directly (and then add to len).  0, or UV_ENOMEM with b
 * unchanged. */
int ah__buf_reserve(ah_buf *b, size_t n);
/* Appends n bytes of p and puts a NUL after the content (not counted in
 * len), so that text can be read as a C string.  0, or UV_ENOMEM with b
 * unchanged. */
int ah__buf_append(ah_buf *b, const void *p, size_t n);
/* Empties b (a NUL at data[0] when it has memory), keeping the memory for
 * the next content. */
void ah__buf_reset(ah_buf *b);
/* Frees the memory and leaves b empty and usable. */
void ah__buf_free(ah_buf *b);

/* ---- HTTP ------------------------------------------------------------- */

typedef struct ah_http ah_http;
typedef struct ah_http_req ah_http_req;

/* One transfer.  The owner fills the first block (the headers to send
 * through ah__http_req_header), calls ah__http_start, and gets done(r) on
 * the loop thread once it ended (never when start failed and never after
 * ah__http_req_free); then reads the results and frees. */
struct ah_http_req {
  const char *url;                 /* copied by curl at start */
  const char *method;              /* upper case; copied at start */
  const char *body_data;           /* copied at start; NULL for none */
  size_t body_len;
  long timeout_ms, connect_timeout_ms;
  size_t max_body;
  int follow;                      /* follow redirects (at most 5) */
  const char *ca_file;             /* CA bundle to verify TLS peers with
                                    * instead of the system's; copied at
                                    * start; NULL for the system's */
  int deny_private;                /* refuse loopback, private, link-local
                                    * and other internal addresses, checked
                                    * on each address connected to */
  /* Streaming: the body collects in `body` up to high_water bytes, then
   * the transfer pauses until ah__http_resume.  on_headers runs once the
   * final response's headers are in, on_data whenever body grew.  Both run
   * inside curl's callbacks: they may only record and wake. */
  int stream;
  size_t high_water;
  void (*on_headers)(ah_http_req *r);
  void (*on_data)(ah_http_req *r);
  void (*done)(ah_http_req *r);
  void *data;                      /* for the owner */
  /* results */
  long status;
  int version;                     /* HTTP version: 10, 11, 20 or 30 */
  int code;                        /* CURLcode */
  const char *kind;                /* NULL on success, else an error kind */
  int retryable;                   /* with kind: trying again may succeed
                                    * (dns, connect, timeout) */
  char errbuf[256];
  ah_buf headers, body;
  int too_large;
  char blocked[64];                /* the address refused by deny_private */
  int headers_done, paused;
  size_t total;                    /* body bytes received so far */
  /* private */
  void *header_list;               /* the curl_slist of the headers to send;
                                    * owned, freed by ah__http_req_free */
  ah_http *h;
  void *easy;
  void *lane;                      /* the multi handle's lane it runs on */
  int running;
  int queued;                      /* waiting in the start queue */
  ah_http_req *qnext, *qprev;
  uint64_t queued_at;              /* uv_hrtime() when it was queued */
  char *copies;                    /* url, body and ca_file while queued */
};

int ah__http_open(ah_http **out, uv_loop_t *loop, long max_connects,
                  long max_host_connections);
/* Closes the multi handle and every watcher; in-flight transfers must have
 * been freed first.  The memory goes once the handles have closed. */
void ah__http_close(ah_http *h);
/* Starts the transfer, or queues it behind the requests already waiting,
 * or when start_batch transfers have started in this loop iteration (it
 * then starts in a following one, with url, body and ca_file copied
 * meanwhile).  A queued transfer that cannot start, or whose timeout runs
 * out while it waits, ends through done() with its error.  A request with
 * a body is sent without "Expect: 100-continue" (no round trip before the
 * body). */
int ah__http_start(ah_http *h, ah_http_req *r);
/* The private-address guard (deny_private).  ah__http_addr_blocked: 1 when
 * sa (AF_INET or AF_INET6; any other family is blocked) is in an IANA
 * special-purpose range that is not globally reachable, or is an IPv6 form
 * routed to such an IPv4 address; pure, no state, cheap (for fuzzers too).
 * ah__http_addr_refused: the same, or an address of one of this machine's
 * interfaces (the list is read again at most once a second). */
int ah__http_addr_blocked(const struct sockaddr *sa);
int ah__http_addr_refused(ah_http *h, const struct sockaddr *sa);
/* The error kind of a transfer that ended with curl's code (NULL when it
 * succeeded), and in *retryable whether trying again may succeed.  An
 * address refused by the guard makes it "forbidden" only when curl found
 * no other address to connect to. */
const char *ah__http_error_kind(const ah_http_req *r, int code, int *retryable);
/* Aborts the transfer if it is running (no done call) and frees its
 * buffers; the easy handle goes back to the pool. */
void ah__http_req_free(ah_http_req *r);
int ah__http_active(const ah_http *h);
/* Sockets curl has open and watched (connections busy or idle). */
int ah__http_sockets(const ah_http *h);
/* Bounds the connection cache (0: automatic, four connections per
 * transfer in flight, at least 256 and at most half the open-files limit)
 * and the connections per host (0: no limit); a negative value leaves that
 * setting as it is.  ah__http_open takes the same values. */
void ah__http_limits(ah_http *h, long max_connects, long max_host_connections);
/* Transfers started per loop iteration at most (0: no limit); < 0 keeps
 * the setting.  The default is AH_HTTP_START_BATCH. */
#define AH_HTTP_START_BATCH 128
void ah__http_start_batch(ah_http *h, long n);
/* Transfers waiting in the start queue. */
int ah__http_queued(const ah_http *h);
/* Lets a paused streaming transfer go on (call after taking the body). */
void ah__http_resume(ah_http_req *r);
/* The URL without user:password@, for messages. */
void ah__http_safe_url(const char *url, char *out, size_t size);

/* Is s a non-empty HTTP token (RFC 9110: letters, digits and
 * !#$%&'*+-.^_`|~), as a method and a header name must be? */
int ah__http_token(const char *s);
/* The longest URL ah__http_check_url accepts, in bytes. */
#define AH_HTTP_MAX_URL 16384
/* Checks url[0..len) before a request is made with it, in this order:
 * UV_ENAMETOOLONG when it is longer than AH_HTTP_MAX_URL; UV_EINVAL when
 * it holds a space or a control character (it must be percent-encoded);
 * UV_EPROTONOSUPPORT when it is neither http:// nor https:// (in any
 * case); else 0.  The caller words the message for its own argument. */
int ah__http_check_url(const char *url, size_t len);
/* Adds the header "name: value" to those r sends (an empty value sends
 * the header empty); value has vlen bytes.  Returns 0; UV_EINVAL when name
 * is not an HTTP token; UV_EILSEQ when the value holds CR, LF or NUL,
 * which could smuggle in a header or a request; UV_ENOMEM.  Call before
 * ah__http_start; ah__http_req_free frees the list. */
int ah__http_req_header(ah_http_req *r, const char *name, const char *value,
                        size_t vlen);

/* One header of a response: both parts point into r->headers and are not
 * NUL-terminated. */
typedef struct ah_http_header {
  const char *name;                /* in lower case */
  size_t name_len;
  const char *value;               /* without blanks around it */
  size_t value_len;
} ah_http_header;
/* Iterates over the headers of r's final response in the order they came:
 * *pos starts at 0; each call fills h and returns 1, or returns 0 after
 * the last one.  Status lines and lines without "name:" are skipped; a
 * repeated name comes as often as it was sent.  Names are lower-cased in
 * r->headers itself as they are reached. */
int ah__http_header_next(ah_http_req *r, size_t *pos, ah_http_header *h);

/* ---- server-sent events ------------------------------------------------ */

/*
 * A parser of text/event-stream as the WHATWG HTML standard defines it: a
 * leading BOM, CR, LF and CRLF line ends (also split across chunks),
 * comments, multi-line data, id (kept across events), retry, and event
 * types.  Feed any split of the stream; each complete event is passed to
 * cb.  A line or event beyond max bytes is an error.
 */
typedef struct ah_sse_event {
  const char *event;   /* "message" when not set */
  const char *data;
  size_t data_len;
  const char *id;      /* the last event id, "" when none */
  long retry;          /* -1 when this event set none */
} ah_sse_event;

typedef struct ah_sse {
  ah_buf line, data, event, id;
  long retry;
  int started, bom, last_cr;
  size_t max;
} ah_sse;

void ah__sse_init(ah_sse *p, size_t max);
/* Returns 0, or UV_E2BIG when a line or event exceeds max, or the
 * callback's own non-zero return, which stops the feed. */
int ah__sse_feed(ah_sse *p, const char *s, size_t n,
                 int (*cb)(void *ud, const ah_sse_event *ev), void *ud);
void ah__sse_free(ah_sse *p);

/* ---- SQLite store ------------------------------------------------------- */

/*
 * One database file: a writer thread with its own connection that runs every
 * queued write job of a round in one transaction (group commit), each job in
 * its own SAVEPOINT so that a failing job rolls back alone; reader threads
 * with their own connections for queries.  Completions come back to the loop
 * thread through one uv_async_t and call the job's done callback there.
 *
 * A job is one malloc'd block made by ah__store_job_new: its statements,
 * their parameters and the copied SQL and string values.  The owner fills
 * it, submits it, and gets it back in done(); then it reads the results and
 * frees it with ah__store_job_free.  A write job with done == NULL is a
 * post: the store frees it itself when it succeeds and calls the store's
 * on_post_error callback when it fails (the owner frees it there).
 */
enum { AH_SV_NULL, AH_SV_INT, AH_SV_FLOAT, AH_SV_TEXT, AH_SV_BLOB };

typedef struct ah_store_val {
  int type;                  /* AH_SV_* */
  size_t len;                /* TEXT and BLOB */
  union {
    int64_t i;
    double d;
    const char *s;           /* into the job's block (parameters) */
    size_t off;              /* into the job's result space (rows) */
  } u;
} ah_store_val;

typedef struct ah_store_stmt {
  const char *sql;
  size_t sql_len;
  int nparams;
  ah_store_val *params;
} ah_store_stmt;

typedef struct ah_store ah_store;
typedef struct ah_store_job ah_store_job;

enum { AH_JOB_WRITE, AH_JOB_READ, AH_JOB_FLUSH };

struct ah_store_job {
  int type;                  /* AH_JOB_* */
  int first_only;            /* read: stop after the first row */
  int nstmts;
  ah_store_stmt *stmts;      /* in this block */
  void (*done)(ah_store_job *j); /* on the loop thread */
  void *data;                /* for the owner */
  void *owner;               /* for the owner */
  const char *label;         /* for the owner, e.g. the call's name */
  /* results */
  int rc;                    /* SQLite's extended result code, 0 on success */
  const char *kind;          /* NULL on success, else an error kind */
  int retryable;             /* with kind: trying again may succeed (busy) */
  char *errmsg;              /* malloc'd; NULL on success */
  int failed;                /* index of the failing statement */
  int64_t changes, rowid;
  /* read results: ncols names then nrows * ncols values; text in space */
  int ncols;
  size_t nrows;
  ah_store_val *vals;        /* malloc'd; freed with the job */
  ah_buf space;              /* the values' text, each with a NUL; freed
                              * with the job */
  size_t vals_cap;
  /* private */
  ah_store_job *next;
  ah_store *st;
  void *conn;                /* the reader running it, for interrupts */
  int abandoned;
  int pooled;                /* a JOB_BLOCK from the store's pool */
  char *bytes;               /* free space for ah__store_job_copy */
};

typedef struct ah_store_opts {
  int synchronous_full;      /* synchronous=FULL instead of NORMAL */
  int readers;               /* reader threads; 0: reads go to the writer */
  int busy_timeout_ms;
  size_t max_result;         /* bytes of a query's result */
} ah_store_opts;

/* Completion of ah__store_open (err < 0 and a message when it failed) and
 * of ah__store_close.  Both run on the loop thread. */
typedef void (*ah_store_cb)(ah_store *st, int err, const char *msg, void *data);

/* Starts the threads and opens the writer's connection on its thread; cb
 * follows.  Only a failure to start threads returns an error here. */
int ah__store_open(ah_store **out, uv_loop_t *loop, const char *path,
                   const ah_store_opts *o, ah_store_cb opened, void *data);
/* Called on the loop thread for a post that failed. */
void ah__store_on_post_error(ah_store *st, void (*cb)(ah_store_job *j));
/* Lets the threads drain every queued job, closes the connections and
 * calls cb; the store's memory goes once its handle has closed. */
void ah__store_close(ah_store *st, ah_store_cb cb, void *data);
/* Like ah__store_close, but waits for the drain on this thread and calls
 * no callback: for finalizers at exit.  Completions still queued are freed
 * without their done callbacks. */
void ah__store_close_now(ah_store *st);
/* A job for st (small ones come from st's pool of blocks, which the writer
 * refills as jobs finish, so a stream of posts does not churn malloc). */
ah_store_job *ah__store_job_new(ah_store *st, int type, int nstmts, int nparams,
                                size_t bytes);
/* Copies n bytes (and a NUL) into the job's space; returns the copy. */
const char *ah__store_job_copy(ah_store_job *j, const char *s, size_t n);
/* Queues j.  Writes (and everything bound for the writer) collect on the
 * loop side until ah__store_kick hands them over together, so that the jobs
 * of one pass of the scheduler commit in one transaction; the return value
 * is 1 when j is the first job collected since the last kick (the caller
 * must then arrange a kick), 0 otherwise, or UV_EPIPE once closing. */
int ah__store_submit(ah_store *st, ah_store_job *j);
void ah__store_kick(ah_store *st);
/* Abandons a submitted job: done is still called (to free it) but a
 * running read is interrupted.  Writes cannot be taken back. */
void ah__store_abandon(ah_store_job *j);
/* Frees a job on the loop thread. */
void ah__store_job_free(ah_store_job *j);
const char *ah__store_text(const ah_store_job *j, const ah_store_val *v);

typedef struct ah_store_stats {
  uint64_t transactions, jobs, failed, reads, posts;
  uint64_t queued;           /* write jobs waiting for the writer */
  uint64_t largest_group;    /* most jobs committed in one transaction */
} ah_store_stats;
void ah__store_stats(ah_store *st, ah_store_stats *out);
/* Jobs with a done callback not delivered yet (loop thread). */
int ah__store_waiting(const ah_store *st);

/* ---- posts from other threads ------------------------------------------ */

/*
 * Messages for the loop thread from any thread: ah__posts_push copies the
 * channel name and the JSON text and wakes the loop, whose deliver callback
 * takes the list with ah__posts_take, frees each message, and reports with
 * ah__posts_done how many have left the bound (delivered or dropped).
 */
typedef struct ah_postmsg {
  struct ah_postmsg *next;
  char *channel;             /* into this block, NUL-terminated */
  char *json;                /* into this block, NUL-terminated */
  size_t channel_len, json_len;
} ah_postmsg;

typedef struct ah_posts ah_posts;

/* Owned by whoever embeds it; closed with ah__posts_close, then (once the
 * close callback ran) ah__posts_free. */
struct ah_posts {
  uv_mutex_t mu;
  uv_async_t async;          /* freed only in the close callback */
  ah_postmsg *head, **tail;     /* guarded by mu; the messages are owned */
  size_t pending;            /* guarded: pushed and not yet done */
  size_t max;                /* bound on pending; 0: none */
  unsigned long long posted; /* guarded: every message accepted */
  int closed;                /* guarded */
  size_t callers;            /* guarded: threads between enter and leave */
  uv_cond_t idle;            /* signalled when callers drops to 0 */
  void (*deliver)(ah_posts *p); /* on the loop thread */
  void *data;                /* for the owner */
};

int ah__posts_init(ah_posts *p, uv_loop_t *loop, size_t max,
                   void (*deliver)(ah_posts *p));
/* Any thread.  0, UV_EAGAIN when max messages are pending, UV_EPIPE once
 * closing, UV_ENOMEM. */
int ah__posts_push(ah_posts *p, const char *channel, size_t clen,
                   const char *json, size_t jlen);
/* Loop thread: the messages in the order they were pushed (caller frees
 * each with free()). */
ah_postmsg *ah__posts_take(ah_posts *p);
void ah__posts_done(ah_posts *p, size_t n);
size_t ah__posts_pending(ah_posts *p);
/* A posting thread brackets its use of p (checks, copies, push) with
 * enter and leave, so that close waits for it instead of freeing p under
 * it.  enter returns UV_EPIPE once closing. */
int ah__posts_enter(ah_posts *p);
void ah__posts_leave(ah_posts *p);
/* Refuses further pushes, waits for the threads between enter and leave,
 * frees what was not taken, closes the handle. */
void ah__posts_close(ah_posts *p, uv_close_cb cb);
void ah__posts_free(ah_posts *p);

/* ---- JSON (json.c) ----------------------------------------------------- */

/*
 * The one JSON grammar of the project (RFC 8259: UTF-8 checked, \u escapes
 * of surrogates only in pairs, nothing before or after the value but
 * whitespace), and the writers of JSON text.  ah__json_parse reads a text
 * and reports what it holds to a sink; ah__json_check is the same parse
 * with no sink.  ah_post checks posts with ah__json_check and ah.json.decode
 * (bindings/json.c) builds Lua values from ah__json_parse, so a post that
 * was accepted always decodes.  No allocation; any thread may call these.
 */
#define AH_JSON_MAX_DEPTH 1000

/* Why a text was refused (ah__json_strerror gives the words). */
enum {
  AH_JSON_EEND = 1,  /* the text ends inside a value, or is empty */
  AH_JSON_EVALUE,    /* a character that starts no value */
  AH_JSON_ELITERAL,  /* t, f, n not starting true, false, null */
  AH_JSON_ENUMBER,   /* a number RFC 8259 does not allow (01, 1., -, 1e) */
  AH_JSON_ECONTROL,  /* a raw control character in a string */
  AH_JSON_EESCAPE,   /* a backslash escape other than \" \\ \/ \b \f \n \r \t \u */
  AH_JSON_EHEX,      /* \u without four hex digits */
  AH_JSON_ESURROGATE,/* a \u escape of a surrogate that is not in a pair */
  AH_JSON_EUTF8,     /* bytes that are not UTF-8 */
  AH_JSON_EKEY,      /* an object member without a string key */
  AH_JSON_ECOLON,    /* a key without ':' after it */
  AH_JSON_EARRAY,    /* an array item followed by neither ',' nor ']' */
  AH_JSON_EOBJECT,   /* a member followed by neither ',' nor '}' */
  AH_JSON_EDEPTH,    /* arrays and objects nested deeper than allowed */
  AH_JSON_ETRAILING, /* more than whitespace after the value */
  AH_JSON_ESINK      /* the sink stopped the parse */
};
const char *ah__json_strerror(int code);

/*
 * What a parse reports, in text order.  Each callback returns 0 to go on;
 * anything else stops the parse with AH_JSON_ESINK.  A callback may also
 * leave by longjmp (a Lua error): the parser holds no resources.
 *   open      '[' (array 1) or '{' (array 0)
 *   string    a string or an object key: its bytes between the quotes,
 *             valid; escaped when it holds a backslash escape (decode it
 *             with ah__json_unescape)
 *   number    a number's text; integral when it has neither a fraction
 *             nor an exponent (convert with ah__json_number)
 *   literal   't', 'f' or 'n'
 *   item      the value just reported is item n (from 1) of the array, or
 *             the value of the key reported before it in the object
 *   close     the end of the innermost array or object
 */
typedef struct ah_json_sink {
  int (*open)(struct ah_json_sink *k, int array);
  int (*string)(struct ah_json_sink *k, const char *s, size_t len, int escaped);
  int (*number)(struct ah_json_sink *k, const char *s, size_t len, int integral);
  int (*literal)(struct ah_json_sink *k, int c);
  int (*item)(struct ah_json_sink *k, int array, size_t n);
  int (*close)(struct ah_json_sink *k, int array);
} ah_json_sink;

/* 0 when s[0..len) is one JSON value with arrays and objects nested at
 * most max_depth deep (1..AH_JSON_MAX_DEPTH), reported to k when k is not
 * NULL; else an AH_JSON_E code, with the byte offset where the text went
 * wrong in *pos when pos is not NULL. */
int ah__json_parse(const char *s, size_t len, int max_depth, ah_json_sink *k,
                   size_t *pos);
/* ah__json_parse(s, len, AH_JSON_MAX_DEPTH, NULL, NULL) == 0 ? 0 : -1:
 * what ah_post accepts. */
int ah__json_check(const char *s, size_t len);

/* The bytes of an escaped string that ah__json_parse reported, written to
 * out (which has room for len bytes: decoding never lengthens); returns
 * how many were written. */
size_t ah__json_unescape(const char *s, size_t len, char *out);
/* The value of a number that ah__json_parse reported: 1 with *i when it
 * is integral and fits in 64 bits, else 0 with *d, the double nearest to
 * it (correctly rounded; +-HUGE_VAL past the range of doubles). */
int ah__json_number(const char *s, size_t len, int integral, int64_t *i,
                    double *d);

/* The length of the UTF-8 sequence at s (s < end): 1 to 4 when it is one
 * (shortest form, no surrogate, at most U+10FFFF), else minus the length
 * of its maximal ill-formed part (Unicode's "maximal subpart", 1 to 3),
 * which is what one U+FFFD replaces. */
int ah__utf8_len(const unsigned char *s, const unsigned char *end);

/*
 * Where the writers put JSON text: p[0..len) is written, cap is the size
 * of p, and grow makes room for n more bytes (returns 0, or -1 when it has
 * no memory, leaving the buffer as it was).  The owner allocates p (with
 * Lua's allocator, for the codec).
 */
typedef struct ah_json_out {
  char *p;
  size_t len, cap;
  int (*grow)(struct ah_json_out *o, size_t n);
} ah_json_out;

/* A string, quoted and escaped: '"', '\\' and control characters as
 * escapes (\n, \t ... \u001f), everything else as it is.  Invalid UTF-8
 * is replaced, each maximal ill-formed part by U+FFFD, when replace is
 * set, else refused: 0, -1 (no memory) or AH_JSON_EUTF8 with the offset
 * of the bad byte in *bad. */
int ah__json_put_string(ah_json_out *o, const char *s, size_t len, int replace,
                        size_t *bad);
/* An integer's decimal digits.  0 or -1 (no memory). */
int ah__json_put_integer(ah_json_out *o, int64_t v);
/* A float in the fewest significant digits (at most 17) that read back as
 * the same double, always with a fraction or an exponent, so that it reads
 * back as a float ("1.0", "-0.0", "0.1", "1e+300").  0, -1 (no memory) or
 * AH_JSON_ENUMBER for NaN and infinities, which JSON cannot write. */
int ah__json_put_float(ah_json_out *o, double v);

/* ---- subprocesses ------------------------------------------------------ */

/*
 * Child processes with pipes, for tools and MCP servers.  Every process is
 * started in a session of its own (setsid), so that a signal sent to it
 * reaches the whole job, grandchildren included.  A process record is
 * allocated by ah__proc_new and owned by the host: the owner holds it until
 * ah__proc_release, after which no callback runs and the record goes once
 * the process has been reaped and every handle has closed.  A released
 * process that still runs is terminated (SIGTERM to its group, SIGKILL
 * after its grace period).
 */
enum { AH_PROC_PIPE, AH_PROC_NULL, AH_PROC_INHERIT }; /* stdio wiring */

enum {
  AH_OUT_COLLECT, /* keep up to max bytes: then too_large, or truncate */
  AH_OUT_TAIL,    /* keep the last max bytes */
  AH_OUT_STREAM   /* the owner takes the data; reading pauses at max */
};

typedef struct ah_procs ah_procs;
typedef struct ah_proc ah_proc;
typedef struct ah_proc_write ah_proc_write;

/* One output of a process (stdout or stderr). */
typedef struct ah_proc_out {
  int wiring;          /* AH_PROC_*; set before spawn */
  int policy;          /* AH_OUT_*; set before spawn */
  size_t max;          /* see the policies; set before spawn */
  int truncate;        /* collect: drop the excess instead of too_large */
  ah_buf buf;          /* what was read and not taken */
  size_t total;        /* bytes read so far */
  int eof;             /* no more data will come (EOF, error, not piped) */
  int err;             /* a read error (negative), or 0 */
  int truncated;       /* collect or tail dropped bytes */
  int too_large;       /* collect went past max: reading stopped */
  /* private */
  uv_pipe_t pipe;
  int open, reading, want;
  ah_proc *p;
} ah_proc_out;

/* A change to a child's environment: name set to value, or removed when
 * value is NULL. */
typedef struct ah_proc_env {
  const char *name;    /* must pass ah__proc_env_name */
  const char *value;   /* NUL-terminated; NULL removes the variable */
} ah_proc_env;

/* What to run.  Everything here is read during ah__proc_spawn only. */
typedef struct ah_proc_opts {
  const char *file;    /* looked up in PATH unless it has a slash */
  char **args;         /* NULL-terminated; args[0] is the program name */
  /* The child's environment is the host's (or an empty one, with
   * clear_env) with the nenv changes in env applied: the variables set
   * come first, in their order, then the others kept. */
  const ah_proc_env *env;
  size_t nenv;
  int clear_env;
  const char *cwd;     /* NULL: the host's */
  int in;              /* AH_PROC_PIPE, AH_PROC_NULL or AH_PROC_INHERIT */
} ah_proc_opts;

/* Is name[0..len) usable as an environment variable's name: not empty,
 * without '=' and without NUL? */
int ah__proc_env_name(const char *name, size_t len);

struct ah_proc {
  ah_proc_out out, err;
  uint64_t grace_ms;   /* between SIGTERM and SIGKILL */
  /* Callbacks on the loop thread, never after release.  on_output runs
   * when o got data, reached its end or went past its cap; on_exit once
   * the process has exited (its outputs may still hold data). */
  void (*on_output)(ah_proc *p, ah_proc_out *o);
  void (*on_exit)(ah_proc *p);
  void *data;          /* for the owner */
  /* results */
  int pid;
  int exited;
  int64_t exit_status;
  int term_signal;
  const char *failed;  /* after a failed spawn: "command", "cwd" or "env"
                        * (a bad name in opts.env, or no memory for it) */
  /* private */
  uv_process_t proc;
  uv_pipe_t in;
  uv_timer_t kill_timer;
  ah_procs *ps;
  ah_proc *next, *prev;
  int handles, released, terminating, in_open, spawned, writes;
};

/* A pending write; done(w, status) runs once it is over, unless the owner
 * let go of it with ah__proc_write_forget.  The host frees it. */
struct ah_proc_write {
  uv_write_t req;
  ah_proc *p;
  void (*done)(ah_proc_write *w, int status);
  void *data;          /* for the owner */
  size_t len;
  char bytes[1];
};

int ah__procs_open(ah_procs **out, uv_loop_t *loop);
/* Kills (SIGKILL) and reaps every process still running, waiting for it
 * on this thread, and closes every handle; for the end of a run.  Records
 * not released yet stay valid (without callbacks) until released; the
 * context is freed at once, and the records once their handles have
 * closed. */
void ah__procs_close(ah_procs *ps);
/* Processes not yet reaped and freed, and those still running. */
void ah__procs_count(const ah_procs *ps, int *live, int *running);

ah_proc *ah__proc_new(ah_procs *ps);
/* Starts the process.  On failure returns a negative error (with
 * p->failed naming what was wrong) and no callback will run; the owner
 * still releases p. */
int ah__proc_spawn(ah_proc *p, const ah_proc_opts *o);
/* Queues a copy of data for the process's stdin.  UV_EPIPE once stdin is
 * closed. */
int ah__proc_write(ah_proc *p, const char *data, size_t len,
                   void (*done)(ah_proc_write *w, int status), void *wdata,
                   ah_proc_write **out);
void ah__proc_write_forget(ah_proc_write *w);
/* Closes stdin once the queued writes are out. */
void ah__proc_close_stdin(ah_proc *p);
/* Sends signum to the process's group; 0, or a negative error. */
int ah__proc_kill(ah_proc *p, int signum);
/* SIGTERM to the group now, SIGKILL after grace_ms if it still runs. */
void ah__proc_terminate(ah_proc *p);
/* Streams: reads past the pause mark until the next data arrives. */
void ah__proc_want(ah_proc_out *o);
/* Streams: drops the first n bytes of o's buffer (the owner took them). */
void ah__proc_consume(ah_proc_out *o, size_t n);
void ah__proc_release(ah_proc *p);

/* ---- PostgreSQL (pg.c, pgtype.c) ---------------------------------------- */

/*
 * One PostgreSQL connection, driven by libpq in non-blocking pipeline mode
 * on the loop thread: its socket is watched with a uv_poll_t, requests are
 * written as they come (the requests of one scheduler pass together, in one
 * TCP segment where the kernel allows) and their results are read in the
 * order they were sent.  Each request ends with its own Sync, so it is its
 * own implicit transaction outside an explicit one, and a failing request
 * fails alone.  Statements with parameters run as named prepared
 * statements, prepared and described once per connection (an LRU cache),
 * so that parameters are encoded by their real types (bytea in binary).
 *
 * A request is one malloc'd block made by ah__pg_req_new: its statements,
 * their parameters and the copied SQL and strings.  The owner fills it,
 * submits it, and gets done(r) on the loop thread once it ended (never when
 * submit failed, never after ah__pg_abandon); then it reads the results and
 * frees it with ah__pg_req_free.
 */
typedef struct ah_pg ah_pg;
typedef struct ah_pg_req ah_pg_req;

/* The type OIDs the decoder knows (pg_type.h). */
enum {
  AH_PG_BOOL = 16, AH_PG_BYTEA = 17, AH_PG_INT8 = 20, AH_PG_INT2 = 21,
  AH_PG_INT4 = 23, AH_PG_TEXT = 25, AH_PG_OID = 26, AH_PG_JSON = 114,
  AH_PG_FLOAT4 = 700, AH_PG_FLOAT8 = 701, AH_PG_NUMERIC = 1700,
  AH_PG_JSONB = 3802
};

/* Kinds of values: parameters (NULL, BOOL, INT, FLOAT, TEXT) and decoded
 * result values (all of them). */
enum {
  AH_PGV_NULL, AH_PGV_BOOL, AH_PGV_INT, AH_PGV_FLOAT, AH_PGV_TEXT,
  AH_PGV_JSON, AH_PGV_BYTES, AH_PGV_ARRAY
};

typedef struct ah_pg_val {
  int type;                  /* AH_PGV_* */
  uint32_t elem;             /* ARRAY: the element type's OID */
  size_t len;                /* TEXT, JSON, BYTES, ARRAY */
  union {
    int64_t i;               /* INT; BOOL is 0 or 1 */
    double d;                /* FLOAT */
    const char *s;           /* TEXT, JSON, BYTES, ARRAY: the bytes */
  } u;
} ah_pg_val;

typedef struct ah_pg_stmt {
  const char *sql;           /* into the request's block, NUL-terminated */
  size_t sql_len;
  int nparams;
  ah_pg_val *params;         /* into the request's block */
  void *res;                 /* its PGresult once done (owned by the request) */
  /* private */
  unsigned psid;             /* the prepared statement it ran as, or 0 */
  void *ps;                  /* while it is being sent: its cache entry */
} ah_pg_stmt;

enum {
  AH_PGR_PIPELINE,           /* statements sent in the pipeline, one Sync */
  AH_PGR_SIMPLE,             /* one SQL text of any number of statements,
                              * without parameters (simple protocol); runs
                              * alone on the connection */
  AH_PGR_COPY,               /* COPY ... FROM STDIN; runs alone */
  AH_PGR_DESCRIBE            /* the parameter types of stmts[0] */
};

struct ah_pg_req {
  int kind;                  /* AH_PGR_* */
  int nstmts;
  ah_pg_stmt *stmts;         /* in this block */
  int autocommit;            /* not inside an explicit transaction: the
                              * request may be sent again when a cancel
                              * meant for another request hit it */
  void (*done)(ah_pg_req *r);     /* on the loop thread, once */
  void (*on_copy)(ah_pg_req *r);  /* COPY: ready for (more) data */
  void *data, *owner;        /* for the owner */
  int tag, slot;             /* for the owner */
  /* results */
  const char *kind_err;      /* NULL on success, else an error kind: sql,
                              * connect, invalid_argument, resource */
  int retryable;             /* with kind_err: trying again may succeed */
  int sent;                  /* it reached the server (it may have run) */
  int failed;                /* index of the failing statement */
  void *err;                 /* the PGresult of the server's error, or NULL */
  char msg[320];             /* the error's text when err is NULL */
  uint32_t *ptypes;          /* DESCRIBE: the parameter types (malloc'd,
                              * freed with the request) */
  int nptypes;
  /* private */
  ah_pg_req *next;
  ah_pg *pg;
  struct ah_pg_req *waiter;  /* a prepare: the request waiting for it */
  int where;                 /* not queued, in the send queue, in flight */
  int step, got, abandoned, cancel_at_head, exposed, resends, internal;
  int copy;                  /* COPY: its phase */
  int copy_wait;             /* COPY: waits for room (on_copy follows) */
  unsigned psid;             /* a prepare: the statement it prepares */
  char *bytes;               /* free space for ah__pg_req_copy */
  size_t room;
};

/* A connection's state. */
enum { AH_PG_CONNECTING, AH_PG_READY, AH_PG_BROKEN, AH_PG_CLOSED };

typedef struct ah_pg_stats {
  uint64_t requests, failed, cancels, resends, prepares, notifies;
  int cached;                /* prepared statements kept now */
  int queued, inflight;      /* requests waiting to be sent, and sent */
} ah_pg_stats;

typedef struct ah_pg_opts {
  int prepare;               /* statements with parameters are prepared */
  int cache_max;             /* prepared statements kept (LRU) */
} ah_pg_opts;

/* Starts connecting with libpq's keywords and values (NULL-terminated
 * arrays, expand_dbname on: a "dbname" holding a URL or key=value string is
 * expanded; the PG* environment variables fill what is not given).  ready
 * runs on the loop thread once the connection is usable (state READY) or
 * has failed (state BROKEN; ah__pg_error says why); the owner then keeps
 * or closes it.  UV_EINVAL with *out set to a broken connection when
 * libpq refused the parameters at once (ah__pg_error, then close);
 * UV_ENOMEM. */
int ah__pg_connect(ah_pg **out, uv_loop_t *loop, const char *const *keys,
                   const char *const *vals, const ah_pg_opts *o,
                   void (*ready)(ah_pg *pg), void *data);
void *ah__pg_data(const ah_pg *pg);
int ah__pg_state(const ah_pg *pg);
/* Why the connection failed or was lost, without any password. */
const char *ah__pg_error(const ah_pg *pg);
/* "user@host:port/dbname", for messages (no password). */
const char *ah__pg_describe(const ah_pg *pg);
int ah__pg_backend_pid(const ah_pg *pg);
int ah__pg_server_version(const ah_pg *pg);
/* Callbacks on the loop thread: a notification (LISTEN), the loss of the
 * connection (after every request has got its error), and a server
 * message of level WARNING (text without the level). */
void ah__pg_on_notify(ah_pg *pg, void (*fn)(ah_pg *pg, const char *channel,
                                            const char *payload, int pid));
void ah__pg_on_lost(ah_pg *pg, void (*fn)(ah_pg *pg));
void ah__pg_on_warning(ah_pg *pg, void (*fn)(ah_pg *pg, const char *msg));
/* Replaces every occurrence of the connection's password in s (NUL
 * terminated, changed in place) with "***". */
void ah__pg_scrub(const ah_pg *pg, char *s);
/* Closes: no callback runs after this; requests not done are failed
 * through their done callbacks with a `connect` error when fail_pending is
 * set, else freed without a callback.  The memory goes once the socket's
 * handle has closed and no cancel request is still out. */
void ah__pg_close(ah_pg *pg, int fail_pending);

/* A request with nstmts statements, nparams parameters between them and
 * bytes of room for ah__pg_req_copy (the owner points each statement's
 * params into stmts[0].params in order). */
ah_pg_req *ah__pg_req_new(int kind, int nstmts, int nparams, size_t bytes);
/* Copies n bytes and a NUL into the request's room; returns the copy. */
const char *ah__pg_req_copy(ah_pg_req *r, const char *s, size_t n);
/* Queues r.  Returns 1 when the connection must be flushed with
 * ah__pg_flush (at the end of this scheduler pass, so that the requests of
 * one pass go out together), 0 when it already waits for that, or UV_EPIPE
 * when the connection is not ready (r is not taken). */
int ah__pg_submit(ah_pg *pg, ah_pg_req *r);
void ah__pg_flush(ah_pg *pg);
/* The owner lets go of a submitted request: no done call follows and the
 * host frees it.  With cancel, a request the server may be running gets a
 * cancel request (sent from the thread pool, as libpq's is blocking) once
 * it is the one running; a COPY is ended with an error. */
void ah__pg_abandon(ah_pg_req *r, int cancel);
void ah__pg_req_free(ah_pg_req *r);
/* Requests queued or in flight; the seconds the one running has run
 * (0 when none runs); the seconds the one running has been abandoned (its
 * cancel not effective yet), or 0. */
int ah__pg_pending(const ah_pg *pg);
double ah__pg_head_age(const ah_pg *pg);
double ah__pg_stuck(const ah_pg *pg);
/* The parameter types of sql when its prepared statement is cached: their
 * count, and *types (valid until the next call into the connection); -1
 * when not cached. */
int ah__pg_param_types(ah_pg *pg, const char *sql, size_t len,
                       const uint32_t **types);
void ah__pg_stats(const ah_pg *pg, ah_pg_stats *out);
/* COPY: after on_copy, hands len bytes of COPY text to libpq.  1: taken,
 * go on; 2: taken, wait for on_copy before more; 0: not taken, wait for
 * on_copy and put them again; < 0: the connection failed (done follows).
 * ah__pg_copy_end ends the data (errmsg != NULL aborts the COPY with it);
 * 1, or 0: wait for on_copy and call it again. */
int ah__pg_copy_put(ah_pg_req *r, const char *data, size_t len);
int ah__pg_copy_end(ah_pg_req *r, const char *errmsg);

/* A result (the PGresult of a statement). */
int ah__pg_res_nrows(const void *res);
int ah__pg_res_ncols(const void *res);
const char *ah__pg_res_fname(const void *res, int col);
uint32_t ah__pg_res_ftype(const void *res, int col);
/* Rows affected (INSERT, UPDATE, DELETE, MERGE, SELECT, COPY...), or -1. */
int64_t ah__pg_res_affected(const void *res);
/* The value at row, col, decoded by its column's type (ah__pg_decode). */
int ah__pg_res_value(const void *res, int row, int col, ah_pg_val *out,
                     ah_buf *scratch);
/* Fields of an error result (NULL when absent). */
enum {
  AH_PGE_SQLSTATE, AH_PGE_MESSAGE, AH_PGE_DETAIL, AH_PGE_HINT,
  AH_PGE_CONSTRAINT, AH_PGE_TABLE, AH_PGE_COLUMN, AH_PGE_SCHEMA,
  AH_PGE_SEVERITY, AH_PGE_POSITION, AH_PGE_WHERE, AH_PGE_DATATYPE
};
const char *ah__pg_res_error(const void *res, int field);
/* The error kind of a SQLSTATE ("connect" for the connection classes 08
 * and 57P01-57P03, else "sql"), and in *retryable whether trying again may
 * succeed (serialization failures, deadlocks, lost connections). */
const char *ah__pg_sqlstate_kind(const char *sqlstate, int *retryable);

/* ---- host names (pgaddr.c) ---- */

/* The host names among a connection's hosts (keywords, URL, PGHOST),
 * looked up on the thread pool, as libpq's own lookup blocks.  Returns 0
 * with *out NULL when nothing needs looking up (no host: the socket;
 * socket directories; address literals; hostaddr given); 0 with *out set
 * when lookups are out (done(r) follows on the loop thread, never after
 * ah__pg_resolve_cancel); 1 with *out set when they are over already (no
 * done call: look at the result now); UV_ENOMEM. */
typedef struct ah_pg_resolve ah_pg_resolve;
int ah__pg_resolve_start(ah_pg_resolve **out, uv_loop_t *loop, const char *const *keys,
                         const char *const *vals, void (*done)(ah_pg_resolve *r, void *data),
                         void *data);
/* NULL, or why no host could be found. */
const char *ah__pg_resolve_error(const ah_pg_resolve *r);
/* The keywords and values to connect with: the caller's, then host,
 * hostaddr (and port, per host) lists; valid until free. */
void ah__pg_resolve_params(ah_pg_resolve *r, const char *const **keys,
                           const char *const **vals);
/* The first host's name, for messages. */
const char *ah__pg_resolve_host(const ah_pg_resolve *r);
void ah__pg_resolve_free(ah_pg_resolve *r);
/* Gives the lookups up: no done call; the memory goes once they are back. */
void ah__pg_resolve_cancel(ah_pg_resolve *r);

/* ---- values (pgtype.c) ---- */

/* Decodes the text s[0..len) (NUL-terminated) of a value of type oid:
 * integers, floats, bool, bytea (into scratch), json/jsonb (JSON text),
 * arrays (ARRAY, walked with ah__pg_array_next); any other type is TEXT as
 * the server printed it.  0, or -1 when bytea is malformed; UV_ENOMEM. */
int ah__pg_decode(uint32_t oid, const char *s, size_t len, ah_pg_val *out,
                  ah_buf *scratch);
/* The element type of a known array type, or 0. */
uint32_t ah__pg_array_elem(uint32_t oid);
typedef struct ah_pg_array {
  const char *p, *end;
  uint32_t elem;
  int depth;
  int expect;                /* an element (or '{') comes next */
} ah_pg_array;
enum { AH_PGA_END, AH_PGA_OPEN, AH_PGA_CLOSE, AH_PGA_VALUE };
void ah__pg_array_init(ah_pg_array *a, const ah_pg_val *v);
/* The next token of the array: OPEN and CLOSE of a dimension, a VALUE
 * (decoded into *out, its bytes in scratch until the next call), END; -1
 * when the text is malformed, UV_ENOMEM. */
int ah__pg_array_next(ah_pg_array *a, ah_pg_val *out, ah_buf *scratch);
/* The shortest text that reads back as d ("NaN", "Infinity",
 * "-Infinity" for those); out must hold 32 bytes.  Returns its length. */
int ah__pg_format_float(double d, char *out);
/* Appends v as one field of COPY's text format (\N for NULL, with tab,
 * newline, carriage return and backslash escaped).  0 or UV_ENOMEM. */
int ah__pg_copy_field(ah_buf *b, const ah_pg_val *v);

/* ---- small shared helpers --------------------------------------------- */

/* Monotonic clock in seconds. */
double ah__now(void);

#endif
