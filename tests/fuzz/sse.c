/*
 * libFuzzer harness for the text/event-stream parser (host/sse.c).
 *
 * The input is one stream.  It is parsed twice: in one chunk, and split
 * into chunks whose sizes come from the input itself (so that line ends,
 * the CR of a CRLF and the BOM are cut everywhere), and the two runs must
 * hand the callback the same events and end with the same status.  Every
 * event must also keep the parser's contract: data is NUL-terminated at
 * data_len, event and id are strings, retry is -1 or a decimal value.  A
 * small max (the first byte picks it) reaches the "too big" paths.
 */
#include "../../host/host.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct trace {
  ah_buf log;
  int events;
} trace;

static void trace_add(trace *t, const char *p, size_t n) {
  if (ah__buf_append(&t->log, p, n) != 0) abort();
}

static int on_event(void *ud, const ah_sse_event *ev) {
  trace *t = ud;
  char num[64];
  if (!ev->event || !ev->data || !ev->id) abort();
  if (ev->data[ev->data_len] != '\0') abort();
  if (ev->retry < -1) abort();
  snprintf(num, sizeof num, "|%zu|%ld|", ev->data_len, ev->retry);
  trace_add(t, ev->event, strlen(ev->event) + 1);
  trace_add(t, ev->data, ev->data_len);
  trace_add(t, num, strlen(num));
  trace_add(t, ev->id, strlen(ev->id) + 1);
  t->events++;
  return 0;
}

/* Parses s[0..n) in chunks of the sizes cuts gives (all at once when
 * ncuts is 0); returns the status of the first feed that failed, or 0. */
static int parse(const char *s, size_t n, size_t max, const uint8_t *cuts,
                 size_t ncuts, trace *t) {
  ah_sse p;
  size_t off = 0, k = 0;
  int rc = 0;
  ah__sse_init(&p, max);
  while (off < n && rc == 0) {
    size_t len = ncuts ? (size_t)cuts[k++ % ncuts] % 16 + 1 : n - off;
    if (len > n - off) len = n - off;
    /* An empty chunk must change nothing. */
    if (ncuts && (rc = ah__sse_feed(&p, s + off, 0, on_event, t)) != 0) break;
    rc = ah__sse_feed(&p, s + off, len, on_event, t);
    off += len;
  }
  ah__sse_free(&p);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const size_t maxes[4] = {16, 64, 1024, 1 << 20};
  trace whole, split;
  size_t max, ncuts;
  int rc1, rc2;
  if (size < 2) return 0;
  max = maxes[data[0] & 3];
  ncuts = (data[1] & 7) + 1;
  data += 2;
  size -= 2;
  if (ncuts > size) ncuts = size;
  memset(&whole, 0, sizeof whole);
  memset(&split, 0, sizeof split);
  rc1 = parse((const char *)data, size, max, NULL, 0, &whole);
  rc2 = parse((const char *)data, size, max, data, ncuts, &split);
  if (rc1 != rc2 || whole.events != split.events || whole.log.len != split.log.len ||
      (whole.log.len && memcmp(whole.log.data, split.log.data, whole.log.len) != 0)) {
    fprintf(stderr, "sse: one chunk and split chunks disagree (rc %d/%d, events %d/%d)\n",
            rc1, rc2, whole.events, split.events);
    abort();
  }
  ah__buf_free(&whole.log);
  ah__buf_free(&split.log);
  return 0;
}
