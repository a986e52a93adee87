/*
 * libFuzzer harness for the response header iterator (host/http.c,
 * ah__http_header_next).  The input is what curl hands the header callback
 * for a final response, put in r->headers as host/http.c puts it; the
 * iterator must end, advance, and give only headers that keep its
 * contract: a non-empty name within the buffer, lower-cased, without ':'
 * or a line end, and a value without a line end or blanks around it.  The
 * same count comes on a second pass (the lower-casing in place must not
 * change what is found).
 */
#include "../../host/host.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t walk(ah_http_req *r) {
  size_t pos = 0, last = 0, n = 0, i;
  ah_http_header h;
  const char *b = r->headers.data, *e = b ? b + r->headers.len : NULL;
  while (ah__http_header_next(r, &pos, &h)) {
    if (pos <= last && n > 0) abort();
    if (pos > r->headers.len) abort();
    last = pos;
    if (h.name_len == 0 || h.name < b || h.name + h.name_len > e) abort();
    if (h.value < b || h.value + h.value_len > e) abort();
    for (i = 0; i < h.name_len; i++)
      if (h.name[i] == ':' || h.name[i] == '\n' || (h.name[i] >= 'A' && h.name[i] <= 'Z')) abort();
    for (i = 0; i < h.value_len; i++)
      if (h.value[i] == '\n') abort();
    if (h.value_len && (h.value[0] == ' ' || h.value[0] == '\t' ||
                        h.value[h.value_len - 1] == ' ' || h.value[h.value_len - 1] == '\t' ||
                        h.value[h.value_len - 1] == '\r')) abort();
    if (++n > r->headers.len) abort();
  }
  if (ah__http_header_next(r, &pos, &h) != 0) abort(); /* stays at the end */
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ah_http_req r;
  size_t n1, n2;
  memset(&r, 0, sizeof r);
  if (size && ah__buf_append(&r.headers, data, size) != 0) abort();
  n1 = walk(&r);
  n2 = walk(&r);
  if (n1 != n2) {
    fprintf(stderr, "header: %zu headers, then %zu\n", n1, n2);
    abort();
  }
  ah__buf_free(&r.headers);
  return 0;
}
