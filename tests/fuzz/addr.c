/*
 * libFuzzer harness for the private-address guard (host/http.c,
 * ah__http_addr_blocked): the input's first byte picks a family (even:
 * IPv4, odd: IPv6), the next 4 or 16 bytes are the address.  The answer
 * must equal the policy written out again here as data, a table of
 * prefixes matched by one generic routine (docs/http.md, "The
 * private-address guard"): an IPv4 address is refused in the IANA
 * special-purpose ranges; an IPv6 address outside global unicast 2000::/3,
 * or in 2001::/23, 2001:db8::/32 or 3fff::/20, except that the NAT64
 * prefix 64:ff9b::/96 and 6to4 2002::/16 are judged by the IPv4 address
 * they carry.  Any other family is refused.
 */
#include "../../host/host.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct prefix {
  unsigned char bytes[16];
  int bits;
} prefix;

static const prefix v4_refused[] = {
    {{0}, 8},           {{10}, 8},           {{100, 64}, 10},     {{127}, 8},
    {{169, 254}, 16},   {{172, 16}, 12},     {{192, 0, 0}, 24},   {{192, 0, 2}, 24},
    {{192, 88, 99}, 24}, {{192, 168}, 16},   {{198, 18}, 15},     {{198, 51, 100}, 24},
    {{203, 0, 113}, 24}, {{224}, 4},          {{240}, 4},
};

static const prefix v6_global = {{0x20}, 3};
static const prefix v6_refused[] = {
    {{0x20, 0x01, 0x00}, 23}, {{0x20, 0x01, 0x0d, 0xb8}, 32}, {{0x3f, 0xff}, 20}};
static const prefix v6_nat64 = {{0, 0x64, 0xff, 0x9b}, 96};
static const prefix v6_6to4 = {{0x20, 0x02}, 16};

static int in_prefix(const unsigned char *a, const prefix *p) {
  int i;
  for (i = 0; i < p->bits; i++) {
    int bit = 7 - (i % 8);
    if (((a[i / 8] >> bit) & 1) != ((p->bytes[i / 8] >> bit) & 1)) return 0;
  }
  return 1;
}

static int in_any(const unsigned char *a, const prefix *ps, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (in_prefix(a, &ps[i])) return 1;
  return 0;
}

static int v4_expected(const unsigned char *a) {
  return in_any(a, v4_refused, sizeof v4_refused / sizeof v4_refused[0]);
}

static int v6_expected(const unsigned char *a) {
  if (in_prefix(a, &v6_nat64)) return v4_expected(a + 12);
  if (in_prefix(a, &v6_6to4)) return v4_expected(a + 2);
  if (!in_prefix(a, &v6_global)) return 1;
  return in_any(a, v6_refused, sizeof v6_refused / sizeof v6_refused[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if ((data[0] & 1) == 0) {
    struct sockaddr_in sin;
    if (size < 5) return 0;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    memcpy(&sin.sin_addr, data + 1, 4);
    if (ah__http_addr_blocked((const struct sockaddr *)&sin) != v4_expected(data + 1))
      abort();
  } else {
    struct sockaddr_in6 sin6;
    if (size < 17) return 0;
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    memcpy(&sin6.sin6_addr, data + 1, 16);
    if (ah__http_addr_blocked((const struct sockaddr *)&sin6) != v6_expected(data + 1))
      abort();
  }
  if (size >= 2 && data[0] == 0xff) {
    /* Another family is always refused. */
    struct sockaddr sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_family = AF_UNIX;
    if (!ah__http_addr_blocked(&sa)) abort();
  }
  return 0;
}
