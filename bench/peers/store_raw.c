/* bench/peers/store_raw.c: the physical reference for bench/store, plain
 * sqlite3 from C with nothing in between.
 *
 *   store_raw PATH ROWS BATCH
 *
 * Creates PATH as a fresh database (journal_mode=WAL, synchronous=NORMAL)
 * with the benchmark's table, then inserts ROWS small rows through one
 * prepared, bound-parameter INSERT, wrapping every BATCH rows in
 * BEGIN/COMMIT.  The timed window runs from the first BEGIN to the last
 * COMMIT; CPU is user + system time of the process over that window.  The
 * row count is checked afterwards.  Prints one line:
 *
 *   client=raw mode=batch rows=N seconds=S rows_per_s=R cpu=CPU batch=B
 *
 * Exit status 1 on any SQLite error or a wrong final count, 2 on a usage
 * error.  Built by bench/store with -std=c99 -Wall -Wextra -Werror. */
#define _POSIX_C_SOURCE 200809L
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define BODY_LEN 64

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Reports the connection's last error and exits; every failure here is
 * fatal because a half-done run measures nothing. */
static void fail(sqlite3 *db, const char *what) {
  fprintf(stderr, "store_raw: %s: %s\n", what, db ? sqlite3_errmsg(db) : "out of memory");
  exit(1);
}

static void run(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "store_raw: %s: %s\n", sql, err ? err : "?");
    sqlite3_free(err);
    exit(1);
  }
}

/* The body every client writes for row i: "AAAAAA:SSSSSSSSS:" then 'x' up
 * to 64 bytes, where A is the agent (i mod 64) and S the step (i). */
static void make_body(char *buf, long i) {
  int n = snprintf(buf, BODY_LEN + 1, "%06ld:%09ld:", i % 64, i);
  memset(buf + n, 'x', (size_t)(BODY_LEN - n));
  buf[BODY_LEN] = '\0';
}

static long parse_count(const char *s, const char *name) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 1) {
    fprintf(stderr, "store_raw: %s must be a positive integer, got '%s'\n"
                    "usage: store_raw PATH ROWS BATCH\n", name, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  sqlite3 *db = NULL;
  sqlite3_stmt *ins = NULL, *count = NULL;
  char body[BODY_LEN + 1];
  long rows, batch, i, got;
  double t0, t1, c0, c1;

  if (argc != 4) {
    fprintf(stderr, "usage: store_raw PATH ROWS BATCH\n");
    return 2;
  }
  rows = parse_count(argv[2], "ROWS");
  batch = parse_count(argv[3], "BATCH");

  if (sqlite3_open(argv[1], &db) != SQLITE_OK) fail(db, "open");
  run(db, "PRAGMA journal_mode=WAL");
  run(db, "PRAGMA synchronous=NORMAL");
  run(db, "CREATE TABLE rows(id INTEGER PRIMARY KEY, agent INTEGER NOT NULL, "
          "step INTEGER NOT NULL, body TEXT NOT NULL)");
  if (sqlite3_prepare_v2(db, "INSERT INTO rows(agent, step, body) VALUES (?, ?, ?)", -1, &ins,
                         NULL) != SQLITE_OK)
    fail(db, "prepare INSERT");

  c0 = cpu_seconds();
  t0 = now();
  for (i = 0; i < rows; i++) {
    if (i % batch == 0) run(db, "BEGIN");
    make_body(body, i);
    sqlite3_bind_int64(ins, 1, i % 64);
    sqlite3_bind_int64(ins, 2, i);
    sqlite3_bind_text(ins, 3, body, BODY_LEN, SQLITE_TRANSIENT);
    if (sqlite3_step(ins) != SQLITE_DONE) fail(db, "INSERT");
    sqlite3_reset(ins);
    if ((i + 1) % batch == 0 || i + 1 == rows) run(db, "COMMIT");
  }
  t1 = now();
  c1 = cpu_seconds();

  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM rows", -1, &count, NULL) != SQLITE_OK ||
      sqlite3_step(count) != SQLITE_ROW)
    fail(db, "count");
  got = (long)sqlite3_column_int64(count, 0);
  sqlite3_finalize(count);
  sqlite3_finalize(ins);
  if (sqlite3_close(db) != SQLITE_OK) fail(db, "close");
  if (got != rows) {
    fprintf(stderr, "store_raw: expected %ld rows, found %ld\n", rows, got);
    return 1;
  }
  printf("client=raw mode=batch rows=%ld seconds=%.3f rows_per_s=%.1f cpu=%.3f batch=%ld\n", rows,
         t1 - t0, (double)rows / (t1 - t0), c1 - c0, batch);
  return 0;
}
