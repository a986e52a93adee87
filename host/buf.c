/*
 * The growable byte buffer of the host layer (ah_buf): response headers
 * and bodies, the lines of the server-sent events parser, a subprocess's
 * output and a store job's result text all grow through these calls.
 *
 * The content is data[0..len).  Capacity doubles (from BUF_MIN), so that
 * appending n bytes in small pieces costs O(n) copies in all.  Relies on
 * the C library only.
 */
#include "host.h"

#include <stdlib.h>
#include <string.h>

#define BUF_MIN 256

int ah__buf_reserve(ah_buf *b, size_t n) {
  size_t need, cap;
  char *d;
  if (n > (size_t)-1 - b->len) return UV_ENOMEM; /* no size can hold it */
  need = b->len + n;
  if (need <= b->cap) return 0;
  cap = b->cap ? b->cap : BUF_MIN;
  while (cap < need) cap = cap > (size_t)-1 / 2 ? need : cap * 2;
  if (!(d = realloc(b->data, cap))) return UV_ENOMEM;
  b->data = d;
  b->cap = cap;
  return 0;
}

int ah__buf_append(ah_buf *b, const void *p, size_t n) {
  int rc = n + 1 == 0 ? UV_ENOMEM : ah__buf_reserve(b, n + 1);
  if (rc) return rc;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

void ah__buf_reset(ah_buf *b) {
  b->len = 0;
  if (b->data) b->data[0] = '\0';
}

void ah__buf_free(ah_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
