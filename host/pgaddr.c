/*
 * Host names of a PostgreSQL connection, resolved off the loop.  libpq
 * looks names up with a blocking getaddrinfo inside PQconnectStartParams
 * and PQconnectPoll, which would stall every task for as long as DNS
 * takes; so before libpq is called, the names among the connection's hosts
 * (from its keywords, its URL, or PGHOST) are resolved with
 * uv_getaddrinfo on libuv's thread pool, and libpq gets each address as
 * `hostaddr` beside its name (kept as `host`, which TLS verification and
 * password lookup use).  A name with several addresses becomes as many
 * entries, tried in order as libpq tries a name's addresses.
 *
 * Nothing is resolved when the connection names no host (the Unix socket),
 * only socket directories or address literals, or gives hostaddr itself.
 *
 * Relies on libpq (PQconninfoParse) and libuv.  Ownership: the resolver is
 * malloc'd by ah__pg_resolve_start and freed by ah__pg_resolve_free after
 * done, or by itself once its requests are back after ah__pg_resolve_cancel.
 */
#include "host.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct rhost {
  struct ah_pg_resolve *r;
  uv_getaddrinfo_t req;
  char *name;
  char *port;                  /* this host's port, or NULL */
  int dns;                     /* a name to look up */
  int status;                  /* 0, or the lookup's error */
  int out;                     /* its lookup is out */
  char addrs[8][64];           /* its addresses, as text */
  int naddrs;
} rhost;

struct ah_pg_resolve {
  char **keys, **vals;         /* copies of the caller's, and room for three more */
  int nkeys;
  rhost *hosts;
  int nhosts;
  int pending;                 /* lookups out */
  int cancelled;
  int port_list;               /* the ports are one per host */
  void (*done)(ah_pg_resolve *r, void *data);
  void *data;
  char err[256];
  char *out[3];                /* host, hostaddr, port lists */
};

static char *dup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static int expands(const char *v) {
  return strchr(v, '=') || strncmp(v, "postgres://", 11) == 0 ||
         strncmp(v, "postgresql://", 13) == 0;
}

/* The value libpq will use for keyword k: the last of the keywords or
 * the URL's that sets it, else the environment's.  NULL for none. */
static char *effective(const char *const *keys, const char *const *vals, const char *k,
                       const char *env) {
  const char *found = NULL;
  char *copy = NULL;
  int i;
  for (i = 0; keys[i]; i++) {
    if (!vals[i]) continue;
    if (strcmp(keys[i], k) == 0 && *vals[i]) {
      free(copy);
      copy = dup(vals[i]);
      found = copy;
    } else if (strcmp(keys[i], "dbname") == 0 && expands(vals[i])) {
      PQconninfoOption *opts = PQconninfoParse(vals[i], NULL), *o;
      for (o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, k) == 0 && o->val && *o->val) {
          free(copy);
          copy = dup(o->val);
          found = copy;
        }
      }
      PQconninfoFree(opts);
    }
  }
  if (!found && getenv(env) && *getenv(env)) copy = dup(getenv(env));
  return copy;
}

static int is_literal(const char *s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Splits s at commas into n fresh strings (n counts empty items too). */
static char **split(const char *s, int *n) {
  int count = 1, i = 0;
  const char *p;
  char **out;
  for (p = s; *p; p++) count += *p == ',';
  if (!(out = calloc((size_t)count, sizeof *out))) return NULL;
  for (p = s;; i++) {
    const char *c = strchr(p, ',');
    size_t len = c ? (size_t)(c - p) : strlen(p);
    if (!(out[i] = malloc(len + 1))) {
      while (i > 0) free(out[--i]);
      free(out);
      return NULL;
    }
    memcpy(out[i], p, len);
    out[i][len] = 0;
    if (!c) break;
    p = c + 1;
  }
  *n = count;
  return out;
}

static void free_list(char **l, int n) {
  int i;
  for (i = 0; l && i < n; i++) free(l[i]);
  free(l);
}

void ah__pg_resolve_free(ah_pg_resolve *r) {
  int i;
  if (!r) return;
  for (i = 0; r->keys && i < r->nkeys + 3; i++) {
    free(r->keys[i]);
    free(r->vals[i]);
  }
  free(r->keys);
  free(r->vals);
  for (i = 0; i < r->nhosts; i++) {
    free(r->hosts[i].name);
    free(r->hosts[i].port);
  }
  free(r->hosts);
  for (i = 0; i < 3; i++) free(r->out[i]);
  free(r);
}

/* Appends item to the comma-separated list *l. */
static int append(char **l, const char *item) {
  size_t a = *l ? strlen(*l) : 0, b = strlen(item);
  char *p = realloc(*l, a + b + 2);
  if (!p) return -1;
  if (*l) p[a++] = ',';
  memcpy(p + a, item, b + 1);
  *l = p;
  return 0;
}

/* Every lookup is back: the lists libpq gets, or the error. */
static void finish(ah_pg_resolve *r) {
  int i, k, usable = 0;
  const char *failed = NULL;
  int status = 0;
  for (i = 0; i < r->nhosts; i++) {
    rhost *h = &r->hosts[i];
    int n = h->dns ? h->naddrs : 1;
    if (h->dns && h->naddrs == 0) {
      failed = h->name;
      status = h->status;
      continue;
    }
    for (k = 0; k < n; k++) {
      const char *addr = h->dns ? h->addrs[k] : (is_literal(h->name) ? h->name : "");
      if (append(&r->out[0], h->name) || append(&r->out[1], addr) ||
          (r->port_list && append(&r->out[2], h->port ? h->port : ""))) {
        snprintf(r->err, sizeof r->err, "out of memory");
        return;
      }
      usable++;
    }
  }
  if (!usable)
    snprintf(r->err, sizeof r->err, "could not translate host name \"%s\" to address: %s",
             failed ? failed : "", status ? uv_strerror(status) : "no address");
}

static void on_addrinfo(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rhost *h = container_of(req, rhost, req);
  ah_pg_resolve *r = h->r;
  struct addrinfo *ai;
  h->status = status;
  for (ai = res; status == 0 && ai && h->naddrs < 8; ai = ai->ai_next) {
    char text[64] = "";
    int k, seen = 0;
    if (ai->ai_family == AF_INET)
      uv_ip4_name((const struct sockaddr_in *)(void *)ai->ai_addr, text, sizeof text);
    else if (ai->ai_family == AF_INET6)
      uv_ip6_name((const struct sockaddr_in6 *)(void *)ai->ai_addr, text, sizeof text);
    if (!*text) continue;
    for (k = 0; k < h->naddrs; k++) seen |= strcmp(h->addrs[k], text) == 0;
    if (!seen) memcpy(h->addrs[h->naddrs++], text, sizeof text);
  }
  uv_freeaddrinfo(res);
  h->out = 0;
  if (--r->pending > 0) return;
  if (r->cancelled) {
    ah__pg_resolve_free(r);
    return;
  }
  finish(r);
  r->done(r, r->data);
}

int ah__pg_resolve_start(ah_pg_resolve **out, uv_loop_t *loop, const char *const *keys,
                         const char *const *vals, void (*done)(ah_pg_resolve *r, void *data),
                         void *data) {
  char *host = NULL, *hostaddr = NULL, *port = NULL, **hosts = NULL, **ports = NULL;
  int nh = 0, np = 0, i, dns = 0, rc = 0;
  ah_pg_resolve *r = NULL;
  struct addrinfo hints;
  *out = NULL;
  hostaddr = effective(keys, vals, "hostaddr", "PGHOSTADDR");
  host = effective(keys, vals, "host", "PGHOST");
  if (hostaddr || !host) goto none; /* the caller's addresses, or the socket */
  if (!(hosts = split(host, &nh))) goto nomem;
  for (i = 0; i < nh; i++)
    dns |= hosts[i][0] && hosts[i][0] != '/' && hosts[i][0] != '@' && !is_literal(hosts[i]);
  if (!dns) goto none;
  port = effective(keys, vals, "port", "PGPORT");
  if (port && !(ports = split(port, &np))) goto nomem;
  if (!(r = calloc(1, sizeof *r))) goto nomem;
  for (r->nkeys = 0; keys[r->nkeys]; r->nkeys++) {}
  r->keys = calloc((size_t)r->nkeys + 4, sizeof *r->keys);
  r->vals = calloc((size_t)r->nkeys + 4, sizeof *r->vals);
  r->hosts = calloc((size_t)nh, sizeof *r->hosts);
  if (!r->keys || !r->vals || !r->hosts) goto nomem;
  for (i = 0; i < r->nkeys; i++) {
    r->keys[i] = dup(keys[i]);
    r->vals[i] = vals[i] ? dup(vals[i]) : NULL;
    if (!r->keys[i] || (vals[i] && !r->vals[i])) goto nomem;
  }
  r->done = done;
  r->data = data;
  r->nhosts = nh;
  r->port_list = np > 1 && np == nh;
  for (i = 0; i < nh; i++) {
    rhost *h = &r->hosts[i];
    h->r = r;
    h->name = hosts[i];
    hosts[i] = NULL;
    if (r->port_list) {
      h->port = ports[i];
      ports[i] = NULL;
    }
    h->dns = h->name[0] && h->name[0] != '/' && h->name[0] != '@' && !is_literal(h->name);
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  for (i = 0; i < nh; i++) {
    rhost *h = &r->hosts[i];
    if (!h->dns) continue;
    if ((rc = uv_getaddrinfo(loop, &h->req, on_addrinfo, h->name, NULL, &hints)) != 0) {
      h->status = rc;
      continue;
    }
    h->out = 1;
    r->pending++;
  }
  rc = 0;
  if (r->pending == 0) { /* every lookup failed to start: report it as done */
    finish(r);
    *out = r;
    rc = 1;
  } else {
    *out = r;
  }
  free_list(hosts, nh);
  free_list(ports, np);
  free(host);
  free(port);
  return rc;
none:
  free_list(hosts, nh);
  free(host);
  free(hostaddr);
  return 0;
nomem:
  free_list(hosts, nh);
  free_list(ports, np);
  free(host);
  free(hostaddr);
  free(port);
  if (r) {
    r->nhosts = 0;
    ah__pg_resolve_free(r);
  }
  return UV_ENOMEM;
}

const char *ah__pg_resolve_error(const ah_pg_resolve *r) { return r->err[0] ? r->err : NULL; }

void ah__pg_resolve_params(ah_pg_resolve *r, const char *const **keys,
                           const char *const **vals) {
  static const char *const names[3] = {"host", "hostaddr", "port"};
  int i, n = r->nkeys;
  for (i = 0; i < 3; i++) {
    if (!r->out[i] || r->keys[n]) continue;
    r->keys[n] = dup(names[i]);
    r->vals[n] = dup(r->out[i]);
    n++;
  }
  *keys = (const char *const *)r->keys;
  *vals = (const char *const *)r->vals;
}

void ah__pg_resolve_cancel(ah_pg_resolve *r) {
  int i;
  if (r->pending == 0) {
    ah__pg_resolve_free(r);
    return;
  }
  r->cancelled = 1;
  for (i = 0; i < r->nhosts; i++)
    if (r->hosts[i].out) uv_cancel((uv_req_t *)&r->hosts[i].req);
}

const char *ah__pg_resolve_host(const ah_pg_resolve *r) {
  return r->nhosts > 0 ? r->hosts[0].name : "";
}
