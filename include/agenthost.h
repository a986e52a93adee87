/*
 * agenthost: the public C header.
 *
 * An ah_host is one Lua 5.4 state with the agenthost module loaded, its
 * scheduler and its libuv loop (owned, or borrowed from the embedding
 * host).  Scripts loaded with ah_load_file and ah_load_string run as tasks;
 * a host that owns its frame loop calls ah_step once a frame, which never
 * blocks and returns within its budget; other hosts call ah_run.  Other
 * threads hand events to Lua with ah_post; C functions become ah.host.NAME.
 *
 * Every call except ah_post, ah_version, ah_strerror and ah_config_init
 * belongs to the thread that opened the host.  Return codes: AH_OK (0),
 * AH_AGAIN (1, ah_step only), negative on error; ah_strerror names a code
 * and ah_errmsg(host) says what went wrong in the host's last failed call.
 * Misuse (NULL arguments, a call from inside a step, a call from another
 * thread) returns AH_EINVAL or AH_EMISUSE and changes nothing.
 */
#ifndef AGENTHOST_H
#define AGENTHOST_H

#include <stddef.h>
#include <lua.h>

/* libuv's loop (uv_loop_t); the header does not need <uv.h>. */
struct uv_loop_s;

#define AH_VERSION_MAJOR 0
#define AH_VERSION_MINOR 1
#define AH_VERSION_PATCH 0
#define AH_VERSION_NUM \
  (AH_VERSION_MAJOR * 10000 + AH_VERSION_MINOR * 100 + AH_VERSION_PATCH)
#define AH_VERSION_STRING "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- return codes ------------------------------------------------------ */

#define AH_OK 0        /* done; from ah_step: no task is live */
#define AH_AGAIN 1     /* ah_step: tasks are still live; step again */
#define AH_ERROR (-1)  /* a failure not named below; see ah_errmsg */
#define AH_EINVAL (-2) /* an invalid argument (NULL, bad name, not JSON) */
#define AH_EMISUSE (-3) /* a call at the wrong time or from the wrong thread */
#define AH_ENOMEM (-4) /* out of memory */
#define AH_EIO (-5)    /* a file could not be read */
#define AH_ESCRIPT (-6) /* Lua code failed to compile or to run */
#define AH_EFULL (-7)  /* ah_post: too many posts wait; post again later */
#define AH_ECLOSED (-8) /* ah_post: the host is closing */

/* "0.1.0"; compare AH_VERSION_STRING to find a header/library mismatch. */
const char *ah_version(void);
/* A constant string for any code, also for unknown ones. */
const char *ah_strerror(int code);

/* ---- configuration ----------------------------------------------------- */

/* Log levels of ah_config.log and of ah.log(level, ...) in Lua. */
enum { AH_LOG_DEBUG, AH_LOG_INFO, AH_LOG_WARN, AH_LOG_ERROR };

typedef void (*ah_log_fn)(void *ud, int level, const char *msg);
/* An error no task waited for (an uncaught error in a loaded script or a
 * detached task): its message and Lua traceback. */
typedef void (*ah_error_fn)(void *ud, const char *msg, const char *traceback);

/*
 * Fill with ah_config_init, then change what you need.  ah_open copies
 * what it keeps (the strings too), so the struct may go after ah_open.
 */
typedef struct ah_config {
  unsigned version;          /* AH_VERSION_NUM; set by ah_config_init */
  struct uv_loop_s *loop;    /* a uv_loop_t to borrow, or NULL to own one */
  /* Directories of your own modules, ';'-separated, searched by require
   * first.  The agenthost library and its bundled tools are built in. */
  const char *script_path;
  /* The database ah.store.open() opens when given no path; NULL: none. */
  const char *db_path;
  ah_log_fn log;             /* NULL: "agenthost: LEVEL: msg" on stderr */
  ah_error_fn on_error;      /* NULL: message and traceback on stderr */
  void *ud;                  /* passed to log and on_error */
  /* Lua's allocator.  NULL: agenthost's own, a size-class allocator that
   * returns memory to the system after a burst; realloc/free instead in
   * sanitizer builds or with the environment variable
   * AGENTHOST_ALLOC=system (for valgrind). */
  lua_Alloc alloc;
  void *alloc_ud;
  /* A task that runs this many Lua VM instructions without waiting is
   * made to yield and continues at the next step, so one script cannot
   * hold a frame.  0: no budget. */
  int instruction_budget;
  int channel_capacity;      /* items an ah.channel holds; default 1024 */
  int post_capacity;         /* posts waiting for delivery; default 65536 */
} ah_config;

void ah_config_init(ah_config *cfg);

/* ---- lifecycle --------------------------------------------------------- */

typedef struct ah_host ah_host;

/* Creates a host; cfg NULL means the defaults.  On failure *out is NULL
 * and the code says why (AH_EINVAL for a bad config, AH_ESCRIPT when the
 * agenthost scripts cannot be loaded). */
int ah_open(const ah_config *cfg, ah_host **out);
/* Cancels every task, lets their cleanup and the pending I/O finish
 * (queued database writes are committed), closes the state, the handles
 * and an owned loop, and frees the host.  A borrowed loop is left open. */
int ah_close(ah_host *h);

/* ---- loading ----------------------------------------------------------- */

/* Compiles a script and starts it as a new task, which runs at the next
 * step.  AH_EIO when the file cannot be read, AH_ESCRIPT on a syntax error
 * (ah_errmsg has the message).  Errors the task raises later go to
 * cfg.on_error.  name is the chunk name used in messages (NULL: "=string"). */
int ah_load_file(ah_host *h, const char *path);
int ah_load_string(ah_host *h, const char *code, const char *name);

/* ---- driving ----------------------------------------------------------- */

/* Runs ready tasks until budget_us microseconds have passed (at least one
 * task, when any is ready), then turns the loop once without blocking
 * (timers, I/O, posts).  Tasks still ready wait for the next step.
 * Returns AH_AGAIN while any task is live or a post waits, AH_OK when
 * none is.  With a borrowed loop this runs that loop once too. */
int ah_step(ah_host *h, int budget_us);
/* Runs the loop until no task is live; waiting on a channel counts as
 * live, so posts from other threads keep it going. */
int ah_run(ah_host *h);

/* ---- events and host functions ---------------------------------------- */

/* Thread-safe.  Queues json (one JSON value, checked here) for the channel
 * named; Lua receives it decoded from ah.channel(name):recv().  Posts from
 * one thread arrive in order.  AH_EFULL when post_capacity posts wait. */
int ah_post(ah_host *h, const char *channel, const char *json);

/* Exposes fn to Lua as ah.host.NAME (replacing a function of that name).
 * NAME is a Lua identifier of at most 64 bytes.  fn runs inside a task and
 * must not block; it may call luaL_error. */
int ah_register(ah_host *h, const char *name, lua_CFunction fn);
/* The host whose state L (or a coroutine of it) is, for host functions;
 * NULL when L does not belong to an ah_host. */
ah_host *ah_host_of(lua_State *L);

/* ---- escape hatches ---------------------------------------------------- */

lua_State *ah_lua(ah_host *h);
struct uv_loop_s *ah_loop(ah_host *h); /* the uv_loop_t in use */

/* The message of the host's last failed call ("" when none). */
const char *ah_errmsg(const ah_host *h);

/* ---- programs that are the whole process ------------------------------- */

/* For a program that owns the process (the agenthost command is one):
 * SIGINT and SIGTERM cancel every task that is not detached and let
 * detached work drain; a second one exits at once with status 128+N.
 * SIGHUP makes reload watchers that asked for it rescan, and is logged
 * and ignored when none did (instead of ending the process).
 * Returns AH_OK, or AH_ERROR when the handlers cannot be installed. */
int ah_handle_signals(ah_host *h);
/* The last SIGINT or SIGTERM seen since ah_handle_signals, or 0. */
int ah_signal_seen(const ah_host *h);
/* The Lua traceback of the last failure of a main task that task.run ran
 * ("" when none), for a program that reports the failure itself. */
const char *ah_traceback(const ah_host *h);

/* ---- the Lua module ---------------------------------------------------- */

/* The core module (C parts only): require "agenthost.core". */
int luaopen_agenthost_core(lua_State *L);
/* The whole module: adds the scripts/ directory found next to the library
 * to package.path and returns require "agenthost" from there. */
int luaopen_agenthost(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
