/*
 * libFuzzer harness for URL classification (host/http.c):
 * ah__http_check_url against its contract written out again here (length
 * first, then spaces and control characters, then the scheme), and
 * ah__http_safe_url and ah__http_token on the same text, which must stay
 * within their buffers.  Every caller passes a NUL-terminated string (a
 * Lua string), so the input is copied with a NUL after it.
 */
#include "../../host/host.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int expected(const char *u, size_t n) {
  size_t i;
  if (n > AH_HTTP_MAX_URL) return UV_ENAMETOOLONG;
  for (i = 0; i < n; i++)
    if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] == 0x7f) return UV_EINVAL;
  if ((n >= 7 && strncasecmp(u, "http://", 7) == 0) ||
      (n >= 8 && strncasecmp(u, "https://", 8) == 0))
    return 0;
  return UV_EPROTONOSUPPORT;
}

static int token(const char *s, size_t n) {
  size_t i;
  if (n == 0) return 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c && strchr("!#$%&'*+-.^_`|~", c))))
      return 0;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *u = malloc(size + 1), out[64];
  int got, want;
  size_t small;
  if (!u) return 0;
  if (size) memcpy(u, data, size);
  u[size] = '\0';
  got = ah__http_check_url(u, size);
  want = expected(u, size);
  if (got != want) {
    fprintf(stderr, "url: check_url returned %d, the contract says %d\n", got, want);
    abort();
  }
  if (got == 0 || size < 256) {
    small = size % sizeof out + 1;
    ah__http_safe_url(u, out, small);
    if (memchr(out, '\0', small) == NULL) abort();
  }
  if (memchr(u, '\0', size) == NULL && ah__http_token(u) != token(u, size)) {
    fprintf(stderr, "url: ah__http_token disagrees with RFC 9110's tchar\n");
    abort();
  }
  free(u);
  return 0;
}
