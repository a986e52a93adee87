/*
 * The request and response helpers of host/http.c that need no transfer:
 * HTTP tokens, the URL check, request headers (refusing what could smuggle
 * a header), the iterator over a response's headers and the private-address
 * guard's table (ah__http_addr_blocked) and interface check.  Transfers
 * themselves are covered by the Lua specs against the local test server.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
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

/* Whether the guard blocks a literal address (IPv4 or IPv6). */
static int blocked(const char *ip) {
  struct sockaddr_in a4;
  struct sockaddr_in6 a6;
  memset(&a4, 0, sizeof a4);
  memset(&a6, 0, sizeof a6);
  if (inet_pton(AF_INET, ip, &a4.sin_addr) == 1) {
    a4.sin_family = AF_INET;
    return ah__http_addr_blocked((struct sockaddr *)&a4);
  }
  if (inet_pton(AF_INET6, ip, &a6.sin6_addr) == 1) {
    a6.sin6_family = AF_INET6;
    return ah__http_addr_blocked((struct sockaddr *)&a6);
  }
  return -1;
}

static void test_addr_blocked(void) {
  static const char *const refused[] = {
      "0.0.0.0", "0.255.255.255", "10.0.0.1", "100.64.0.0", "100.127.255.255",
      "127.0.0.1", "127.255.255.254", "169.254.169.254", "172.16.0.0", "172.31.255.255",
      "192.0.0.0", "192.0.0.255", "192.0.2.0", "192.0.2.255", "192.88.99.1",
      "192.168.0.1", "198.18.0.0", "198.19.255.255", "198.51.100.0", "198.51.100.255",
      "203.0.113.0", "203.0.113.255", "224.0.0.1", "239.255.255.255", "240.0.0.0",
      "255.255.255.255",
      "::", "::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8", "::8.8.8.8", "64:ff9b::7f00:1",
      "64:ff9b::c0a8:101", "64:ff9b::c000:201", "64:ff9b:1::808:808", "100::1",
      "100:0:0:1::1", "2001::1", "2001:1ff:ffff::1", "2001:db8::", "2001:db8:ffff::1",
      "2002:a00:1::1", "2002:7f00:1::", "3fff::1", "3fff:fff:ffff::1", "5f00::1",
      "fc00::1", "fdff:ffff::1", "fe80::1", "febf::1", "fec0::1", "ff02::1", "ff0e::1",
  };
  static const char *const allowed[] = {
      "1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.1", "100.63.255.255", "100.128.0.0",
      "126.255.255.255", "128.0.0.1", "169.253.255.255", "172.15.255.255", "172.32.0.0",
      "192.0.1.255", "192.0.3.0", "192.88.98.1", "192.167.255.255", "192.169.0.0",
      "198.17.255.255", "198.20.0.0", "198.51.99.1", "198.51.101.1", "203.0.112.1",
      "203.0.114.1", "223.255.255.255",
      "2606:4700::1111", "2a00:1450::1", "64:ff9b::808:808", "2002:808:808::1",
      "2001:200::1", "2001:db9::1", "2001:db7::1", "3fff:1000::1", "3ffe::1",
  };
  size_t i;
  int bad = 0;
  struct sockaddr other;
  for (i = 0; i < sizeof refused / sizeof *refused; i++)
    if (blocked(refused[i]) != 1) {
      printf("# not blocked: %s\n", refused[i]);
      bad++;
    }
  CHECK(bad == 0, "every special-purpose range is blocked, at both ends");
  bad = 0;
  for (i = 0; i < sizeof allowed / sizeof *allowed; i++)
    if (blocked(allowed[i]) != 0) {
      printf("# blocked: %s\n", allowed[i]);
      bad++;
    }
  CHECK(bad == 0, "global addresses next to them are allowed");
  memset(&other, 0, sizeof other);
  other.sa_family = AF_UNIX;
  CHECK(ah__http_addr_blocked(&other) == 1, "another family is blocked");
}

/* Every address of this machine's interfaces is refused, whatever range
 * it is in (on a machine whose only addresses are special-purpose ones the
 * table alone would refuse them; the check is then on loopback at least). */
/* A name that resolves to a refused address and another: curl falls back
 * to the other, and the outcome is that connection's, not "forbidden". */
static void test_fallback_kind(void) {
  ah_http_req r;
  int retry = -1;
  memset(&r, 0, sizeof r);
  snprintf(r.blocked, sizeof r.blocked, "10.1.2.3");
  CHECK(ah__http_error_kind(&r, CURLE_OK, &retry) == NULL,
        "refused one address, connected to the next: success");
  CHECK(strcmp(ah__http_error_kind(&r, CURLE_COULDNT_CONNECT, &retry), "forbidden") == 0 &&
            retry == 0,
        "refused an address and found no other: forbidden, not retryable");
  CHECK(strcmp(ah__http_error_kind(&r, CURLE_OPERATION_TIMEDOUT, &retry), "timeout") == 0 &&
            retry == 1,
        "refused one address, the next timed out: timeout");
  CHECK(strcmp(ah__http_error_kind(&r, CURLE_GOT_NOTHING, &retry), "connect") == 0,
        "refused one address, the next closed: connect");
  r.blocked[0] = 0;
  CHECK(strcmp(ah__http_error_kind(&r, CURLE_COULDNT_CONNECT, &retry), "connect") == 0 &&
            retry == 1,
        "nothing refused, no connection: connect, retryable");
}

static void test_addr_local(void) {
  uv_loop_t loop;
  ah_http *h = NULL;
  uv_interface_address_t *v;
  int n = 0, i, bad = 0;
  uv_loop_init(&loop);
  CHECK(ah__http_open(&h, &loop, 0, 0) == 0, "open");
  if (uv_interface_addresses(&v, &n) == 0) {
    for (i = 0; i < n; i++)
      if (ah__http_addr_refused(h, (const struct sockaddr *)&v[i].address.address4) != 1)
        bad++;
    uv_free_interface_addresses(v, n);
  }
  CHECK(n > 0 && bad == 0, "every interface address is refused");
  ah__http_close(h);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0, "closed");
}

int main(void) {
  test_checks();
  test_request_headers();
  test_response_headers();
  test_addr_blocked();
  test_addr_local();
  test_fallback_kind();
  return ctest_done();
}
