/*
 * httpd: a local HTTP/1.1 server for testing HTTP clients.
 *
 * Usage: httpd [--port N] [--bind IPV4].  It listens on 127.0.0.1 (--bind
 * names another address, for specs that run it inside a network namespace
 * of their own), on an ephemeral
 * port unless --port names one, and prints exactly one line "port=N" on
 * stdout (flushed) once it listens.  It runs until SIGTERM or SIGINT, or
 * until its stdin reaches EOF when stdin is a pipe, a socket or a
 * foreground terminal (so a parent that dies takes it down; a file or
 * /dev/null on stdin is not watched); it then closes every handle and
 * exits 0.
 *
 * Routes (any method is accepted everywhere; HEAD gets the head GET would
 * get and no body; query values are percent-decoded, "+" being a space):
 *   /fixed?size=N        200, N bytes "abc..zabc..", or "hello world"
 *   /delay?ms=N&size=K   like /fixed after N ms (default 100)
 *   /status/CODE         CODE (200-599) with body "status CODE"; 429 and
 *                        503 add "retry-after: 1"; 204 and 304 have no body
 *   /chunked?n=N&size=K  chunked, N chunks of K bytes (default 3 of 10)
 *   /drip?n=N&ms=M       chunked, N one-byte chunks one every M ms
 *                        (default 5, 100)
 *   /sse?n=N&ms=M        text/event-stream, chunked, events i = 1..N
 *                        "id: i\nevent: tick\ndata: i\n\n" one every M ms
 *                        (default 3, 100); /sse?raw=S sends S in one chunk
 *   /reset?size=N        content-length 2N, N bytes, then a TCP reset
 *                        (default 10)
 *   /huge?size=N         N bytes (default 256 MiB), written 64 KiB at a time
 *   /echo                JSON {"method","path","query","target","headers",
 *                        "body"}; header names lowercased, repeated fields
 *                        joined with ", "
 *   /redirect?n=K&code=C&to=URL   C (default 302) to /redirect?n=K-1...
 *                        while K > 0 (default 1), then to URL, or 200
 *                        "redirected" when there is no URL
 *   /stats               JSON {"connections","requests","open"}
 *   /json                the request body, as application/json
 *   /fault/NAME          a response that breaks HTTP on purpose, written
 *                        raw, after which the connection is closed:
 *     status             a malformed status line
 *     header-huge?size=N one header line of N bytes (default 2 MiB)
 *     header-flood?n=N   N short header fields (default 100000)
 *     bad-chunk          chunked, with a chunk size that is not hex
 *     chunk-overflow     chunked, with a chunk size beyond 64 bits
 *     gzip-bomb?size=N   gzip content-encoding whose N bytes of zeros
 *                        (default 16 MiB) compress to about N / 160
 *                        (/reset and /drip are the other faults: a reset
 *                        in the middle of a body, and a slow body)
 *   anything else        404 "not found"
 *
 * A connection that opens with a TLS handshake record gets 400 in plain
 * text and is closed, as from any plain HTTP server.
 *
 * Requests are parsed by hand from a per-connection buffer, so they may
 * arrive split at any byte.  Bodies come with Content-Length or chunked
 * transfer coding; the head may be 64 KiB and the body 64 MiB at most (431
 * and 413 beyond, after which the connection is closed).  Connections are
 * kept alive unless the request asks otherwise (HTTP/1.0 must ask for
 * keep-alive); pipelined requests are answered in order.  HTTP/1.0 clients
 * get streamed bodies without chunked coding, delimited by closing the
 * connection.  Generated bodies are produced as they are written, the next
 * piece only once the previous one was written, so memory stays small
 * whatever their size.  A client that closes or half-closes its side is
 * taken to have gone away: its connection is closed at once, even in the
 * middle of a response.  Relies on libuv only.
 */
#include <uv.h>

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define HEAD_MAX (64u * 1024)         /* request line and fields, blank line included */
#define BODY_MAX ((uint64_t)64 << 20) /* a decoded request body */
#define CHUNK_LINE_MAX 4096u          /* a chunk-size line with its extensions */
#define HEADERS_MAX 1024u             /* header fields in one request */
#define PIECE (64u * 1024)            /* the largest write of a generated body */
#define READ_MIN (16u * 1024)         /* room offered to every read */
#define IN_MAX (256u * 1024)          /* unparsed input held while answering */
#define QUEUED_MAX 8                  /* timed writes in flight before ticks wait */
#define LINGER_MS 2000                /* wait for the peer's EOF after our FIN */
#define BACKLOG 1024
#define NUM_MAX 1000000000000ull      /* the largest numeric query value */

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

/* Growable byte strings, always NUL-terminated once non-empty. */
typedef struct {
  char *p;
  size_t len, cap;
} sbuf;

typedef struct {
  char *name; /* lowercased */
  char *value;
} header;

typedef struct {
  char *key;
  char *val;
  size_t len; /* of val, which may hold NULs */
} param;

/* Where the parser of a connection stands. */
enum {
  ST_HEAD,       /* waiting for a complete head */
  ST_BODY,       /* reading a Content-Length body */
  ST_CHUNK_SIZE, /* waiting for a chunk-size line */
  ST_CHUNK_DATA, /* reading chunk data */
  ST_CHUNK_END,  /* waiting for the CRLF after chunk data */
  ST_TRAILER,    /* reading trailer fields up to the blank line */
  ST_LINGER      /* input is discarded: the connection is being closed */
};

/* What refills the connection when a generated body's write completes. */
enum { GEN_NONE, GEN_PATTERN, GEN_CHUNKS };

/* What the timer produces in timed streams. */
enum { TICK_NONE, TICK_DRIP, TICK_SSE };

typedef struct conn conn;

/* One request and its response; all zero between requests. */
typedef struct {
  char *head; /* a copy of the head, split in place */
  const char *method, *target, *query;
  size_t path_len; /* the path is target[0, path_len) */
  int minor;       /* HTTP/1.minor */
  header *hdrs;
  size_t nhdrs, hcap;
  char *qbuf; /* the decoded query, which params point into */
  param *params;
  size_t nparams, pcap;
  int keep_alive, head_only, chunked_in, expect;
  uint64_t want;  /* body bytes still expected (whole body or chunk) */
  size_t trailer; /* trailer bytes read so far */
  sbuf body;

  int responding;  /* the request is complete and being answered */
  int body_done;   /* the last write of the response is queued */
  int chunked_out; /* streamed bodies use chunked coding */
  int reset_at_end;
  int gen;
  uint64_t left, off; /* pattern bytes left (in this chunk), phase */
  uint64_t chunk_size, chunks_left;
  int ticker, stalled;
  uint64_t ticks, tick, ms;
  int delay_sized;
  uint64_t delay_size;
  void *ext; /* the including file's state (see HTTPD_EXT) */
} request;

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shut;
  conn *prev, *next;
  int handles; /* open handles among tcp and timer; freed at 0 */
  int closing;
  int paused; /* reading stopped while answering */
  int st;
  int writes; /* writes in flight */
  char *in;   /* input; in[in_off, in_len) is not parsed yet */
  size_t in_off, in_len, in_cap;
  size_t scan, line; /* ST_HEAD: bytes scanned, start of the current line */
  void (*on_timer)(conn *c);
  request r;
};

/* A write and the buffer it owns (freed once written). */
typedef struct {
  uv_write_t req;
  conn *c;
  char *own;
} wreq;

static struct {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_signal_t sigterm, sigint;
  union {
    uv_pipe_t pipe;
    uv_tty_t tty;
  } in;
  int in_watched;
  int stopping;
  conn *conns;
  unsigned long long connections, requests, open;
} S;

/* The generated body: byte i of a body is pattern[i % 26]; a piece of up to
 * PIECE bytes starting at offset o is pattern + o % 26. */
static char pattern[PIECE + 26];

static void process(conn *c);
static void pump(conn *c, sbuf *head);
static void tick(conn *c);

/* A file that defines HTTPD_EXT and then includes this one (as
 * tests/support/mockllm.c does) adds routes and options by defining these:
 * ext_route answers the request in c->r and returns 1, or returns 0 to leave
 * it to the routes here; ext_clear frees c->r.ext, and runs whenever a
 * request ends, answered or not; ext_option takes the option at argv[*i]
 * (advancing *i past a value) and returns 1, 0 when the option is not one
 * of its own, or -1 when its value is bad.  It also defines HTTPD_USAGE. */
#ifdef HTTPD_EXT
static int ext_route(conn *c);
static void ext_clear(conn *c);
static int ext_option(int argc, char **argv, int *i);
#else
#define ext_route(c) 0
#define ext_clear(c) ((void)0)
#define ext_option(argc, argv, i) 0
#define HTTPD_USAGE "usage: httpd [--port N] [--bind IPV4]\n"
#endif

/* Memory ---------------------------------------------------------------- */

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fputs("httpd: out of memory\n", stderr);
    abort();
  }
  return q;
}

static void sb_reserve(sbuf *b, size_t extra) {
  size_t cap;
  if (b->cap - b->len > extra) return;
  cap = b->cap ? b->cap : 256;
  while (cap - b->len <= extra) cap *= 2;
  b->p = xrealloc(b->p, cap);
  b->cap = cap;
}

static void sb_put(sbuf *b, const void *p, size_t n) {
  sb_reserve(b, n);
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...) {
  va_list ap, aq;
  int n;
  va_start(ap, fmt);
  va_copy(aq, ap);
  n = vsnprintf(NULL, 0, fmt, aq);
  va_end(aq);
  if (n > 0) {
    sb_reserve(b, (size_t)n);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
  }
  va_end(ap);
}

static void sb_free(sbuf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* The length of the valid UTF-8 sequence at s (n bytes available), or 0
 * when s does not start one (overlong forms and surrogates included). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned long cp, min;
  size_t k, i;
  if (s[0] >= 0xc2 && s[0] <= 0xdf) {
    k = 2, cp = s[0] & 0x1fu, min = 0x80;
  } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
    k = 3, cp = s[0] & 0x0fu, min = 0x800;
  } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
    k = 4, cp = s[0] & 0x07u, min = 0x10000;
  } else {
    return 0;
  }
  if (n < k) return 0;
  for (i = 1; i < k; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return k;
}

/* Appends s as a JSON string.  Valid UTF-8 passes through; every byte that
 * is not part of valid UTF-8 becomes the code point of the same value
 * (\u0080..\u00ff), so any input gives valid JSON. */
static void sb_json(sbuf *b, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, run;
  sb_reserve(b, n + 2);
  sb_put(b, "\"", 1);
  while (i < n) {
    for (run = i; run < n && u[run] >= 0x20 && u[run] < 0x80 && u[run] != '"' &&
                  u[run] != '\\';
         run++) {
    }
    if (run > i) {
      sb_put(b, s + i, run - i);
      i = run;
      continue;
    }
    switch (u[i]) {
    case '"': sb_put(b, "\\\"", 2); break;
    case '\\': sb_put(b, "\\\\", 2); break;
    case '\n': sb_put(b, "\\n", 2); break;
    case '\r': sb_put(b, "\\r", 2); break;
    case '\t': sb_put(b, "\\t", 2); break;
    case '\b': sb_put(b, "\\b", 2); break;
    case '\f': sb_put(b, "\\f", 2); break;
    default:
      if (u[i] >= 0x80) {
        size_t k = utf8_len(u + i, n - i);
        if (k) {
          sb_put(b, s + i, k);
          i += k;
          continue;
        }
      }
      sb_printf(b, "\\u%04x", (unsigned)u[i]);
    }
    i++;
  }
  sb_put(b, "\"", 1);
}

/* Appends s percent-encoded, only unreserved characters left as they are. */
static void sb_pct(sbuf *b, const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
        ch == '-' || ch == '.' || ch == '_' || ch == '~')
      sb_put(b, s + i, 1);
    else
      sb_printf(b, "%%%02X", (unsigned)ch);
  }
}

/* Text ------------------------------------------------------------------ */

static int lower(int ch) { return ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch; }

/* Whether a and b (n bytes each) are equal ignoring ASCII case. */
static int ieqn(const char *a, const char *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return 0;
  return 1;
}

static int ieq(const char *a, const char *b) {
  size_t n = strlen(a);
  return n == strlen(b) && ieqn(a, b, n);
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int is_tchar(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Whether the comma-separated list v holds the token tok (any case). */
static int has_token(const char *v, const char *tok) {
  size_t n = strlen(tok);
  while (*v) {
    const char *e;
    size_t len;
    while (*v == ' ' || *v == '\t' || *v == ',') v++;
    for (e = v; *e && *e != ','; e++) {
    }
    len = (size_t)(e - v);
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
    if (len == n && ieqn(v, tok, n)) return 1;
    v = e;
  }
  return 0;
}

/* Parses n decimal digits at s into *out; returns 0, or -1 when s is not a
 * number or exceeds max. */
static int parse_num(const char *s, size_t n, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  size_t i;
  if (n == 0) return -1;
  for (i = 0; i < n; i++) {
    unsigned d = (unsigned)(s[i] - '0');
    if (s[i] < '0' || s[i] > '9' || v > (max - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* Percent-decodes s[0, n) in place ("+" is a space; a "%" not followed by
 * two hex digits stays); returns the decoded length. */
static size_t pct_decode(char *s, size_t n) {
  size_t i, o = 0;
  for (i = 0; i < n; i++) {
    if (s[i] == '+') {
      s[o++] = ' ';
    } else if (s[i] == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
               hexval((unsigned char)s[i + 2]) >= 0) {
      s[o++] = (char)(hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]));
      i += 2;
    } else {
      s[o++] = s[i];
    }
  }
  return o;
}

/* Requests -------------------------------------------------------------- */

/* The first value of query parameter key (its length in *len), or NULL. */
static const char *param_get(conn *c, const char *key, size_t *len) {
  size_t i;
  for (i = 0; i < c->r.nparams; i++) {
    if (strcmp(c->r.params[i].key, key) == 0) {
      if (len) *len = c->r.params[i].len;
      return c->r.params[i].val;
    }
  }
  return NULL;
}

/* Reads numeric parameter key into *out (def when absent); returns 0, or -1
 * when it is present but not a number of at most max. */
static int num_param(conn *c, const char *key, uint64_t def, uint64_t max, uint64_t *out) {
  size_t len;
  const char *v = param_get(c, key, &len);
  if (!v) {
    *out = def;
    return 0;
  }
  return parse_num(v, len, max, out);
}

/* Splits the query into decoded key/value pairs. */
static void parse_params(conn *c) {
  request *r = &c->r;
  size_t len;
  char *s, *end;
  if (!r->query) return;
  len = strlen(r->query);
  r->qbuf = xrealloc(NULL, len + 1);
  memcpy(r->qbuf, r->query, len + 1);
  s = r->qbuf;
  end = s + len;
  while (s < end) {
    char *e = memchr(s, '&', (size_t)(end - s));
    if (!e) e = end;
    if (e > s) {
      char *eq = memchr(s, '=', (size_t)(e - s));
      char *k = s, *v = eq ? eq + 1 : e;
      size_t klen = pct_decode(k, (size_t)((eq ? eq : e) - s));
      size_t vlen = pct_decode(v, (size_t)(e - v));
      /* Both terminators land on or before e, which is "&" or the end. */
      k[klen] = 0;
      v[vlen] = 0;
      if (r->nparams == r->pcap) {
        r->pcap = r->pcap ? r->pcap * 2 : 8;
        r->params = xrealloc(r->params, r->pcap * sizeof *r->params);
      }
      r->params[r->nparams].key = k;
      r->params[r->nparams].val = v;
      r->params[r->nparams].len = vlen;
      r->nparams++;
    }
    s = e + 1;
  }
}

/* Frees what the current request holds and clears it. */
static void request_clear(conn *c) {
  ext_clear(c);
  free(c->r.head);
  free(c->r.hdrs);
  free(c->r.qbuf);
  free(c->r.params);
  sb_free(&c->r.body);
  memset(&c->r, 0, sizeof c->r);
}

/* Connections ----------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h) {
  conn *c = h->data;
  if (--c->handles > 0) return;
  request_clear(c);
  free(c->in);
  free(c);
}

/* Closes both handles of c (the TCP one with a reset when reset is set);
 * c is freed once both have closed.  Pending writes and the shutdown are
 * cancelled, and their callbacks run before c is freed. */
static void conn_close(conn *c, int reset) {
  if (c->closing) return;
  c->closing = 1;
  if (c->prev) c->prev->next = c->next;
  else S.conns = c->next;
  if (c->next) c->next->prev = c->prev;
  S.open--;
  if (!reset || uv_tcp_close_reset(&c->tcp, on_conn_closed) != 0)
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_timer(uv_timer_t *t) {
  conn *c = t->data;
  c->on_timer(c);
}

static void linger_expired(conn *c) { conn_close(c, 0); }

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  if (status < 0 && !c->closing) conn_close(c, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  (void)suggested;
  if (c->st == ST_LINGER) {
    c->in_off = c->in_len = 0;
  } else if (c->in_off > 0) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  if (c->in_cap - c->in_len < READ_MIN) {
    size_t cap = c->in_cap ? c->in_cap * 2 : READ_MIN;
    while (cap - c->in_len < READ_MIN) cap *= 2;
    c->in = xrealloc(c->in, cap);
    c->in_cap = cap;
  }
  *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  conn *c = s->data;
  (void)buf;
  if (n < 0) {
    /* EOF or an error: the client has gone away. */
    conn_close(c, 0);
    return;
  }
  if (c->st == ST_LINGER) {
    c->in_off = c->in_len = 0;
    return;
  }
  c->in_len += (size_t)n;
  if (!c->r.responding) {
    process(c);
  } else if (c->in_len - c->in_off > IN_MAX && !c->paused) {
    uv_read_stop(s);
    c->paused = 1;
  }
}

/* Resumes reading when it was stopped; returns -1 after closing c when it
 * cannot. */
static int resume(conn *c) {
  if (!c->paused) return 0;
  c->paused = 0;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    conn_close(c, 0);
    return -1;
  }
  return 0;
}

/* Ends the connection gracefully: our FIN goes out after the response, and
 * input is discarded until the peer's EOF or LINGER_MS, so that a peer
 * still sending never gets a reset in place of the response. */
static void linger_close(conn *c) {
  c->st = ST_LINGER;
  c->in_off = c->in_len = 0;
  if (resume(c) < 0) return;
  c->shut.data = c;
  if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c, 0);
    return;
  }
  c->on_timer = linger_expired;
  uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

/* Called once the whole response has been written: closes or resets the
 * connection, or gets ready for (and parses) the next request. */
static void finish_response(conn *c) {
  int keep = c->r.keep_alive, reset = c->r.reset_at_end;
  request_clear(c);
  if (reset) {
    conn_close(c, 1);
  } else if (!keep) {
    linger_close(c);
  } else {
    c->st = ST_HEAD;
    c->scan = c->line = 0;
    if (resume(c) == 0) process(c);
  }
}

static void on_written(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  conn *c = w->c;
  free(w->own);
  free(w);
  c->writes--;
  if (c->closing) return;
  if (status < 0) {
    conn_close(c, 0);
  } else if (c->r.body_done) {
    if (c->writes == 0) finish_response(c);
  } else if (c->r.gen != GEN_NONE) {
    pump(c, NULL);
  } else if (c->r.stalled && c->writes < QUEUED_MAX) {
    c->r.stalled = 0;
    tick(c);
  }
}

/* Queues one write of own[0, ownlen) (taken over: freed once written), then
 * ext[0, extlen) (which must outlive the write), then the string tail; any
 * may be empty but not all.  Returns 0, or -1 after closing c. */
static int emit(conn *c, char *own, size_t ownlen, const char *ext, size_t extlen,
                const char *tail) {
  uv_buf_t bufs[3];
  unsigned n = 0;
  wreq *w;
  if (ownlen) bufs[n++] = uv_buf_init(own, (unsigned)ownlen);
  if (extlen) bufs[n++] = uv_buf_init((char *)ext, (unsigned)extlen);
  if (tail && *tail) bufs[n++] = uv_buf_init((char *)tail, (unsigned)strlen(tail));
  w = xrealloc(NULL, sizeof *w);
  w->c = c;
  w->own = own;
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_written) != 0) {
    free(own);
    free(w);
    conn_close(c, 0);
    return -1;
  }
  c->writes++;
  return 0;
}

/* Responses ------------------------------------------------------------- */

static const char *reason(int code) {
  switch (code) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 413: return "Content Too Large";
  case 418: return "I'm a teapot";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  case 529: return "Site Overloaded";
  default: return "Status";
  }
}

static void head_start(sbuf *b, int code) {
  sb_printf(b, "HTTP/1.1 %d %s\r\n", code, reason(code));
}

static void head_end(conn *c, sbuf *b) {
  sb_printf(b, "connection: %s\r\n\r\n", c->r.keep_alive ? "keep-alive" : "close");
}

/* Answers with a body held in memory.  extra holds further header lines
 * ("name: value\r\n" each) or is NULL.  204 and 304 get no body and no
 * content-length; HEAD gets the head only. */
static void respond(conn *c, int code, const char *ctype, const char *body, size_t len,
                    const char *extra) {
  sbuf b = {0};
  int bodiless = code == 204 || code == 304;
  sb_reserve(&b, 200 + (c->r.head_only || bodiless ? 0 : len));
  head_start(&b, code);
  if (!bodiless) {
    if (ctype) sb_printf(&b, "content-type: %s\r\n", ctype);
    sb_printf(&b, "content-length: %zu\r\n", len);
  }
  if (extra) sb_puts(&b, extra);
  head_end(c, &b);
  if (!bodiless && !c->r.head_only) sb_put(&b, body, len);
  c->r.body_done = 1;
  emit(c, b.p, b.len, NULL, 0, NULL);
}

static void respond_text(conn *c, int code, const char *text) {
  respond(c, code, "text/plain", text, strlen(text), NULL);
}

/* Answers the current request with an error and closes the connection
 * afterwards; input is discarded from now on.  Returns -1. */
static int fail(conn *c, int code, const char *text) {
  c->r.keep_alive = 0;
  c->r.responding = 1;
  c->st = ST_LINGER;
  respond_text(c, code, text);
  return -1;
}

/* Writes the next piece of a generated body (GEN_PATTERN or GEN_CHUNKS),
 * after head when that is given (taken over); the write's completion asks
 * for the piece after it. */
static void pump(conn *c, sbuf *head) {
  request *r = &c->r;
  sbuf pre = {0};
  const char *tail = NULL, *p;
  size_t n;
  if (head) pre = *head;
  if (r->head_only) {
    r->gen = GEN_NONE;
    r->body_done = 1;
    emit(c, pre.p, pre.len, NULL, 0, NULL);
    return;
  }
  if (r->gen == GEN_CHUNKS && r->left == 0) {
    if (r->chunks_left == 0) {
      sb_puts(&pre, "0\r\n\r\n");
      r->gen = GEN_NONE;
      r->body_done = 1;
      emit(c, pre.p, pre.len, NULL, 0, NULL);
      return;
    }
    r->chunks_left--;
    r->left = r->chunk_size;
    sb_printf(&pre, "%llx\r\n", (unsigned long long)r->chunk_size);
  }
  n = r->left < PIECE ? (size_t)r->left : PIECE;
  p = pattern + r->off % 26;
  r->left -= n;
  r->off += n;
  if (r->left == 0) {
    if (r->gen == GEN_CHUNKS && r->chunks_left > 0) {
      tail = "\r\n";
    } else {
      tail = r->gen == GEN_CHUNKS ? "\r\n0\r\n\r\n" : NULL;
      r->gen = GEN_NONE;
      r->body_done = 1;
    }
  }
  emit(c, pre.p, pre.len, p, n, tail);
}

/* Answers 200 with size pattern bytes and a content-length of size (twice
 * that, and a reset after the bytes, when reset is set). */
static void send_pattern(conn *c, uint64_t size, int reset) {
  sbuf b = {0};
  head_start(&b, 200);
  sb_printf(&b, "content-type: text/plain\r\ncontent-length: %llu\r\n",
            (unsigned long long)(reset ? size * 2 : size));
  head_end(c, &b);
  c->r.gen = GEN_PATTERN;
  c->r.left = size;
  c->r.reset_at_end = reset && !c->r.head_only;
  pump(c, &b);
}

/* Starts a streamed response: chunked for HTTP/1.1, delimited by closing
 * the connection for HTTP/1.0. */
static void stream_head(conn *c, sbuf *b, const char *ctype) {
  head_start(b, 200);
  sb_printf(b, "content-type: %s\r\n", ctype);
  if (c->r.chunked_out) sb_puts(b, "transfer-encoding: chunked\r\n");
  else c->r.keep_alive = 0;
  if (c->r.ticker == TICK_SSE) sb_puts(b, "cache-control: no-cache\r\n");
  head_end(c, b);
}

/* Appends n bytes of body at p to b, framed as a chunk when chunked. */
static void frame(conn *c, sbuf *b, const char *p, size_t n) {
  if (n == 0) return;
  if (c->r.chunked_out) sb_printf(b, "%zx\r\n", n);
  sb_put(b, p, n);
  if (c->r.chunked_out) sb_put(b, "\r\n", 2);
}

/* Queues b (taken over) with the end of a streamed body appended. */
static void send_last(conn *c, sbuf *b) {
  if (c->r.chunked_out && !c->r.head_only) sb_puts(b, "0\r\n\r\n");
  c->r.body_done = 1;
  if (b->len) emit(c, b->p, b->len, NULL, 0, NULL);
  else if (c->writes == 0) finish_response(c);
  else sb_free(b);
}

/* Produces the next piece of a timed stream (TICK_DRIP, TICK_SSE), unless
 * too many writes wait, in which case the next completion calls again. */
static void tick(conn *c) {
  request *r = &c->r;
  sbuf b = {0};
  if (c->writes >= QUEUED_MAX) {
    r->stalled = 1;
    return;
  }
  r->tick++;
  if (r->ticker == TICK_DRIP) {
    frame(c, &b, pattern + (r->tick - 1) % 26, 1);
  } else {
    char ev[96];
    int n = snprintf(ev, sizeof ev, "id: %llu\nevent: tick\ndata: %llu\n\n",
                     (unsigned long long)r->tick, (unsigned long long)r->tick);
    frame(c, &b, ev, (size_t)n);
  }
  if (r->tick >= r->ticks) {
    send_last(c, &b);
  } else if (emit(c, b.p, b.len, NULL, 0, NULL) == 0) {
    uv_timer_start(&c->timer, on_timer, r->ms, 0);
  }
}

/* Routes ---------------------------------------------------------------- */

static int path_is(conn *c, const char *path) {
  size_t n = strlen(path);
  return c->r.path_len == n && memcmp(c->r.target, path, n) == 0;
}

static void route_fixed(conn *c, int sized, uint64_t size) {
  if (sized) send_pattern(c, size, 0);
  else respond_text(c, 200, "hello world");
}

static void delay_fire(conn *c) { route_fixed(c, c->r.delay_sized, c->r.delay_size); }

static void route_delay(conn *c) {
  uint64_t ms;
  if (num_param(c, "ms", 100, 86400000, &ms) < 0 ||
      num_param(c, "size", 0, NUM_MAX, &c->r.delay_size) < 0) {
    respond_text(c, 400, "bad ms or size");
    return;
  }
  c->r.delay_sized = param_get(c, "size", NULL) != NULL;
  c->on_timer = delay_fire;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void route_status(conn *c) {
  const char *digits = c->r.target + 8;
  size_t n = c->r.path_len - 8;
  uint64_t code;
  char body[32];
  if (parse_num(digits, n, 999, &code) < 0 || n != 3 || code < 200 || code > 599) {
    respond_text(c, 400, "bad status code");
    return;
  }
  snprintf(body, sizeof body, "status %d", (int)code);
  respond(c, (int)code, "text/plain", body, strlen(body),
          code == 429 || code == 503 ? "retry-after: 1\r\n" : NULL);
}

static void route_chunked(conn *c) {
  uint64_t n, size;
  sbuf b = {0};
  if (num_param(c, "n", 3, 1000000000, &n) < 0 || num_param(c, "size", 10, 1u << 30, &size) < 0) {
    respond_text(c, 400, "bad n or size");
    return;
  }
  stream_head(c, &b, "text/plain");
  if (size == 0) n = 0;
  if (c->r.chunked_out) {
    c->r.gen = GEN_CHUNKS;
    c->r.chunk_size = size;
    c->r.chunks_left = n;
  } else {
    c->r.gen = GEN_PATTERN;
    c->r.left = n * size;
  }
  pump(c, &b);
}

/* Starts a timed stream of n ticks, one every ms. */
static void start_ticks(conn *c, int ticker, uint64_t n, uint64_t ms, const char *ctype) {
  sbuf b = {0};
  c->r.ticker = ticker;
  c->r.ticks = n;
  c->r.ms = ms;
  stream_head(c, &b, ctype);
  if (c->r.head_only || n == 0) {
    send_last(c, &b);
    return;
  }
  if (emit(c, b.p, b.len, NULL, 0, NULL) < 0) return;
  c->on_timer = tick;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void route_drip(conn *c) {
  uint64_t n, ms;
  if (num_param(c, "n", 5, 1000000000, &n) < 0 || num_param(c, "ms", 100, 86400000, &ms) < 0) {
    respond_text(c, 400, "bad n or ms");
    return;
  }
  start_ticks(c, TICK_DRIP, n, ms, "text/plain");
}

static void route_sse(conn *c) {
  uint64_t n, ms;
  size_t len;
  const char *raw = param_get(c, "raw", &len);
  if (raw) {
    sbuf b = {0};
    c->r.ticker = TICK_SSE;
    stream_head(c, &b, "text/event-stream");
    if (!c->r.head_only) frame(c, &b, raw, len);
    send_last(c, &b);
    return;
  }
  if (num_param(c, "n", 3, 1000000000, &n) < 0 || num_param(c, "ms", 100, 86400000, &ms) < 0) {
    respond_text(c, 400, "bad n or ms");
    return;
  }
  start_ticks(c, TICK_SSE, n, ms, "text/event-stream");
}

/* Appends the request as the JSON that /echo answers. */
static void echo_json(conn *c, sbuf *b0) {
  request *r = &c->r;
  sbuf b = *b0;
  size_t i, j;
  int first = 1;
  sb_reserve(&b, r->body.len + 512);
  sb_puts(&b, "{\"method\":");
  sb_json(&b, r->method, strlen(r->method));
  sb_puts(&b, ",\"path\":");
  sb_json(&b, r->target, r->path_len);
  sb_puts(&b, ",\"query\":");
  sb_json(&b, r->query ? r->query : "", r->query ? strlen(r->query) : 0);
  sb_puts(&b, ",\"target\":");
  sb_json(&b, r->target, strlen(r->target));
  sb_puts(&b, ",\"headers\":{");
  for (i = 0; i < r->nhdrs; i++) {
    int seen = 0;
    for (j = 0; j < i && !seen; j++) seen = strcmp(r->hdrs[j].name, r->hdrs[i].name) == 0;
    if (seen) continue;
    if (!first) sb_puts(&b, ",");
    first = 0;
    sb_json(&b, r->hdrs[i].name, strlen(r->hdrs[i].name));
    sb_puts(&b, ":");
    if (i + 1 == r->nhdrs) {
      sb_json(&b, r->hdrs[i].value, strlen(r->hdrs[i].value));
    } else {
      /* Repeated fields are joined as one value, in order. */
      sbuf v = {0};
      sb_puts(&v, r->hdrs[i].value);
      for (j = i + 1; j < r->nhdrs; j++) {
        if (strcmp(r->hdrs[j].name, r->hdrs[i].name) != 0) continue;
        sb_puts(&v, ", ");
        sb_puts(&v, r->hdrs[j].value);
      }
      sb_json(&b, v.p, v.len);
      sb_free(&v);
    }
  }
  sb_puts(&b, "},\"body\":");
  sb_json(&b, r->body.p ? r->body.p : "", r->body.len);
  sb_puts(&b, "}");
  *b0 = b;
}

static void route_echo(conn *c) {
  sbuf b = {0};
  echo_json(c, &b);
  respond(c, 200, "application/json", b.p, b.len, NULL);
  sb_free(&b);
}

/* Whether s[0, n) can be a header value: not empty, no control bytes. */
static int value_safe(const char *s, size_t n) {
  size_t i;
  if (n == 0) return 0;
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  return 1;
}

static void route_redirect(conn *c) {
  uint64_t n, code;
  size_t tolen = 0;
  const char *to = param_get(c, "to", &tolen);
  sbuf extra = {0};
  if (to && tolen == 0) to = NULL;
  if (num_param(c, "n", 1, 1000000, &n) < 0 || num_param(c, "code", 302, 999, &code) < 0 ||
      (code != 301 && code != 302 && code != 303 && code != 307 && code != 308) ||
      (to && !value_safe(to, tolen))) {
    respond_text(c, 400, "bad n, code or to");
    return;
  }
  if (n == 0 && !to) {
    respond_text(c, 200, "redirected");
    return;
  }
  sb_puts(&extra, "location: ");
  if (n > 0) {
    sb_printf(&extra, "/redirect?n=%llu&code=%d", (unsigned long long)(n - 1), (int)code);
    if (to) {
      sb_puts(&extra, "&to=");
      sb_pct(&extra, to, tolen);
    }
  } else {
    sb_put(&extra, to, tolen);
  }
  sb_puts(&extra, "\r\n");
  respond(c, (int)code, "text/plain", "redirect", 8, extra.p);
  sb_free(&extra);
}

static void route_stats(conn *c) {
  char body[160];
  snprintf(body, sizeof body, "{\"connections\":%llu,\"requests\":%llu,\"open\":%llu}",
           S.connections, S.requests, S.open);
  respond(c, 200, "application/json", body, strlen(body), NULL);
}

/* Faults ---------------------------------------------------------------- */

/* Queues b (taken over) as the whole response; the connection closes
 * after it. */
static void send_raw(conn *c, sbuf *b) {
  c->r.keep_alive = 0;
  c->r.body_done = 1;
  emit(c, b->p, b->len, NULL, 0, NULL);
}

/* Appends bits to a deflate stream, least significant bit first. */
typedef struct {
  sbuf *b;
  uint32_t acc;
  int n;
} bitw;

static void bits_put(bitw *w, uint32_t v, int n) {
  w->acc |= v << w->n;
  w->n += n;
  while (w->n >= 8) {
    char ch = (char)(w->acc & 0xff);
    sb_put(w->b, &ch, 1);
    w->acc >>= 8;
    w->n -= 8;
  }
}

/* Huffman codes go in most significant bit first. */
static void bits_code(bitw *w, uint32_t code, int n) {
  uint32_t r = 0;
  int i;
  for (i = 0; i < n; i++) r |= ((code >> i) & 1u) << (n - 1 - i);
  bits_put(w, r, n);
}

/* A gzip member of one fixed-Huffman deflate block: a literal zero, then
 * copies of 258 bytes at distance 1 (13 bits each), so about size bytes
 * of zeros in size / 160 bytes.  *decoded gets the exact decoded size. */
static void gzip_zeros(sbuf *b, uint64_t size, uint64_t *decoded) {
  static const unsigned char head[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
  uint64_t k = size > 1 ? (size - 1) / 258 : 0, i, n = 1 + 258 * k;
  uint32_t crc = 0xffffffffu, table[256], v;
  bitw w = {b, 0, 0};
  int j;
  sb_put(b, head, sizeof head);
  bits_put(&w, 1, 1);          /* BFINAL */
  bits_put(&w, 1, 2);          /* BTYPE 01: fixed codes */
  bits_code(&w, 0x30, 8);      /* literal 0 */
  for (i = 0; i < k; i++) {
    bits_code(&w, 0xc5, 8);    /* length 258 (code 285) */
    bits_code(&w, 0, 5);       /* distance 1 (code 0) */
  }
  bits_code(&w, 0, 7);         /* end of block (256) */
  if (w.n) bits_put(&w, 0, 8 - w.n);
  for (i = 0; i < 256; i++) {
    v = (uint32_t)i;
    for (j = 0; j < 8; j++) v = v & 1 ? 0xedb88320u ^ (v >> 1) : v >> 1;
    table[i] = v;
  }
  for (i = 0; i < n; i++) crc = table[crc & 0xff] ^ (crc >> 8);
  crc ^= 0xffffffffu;
  for (j = 0; j < 4; j++) {
    char ch = (char)((crc >> (8 * j)) & 0xff);
    sb_put(b, &ch, 1);
  }
  for (j = 0; j < 4; j++) {
    char ch = (char)((n >> (8 * j)) & 0xff);
    sb_put(b, &ch, 1);
  }
  *decoded = n;
}

static void route_fault(conn *c) {
  request *r = &c->r;
  const char *name = r->target + 7;
  size_t len = r->path_len - 7;
  sbuf b = {0};
  uint64_t n, i;
#define FAULT_IS(s) (len == strlen(s) && memcmp(name, s, len) == 0)
  if (FAULT_IS("status")) {
    sb_puts(&b, "HTTP/1.1 2x0 Broken\r\ncontent-length: 0\r\n\r\n");
  } else if (FAULT_IS("header-huge")) {
    if (num_param(c, "size", (uint64_t)2 << 20, (uint64_t)64 << 20, &n) < 0) {
      respond_text(c, 400, "bad size");
      return;
    }
    sb_reserve(&b, (size_t)n + 64);
    sb_puts(&b, "HTTP/1.1 200 OK\r\nx-huge: ");
    memset(b.p + b.len, 'a', (size_t)n);
    b.len += (size_t)n;
    sb_puts(&b, "\r\ncontent-length: 0\r\n\r\n");
  } else if (FAULT_IS("header-flood")) {
    if (num_param(c, "n", 100000, 10000000, &n) < 0) {
      respond_text(c, 400, "bad n");
      return;
    }
    sb_puts(&b, "HTTP/1.1 200 OK\r\n");
    for (i = 0; i < n; i++) sb_printf(&b, "x-flood-%llu: v\r\n", (unsigned long long)i);
    sb_puts(&b, "content-length: 0\r\n\r\n");
  } else if (FAULT_IS("bad-chunk")) {
    sb_puts(&b, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                "5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n");
  } else if (FAULT_IS("chunk-overflow")) {
    sb_puts(&b, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n");
  } else if (FAULT_IS("gzip-bomb")) {
    sbuf z = {0};
    uint64_t decoded;
    if (num_param(c, "size", (uint64_t)16 << 20, (uint64_t)1 << 32, &n) < 0) {
      respond_text(c, 400, "bad size");
      return;
    }
    gzip_zeros(&z, n, &decoded);
    sb_printf(&b, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                  "content-encoding: gzip\r\ncontent-length: %zu\r\n"
                  "x-decoded-length: %llu\r\n\r\n",
              z.len, (unsigned long long)decoded);
    sb_put(&b, z.p, z.len);
    sb_free(&z);
  } else {
    respond_text(c, 404, "not found");
    return;
  }
#undef FAULT_IS
  send_raw(c, &b);
}

/* Answers the complete request in c->r. */
static void dispatch(conn *c) {
  request *r = &c->r;
  uint64_t size;
  r->responding = 1;
  r->chunked_out = r->minor >= 1;
  c->st = ST_HEAD;
  parse_params(c);
  if (ext_route(c)) return;
  if (path_is(c, "/fixed")) {
    if (num_param(c, "size", 0, NUM_MAX, &size) < 0) respond_text(c, 400, "bad size");
    else route_fixed(c, param_get(c, "size", NULL) != NULL, size);
  } else if (path_is(c, "/delay")) {
    route_delay(c);
  } else if (r->path_len > 8 && memcmp(r->target, "/status/", 8) == 0) {
    route_status(c);
  } else if (path_is(c, "/chunked")) {
    route_chunked(c);
  } else if (path_is(c, "/drip")) {
    route_drip(c);
  } else if (path_is(c, "/sse")) {
    route_sse(c);
  } else if (path_is(c, "/reset") || path_is(c, "/huge")) {
    int reset = path_is(c, "/reset");
    if (num_param(c, "size", reset ? 10 : (uint64_t)256 << 20, NUM_MAX, &size) < 0)
      respond_text(c, 400, "bad size");
    else
      send_pattern(c, size, reset);
  } else if (path_is(c, "/echo")) {
    route_echo(c);
  } else if (path_is(c, "/redirect")) {
    route_redirect(c);
  } else if (path_is(c, "/stats")) {
    route_stats(c);
  } else if (r->path_len > 7 && memcmp(r->target, "/fault/", 7) == 0) {
    route_fault(c);
  } else if (path_is(c, "/json")) {
    respond(c, 200, "application/json", r->body.p ? r->body.p : "", r->body.len, NULL);
  } else {
    respond_text(c, 404, "not found");
  }
}

/* Parsing --------------------------------------------------------------- */

/* Looks for the end of the head in the unparsed input, resuming where the
 * previous call stopped, and consumes blank lines before the request line.
 * Returns the head's length (its blank line included) once it is
 * complete, else 0. */
static size_t scan_head(conn *c) {
  for (;;) {
    char *p = c->in + c->in_off, *nl;
    size_t avail = c->in_len - c->in_off, i, len;
    nl = memchr(p + c->scan, '\n', avail - c->scan);
    if (!nl) {
      c->scan = avail;
      return 0;
    }
    i = (size_t)(nl - p);
    len = i - c->line;
    c->scan = i + 1;
    if (len == 0 || (len == 1 && p[c->line] == '\r')) {
      if (c->line > 0) return i + 1;
      c->in_off += i + 1;
      c->scan = 0;
      continue;
    }
    c->line = i + 1;
  }
}

/* Returns the line at *s (NUL-terminated, without its CR LF) and moves *s
 * past it. */
static char *take_line(char **s) {
  char *line = *s, *nl = strchr(line, '\n');
  if (!nl) {
    *s = line + strlen(line);
    return line;
  }
  *nl = 0;
  if (nl > line && nl[-1] == '\r') nl[-1] = 0;
  *s = nl + 1;
  return line;
}

/* Parses the head (len bytes at p, blank line included): the request line,
 * the header fields, and how the body is framed.  Returns 0, or -1 after
 * answering with an error. */
static int parse_head(conn *c, const char *p, size_t len) {
  request *r = &c->r;
  char *s, *line, *sp, *ver, *q, *t;
  uint64_t cl = 0;
  int cl_seen = 0, te_seen = 0, close_tok = 0, keep_tok = 0;
  size_t i;

  r->head = xrealloc(NULL, len + 1);
  memcpy(r->head, p, len);
  r->head[len] = 0;
  if (memchr(r->head, 0, len)) return fail(c, 400, "NUL in request head");
  s = r->head;

  line = take_line(&s);
  if (!(sp = strchr(line, ' '))) return fail(c, 400, "malformed request line");
  *sp = 0;
  r->method = line;
  r->target = t = sp + 1;
  if (!(sp = strchr(t, ' '))) return fail(c, 400, "malformed request line");
  *sp = 0;
  ver = sp + 1;
  for (q = line; *q; q++)
    if (!is_tchar((unsigned char)*q)) return fail(c, 400, "malformed method");
  if (!*line || !*t) return fail(c, 400, "malformed request line");
  for (q = t; *q; q++)
    if ((unsigned char)*q < 0x21 || *q == 0x7f) return fail(c, 400, "malformed target");
  if (strlen(ver) != 8 || memcmp(ver, "HTTP/", 5) != 0 || ver[6] != '.' || ver[5] < '0' ||
      ver[5] > '9' || ver[7] < '0' || ver[7] > '9')
    return fail(c, 400, "malformed version");
  if (ver[5] != '1') return fail(c, 505, "only HTTP/1.x is spoken");
  r->minor = ver[7] - '0';
  S.requests++;

  /* Absolute-form targets are reduced to their path and query. */
  if (ieqn(t, "http://", 7) || ieqn(t, "https://", 8)) {
    char *slash = strchr(strstr(t, "//") + 2, '/');
    r->target = slash ? slash : "/";
  } else if (*t != '/' && strcmp(t, "*") != 0) {
    return fail(c, 400, "malformed target");
  }
  q = strchr(r->target, '?');
  r->query = q ? q + 1 : NULL;
  r->path_len = q ? (size_t)(q - r->target) : strlen(r->target);

  for (;;) {
    char *colon, *v, *e, *k;
    line = take_line(&s);
    if (!*line) break;
    if (*line == ' ' || *line == '\t') return fail(c, 400, "folded header line");
    if (!(colon = strchr(line, ':')) || colon == line)
      return fail(c, 400, "malformed header line");
    for (k = line; k < colon; k++) {
      if (!is_tchar((unsigned char)*k)) return fail(c, 400, "malformed header name");
      *k = (char)lower((unsigned char)*k);
    }
    *colon = 0;
    for (v = colon + 1; *v == ' ' || *v == '\t'; v++) {
    }
    for (e = v + strlen(v); e > v && (e[-1] == ' ' || e[-1] == '\t'); e--) {
    }
    *e = 0;
    if (r->nhdrs == HEADERS_MAX) return fail(c, 431, "too many header fields");
    if (r->nhdrs == r->hcap) {
      r->hcap = r->hcap ? r->hcap * 2 : 16;
      r->hdrs = xrealloc(r->hdrs, r->hcap * sizeof *r->hdrs);
    }
    r->hdrs[r->nhdrs].name = line;
    r->hdrs[r->nhdrs].value = v;
    r->nhdrs++;
  }

  for (i = 0; i < r->nhdrs; i++) {
    const char *name = r->hdrs[i].name, *v = r->hdrs[i].value;
    if (strcmp(name, "content-length") == 0) {
      uint64_t n;
      if (parse_num(v, strlen(v), NUM_MAX, &n) < 0) return fail(c, 400, "bad content-length");
      if (cl_seen && n != cl) return fail(c, 400, "conflicting content-length");
      cl = n;
      cl_seen = 1;
    } else if (strcmp(name, "transfer-encoding") == 0) {
      if (te_seen || !ieq(v, "chunked"))
        return fail(c, 501, "only the chunked transfer coding is understood");
      te_seen = 1;
    } else if (strcmp(name, "connection") == 0) {
      close_tok |= has_token(v, "close");
      keep_tok |= has_token(v, "keep-alive");
    } else if (strcmp(name, "expect") == 0) {
      r->expect = ieq(v, "100-continue");
    }
  }
  if (te_seen && cl_seen) return fail(c, 400, "both content-length and transfer-encoding");
  if (cl > BODY_MAX) return fail(c, 413, "request body too large");
  r->keep_alive = !close_tok && (r->minor >= 1 || keep_tok);
  r->head_only = strcmp(r->method, "HEAD") == 0;
  r->chunked_in = te_seen;
  r->want = cl;
  return 0;
}

/* Moves up to want bytes of unparsed input into the body; returns how many
 * are still wanted. */
static uint64_t take_body(conn *c) {
  size_t avail = c->in_len - c->in_off;
  size_t n = c->r.want < avail ? (size_t)c->r.want : avail;
  if (c->r.body.len == 0 && c->r.want > n) sb_reserve(&c->r.body, c->r.want < (1u << 20) ? (size_t)c->r.want : (1u << 20));
  sb_put(&c->r.body, c->in + c->in_off, n);
  c->in_off += n;
  c->r.want -= n;
  return c->r.want;
}

/* Parses the chunk-size line ending at nl (extensions are ignored).
 * Returns 0, or -1 after answering with an error. */
static int chunk_size_line(conn *c, const char *p, const char *nl) {
  const char *e = nl;
  uint64_t v = 0;
  int digits = 0;
  if (e > p && e[-1] == '\r') e--;
  for (; p < e && hexval((unsigned char)*p) >= 0; p++, digits++) {
    v = v * 16 + (uint64_t)hexval((unsigned char)*p);
    if (v > BODY_MAX) return fail(c, 413, "request body too large");
  }
  if (!digits || (p < e && *p != ';' && *p != ' ' && *p != '\t'))
    return fail(c, 400, "malformed chunk size");
  if (c->r.body.len + v > BODY_MAX) return fail(c, 413, "request body too large");
  c->r.want = v;
  c->st = v ? ST_CHUNK_DATA : ST_TRAILER;
  return 0;
}

/* Parses all complete input until a request is being answered or more
 * input is needed. */
static void process(conn *c) {
  while (!c->closing && !c->r.responding && c->st != ST_LINGER) {
    char *p = c->in + c->in_off, *nl;
    size_t avail = c->in_len - c->in_off, len;
    if (avail == 0) return;
    switch (c->st) {
    case ST_HEAD:
      if (*p == 0x16) {
        /* A TLS handshake record: a client speaking https to this plain
         * port gets a plain answer, as from any HTTP server. */
        fail(c, 400, "this port speaks plain HTTP, not TLS");
        return;
      }
      len = scan_head(c);
      p = c->in + c->in_off;
      avail = c->in_len - c->in_off;
      if (len == 0) {
        if (avail > HEAD_MAX) fail(c, 431, "request head too large");
        return;
      }
      if (len > HEAD_MAX) {
        fail(c, 431, "request head too large");
        return;
      }
      c->in_off += len;
      c->scan = c->line = 0;
      if (parse_head(c, p, len) < 0) return;
      if (c->r.chunked_in) c->st = ST_CHUNK_SIZE;
      else if (c->r.want > 0) c->st = ST_BODY;
      else {
        dispatch(c);
        return;
      }
      if (c->r.expect && c->r.minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (emit(c, NULL, 0, cont, sizeof cont - 1, NULL) < 0) return;
      }
      break;
    case ST_BODY:
      if (take_body(c) > 0) return;
      dispatch(c);
      return;
    case ST_CHUNK_SIZE:
      if (!(nl = memchr(p, '\n', avail))) {
        if (avail > CHUNK_LINE_MAX) fail(c, 400, "chunk-size line too long");
        return;
      }
      c->in_off += (size_t)(nl - p) + 1;
      if (chunk_size_line(c, p, nl) < 0) return;
      break;
    case ST_CHUNK_DATA:
      if (take_body(c) > 0) return;
      c->st = ST_CHUNK_END;
      break;
    case ST_CHUNK_END:
      if (p[0] == '\r' && avail < 2) return;
      if (p[0] == '\n') c->in_off += 1;
      else if (p[0] == '\r' && p[1] == '\n') c->in_off += 2;
      else {
        fail(c, 400, "chunk data longer than its size");
        return;
      }
      c->st = ST_CHUNK_SIZE;
      break;
    case ST_TRAILER:
      if (!(nl = memchr(p, '\n', avail))) {
        if (c->r.trailer + avail > HEAD_MAX) fail(c, 431, "trailer too large");
        return;
      }
      len = (size_t)(nl - p) + 1;
      c->in_off += len;
      c->r.trailer += len;
      if (len == 1 || (len == 2 && p[0] == '\r')) {
        dispatch(c);
        return;
      }
      if (c->r.trailer > HEAD_MAX) {
        fail(c, 431, "trailer too large");
        return;
      }
      break;
    }
  }
}

/* Server ---------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status) {
  conn *c;
  if (status < 0) {
    fprintf(stderr, "httpd: accept: %s\n", uv_strerror(status));
    return;
  }
  c = xrealloc(NULL, sizeof *c);
  memset(c, 0, sizeof *c);
  uv_tcp_init(&S.loop, &c->tcp);
  c->tcp.data = c;
  c->handles = 1;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  uv_timer_init(&S.loop, &c->timer);
  c->timer.data = c;
  c->handles = 2;
  c->next = S.conns;
  if (S.conns) S.conns->prev = c;
  S.conns = c;
  S.connections++;
  S.open++;
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c, 0);
}

/* Closes every handle, so that the loop runs out of work and main returns. */
static void stop(void) {
  if (S.stopping) return;
  S.stopping = 1;
  uv_close((uv_handle_t *)&S.listener, NULL);
  uv_close((uv_handle_t *)&S.sigterm, NULL);
  uv_close((uv_handle_t *)&S.sigint, NULL);
  if (S.in_watched) uv_close((uv_handle_t *)&S.in, NULL);
  while (S.conns) conn_close(S.conns, 0);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  stop();
}

static void on_stdin_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char sink[4096];
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(sink, sizeof sink);
}

static void on_stdin_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)s;
  (void)buf;
  if (n < 0) stop();
}

/* Watches stdin for EOF when it is a pipe, a socket, or the terminal of a
 * foreground job (reading it from the background would stop the process);
 * files and character devices such as /dev/null are left alone. */
static void watch_stdin(void) {
  uv_handle_type t = uv_guess_handle(0);
  if (t == UV_TTY) {
    if (tcgetpgrp(0) != getpgrp()) return;
    uv_tty_init(&S.loop, &S.in.tty, 0, 1);
  } else if (t == UV_NAMED_PIPE) {
    if (uv_pipe_init(&S.loop, &S.in.pipe, 0) != 0) return;
    if (uv_pipe_open(&S.in.pipe, 0) != 0) {
      uv_close((uv_handle_t *)&S.in, NULL);
      return;
    }
  } else {
    return;
  }
  S.in_watched = 1;
  if (uv_read_start((uv_stream_t *)&S.in, on_stdin_alloc, on_stdin_read) != 0) {
    S.in_watched = 0;
    uv_close((uv_handle_t *)&S.in, NULL);
  }
}

/* Raises the soft limit on open files, so that a thousand and more
 * connections fit. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  rlim_t want = 65536;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) want = rl.rlim_max;
  rl.rlim_cur = want;
  setrlimit(RLIMIT_NOFILE, &rl);
}

static int usage(void) {
  fputs(HTTPD_USAGE, stderr);
  return 2;
}

/* The entry point is main unless the including file names another
 * (mockllm.c does when it is built into the agenthost command). */
#ifndef HTTPD_MAIN
#define HTTPD_MAIN main
#endif

int HTTPD_MAIN(int argc, char **argv) {
  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  struct sigaction sa;
  int namelen = (int)sizeof bound, r, i;
  uint64_t port = 0;
  const char *bind_to = "127.0.0.1";

  for (i = 1; i < argc; i++) {
    const char *v = NULL;
    int ext = ext_option(argc, argv, &i);
    if (ext < 0) return usage();
    if (ext > 0) continue;
    if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc) {
      bind_to = argv[++i];
      continue;
    }
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) v = argv[++i];
    else if (strncmp(argv[i], "--port=", 7) == 0) v = argv[i] + 7;
    else return usage();
    if (parse_num(v, strlen(v), 65535, &port) < 0) return usage();
  }

  /* Writes to a peer that has gone fail with EPIPE instead of killing us. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, NULL);
  raise_fd_limit();
  for (i = 0; i < (int)sizeof pattern; i++) pattern[i] = (char)('a' + i % 26);

  uv_loop_init(&S.loop);
  uv_tcp_init(&S.loop, &S.listener);
  if (uv_ip4_addr(bind_to, (int)port, &addr) != 0) return usage();
  r = uv_tcp_bind(&S.listener, (const struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&S.listener, BACKLOG, on_connection);
  if (r == 0) r = uv_tcp_getsockname(&S.listener, (struct sockaddr *)&bound, &namelen);
  if (r != 0) {
    fprintf(stderr, "httpd: cannot listen on %s:%d: %s\n", bind_to, (int)port, uv_strerror(r));
    uv_close((uv_handle_t *)&S.listener, NULL);
    uv_run(&S.loop, UV_RUN_DEFAULT);
    uv_loop_close(&S.loop);
    return 1;
  }
  printf("port=%d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
  fflush(stdout);

  uv_signal_init(&S.loop, &S.sigterm);
  uv_signal_start(&S.sigterm, on_signal, SIGTERM);
  uv_signal_init(&S.loop, &S.sigint);
  uv_signal_start(&S.sigint, on_signal, SIGINT);
  watch_stdin();

  uv_run(&S.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&S.loop) != 0) {
    fputs("httpd: handles left open\n", stderr);
    return 1;
  }
  return 0;
}
