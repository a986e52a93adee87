/*
 * HTTP transfers on the loop: libcurl multi handles driven by uv_poll
 * (CURLMOPT_SOCKETFUNCTION) and a uv_timer (CURLMOPT_TIMERFUNCTION), the
 * pattern of curl's multi-uv example.
 *
 * One multi handle serves up to LANE_SIZE transfers in flight; beyond that
 * more are opened ("lanes", see lane_pick), because curl looks for a
 * connection to reuse by walking every connection it has to that host,
 * which costs more than the rest of a request once there are a thousand.
 *
 * At most start_batch transfers start in one loop iteration; more wait in a
 * first-come-first-served queue for the next iterations (see "the start
 * queue"), which keeps the transfers in flight that the CPU caches must
 * hold near one batch when the loop is busy with them.
 *
 * libcurl is only called from outside its own callbacks: transfers are
 * added and removed by the owner from its own code, and completions are
 * collected after curl_multi_socket_action has returned.  The callbacks
 * here only buffer data and (un)watch sockets.  A socket's poll handle is
 * closed before curl closes the socket (CURLOPT_CLOSESOCKETFUNCTION), so a
 * reused descriptor never meets a stale watcher.
 *
 * Every transfer carries the safe defaults for URLs that come from model
 * output: http and https only, redirects off unless asked (then at most 5,
 * never from https to http), TLS verification on, connect and total
 * timeouts and a response size cap always set.  Easy handles are reused;
 * connections and DNS answers are cached by each lane's multi handle.
 *
 * Relies on libuv, libcurl and the host's buffers (buf.c).  Ownership:
 * ah_http is malloc'd and freed once its handles have closed; each
 * ah_http_req is owned by the caller between ah__http_start and
 * ah__http_req_free.
 */
#define _DEFAULT_SOURCE /* strncasecmp */
#include "host.h"

#include <curl/curl.h>
#include <ctype.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <dirent.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* The automatic bound of the connection cache: four connections per
 * transfer in flight (curl's own rule for a multi handle), at least
 * AUTO_CONNECTS_MIN and at most half the descriptors this process may open
 * (capped at AUTO_CONNECTS_MAX), so that idle connections never starve
 * files, pipes and databases of descriptors. */
#define AUTO_CONNECTS_MIN 256L
#define AUTO_CONNECTS_MAX 65536L

/* A connection's watcher lives as long as its socket: when curl stops
 * watching a connection it keeps in its cache, the watcher is parked, not
 * closed, so that reusing the connection costs no epoll_ctl calls.  Only
 * sockets curl opened through open_socket_cb are parked, because only
 * those are sure to be closed through close_socket_cb (which closes the
 * watcher first); curl closes others, such as its resolver's socket pair,
 * itself, so their watchers close when curl stops watching them. */
typedef struct hlane hlane;

typedef struct hsock {
  uv_poll_t poll;
  ah_http *h;
  hlane *lane;  /* whose multi handle owns the socket */
  curl_socket_t fd;
  int events;  /* UV_READABLE | UV_WRITABLE as started; 0 when stopped */
  int parked;  /* curl does not watch it (an idle cached connection) */
  int closing;
} hsock;

/* One multi handle and its timer.  malloc'd by lane_open, freed in the
 * timer's close callback. */
struct hlane {
  ah_http *h;
  CURLM *multi;
  uv_timer_t timer;
  int active;    /* transfers in flight on this lane */
};

#define LANE_SIZE 128
#define MAX_LANES 64

struct ah_http {
  uv_loop_t *loop;
  hlane *lanes[MAX_LANES]; /* lanes[0] exists from ah__http_open on */
  int nlanes;
  hsock **socks; /* by descriptor */
  unsigned char *conn; /* by descriptor: 1 for a socket from open_socket_cb */
  int nsocks;        /* the length of socks and conn */
  CURL **idle;   /* easy handles kept for reuse; malloc'd */
  int nidle, idle_cap;
  int handles;   /* open uv handles (timers and polls) */
  int nwatched;  /* sockets with a watcher not closing */
  int closing;
  int active;    /* transfers in flight */
  int peak;      /* most transfers in flight lately (see load_fit) */
  uint64_t peak_at; /* loop time peak was last reached */
  long max_connects; /* as configured; 0: automatic (see load_fit) */
  long max_host;     /* as configured; 0: no limit */
  long cache_limit;  /* CURLMOPT_MAXCONNECTS of every lane as last set */
  long cache_cap;    /* the automatic limit's upper bound */
  /* The start queue (see "the start queue" below). */
  uv_check_t pass;   /* ends each loop iteration's batch */
  uv_idle_t spin;    /* active while the queue is not empty: no blocking */
  long start_batch;  /* transfers started per iteration at most; 0: any */
  long started;      /* transfers started in this iteration */
  ah_http_req *qhead, *qtail;
  int nqueued;
  /* The local interfaces' addresses for the private-address guard, from
   * uv_interface_addresses; freed with uv_free_interface_addresses when
   * read again and in maybe_free. */
  uv_interface_address_t *ifaddrs;
  int nifaddrs, ifaddrs_read;
  uint64_t ifaddrs_at; /* loop time of the last read */
};

/* ---- sockets and timer ---------------------------------------------------- */

static void maybe_free(ah_http *h) {
  if (!h->closing || h->handles > 0) return;
  if (h->ifaddrs) uv_free_interface_addresses(h->ifaddrs, h->nifaddrs);
  free(h->socks);
  free(h->conn);
  free(h);
}

/* Makes room for descriptor fd in socks and conn. */
static int socks_fit(ah_http *h, curl_socket_t fd) {
  int n = h->nsocks ? h->nsocks : 64;
  hsock **v;
  unsigned char *c;
  if (fd < h->nsocks) return 0;
  while (n <= fd) n *= 2;
  if (!(v = realloc(h->socks, (size_t)n * sizeof *v))) return -1;
  h->socks = v;
  if (!(c = realloc(h->conn, (size_t)n))) return -1;
  h->conn = c;
  memset(v + h->nsocks, 0, (size_t)(n - h->nsocks) * sizeof *v);
  memset(c + h->nsocks, 0, (size_t)(n - h->nsocks));
  h->nsocks = n;
  return 0;
}

static void on_sock_closed(uv_handle_t *p) {
  hsock *s = p->data;
  ah_http *h = s->h;
  free(s);
  h->handles--;
  maybe_free(h);
}

static void sock_close(hsock *s) {
  if (s->closing) return;
  s->closing = 1;
  s->h->nwatched--;
  if (s->fd >= 0 && s->fd < s->h->nsocks && s->h->socks[s->fd] == s)
    s->h->socks[s->fd] = NULL;
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static void check_done(hlane *lane);
static void on_pass(uv_check_t *c);
static void queue_unlink(ah_http *h, ah_http_req *r);
static void on_poll(uv_poll_t *p, int status, int events);

static void sock_watch(hsock *s, int events) {
  if (events == s->events) return;
  s->events = events;
  if (events)
    uv_poll_start(&s->poll, events, on_poll);
  else
    uv_poll_stop(&s->poll);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  hsock *s = p->data;
  int flags = 0, running;
  if (s->parked) {
    /* An idle connection was closed by its server or sent something
     * unasked: curl finds out when it next tries to reuse it. */
    sock_watch(s, 0);
    return;
  }
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(s->lane->multi, s->fd, flags, &running);
  check_done(s->lane);
}

/* An idle watcher stays armed for reading only (a quiet keep-alive
 * connection gives no events), and does not keep the loop alive. */
static void sock_park(hsock *s) {
  s->parked = 1;
  uv_unref((uv_handle_t *)&s->poll);
  if (s->events != UV_READABLE) sock_watch(s, 0);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp,
                   void *socketp) {
  hlane *lane = userp;
  ah_http *h = lane->h;
  hsock *s = socketp;
  int events = 0;
  (void)e;
  if (what == CURL_POLL_REMOVE) {
    if (s && !s->closing) {
      if (fd >= 0 && fd < h->nsocks && h->conn[fd])
        sock_park(s);
      else
        sock_close(s);
    }
    curl_multi_assign(lane->multi, fd, NULL);
    return 0;
  }
  if (!s && fd < h->nsocks && (s = h->socks[fd]) != NULL) {
    if (s->parked) {
      /* A cached connection in use again: close_socket_cb removes the
       * watchers of closed connections, so this one watches the same
       * socket. */
      s->parked = 0;
      s->lane = lane;
      uv_ref((uv_handle_t *)&s->poll);
      curl_multi_assign(lane->multi, fd, s);
    } else {
      sock_close(s); /* left from a socket that curl closed itself */
      s = NULL;
    }
  }
  if (!s) {
    if (socks_fit(h, fd) != 0) return -1;
    if (!(s = calloc(1, sizeof *s))) return -1;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->h = h;
    s->lane = lane;
    s->fd = fd;
    h->socks[fd] = s;
    h->handles++;
    h->nwatched++;
    curl_multi_assign(lane->multi, fd, s);
  }
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  sock_watch(s, events);
  return 0;
}

/* ---- the private-address guard ------------------------------------------ */

/* Whether an IPv4 address is in one of the IANA special-purpose ranges
 * that a URL from untrusted input must not reach (the registry's entries
 * that are not globally reachable, plus the deprecated 6to4 relay). */
static int v4_blocked(const unsigned char *b) {
  return b[0] == 0 ||                                  /* 0/8 this network */
         b[0] == 10 ||                                 /* 10/8 private */
         b[0] == 127 ||                                /* 127/8 loopback */
         b[0] >= 224 ||                                /* 224/4 multicast, 240/4
                                                        * reserved, broadcast */
         (b[0] == 100 && (b[1] & 0xc0) == 64) ||       /* 100.64/10 shared */
         (b[0] == 169 && b[1] == 254) ||               /* 169.254/16 link-local */
         (b[0] == 172 && (b[1] & 0xf0) == 16) ||       /* 172.16/12 private */
         (b[0] == 192 && b[1] == 168) ||               /* 192.168/16 private */
         (b[0] == 192 && b[1] == 0 && b[2] == 0) ||    /* 192.0.0/24 IETF */
         (b[0] == 192 && b[1] == 0 && b[2] == 2) ||    /* 192.0.2/24 TEST-NET-1 */
         (b[0] == 192 && b[1] == 88 && b[2] == 99) ||  /* 192.88.99/24 6to4 relay */
         (b[0] == 198 && (b[1] & 0xfe) == 18) ||       /* 198.18/15 benchmarking */
         (b[0] == 198 && b[1] == 51 && b[2] == 100) || /* 198.51.100/24 TEST-NET-2 */
         (b[0] == 203 && b[1] == 0 && b[2] == 113);    /* 203.0.113/24 TEST-NET-3 */
}

/* The IPv4 address an IPv6 address leads to, for the forms that embed one
 * and are routed to it: the NAT64 well-known prefix 64:ff9b::/96 and 6to4
 * 2002::/16.  NULL for the others. */
static const unsigned char *v6_embedded_v4(const unsigned char *b) {
  static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
  if (memcmp(b, nat64, 12) == 0) return b + 12;
  if (b[0] == 0x20 && b[1] == 0x02) return b + 2;
  return NULL;
}

static int v6_blocked(const unsigned char *b) {
  const unsigned char *v4 = v6_embedded_v4(b);
  if (v4) return v4_blocked(v4);
  /* Only 2000::/3 is global unicast.  Outside it: ::, ::1, ::ffff:0:0/96
   * (IPv4-mapped, a classic way around IPv4 checks), the old ::/96
   * compatible form, 64:ff9b:1::/48 local NAT64, 100::/64 discard,
   * 5f00::/16 SRv6, fc00::/7 unique local, fe80::/10 link-local, fec0::/10
   * site-local, ff00::/8 multicast. */
  if ((b[0] & 0xe0) != 0x20) return 1;
  return (b[0] == 0x20 && b[1] == 0x01 && b[2] < 0x02) ||         /* 2001::/23 IETF
                                                                    * (Teredo, ORCHID...) */
         (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) || /* 2001:db8::/32 */
         (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0);     /* 3fff::/20 documentation */
}

int ah__http_addr_blocked(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return v4_blocked((const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr);
  if (sa->sa_family == AF_INET6)
    return v6_blocked(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
  return 1;
}

/* The local interfaces' addresses are read again when the list is older
 * than IFADDRS_TTL_MS of loop time, on the next connection that needs the
 * check (getifaddrs costs a netlink round trip, so not on every one). */
#define IFADDRS_TTL_MS 1000

static void ifaddrs_refresh(ah_http *h) {
  uint64_t now = uv_now(h->loop);
  uv_interface_address_t *v;
  int n;
  if (h->ifaddrs_read && now - h->ifaddrs_at < IFADDRS_TTL_MS) return;
  if (uv_interface_addresses(&v, &n) != 0) return; /* keep the last list */
  if (h->ifaddrs) uv_free_interface_addresses(h->ifaddrs, h->nifaddrs);
  h->ifaddrs = v;
  h->nifaddrs = n;
  h->ifaddrs_at = now;
  h->ifaddrs_read = 1;
}

/* Whether sa, or the IPv4 address it embeds, is assigned to one of this
 * machine's interfaces: a public address of the machine reaches services
 * bound to all interfaces just as loopback does. */
static int addr_local(ah_http *h, const struct sockaddr *sa) {
  const unsigned char *v4 = NULL, *v6 = NULL;
  int i;
  if (sa->sa_family == AF_INET)
    v4 = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
  else if (sa->sa_family == AF_INET6)
    v4 = v6_embedded_v4(v6 = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
  ifaddrs_refresh(h);
  for (i = 0; i < h->nifaddrs; i++) {
    const struct sockaddr *a = (const struct sockaddr *)&h->ifaddrs[i].address.address4;
    if (a->sa_family == AF_INET && v4 &&
        memcmp(&((const struct sockaddr_in *)a)->sin_addr, v4, 4) == 0)
      return 1;
    if (a->sa_family == AF_INET6 && v6 &&
        memcmp(((const struct sockaddr_in6 *)a)->sin6_addr.s6_addr, v6, 16) == 0)
      return 1;
  }
  return 0;
}

int ah__http_addr_refused(ah_http *h, const struct sockaddr *sa) {
  return ah__http_addr_blocked(sa) || addr_local(h, sa);
}

/* Opens every socket curl connects with (clientp: the request).  Sockets
 * are close-on-exec, so that programs started by ah.proc do not inherit the
 * host's connections.  A request made with deny_private gets no socket for
 * an internal address (checked after DNS, for every redirect).  The
 * sockets of connections are marked: curl closes them through
 * close_socket_cb; an unmarked socket (no room for the mark) is watched as
 * curl's own, which is only slower. */
static curl_socket_t open_socket_cb(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *a) {
  ah_http_req *r = clientp;
  ah_http *h = r->h;
  curl_socket_t fd;
  (void)purpose;
  if (r->deny_private && ah__http_addr_refused(h, &a->addr)) {
    const void *ip = a->family == AF_INET6
                         ? (const void *)&((struct sockaddr_in6 *)&a->addr)->sin6_addr
                         : (const void *)&((struct sockaddr_in *)&a->addr)->sin_addr;
    if (!inet_ntop(a->family, ip, r->blocked, sizeof r->blocked))
      snprintf(r->blocked, sizeof r->blocked, "an internal address");
    return CURL_SOCKET_BAD;
  }
  fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd >= 0 && socks_fit(h, fd) == 0) h->conn[fd] = 1;
  return fd;
}

/* The watcher of a socket goes before the socket does. */
static int close_socket_cb(void *clientp, curl_socket_t fd) {
  ah_http *h = clientp;
  if (fd >= 0 && fd < h->nsocks) {
    if (h->socks[fd]) sock_close(h->socks[fd]);
    h->conn[fd] = 0;
  }
  return close(fd);
}

static void on_timeout(uv_timer_t *t) {
  hlane *lane = t->data;
  int running;
  curl_multi_socket_action(lane->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(lane);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  hlane *lane = userp;
  (void)m;
  if (timeout_ms < 0)
    uv_timer_stop(&lane->timer);
  else /* even 0: curl is never called from inside its own callback */
    uv_timer_start(&lane->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- the connection cache ------------------------------------------------- */

/* The pools follow the load: `peak` is the most transfers in flight,
 * which rises at once and falls only after it has not been reached for
 * PEAK_HOLD_MS.  A thousand responses arriving in one poll leave their
 * tasks briefly without a transfer, and their connections and easy handles
 * must still be there when the tasks send their next requests.
 *
 * The automatic connection cache limit is four connections per transfer in
 * flight, shared evenly by the lanes (which take equal shares of the
 * transfers, see lane_pick).  curl keeps a connection only while the cache (busy and idle
 * connections together) is within the limit, and closes the oldest idle one
 * otherwise, so a limit below the number of transfers in flight would close
 * connections as fast as it opens them.  A lower limit closes nothing by
 * itself: the surplus goes as connections are given back.  Up to `peak`
 * easy handles are kept for reuse (at least IDLE_MIN). */
#define PEAK_HOLD_MS 60000
#define IDLE_MIN 32
static void limits_apply(ah_http *h, long cache_limit) {
  int i;
  h->cache_limit = cache_limit;
  for (i = 0; i < h->nlanes; i++) {
    curl_multi_setopt(h->lanes[i]->multi, CURLMOPT_MAXCONNECTS, cache_limit);
    curl_multi_setopt(h->lanes[i]->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      h->max_host);
  }
}

static void load_fit(ah_http *h) {
  long want;
  uint64_t now = uv_now(h->loop);
  if (h->active >= h->peak || now - h->peak_at >= PEAK_HOLD_MS) {
    h->peak = h->active;
    h->peak_at = now;
  }
  if (h->max_connects > 0 || h->closing) return;
  want = 4L * h->peak;
  if (want < AUTO_CONNECTS_MIN) want = AUTO_CONNECTS_MIN;
  if (want > h->cache_cap) want = h->cache_cap;
  want = (want + h->nlanes - 1) / h->nlanes;
  if (want != h->cache_limit) limits_apply(h, want);
}

static long cache_cap(void) {
  struct rlimit rl;
  long cap = AUTO_CONNECTS_MAX;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur / 2 < (rlim_t)cap)
    cap = (long)(rl.rlim_cur / 2);
  return cap < AUTO_CONNECTS_MIN ? AUTO_CONNECTS_MIN : cap;
}

/* ---- transfers ---------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  ah_http_req *r = ud;
  size_t len = size * n;
  if (r->total + len > r->max_body) {
    r->too_large = 1;
    return 0; /* aborts the transfer */
  }
  if (r->stream && r->body.len > 0 && r->body.len + len > r->high_water) {
    /* The consumer is behind: keep this chunk in curl until it asks. */
    r->paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (ah__buf_append(&r->body, p, len) != 0) return 0;
  r->total += len;
  if (r->stream) {
    if (!r->headers_done) {
      r->headers_done = 1;
      curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
      if (r->on_headers) r->on_headers(r);
    }
    if (r->on_data) r->on_data(r);
  }
  return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  ah_http_req *r = ud;
  size_t len = size * n;
  /* A new status line starts the headers of the next response (after a
   * redirect or a 100 Continue): only the last response's are kept. */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) ah__buf_reset(&r->headers);
  if (r->headers.len + len > (1u << 20)) {
    r->too_large = 1;
    return 0;
  }
  if (ah__buf_append(&r->headers, p, len) != 0) return 0;
  if (r->stream && !r->headers_done && (len == 2 || len == 1) &&
      (p[0] == '\r' || p[0] == '\n')) {
    /* The blank line ends a response's headers; it is the final response
     * unless it is informational or a redirect that will be followed. */
    long code = 0;
    char *loc = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(r->easy, CURLINFO_REDIRECT_URL, &loc);
    if (code >= 200 && !(r->follow && code >= 300 && code < 400 && loc)) {
      r->headers_done = 1;
      r->status = code;
      if (r->on_headers) r->on_headers(r);
    }
  }
  return len;
}

/* A failed lookup, connection or deadline can be passing (retryable); the
 * rest would fail the same way. */
const char *ah__http_error_kind(const ah_http_req *r, int code, int *retryable) {
  CURLcode rc = (CURLcode)code;
  *retryable = 0;
  if (r->too_large) return "too_large";
  /* An address refused by the guard fails the request only when curl had
   * no other address to fall back on: a request that then connected
   * elsewhere succeeded, or failed for its own reasons. */
  if (r->blocked[0] && rc == CURLE_COULDNT_CONNECT) return "forbidden";
  switch (rc) {
  case CURLE_OK: return NULL;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: *retryable = 1; return "dns";
  case CURLE_RECV_ERROR:
    /* curl also ends with a receive error when the bytes received were
     * bad: a chunk size that is not hex or does not fit, more response
     * headers than it accepts (300 KiB).  Those say so in the message and
     * would fail again; a socket or TLS read failure is the connection's. */
    if (strstr(r->errbuf, "chunked") || strstr(r->errbuf, "header")) return "protocol";
    *retryable = 1;
    return "connect";
  case CURLE_OUT_OF_MEMORY:
    /* In a transfer this is almost always one of curl's buffer bounds: a
     * response header line longer than 100 KiB, or a trailer too large. */
    return "protocol";
  case CURLE_COULDNT_CONNECT:
  case CURLE_SEND_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE: *retryable = 1; return "connect";
  case CURLE_OPERATION_TIMEDOUT: *retryable = 1; return "timeout";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_USE_SSL_FAILED: return "tls";
  case CURLE_FILESIZE_EXCEEDED: return "too_large";
  case CURLE_URL_MALFORMAT: return "invalid_argument";
  default: return "protocol";
  }
}

static void check_done(hlane *lane) {
  ah_http *h = lane->h;
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(lane->multi, &left))) {
    ah_http_req *r = NULL;
    CURL *e = msg->easy_handle;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
    curl_multi_remove_handle(lane->multi, e);
    lane->active--;
    h->active--;
    load_fit(h);
    r->running = 0;
    r->code = msg->data.result;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    {
      long v = 0;
      curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &v);
      r->version = v == CURL_HTTP_VERSION_1_0   ? 10
                   : v == CURL_HTTP_VERSION_2_0 ? 20
                   : v == CURL_HTTP_VERSION_3   ? 30
                                                : 11;
    }
    r->kind = ah__http_error_kind(r, r->code, &r->retryable);
    if (r->code == CURLE_OUT_OF_MEMORY && !r->too_large)
      snprintf(r->errbuf, sizeof r->errbuf,
               "a response field exceeds libcurl's bounds (a header line over "
               "100 KiB), or memory ran out");
    if (r->kind && !r->errbuf[0])
      snprintf(r->errbuf, sizeof r->errbuf, "%s", curl_easy_strerror(r->code));
    if (r->kind && strcmp(r->kind, "too_large") == 0)
      snprintf(r->errbuf, sizeof r->errbuf,
               "the response is larger than max_body (%zu bytes)", r->max_body);
    if (r->kind && strcmp(r->kind, "forbidden") == 0)
      snprintf(r->errbuf, sizeof r->errbuf,
               "refused to connect to %s: loopback, private and other internal "
               "addresses are not allowed for this request",
               r->blocked);
    r->done(r);
  }
}

static void on_pass_closed(uv_handle_t *c) { /* and the spin handle */
  ah_http *h = c->data;
  h->handles--;
  maybe_free(h);
}

static void on_lane_closed(uv_handle_t *t) {
  hlane *lane = t->data;
  ah_http *h = lane->h;
  free(lane);
  h->handles--;
  maybe_free(h);
}

/* Adds a lane with the current limits; NULL when out of lanes or memory. */

/* curl_multi_init opens a socket pair to wake itself up, without
 * close-on-exec; a program started by ah.proc would inherit it.  Its
 * descriptors are the ones open after the call that were not before
 * (listed from /proc/self/fd, so the cost follows the descriptors open). */
#define FD_MAX 65536
static void fds_open(unsigned char *set) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *de;
  if (!d) return;
  while ((de = readdir(d)) != NULL) {
    int fd = atoi(de->d_name);
    if (fd > 2 && fd < FD_MAX && fd != dirfd(d)) set[fd / 8] |= (unsigned char)(1u << (fd % 8));
  }
  closedir(d);
}

static CURLM *multi_init_cloexec(void) {
  unsigned char *before = calloc(FD_MAX / 8, 2), *after = before ? before + FD_MAX / 8 : NULL;
  CURLM *m;
  int fd;
  if (before) fds_open(before);
  m = curl_multi_init();
  if (m && before) {
    fds_open(after);
    for (fd = 3; fd < FD_MAX; fd++) {
      int flags;
      if (!(after[fd / 8] & (1u << (fd % 8))) || (before[fd / 8] & (1u << (fd % 8)))) continue;
      if ((flags = fcntl(fd, F_GETFD)) != -1 && !(flags & FD_CLOEXEC))
        fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
  }
  free(before);
  return m;
}

static hlane *lane_open(ah_http *h) {
  hlane *lane;
  if (h->nlanes == MAX_LANES || !(lane = calloc(1, sizeof *lane))) return NULL;
  if (!(lane->multi = multi_init_cloexec())) {
    free(lane);
    return NULL;
  }
  lane->h = h;
  uv_timer_init(h->loop, &lane->timer);
  lane->timer.data = lane;
  h->handles++;
  curl_multi_setopt(lane->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
  curl_multi_setopt(lane->multi, CURLMOPT_SOCKETDATA, lane);
  curl_multi_setopt(lane->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(lane->multi, CURLMOPT_TIMERDATA, lane);
  curl_multi_setopt(lane->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  h->lanes[h->nlanes++] = lane;
  if (h->max_connects > 0)
    limits_apply(h, h->max_connects);
  else
    load_fit(h); /* the shares of the cache change */
  curl_multi_setopt(lane->multi, CURLMOPT_MAXCONNECTS, h->cache_limit);
  curl_multi_setopt(lane->multi, CURLMOPT_MAX_HOST_CONNECTIONS, h->max_host);
  return lane;
}

/* The lane for a new transfer: the least busy, or a new one when every
 * lane has LANE_SIZE transfers in flight.  So up to LANE_SIZE transfers in
 * flight share one multi handle, its connections and its DNS cache (and
 * HTTP/2 streams share connections within a lane).  With a configured
 * bound on connections every transfer uses the first lane, so that the
 * bound holds as given. */
static hlane *lane_pick(ah_http *h) {
  hlane *best = h->lanes[0], *lane;
  int i;
  if (h->max_connects > 0 || h->max_host > 0) return best;
  for (i = 1; i < h->nlanes; i++)
    if (h->lanes[i]->active < best->active) best = h->lanes[i];
  if (best->active >= LANE_SIZE && (lane = lane_open(h)) != NULL) return lane;
  return best;
}

int ah__http_open(ah_http **out, uv_loop_t *loop, long max_connects,
                  long max_host_connections) {
  ah_http *h;
  static int global_done;
  if (!global_done) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) return UV_EIO;
    global_done = 1;
  }
  if (!(h = calloc(1, sizeof *h))) return UV_ENOMEM;
  h->loop = loop;
  h->cache_cap = cache_cap();
  h->cache_limit = AUTO_CONNECTS_MIN;
  if (!lane_open(h)) {
    free(h);
    return UV_ENOMEM;
  }
  h->start_batch = AH_HTTP_START_BATCH;
  uv_check_init(loop, &h->pass);
  h->pass.data = h;
  uv_idle_init(loop, &h->spin);
  h->spin.data = h;
  h->handles += 2;
  uv_check_start(&h->pass, on_pass);
  uv_unref((uv_handle_t *)&h->pass); /* the batches keep nothing alive */
  ah__http_limits(h, max_connects, max_host_connections);
  *out = h;
  return 0;
}

void ah__http_close(ah_http *h) {
  int i;
  if (h->closing) return;
  h->closing = 1;
  for (i = 0; i < h->nidle; i++) curl_easy_cleanup(h->idle[i]);
  free(h->idle);
  h->idle = NULL;
  h->nidle = h->idle_cap = 0;
  /* Cleaning up a multi handle closes its cached connections, whose
   * watchers close through close_socket_cb. */
  for (i = 0; i < h->nlanes; i++) {
    curl_multi_cleanup(h->lanes[i]->multi);
    h->lanes[i]->multi = NULL;
  }
  for (i = 0; i < h->nsocks; i++)
    if (h->socks[i]) sock_close(h->socks[i]);
  for (i = 0; i < h->nlanes; i++)
    uv_close((uv_handle_t *)&h->lanes[i]->timer, on_lane_closed);
  h->nlanes = 0;
  /* Queued transfers should have been freed; any left forget h. */
  while (h->qhead) {
    ah_http_req *r = h->qhead;
    queue_unlink(h, r);
    r->h = NULL;
  }
  uv_close((uv_handle_t *)&h->pass, on_pass_closed);
  uv_close((uv_handle_t *)&h->spin, on_pass_closed);
}

int ah__http_active(const ah_http *h) { return h->active; }

int ah__http_sockets(const ah_http *h) { return h->nwatched; }

void ah__http_limits(ah_http *h, long max_connects, long max_host_connections) {
  if (max_host_connections >= 0) h->max_host = max_host_connections;
  if (max_connects >= 0) h->max_connects = max_connects;
  if (h->max_connects > 0)
    limits_apply(h, h->max_connects);
  else {
    h->cache_limit = -1; /* set anew by load_fit */
    load_fit(h);
  }
}

/* Strips user:password@ from a URL for messages. */
void ah__http_safe_url(const char *url, char *out, size_t size) {
  CURLU *u = curl_url();
  char *s = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK) {
    curl_url_set(u, CURLUPART_USER, NULL, 0);
    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
    if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK) {
      snprintf(out, size, "%s", s);
      curl_free(s);
      curl_url_cleanup(u);
      return;
    }
  }
  if (u) curl_url_cleanup(u);
  snprintf(out, size, "(an invalid URL)");
}

/* ---- request headers, URLs and response headers ---------------------------- */

int ah__http_token(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || strchr("!#$%&'*+-.^_`|~", *s))) return 0;
  return 1;
}

int ah__http_check_url(const char *url, size_t len) {
  size_t i;
  if (len > AH_HTTP_MAX_URL) return UV_ENAMETOOLONG;
  for (i = 0; i < len; i++)
    if ((unsigned char)url[i] <= ' ' || url[i] == 0x7f) return UV_EINVAL;
  /* Only the len bytes given are read: the url need not end in a NUL. */
  if (!(len >= 7 && strncasecmp(url, "http://", 7) == 0) &&
      !(len >= 8 && strncasecmp(url, "https://", 8) == 0))
    return UV_EPROTONOSUPPORT;
  return 0;
}

/* Appends one line to r's header list, which curl copies. */
static int header_line(ah_http_req *r, const char *line) {
  struct curl_slist *l = curl_slist_append(r->header_list, line);
  if (!l) return UV_ENOMEM;
  r->header_list = l;
  return 0;
}

int ah__http_req_header(ah_http_req *r, const char *name, const char *value,
                        size_t vlen) {
  size_t nlen = strlen(name), size = nlen + vlen + 3;
  char small[256], *line;
  int rc;
  if (!ah__http_token(name)) return UV_EINVAL;
  if (strlen(value) != vlen || strpbrk(value, "\r\n")) return UV_EILSEQ;
  if (!(line = size <= sizeof small ? small : malloc(size))) return UV_ENOMEM;
  /* "Name;" is how curl is told to send a header with an empty value
   * ("Name:" would remove the header). */
  if (vlen)
    snprintf(line, size, "%s: %s", name, value);
  else
    snprintf(line, size, "%s;", name);
  rc = header_line(r, line);
  if (line != small) free(line);
  return rc;
}

int ah__http_header_next(ah_http_req *r, size_t *pos, ah_http_header *h) {
  char *p = r->headers.data ? r->headers.data + *pos : NULL;
  char *end = r->headers.data ? r->headers.data + r->headers.len : NULL;
  while (p && p < end) {
    char *eol = memchr(p, '\n', (size_t)(end - p));
    char *line_end = eol ? eol : end, *colon = memchr(p, ':', (size_t)(line_end - p));
    char *next = eol ? eol + 1 : end;
    if (colon && colon > p &&
        !((size_t)(line_end - p) >= 5 && memcmp(p, "HTTP/", 5) == 0)) {
      const char *v = colon + 1, *ve = line_end;
      char *c;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      for (c = p; c < colon; c++) *c = (char)tolower((unsigned char)*c);
      h->name = p;
      h->name_len = (size_t)(colon - p);
      h->value = v;
      h->value_len = (size_t)(ve - v);
      *pos = (size_t)(next - r->headers.data);
      return 1;
    }
    p = next;
  }
  if (p) *pos = (size_t)(p - r->headers.data);
  return 0;
}

/* The options that are the same for every transfer, set on a new or reset
 * easy handle. */
static void easy_defaults(ah_http *h, CURL *e) {
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, h);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
}

/* Starts r now.  timeout_ms is what is left of its total timeout. */
static int start_now(ah_http *h, ah_http_req *r, long timeout_ms) {
  CURL *e;
  hlane *lane = lane_pick(h);
  if (h->nidle > 0) {
    e = h->idle[--h->nidle];
  } else {
    if (!(e = curl_easy_init())) return UV_ENOMEM;
    easy_defaults(h, e);
  }
  r->easy = e;
  r->h = h;
  /* Every option a transfer may change is set here, whatever the handle's
   * previous transfer set: the method's options start again from GET. */
  curl_easy_setopt(e, CURLOPT_URL, r->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, r->follow ? 1L : 0L);
  if (r->follow)
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR,
                     strncasecmp(r->url, "https://", 8) == 0 ? "https" : "http,https");
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, r->connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
  /* Over TLS a new request waits for a connection being set up to the same
   * host to learn whether it speaks HTTP/2, so that a burst multiplexes
   * over one connection instead of opening one each. */
  curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                   strncasecmp(r->url, "https://", 8) == 0 ? 1L : 0L);
  /* A handle that set its own CA bundle is reset when it is given back. */
  if (r->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, r->ca_file);
  /* deny_private: a fresh connection of its own, so that the address check
   * runs and no connection opened by another request is reused. */
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, r->deny_private ? 1L : 0L);
  /* A proxy (from http_proxy and the like) would be the address checked,
   * not the target's: such requests go direct. */
  curl_easy_setopt(e, CURLOPT_PROXY, r->deny_private ? "" : NULL);
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, r->deny_private ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)r->header_list);
  curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
  if (r->body_data) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, r->body_data);
  }
  if (strcmp(r->method, "HEAD") == 0)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (!(strcmp(r->method, "GET") == 0 && !r->body_data) &&
           !(strcmp(r->method, "POST") == 0 && r->body_data))
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
  if (curl_multi_add_handle(lane->multi, e) != CURLM_OK) {
    curl_easy_cleanup(e);
    r->easy = NULL;
    return UV_ENOMEM;
  }
  r->lane = lane;
  r->running = 1;
  lane->active++;
  h->active++;
  load_fit(h);
  return 0;
}

/* ---- the start queue --------------------------------------------------------
 *
 * At most start_batch transfers start in one loop iteration; more wait in a
 * FIFO queue and start in the following iterations, start_batch at a time.
 * With a thousand requests in flight to a fast server the loop is busy with
 * them alone, and each pass over a thousand transfers (their easy handles,
 * connections and sockets) finds them out of the CPU caches: a request then
 * costs about 1.7 times its CPU at 64 in flight.  Started a batch at a time,
 * the transfers in flight settle near one batch and the rest wait their
 * turn, which costs them no more time than the CPU they would have shared.
 * While the queue is not empty the loop does not block in its poll (an
 * idle handle), so when the loop is not busy, iterations follow each other
 * at once and the queue only spreads starts over them: the transfers in
 * flight are not bounded, so slow servers and long streams never hold up
 * the rest. */

static void on_spin(uv_idle_t *i) { (void)i; }

static void queue_unlink(ah_http *h, ah_http_req *r) {
  if (r->qprev) r->qprev->qnext = r->qnext; else h->qhead = r->qnext;
  if (r->qnext) r->qnext->qprev = r->qprev; else h->qtail = r->qprev;
  r->qnext = r->qprev = NULL;
  r->queued = 0;
  h->nqueued--;
}

/* Copies what the caller may free once ah__http_start returned. */
static int queue_add(ah_http *h, ah_http_req *r) {
  size_t ul = strlen(r->url) + 1, cl = r->ca_file ? strlen(r->ca_file) + 1 : 0;
  char *p = malloc(ul + cl + r->body_len + 1);
  if (!p) return UV_ENOMEM;
  r->copies = p;
  memcpy(p, r->url, ul);
  r->url = p;
  p += ul;
  if (r->ca_file) {
    memcpy(p, r->ca_file, cl);
    r->ca_file = p;
    p += cl;
  }
  if (r->body_data) {
    memcpy(p, r->body_data, r->body_len);
    r->body_data = p;
  }
  r->h = h;
  r->queued = 1;
  r->queued_at = uv_hrtime(); /* not uv_now: the loop's time may be stale */
  r->qnext = NULL;
  r->qprev = h->qtail;
  if (h->qtail) h->qtail->qnext = r; else h->qhead = r;
  h->qtail = r;
  if (h->nqueued++ == 0) uv_idle_start(&h->spin, on_spin);
  return 0;
}

/* A queued transfer that cannot start ends with this error. */
static void queue_fail(ah_http_req *r, const char *kind, int retryable,
                       const char *msg) {
  r->kind = kind;
  r->retryable = retryable;
  snprintf(r->errbuf, sizeof r->errbuf, "%s", msg);
  r->done(r);
}

/* A batch begins here, in the check phase right after the I/O callbacks
 * (before the scheduler runs the tasks they woke, whose new requests join
 * this batch): the queue's head starts first. */
static void on_pass(uv_check_t *c) {
  ah_http *h = c->data;
  h->started = 0;
  while (h->qhead && (h->start_batch == 0 || h->started < h->start_batch)) {
    ah_http_req *r = h->qhead;
    long waited = (long)((uv_hrtime() - r->queued_at) / 1000000);
    int rc;
    queue_unlink(h, r);
    if (r->timeout_ms <= waited) {
      queue_fail(r, "timeout", 1, "timed out waiting in the start queue");
      continue;
    }
    h->started++;
    if ((rc = start_now(h, r, r->timeout_ms - waited)) != 0)
      queue_fail(r, "resource", 0,
                 rc == UV_ENOMEM ? "cannot start: out of memory"
                                 : "cannot start the transfer");
  }
  if (!h->qhead) uv_idle_stop(&h->spin);
}

int ah__http_start(ah_http *h, ah_http_req *r) {
  int rc;
  if (h->closing) return UV_EINVAL;
  /* No "Expect: 100-continue" round trip before a request body (curl
   * sends one only with a body). */
  if (r->body_data && (rc = header_line(r, "Expect:")) != 0) return rc;
  r->h = h;
  if (h->qhead || (h->start_batch > 0 && h->started >= h->start_batch))
    return queue_add(h, r);
  h->started++;
  return start_now(h, r, r->timeout_ms);
}

void ah__http_start_batch(ah_http *h, long n) {
  if (n >= 0) h->start_batch = n;
}

int ah__http_queued(const ah_http *h) { return h->nqueued; }

void ah__http_resume(ah_http_req *r) {
  if (!r->paused || !r->easy || !r->running) return;
  r->paused = 0;
  /* Unpausing may deliver the held chunk right here, through on_body. */
  curl_easy_pause(r->easy, CURLPAUSE_CONT);
}

/* Gives the easy handle back.  A plain transfer that ended normally leaves
 * nothing behind that the next start does not set again, so its handle is
 * kept as it is; any other is reset (freeing a copied request body, a
 * paused state), which keeps the connection cache, and gets its defaults
 * again.  Pointers into the request are cleared either way. */
static void release_easy(ah_http *h, ah_http_req *r) {
  CURL *e = r->easy;
  int plain = !r->running && !r->kind && !r->body_data && !r->stream &&
              !r->paused && !r->ca_file;
  if (!e) return;
  if (r->running) {
    hlane *lane = r->lane;
    if (lane->multi) curl_multi_remove_handle(lane->multi, e);
    lane->active--;
    h->active--;
    load_fit(h);
    r->running = 0;
  }
  r->easy = NULL;
  if (plain) {
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
  } else {
    curl_easy_reset(e);
    easy_defaults(h, e);
  }
  if (!h->closing && (h->nidle < IDLE_MIN || h->nidle < h->peak)) {
    if (h->nidle == h->idle_cap) {
      int cap = h->idle_cap ? 2 * h->idle_cap : IDLE_MIN;
      CURL **v = realloc(h->idle, (size_t)cap * sizeof *v);
      if (!v) {
        curl_easy_cleanup(e);
        return;
      }
      h->idle = v;
      h->idle_cap = cap;
    }
    h->idle[h->nidle++] = e;
  } else {
    curl_easy_cleanup(e);
  }
}

void ah__http_req_free(ah_http_req *r) {
  if (r->queued) queue_unlink(r->h, r);
  free(r->copies);
  r->copies = NULL;
  if (r->h) release_easy(r->h, r);
  curl_slist_free_all(r->header_list);
  r->header_list = NULL;
  ah__buf_free(&r->body);
  ah__buf_free(&r->headers);
}
