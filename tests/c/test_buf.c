/*
 * The host's growable buffer (host/buf.c): appends keep a NUL after the
 * content, reserve leaves room for a direct write, reset keeps the memory
 * and free leaves an empty, usable buffer.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <string.h>

int main(void) {
  ah_buf b;
  char big[5000];
  char *kept;
  memset(&b, 0, sizeof b);
  CHECK(ah__buf_append(&b, "", 0) == 0 && b.data && b.data[0] == '\0' && b.len == 0,
        "an empty append makes an empty C string");
  CHECK(ah__buf_append(&b, "abc", 3) == 0 && ah__buf_append(&b, "de", 2) == 0,
        "append twice");
  CHECK(b.len == 5 && strcmp(b.data, "abcde") == 0, "the content and its NUL");
  memset(big, 'x', sizeof big);
  CHECK(ah__buf_append(&b, big, sizeof big) == 0 && b.len == 5 + sizeof big &&
            b.cap > b.len && b.data[b.len] == '\0',
        "it grows past its first capacity");
  CHECK(ah__buf_reserve(&b, 100000) == 0 && b.cap - b.len >= 100000,
        "reserve leaves room for a direct write");
  CHECK(ah__buf_reserve(&b, (size_t)-1) == UV_ENOMEM && b.len == 5 + sizeof big,
        "an impossible reserve fails and leaves the buffer as it was");
  kept = b.data;
  ah__buf_reset(&b);
  CHECK(b.len == 0 && b.data == kept && b.data[0] == '\0', "reset keeps the memory");
  ah__buf_free(&b);
  CHECK(b.data == NULL && b.len == 0 && b.cap == 0, "free empties it");
  CHECK(ah__buf_append(&b, "again", 5) == 0 && strcmp(b.data, "again") == 0,
        "a freed buffer is usable again");
  ah__buf_free(&b);
  return ctest_done();
}
