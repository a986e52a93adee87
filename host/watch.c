/*
 * File watching for reload: directories watched with uv_fs_event (one
 * handle per directory, subdirectories included, since Linux has no
 * recursive watch), changes debounced, files read and hashed on the libuv
 * thread pool, and the owner told only when a file's content really
 * changed.  Watching directories rather than files is what makes editors
 * that save by writing a temporary file and renaming it over the original
 * (or by truncating and rewriting) look like any other change.  Where
 * uv_fs_event cannot start, each known file is polled with uv_fs_poll.
 *
 * Relies on libuv only.  Ownership: the ah_watch and everything hanging off
 * it are malloc'd and freed once every handle has closed and every read has
 * come back, after ah__watch_close.
 */
#include "host.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE (16u << 20) /* a script larger than this is refused */

typedef struct wdir {
  struct {
    uv_fs_event_t ev;
  } h;
  ah_watch *w;
  struct wdir *next;
  char path[];
} wdir;

typedef struct wfile {
  struct wfile *next;
  uint64_t hash;
  int known;    /* hash holds the content last reported or loaded */
  int pending;  /* waiting for the debounce timer */
  int reading;  /* a read is in flight */
  int again;    /* changed again while being read */
  uv_fs_poll_t *poll; /* fallback mode only */
  char path[];
} wfile;

typedef struct wread {
  uv_work_t req;
  ah_watch *w;
  wfile *f;
  char *data;
  size_t len;
  int err;
  uint64_t hash;
} wread;

struct ah_watch {
  uv_loop_t *loop;
  uv_timer_t debounce;
  wdir *dirs;
  wfile *files;
  ah_watch_cb cb;
  void *data;
  unsigned debounce_ms;
  int fallback;     /* uv_fs_event unavailable: poll files */
  int closing;
  int handles;      /* open uv handles */
  int reads;        /* reads in flight */
};

uint64_t ah__hash(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static void maybe_free(ah_watch *w) {
  wfile *f, *fn;
  wdir *d, *dn;
  if (!w->closing || w->handles > 0 || w->reads > 0) return;
  for (f = w->files; f; f = fn) {
    fn = f->next;
    free(f);
  }
  for (d = w->dirs; d; d = dn) {
    dn = d->next;
    free(d);
  }
  free(w);
}

static void on_handle_closed(uv_handle_t *h) {
  ah_watch *w = h->data;
  w->handles--;
  maybe_free(w);
}

static void on_poll_closed(uv_handle_t *h) {
  ah_watch *w = h->data;
  free(h);
  w->handles--;
  maybe_free(w);
}

static wfile *file_get(ah_watch *w, const char *path, int create) {
  wfile *f;
  size_t n;
  for (f = w->files; f; f = f->next)
    if (strcmp(f->path, path) == 0) return f;
  if (!create) return NULL;
  n = strlen(path);
  f = calloc(1, sizeof *f + n + 1);
  if (!f) return NULL;
  memcpy(f->path, path, n + 1);
  f->next = w->files;
  w->files = f;
  return f;
}

static int is_lua(const char *name) {
  size_t n = strlen(name);
  return n > 4 && strcmp(name + n - 4, ".lua") == 0 && name[0] != '.';
}

/* ---- reading on the thread pool ---------------------------------------- */

static void read_work(uv_work_t *req) {
  wread *r = req->data;
  struct stat st;
  int fd = open(r->f->path, O_RDONLY | O_CLOEXEC);
  size_t got = 0;
  if (fd < 0) {
    r->err = UV_ENOENT;
    return;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    r->err = UV_EINVAL;
  } else if ((size_t)st.st_size > MAX_FILE) {
    r->err = UV_EFBIG;
  } else if (!(r->data = malloc((size_t)st.st_size + 1))) {
    r->err = UV_ENOMEM;
  } else {
    while (got < (size_t)st.st_size) {
      ssize_t k = read(fd, r->data + got, (size_t)st.st_size - got);
      if (k <= 0) break;
      got += (size_t)k;
    }
    r->len = got;
    r->data[got] = '\0';
    r->hash = ah__hash(r->data, got);
  }
  close(fd);
}

static void start_read(ah_watch *w, wfile *f);

static void read_done(uv_work_t *req, int status) {
  wread *r = req->data;
  ah_watch *w = r->w;
  wfile *f = r->f;
  w->reads--;
  f->reading = 0;
  if (!w->closing && status == 0) {
    if (r->err == UV_ENOENT) {
      /* Deleted (or between the two steps of a rename): nothing to load.
       * The last content stays the baseline, so recreating the same file
       * is not a reload. */
      w->cb(w, f->path, NULL, 0, UV_ENOENT);
    } else if (r->err) {
      w->cb(w, f->path, NULL, 0, r->err);
    } else if (!f->known || f->hash != r->hash) {
      f->hash = r->hash;
      f->known = 1;
      w->cb(w, f->path, r->data, r->len, 0);
    }
  }
  free(r->data);
  free(r);
  if (!w->closing && f->again) {
    f->again = 0;
    start_read(w, f);
  }
  maybe_free(w);
}

static void start_read(ah_watch *w, wfile *f) {
  wread *r;
  if (f->reading) {
    f->again = 1;
    return;
  }
  if (!(r = calloc(1, sizeof *r))) return;
  r->w = w;
  r->f = f;
  r->req.data = r;
  if (uv_queue_work(w->loop, &r->req, read_work, read_done) != 0) {
    free(r);
    return;
  }
  f->reading = 1;
  w->reads++;
}

/* ---- events and debounce -------------------------------------------------- */

static void on_debounce(uv_timer_t *t) {
  ah_watch *w = t->data;
  wfile *f;
  for (f = w->files; f; f = f->next) {
    if (!f->pending) continue;
    f->pending = 0;
    start_read(w, f);
  }
}

static void touch(ah_watch *w, const char *path) {
  wfile *f = file_get(w, path, 1);
  if (!f) return;
  f->pending = 1;
  /* Every event restarts the quiet period, so a burst of writes (or the
   * steps of a rename) is one change. */
  uv_timer_start(&w->debounce, on_debounce, w->debounce_ms, 0);
}

static int add_dir(ah_watch *w, const char *path);

static void on_event(uv_fs_event_t *h, const char *name, int events, int status) {
  wdir *d = (wdir *)h;
  ah_watch *w = d->w;
  char path[4096];
  struct stat st;
  (void)events;
  if (status < 0 || !name || w->closing) return;
  if ((size_t)snprintf(path, sizeof path, "%s/%s", d->path, name) >= sizeof path)
    return;
  if (is_lua(name)) {
    touch(w, path);
  } else if (name[0] != '.' && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    add_dir(w, path); /* a new subdirectory; already-watched ones are skipped */
  }
}

static void on_file_poll(uv_fs_poll_t *h, int status, const uv_stat_t *prev,
                         const uv_stat_t *curr) {
  ah_watch *w = h->data;
  wfile *f;
  (void)status;
  (void)prev;
  (void)curr;
  for (f = w->files; f; f = f->next)
    if (f->poll == h) touch(w, f->path);
}

/* Every directory record owns an initialised uv_fs_event_t, started unless
 * events are unavailable, and closed by ah__watch_close. */
static int add_dir(ah_watch *w, const char *path) {
  wdir *d;
  size_t n = strlen(path);
  DIR *dir;
  struct dirent *e;
  int rc = 0;
  for (d = w->dirs; d; d = d->next)
    if (strcmp(d->path, path) == 0) return 0;
  if (!(d = calloc(1, sizeof *d + n + 1))) return UV_ENOMEM;
  memcpy(d->path, path, n + 1);
  d->w = w;
  uv_fs_event_init(w->loop, &d->h.ev);
  d->h.ev.data = w;
  w->handles++;
  d->next = w->dirs;
  w->dirs = d;
  if (!w->fallback) {
    rc = uv_fs_event_start(&d->h.ev, on_event, path, 0);
    uv_unref((uv_handle_t *)&d->h.ev); /* watching never keeps a loop alive */
    if (rc == UV_ENOENT || rc == UV_ENOTDIR) return rc;
    /* inotify unavailable or out of watches: poll known files instead. */
    if (rc != 0) w->fallback = 1;
    rc = 0;
  }
  if ((dir = opendir(path))) {
    while ((e = readdir(dir))) {
      char sub[4096];
      struct stat st;
      if (e->d_name[0] == '.') continue;
      if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= sizeof sub)
        continue;
      if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) add_dir(w, sub);
    }
    closedir(dir);
  }
  return rc;
}

/* ---- API -------------------------------------------------------------------- */

int ah__watch_open(ah_watch **out, uv_loop_t *loop, unsigned debounce_ms,
                   ah_watch_cb cb, void *data) {
  ah_watch *w = calloc(1, sizeof *w);
  if (!w) return UV_ENOMEM;
  w->loop = loop;
  w->cb = cb;
  w->data = data;
  w->debounce_ms = debounce_ms;
  uv_timer_init(loop, &w->debounce);
  w->debounce.data = w;
  uv_unref((uv_handle_t *)&w->debounce);
  w->handles = 1;
  *out = w;
  return 0;
}

void *ah__watch_data(ah_watch *w) { return w->data; }

int ah__watch_add(ah_watch *w, const char *dir) {
  struct stat st;
  if (stat(dir, &st) != 0) return UV_ENOENT;
  if (!S_ISDIR(st.st_mode)) return UV_ENOTDIR;
  return add_dir(w, dir);
}

int ah__watch_polling(const ah_watch *w) { return w->fallback; }

void ah__watch_force_polling(ah_watch *w) { w->fallback = 1; }

/* Records the content a file was loaded with, so that a save which leaves
 * it unchanged is not reported; in polling mode it also starts the poll. */
int ah__watch_file(ah_watch *w, const char *path, uint64_t hash) {
  wfile *f = file_get(w, path, 1);
  if (!f) return UV_ENOMEM;
  f->hash = hash;
  f->known = 1;
  if (w->fallback && !f->poll) {
    f->poll = malloc(sizeof *f->poll);
    if (!f->poll) return UV_ENOMEM;
    uv_fs_poll_init(w->loop, f->poll);
    f->poll->data = w;
    uv_fs_poll_start(f->poll, on_file_poll, path, 100);
    uv_unref((uv_handle_t *)f->poll);
    w->handles++;
  }
  return 0;
}

/* Checks every known file now (SIGHUP): changed ones are reported. */
void ah__watch_rescan(ah_watch *w) {
  wfile *f;
  for (f = w->files; f; f = f->next) start_read(w, f);
}

void ah__watch_close(ah_watch *w) {
  wdir *d;
  wfile *f;
  if (w->closing) return;
  w->closing = 1;
  uv_close((uv_handle_t *)&w->debounce, on_handle_closed);
  for (d = w->dirs; d; d = d->next)
    uv_close((uv_handle_t *)&d->h.ev, on_handle_closed);
  for (f = w->files; f; f = f->next)
    if (f->poll) {
      uv_close((uv_handle_t *)f->poll, on_poll_closed);
      f->poll = NULL;
    }
  maybe_free(w);
}
