/*
 * The part of ah.pg's binding shared by its two files: bindings/pg.c
 * (connections, requests, COPY, connecting) and bindings/pglisten.c
 * (subscriptions for LISTEN, and the wait lists the pool's callers queue
 * in).  Relies on bindings.h and host/pg.c.
 */
#ifndef AH_BINDINGS_PG_H
#define AH_BINDINGS_PG_H

#include "bindings.h"

#define MT "agenthost.pg"
#define SUB_MT "agenthost.pg_sub"
#define WL_MT "agenthost.pg_waitlist"

typedef struct lsub lsub;

/* The userdata behind a connection. */
typedef struct lconn {
  ah_pg *pg;            /* NULL once closed */
  ah_sched *S;
  lua_State *L;         /* the main thread, for logging */
  ah_task *opener;      /* waiting in connect */
  double connect_timeout;
  ah_defer defer;       /* flushes the requests of this pass */
  int autocommit;       /* requests run outside explicit transactions (so
                         * one a cancel hit by mistake may be sent again) */
  ah_buf scratch;       /* decoding values; freed in __gc */
  ah_buf copybuf;       /* COPY text being handed over; freed in __gc */
  lsub *subs;           /* subscriptions attached here */
  ah_pg_req *copy;      /* the COPY in progress, or NULL */
  int copy_over;        /* its done came while nobody waited */
  int copy_ret;         /* what a wait that on_copy ends returns */
  ah_task *copy_waiter;
  char desc[256];       /* user@host:port/db, for messages */
} lconn;

/* The open connection at 1, or raises naming `what`. */
lconn *ah__pg_check_conn(lua_State *L, const char *what);
/* A timeout argument in seconds: 0 for none (nil, false, absent). */
double ah__pg_arg_timeout(lua_State *L, int idx, const char *what);

/* pglisten.c: host/pg.c's notification and loss callbacks; the
 * subscriptions of a connection let go (woken with "lost" when wake is
 * set); c:subscribe; _pg.waitlist; the metatables. */
void ah__pg_notified(ah_pg *pg, const char *channel, const char *payload, int pid);
void ah__pg_lost(ah_pg *pg);
void ah__pg_detach_subs(lconn *lc, int wake);
int ah__pg_subscribe(lua_State *L);
int ah__pg_waitlist(lua_State *L);
void ah__pg_listen_init(lua_State *L);

#endif
