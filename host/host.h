/*
 * Internal interface of the host layer: the event loop wrapper and the
 * timer heap.  Everything here knows libuv and plain C only; nothing here
 * includes Lua.  Names with the ah__ prefix are shared between the files of
 * the project and are not part of the public API (see agenthost.h).
 */
#ifndef AH_HOST_H
#define AH_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- timer heap ------------------------------------------------------ */

/*
 * A timer is a node embedded in the caller's own record: starting it
 * allocates nothing (the heap array grows geometrically and is reused).
 * All timers of one heap share a single uv_timer_t armed for the earliest
 * deadline, so a record carries 16 bytes instead of a whole uv handle.
 * Equal deadlines fire in the order they were started.
 */
typedef struct ah_timer {
  uint64_t key;   /* deadline in ms (high bits) and start sequence (low bits) */
  uint32_t pos;   /* index in the heap + 1; 0 when not armed */
} ah_timer;

typedef struct ah_timer_slot {
  uint64_t key;
  ah_timer *t;
} ah_timer_slot;

typedef struct ah_timers ah_timers;
typedef void (*ah_timer_fire_cb)(ah_timers *ts, ah_timer *t);

/* Owned by whoever embeds it; closed with ah__timers_close. */
struct ah_timers {
  uv_timer_t handle;       /* armed for heap[0]; freed only in close cb */
  ah_timer_slot *heap;     /* min-heap on key; owned, malloc'd */
  uint32_t n, cap;
  uint32_t seq;
  uint64_t armed_for;      /* deadline the uv timer is armed for, or 0 */
  ah_timer_fire_cb fire;
  void *data;              /* for the owner */
};

int ah__timers_init(ah_timers *ts, uv_loop_t *loop, ah_timer_fire_cb fire);
/* Arms t to fire after timeout_ms from now (the loop's current time).
 * Restarting an armed timer moves it.  Returns 0 or UV_ENOMEM. */
int ah__timers_start(ah_timers *ts, ah_timer *t, uint64_t timeout_ms);
void ah__timers_stop(ah_timers *ts, ah_timer *t);
/* Fires every due timer now; called by the uv timer and usable by hosts
 * that step the loop themselves. */
void ah__timers_run(ah_timers *ts);
/* Milliseconds until the earliest deadline, or -1 when none is armed. */
int64_t ah__timers_next(const ah_timers *ts);
/* Stops every timer (without firing) and closes the uv handle; close_cb
 * runs from the loop once the handle is closed, and only then may the
 * memory holding ts be freed. */
void ah__timers_close(ah_timers *ts, uv_close_cb close_cb);

/* ---- loop ------------------------------------------------------------ */

/*
 * The loop either owns its uv_loop_t or borrows one from an embedding host.
 * It runs the owner's drain function before every poll and after every poll
 * phase (uv_prepare and uv_check), which is where ready work is run; both
 * handles are unreferenced so they never keep the loop alive by themselves.
 */
typedef struct ah_loop ah_loop;
typedef void (*ah_loop_drain_cb)(ah_loop *lp);
typedef void (*ah_loop_signal_cb)(ah_loop *lp, int signum);

struct ah_loop {
  uv_loop_t *uv;
  uv_loop_t own;
  int owned;
  int closing;
  uv_prepare_t prepare;
  uv_check_t check;
  uv_idle_t idle;          /* active while work is pending: no blocking poll */
  uv_signal_t sigint, sigterm;
  int signals_on;
  ah_timers timers;        /* every timer of this loop */
  ah_loop_drain_cb drain;
  ah_loop_signal_cb on_signal;
  void *data;              /* for the owner */
  int open_handles;        /* handles of ours not yet closed */
};

/* borrow may be NULL to own a loop.  fire is the timer callback. */
int ah__loop_init(ah_loop *lp, uv_loop_t *borrow, ah_loop_drain_cb drain,
                  ah_timer_fire_cb fire);
/* Keeps the next poll from blocking, because work is waiting. */
void ah__loop_pending(ah_loop *lp, int pending);
/* Delivers SIGINT and SIGTERM to cb instead of the default action. */
int ah__loop_signals(ah_loop *lp, ah_loop_signal_cb cb);
void ah__loop_signals_off(ah_loop *lp);
/* Closes our handles, runs the loop until they are closed, and closes an
 * owned loop.  Returns 0, or UV_EBUSY when other handles are still open on
 * an owned loop (they are walked and closed first, so this is a report). */
int ah__loop_close(ah_loop *lp);

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

/* ---- HTTP ------------------------------------------------------------- */

typedef struct ah_buf {
  char *data;
  size_t len, cap;
} ah_buf;

struct curl_slist;
typedef struct ah_http ah_http;
typedef struct ah_http_req ah_http_req;

/* One transfer.  The owner fills the first block, calls ah__http_start, and
 * gets done(r) on the loop thread once it ended (never when start failed
 * and never after ah__http_req_free); then reads the results and frees. */
struct ah_http_req {
  const char *url;                 /* copied by curl at start */
  const char *method;              /* upper case; copied at start */
  struct curl_slist *header_list;  /* owned: freed by ah__http_req_free */
  const char *body_data;           /* copied at start; NULL for none */
  size_t body_len;
  long timeout_ms, connect_timeout_ms;
  size_t max_body;
  int follow;                      /* follow redirects (at most 5) */
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
  int code;                        /* CURLcode */
  const char *kind;                /* NULL on success, else an error kind */
  char errbuf[256];
  ah_buf headers, body;
  int too_large;
  int headers_done, paused;
  size_t total;                    /* body bytes received so far */
  /* private */
  ah_http *h;
  void *easy;
  void *lane;                      /* the multi handle's lane it runs on */
  int running;
};

int ah__http_open(ah_http **out, uv_loop_t *loop, long max_connects,
                  long max_host_connections);
/* Closes the multi handle and every watcher; in-flight transfers must have
 * been freed first.  The memory goes once the handles have closed. */
void ah__http_close(ah_http *h);
int ah__http_start(ah_http *h, ah_http_req *r);
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
/* Lets a paused streaming transfer go on (call after taking the body). */
void ah__http_resume(ah_http_req *r);
/* The URL without user:password@, for messages. */
void ah__http_safe_url(const char *url, char *out, size_t size);

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

/* ---- small shared helpers --------------------------------------------- */

/* Monotonic clock in seconds. */
double ah__now(void);

#endif
