/*
 * Subprocesses on the loop: uv_spawn with pipes for stdin, stdout and
 * stderr, output kept by one of three policies (collect up to a cap, keep
 * the tail, or stream with a pause mark for backpressure), writes that copy
 * their bytes, and termination that reaches the whole job.  A child's
 * environment is the host's (or an empty one) with the caller's variables
 * set or removed, merged here at spawn.
 *
 * Every child runs in a session of its own (UV_PROCESS_DETACHED: setsid),
 * so its process group id is its pid and a signal sent to -pid reaches the
 * grandchildren a shell or a tool left behind.  Ending a process sends
 * SIGTERM to the group and SIGKILL after the grace period; once the leader
 * of a job being ended has exited, SIGKILL goes to the group again so that
 * no straggler keeps our pipes open.  The kernel keeps a pid reserved while
 * it names a live group, so that last signal cannot reach a stranger.
 *
 * A write to a child that has gone would raise SIGPIPE and kill the host:
 * when SIGPIPE is at its default action, opening the context ignores it
 * (write errors then come back as UV_EPIPE).
 *
 * Relies on libuv and the host's buffers (buf.c).  Ownership: ah_procs is
 * malloc'd by ah__procs_open and freed by ah__procs_close.  An ah_proc is
 * malloc'd by ah__proc_new and freed by the host once its owner has
 * released it, its process has been reaped and its handles have closed
 * (every handle is freed only through its close callback).  Write requests
 * are freed in their callback.
 */
#include "host.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#define READ_CHUNK 65536

extern char **environ;

struct ah_procs {
  uv_loop_t *loop;
  ah_proc *head;   /* every record not yet freed */
  int live;        /* records not yet freed */
  int running;     /* processes not yet reaped */
};

/* Per-process state that the header keeps private. */
typedef struct proc_private {
  uv_shutdown_t shutdown;
  int proc_open, timer_open, in_closing;
} proc_private;

/* The record and its private part in one block. */
typedef struct proc_block {
  ah_proc p;
  proc_private v;
} proc_block;

static proc_private *priv(ah_proc *p) { return &container_of(p, proc_block, p)->v; }

int ah__procs_open(ah_procs **out, uv_loop_t *loop) {
  struct sigaction sa;
  ah_procs *ps = calloc(1, sizeof *ps);
  if (!ps) return UV_ENOMEM;
  ps->loop = loop;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
  }
  *out = ps;
  return 0;
}

void ah__procs_count(const ah_procs *ps, int *live, int *running) {
  *live = ps ? ps->live : 0;
  *running = ps ? ps->running : 0;
}

ah_proc *ah__proc_new(ah_procs *ps) {
  proc_block *b = calloc(1, sizeof *b);
  ah_proc *p;
  if (!b) return NULL;
  p = &b->p;
  p->ps = ps;
  p->out.p = p->err.p = p;
  p->out.wiring = p->err.wiring = AH_PROC_PIPE;
  p->grace_ms = 2000;
  p->next = ps->head;
  if (ps->head) ps->head->prev = p;
  ps->head = p;
  ps->live++;
  return p;
}

/* ---- closing and freeing --------------------------------------------------- */

/* Owner callbacks stop at release and when the context closes. */
static int quiet(const ah_proc *p) { return p->released || !p->ps; }

static void maybe_free(ah_proc *p) {
  if (!p->released || p->handles > 0 || p->writes > 0) return;
  if (p->ps) {
    if (p->prev) p->prev->next = p->next;
    else p->ps->head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->ps->live--;
  }
  ah__buf_free(&p->out.buf);
  ah__buf_free(&p->err.buf);
  free(p);
}

static void on_closed(uv_handle_t *h) {
  ah_proc *p = h->data;
  p->handles--;
  maybe_free(p);
}

static void close_handle(ah_proc *p, uv_handle_t *h) {
  (void)p;
  uv_close(h, on_closed);
}

static void close_out(ah_proc_out *o) {
  if (!o->open) return;
  o->open = 0;
  o->reading = 0;
  o->eof = 1;
  close_handle(o->p, (uv_handle_t *)&o->pipe);
}

static void close_in(ah_proc *p) {
  if (!p->in_open) return;
  p->in_open = 0;
  close_handle(p, (uv_handle_t *)&p->in);
}

static void close_timer(ah_proc *p) {
  if (!priv(p)->timer_open) return;
  priv(p)->timer_open = 0;
  close_handle(p, (uv_handle_t *)&p->kill_timer);
}

static void close_process(ah_proc *p) {
  if (!priv(p)->proc_open) return;
  priv(p)->proc_open = 0;
  close_handle(p, (uv_handle_t *)&p->proc);
}

/* ---- signals ----------------------------------------------------------------- */

/* To the group when there is one, else to the process. */
static int signal_job(ah_proc *p, int signum) {
  if (p->pid <= 0) return UV_ESRCH;
  if (kill(-p->pid, signum) == 0) return 0;
  if (kill(p->pid, signum) == 0) return 0;
  return -errno;
}

int ah__proc_kill(ah_proc *p, int signum) {
  if (!p->spawned || p->exited) return UV_ESRCH;
  return signal_job(p, signum);
}

static void on_kill_timer(uv_timer_t *t) {
  ah_proc *p = t->data;
  if (!p->exited) signal_job(p, SIGKILL);
}

void ah__proc_terminate(ah_proc *p) {
  if (!p->spawned || p->exited || p->terminating) return;
  p->terminating = 1;
  if (p->grace_ms == 0) {
    signal_job(p, SIGKILL);
    return;
  }
  signal_job(p, SIGTERM);
  if (priv(p)->timer_open)
    uv_timer_start(&p->kill_timer, on_kill_timer, p->grace_ms, 0);
}

/* ---- output -------------------------------------------------------------------- */

static ah_proc_out *out_of(ah_proc *p, uv_handle_t *h) {
  return h == (uv_handle_t *)&p->out.pipe ? &p->out : &p->err;
}

static void start_reading(ah_proc_out *o);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  ah_proc_out *o = out_of(h->data, h);
  ah_buf *buf = &o->buf;
  (void)hint;
  if (ah__buf_reserve(buf, READ_CHUNK) != 0) {
    b->base = NULL; /* libuv reports UV_ENOBUFS to on_read */
    b->len = 0;
    return;
  }
  b->base = buf->data + buf->len;
  b->len = buf->cap - buf->len;
}

static void notify(ah_proc_out *o) {
  ah_proc *p = o->p;
  if (!quiet(p) && p->on_output) p->on_output(p, o);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  ah_proc *p = s->data;
  ah_proc_out *o = out_of(p, (uv_handle_t *)s);
  (void)b;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread != UV_EOF) o->err = (int)nread;
    close_out(o);
    notify(o);
    return;
  }
  o->buf.len += (size_t)nread;
  o->total += (size_t)nread;
  switch (o->policy) {
  case AH_OUT_COLLECT:
    if (o->buf.len > o->max) {
      o->buf.len = o->max;
      if (o->truncate) {
        o->truncated = 1;
      } else {
        /* Past the cap: stop reading; the owner decides what follows. */
        o->too_large = 1;
        close_out(o);
      }
    }
    break;
  case AH_OUT_TAIL:
    if (o->buf.len > o->max) {
      memmove(o->buf.data, o->buf.data + o->buf.len - o->max, o->max);
      o->buf.len = o->max;
      o->truncated = 1;
    }
    break;
  default: /* AH_OUT_STREAM */
    o->want = 0;
    if (o->buf.len >= o->max && o->reading) {
      uv_read_stop(s);
      o->reading = 0;
    }
    break;
  }
  notify(o);
}

static void start_reading(ah_proc_out *o) {
  if (!o->open || o->reading || o->eof) return;
  if (o->policy == AH_OUT_STREAM && o->buf.len >= o->max && !o->want) return;
  if (uv_read_start((uv_stream_t *)&o->pipe, on_alloc, on_read) == 0)
    o->reading = 1;
}

void ah__proc_want(ah_proc_out *o) {
  o->want = 1;
  start_reading(o);
}

void ah__proc_consume(ah_proc_out *o, size_t n) {
  if (n > o->buf.len) n = o->buf.len;
  memmove(o->buf.data, o->buf.data + n, o->buf.len - n);
  o->buf.len -= n;
  start_reading(o);
}

/* ---- input --------------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status) {
  ah_proc_write *w = container_of(req, ah_proc_write, req);
  ah_proc *p = w->p;
  p->writes--;
  if (w->done && !quiet(p)) w->done(w, status);
  free(w);
  maybe_free(p);
}

int ah__proc_write(ah_proc *p, const char *data, size_t len,
                   void (*done)(ah_proc_write *w, int status), void *wdata,
                   ah_proc_write **out) {
  ah_proc_write *w;
  uv_buf_t b;
  int rc;
  if (!p->in_open || priv(p)->in_closing) return UV_EPIPE;
  if (len > 0x7fffffffu) return UV_E2BIG; /* a uv_buf_t holds an unsigned int */
  if (!(w = malloc(offsetof(ah_proc_write, bytes) + len + 1))) return UV_ENOMEM;
  memcpy(w->bytes, data, len);
  w->p = p;
  w->done = done;
  w->data = wdata;
  w->len = len;
  b = uv_buf_init(w->bytes, (unsigned)len);
  if ((rc = uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, on_written)) != 0) {
    free(w);
    return rc;
  }
  p->writes++;
  if (out) *out = w;
  return 0;
}

void ah__proc_write_forget(ah_proc_write *w) { w->done = NULL; }

static void on_shutdown(uv_shutdown_t *req, int status) {
  ah_proc *p = req->data;
  (void)status;
  close_in(p);
}

void ah__proc_close_stdin(ah_proc *p) {
  proc_private *v = priv(p);
  if (!p->in_open || v->in_closing) return;
  v->in_closing = 1;
  v->shutdown.data = p;
  /* The shutdown waits for the queued writes, then the child sees EOF. */
  if (uv_shutdown(&v->shutdown, (uv_stream_t *)&p->in, on_shutdown) != 0)
    close_in(p);
}

/* ---- the process ------------------------------------------------------------- */

static void on_exit_cb(uv_process_t *h, int64_t status, int signum) {
  ah_proc *p = h->data;
  p->exited = 1;
  p->exit_status = status;
  p->term_signal = signum;
  if (p->ps) p->ps->running--;
  /* The job ends with its leader: whatever it left running in its session
   * (a background child holding the output open, say) is killed now, so
   * that no program outlives its run and the outputs reach their end.
   * Only the group: the leader's pid alone may already name another
   * process, while the group id stays taken as long as a member lives. */
  kill(-p->pid, SIGKILL);
  close_process(p);
  close_timer(p);
  close_in(p);
  if (quiet(p)) {
    close_out(&p->out);
    close_out(&p->err);
    maybe_free(p);
    return;
  }
  if (p->on_exit) p->on_exit(p);
}

/* ---- the environment ------------------------------------------------------- */

int ah__proc_env_name(const char *name, size_t len) {
  return len > 0 && !memchr(name, '=', len) && strlen(name) == len;
}

/* Does o set or remove the variable of the environment entry var? */
static int env_changes(const ah_proc_opts *o, const char *var) {
  const char *eq = strchr(var, '=');
  size_t i, n;
  if (!eq) return 0;
  n = (size_t)(eq - var);
  for (i = 0; i < o->nenv; i++)
    if (strncmp(o->env[i].name, var, n) == 0 && o->env[i].name[n] == '\0')
      return 1;
  return 0;
}

/* The environment o asks for, as uv_spawn takes it.  *out stays NULL when
 * the child inherits the host's unchanged; else it is one malloc'd block
 * (the caller frees it) holding the NULL-terminated array and the
 * NAME=value strings of the variables o sets.  0, UV_EINVAL for a bad
 * name, or UV_ENOMEM. */
static int env_build(const ah_proc_opts *o, char ***out) {
  size_t n = 0, bytes = 0, i, k = 0;
  char **v, *s;
  *out = NULL;
  if (o->nenv == 0 && !o->clear_env) return 0;
  for (i = 0; i < o->nenv; i++) {
    size_t len = strlen(o->env[i].name);
    if (!ah__proc_env_name(o->env[i].name, len)) return UV_EINVAL;
    if (!o->env[i].value) continue;
    n++;
    bytes += len + strlen(o->env[i].value) + 2;
  }
  if (!o->clear_env)
    for (i = 0; environ[i]; i++) n++;
  if (!(v = malloc((n + 1) * sizeof *v + bytes))) return UV_ENOMEM;
  s = (char *)(v + n + 1);
  for (i = 0; i < o->nenv; i++) {
    size_t nl, vl;
    if (!o->env[i].value) continue;
    nl = strlen(o->env[i].name);
    vl = strlen(o->env[i].value);
    v[k++] = s;
    memcpy(s, o->env[i].name, nl);
    s[nl] = '=';
    memcpy(s + nl + 1, o->env[i].value, vl + 1);
    s += nl + vl + 2;
  }
  if (!o->clear_env)
    for (i = 0; environ[i]; i++)
      if (!env_changes(o, environ[i])) v[k++] = environ[i];
  v[k] = NULL;
  *out = v;
  return 0;
}

/* ---- spawning ----------------------------------------------------------------- */

static void wire(uv_stdio_container_t *c, int wiring, uv_pipe_t *pipe, int fd,
                 int flags) {
  if (wiring == AH_PROC_PIPE) {
    c->flags = (uv_stdio_flags)(UV_CREATE_PIPE | flags);
    c->data.stream = (uv_stream_t *)pipe;
  } else if (wiring == AH_PROC_INHERIT) {
    c->flags = UV_INHERIT_FD;
    c->data.fd = fd;
  } else {
    c->flags = UV_IGNORE;
  }
}

static int open_pipe(ah_proc *p, uv_pipe_t *pipe) {
  int rc = uv_pipe_init(p->ps->loop, pipe, 0);
  if (rc == 0) {
    pipe->data = p;
    p->handles++;
  }
  return rc;
}

int ah__proc_spawn(ah_proc *p, const ah_proc_opts *o) {
  uv_loop_t *loop = p->ps->loop;
  proc_private *v = priv(p);
  uv_process_options_t po;
  uv_stdio_container_t stdio[3];
  struct stat st;
  char **envp = NULL;
  int rc;

  if (o->cwd && stat(o->cwd, &st) != 0) {
    p->failed = "cwd";
    return -errno;
  }
  if (o->cwd && !S_ISDIR(st.st_mode)) {
    p->failed = "cwd";
    return UV_ENOTDIR;
  }
  if ((rc = uv_timer_init(loop, &p->kill_timer)) != 0) return rc;
  p->kill_timer.data = p;
  p->handles++;
  v->timer_open = 1;
  if (o->in == AH_PROC_PIPE && (rc = open_pipe(p, &p->in)) == 0) p->in_open = 1;
  if (rc == 0 && p->out.wiring == AH_PROC_PIPE &&
      (rc = open_pipe(p, &p->out.pipe)) == 0)
    p->out.open = 1;
  if (rc == 0 && p->err.wiring == AH_PROC_PIPE &&
      (rc = open_pipe(p, &p->err.pipe)) == 0)
    p->err.open = 1;
  if (rc == 0 && (rc = env_build(o, &envp)) != 0) p->failed = "env";
  if (rc == 0) {
    memset(&po, 0, sizeof po);
    wire(&stdio[0], o->in, &p->in, 0, UV_READABLE_PIPE);
    wire(&stdio[1], p->out.wiring, &p->out.pipe, 1, UV_WRITABLE_PIPE);
    wire(&stdio[2], p->err.wiring, &p->err.pipe, 2, UV_WRITABLE_PIPE);
    po.exit_cb = on_exit_cb;
    po.file = o->file;
    po.args = o->args;
    po.env = envp;
    po.cwd = o->cwd;
    po.flags = UV_PROCESS_DETACHED;
    po.stdio_count = 3;
    po.stdio = stdio;
    /* uv_spawn initialises the handle even when it fails. */
    rc = uv_spawn(loop, &p->proc, &po);
    p->proc.data = p;
    p->handles++;
    v->proc_open = 1;
    if (rc != 0) p->failed = "command";
  }
  free(envp); /* uv_spawn is done with it once it has returned */
  if (rc != 0) {
    close_process(p);
    close_timer(p);
    close_in(p);
    close_out(&p->out);
    close_out(&p->err);
    p->out.eof = p->err.eof = 1;
    return rc;
  }
  p->spawned = 1;
  p->pid = p->proc.pid;
  p->ps->running++;
  if (!p->out.open) p->out.eof = 1;
  if (!p->err.open) p->err.eof = 1;
  start_reading(&p->out);
  start_reading(&p->err);
  return 0;
}

void ah__proc_release(ah_proc *p) {
  if (p->released) return;
  p->released = 1;
  if (p->spawned && !p->exited) ah__proc_terminate(p);
  close_in(p);
  close_out(&p->out);
  close_out(&p->err);
  maybe_free(p);
}

void ah__procs_close(ah_procs *ps) {
  ah_proc *p, *next;
  for (p = ps->head; p; p = next) {
    next = p->next;
    p->ps = NULL;
    p->next = p->prev = NULL;
    if (p->spawned && !p->exited) {
      int status = 0;
      pid_t r;
      signal_job(p, SIGKILL);
      do
        r = waitpid(p->pid, &status, 0);
      while (r < 0 && errno == EINTR);
      p->exited = 1;
      if (r == p->pid && WIFSIGNALED(status)) p->term_signal = WTERMSIG(status);
      else if (r == p->pid && WIFEXITED(status)) p->exit_status = WEXITSTATUS(status);
    }
    /* Closing the process handle takes it off libuv's list of children. */
    close_process(p);
    close_timer(p);
    close_in(p);
    close_out(&p->out);
    close_out(&p->err);
    maybe_free(p);
  }
  free(ps);
}
