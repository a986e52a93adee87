/*
 * The request and response helpers of host/http.c that need no transfer:
 * HTTP tokens, the URL check, request headers (refusing what could smuggle
 * a header) and the iterator over a response's headers.  Transfers
 * themselves are covered by the Lua specs against the local test server.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <string.h>

static int header_is(const ah_http_header *h, const char *name, const char *value) {
  return h->name_len == strlen(name) && memcmp(h->name, name, h->name_len) == 0 &&
         h->value_len == strlen(value) && memcmp(h->value, value, h->value_len) == 0;
}

static void test_checks(void) {
  char longurl[AH_HTTP_MAX_URL + 2];
  CHECK(ah__http_token("GET") && ah__http_token("X-Custom_1.a~"), "tokens");
  CHECK(!ah__http_token("") && !ah__http_token("G T") && !ah__http_token("a:b") &&
            !ah__http_token("a\r"),
        "not tokens: empty, space, colon, control");
  CHECK(ah__http_check_url("http://a/", 9) == 0 && ah__http_check_url("HTTPS://a/", 10) == 0,
        "http and https in any case");
  CHECK(ah__http_check_url("ftp://a/", 8) == UV_EPROTONOSUPPORT, "ftp is refused");
  CHECK(ah__http_check_url("http://a/ b", 11) == UV_EINVAL &&
            ah__http_check_url("http://a/\x7f", 10) == UV_EINVAL,
        "a space or a control character is refused");
  memset(longurl, 'a', sizeof longurl);
  memcpy(longurl, "http://a/", 9);
  CHECK(ah__http_check_url(longurl, AH_HTTP_MAX_URL) == 0, "a URL of the longest length");
  CHECK(ah__http_check_url(longurl, AH_HTTP_MAX_URL + 1) == UV_ENAMETOOLONG,
        "one byte longer is refused");
}

static void test_request_headers(void) {
  ah_http_req r;
  char big[600];
  memset(&r, 0, sizeof r);
  memset(big, 'v', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  CHECK(ah__http_req_header(&r, "X-A", "1", 1) == 0, "a header");
  CHECK(ah__http_req_header(&r, "X-Empty", "", 0) == 0, "an empty value");
  CHECK(ah__http_req_header(&r, "X-Big", big, strlen(big)) == 0, "a long value");
  CHECK(ah__http_req_header(&r, "bad name", "x", 1) == UV_EINVAL, "a bad name");
  CHECK(ah__http_req_header(&r, "X-B", "a\r\nInjected: 1", 14) == UV_EILSEQ,
        "a line break in a value");
  CHECK(ah__http_req_header(&r, "X-B", "a\0b", 3) == UV_EILSEQ, "a NUL in a value");
  CHECK(r.header_list != NULL, "the list is kept in the request");
  ah__http_req_free(&r);
  CHECK(r.header_list == NULL, "and freed with it");
}

static void test_response_headers(void) {
  static const char block[] =
      "HTTP/1.1 301 Moved\r\nLocation: /b\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Type:  text/plain \r\nX-Rep: 1\r\n"
      "no colon here\r\n: no name\r\nX-REP:\t2\r\nEmpty:\r\nLast: x";
  ah_http_req r;
  ah_http_header h;
  size_t pos = 0;
  memset(&r, 0, sizeof r);
  CHECK(ah__http_header_next(&r, &pos, &h) == 0, "no headers in an empty buffer");
  /* A transfer keeps only its last response's headers (each status line
   * empties the buffer); this block holds two responses to show that
   * status lines are skipped wherever they are. */
  ah__buf_append(&r.headers, block, sizeof block - 1);
  CHECK(ah__http_header_next(&r, &pos, &h) && header_is(&h, "location", "/b"), "location");
  CHECK(ah__http_header_next(&r, &pos, &h) && header_is(&h, "content-type", "text/plain"),
        "names lower-cased, values trimmed");
  CHECK(ah__http_header_next(&r, &pos, &h) && header_is(&h, "x-rep", "1"), "x-rep 1");
  CHECK(ah__http_header_next(&r, &pos, &h) && header_is(&h, "x-rep", "2"),
        "lines without a name skipped, a repeated name given again");
  CHECK(ah__http_header_next(&r, &pos, &h) && header_is(&h, "empty", ""), "an empty value");
  CHECK(ah__http_header_next(&r, &pos, &h) && header_is(&h, "last", "x"),
        "a last line without a line end");
  CHECK(ah__http_header_next(&r, &pos, &h) == 0 && ah__http_header_next(&r, &pos, &h) == 0,
        "then the end, and it stays there");
  ah__http_req_free(&r);
}

int main(void) {
  test_checks();
  test_request_headers();
  test_response_headers();
  return ctest_done();
}
