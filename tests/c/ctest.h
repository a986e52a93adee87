/*
 * A minimal TAP producer for the C tests: CHECK records one assertion,
 * ctest_done prints the plan and returns the exit status.
 */
#ifndef CTEST_H
#define CTEST_H
#include <stdio.h>

static int ctest_n, ctest_failed;

#define CHECK(cond, name)                                                   \
  do {                                                                      \
    ctest_n++;                                                              \
    if (cond) {                                                             \
      printf("ok %d - %s\n", ctest_n, name);                                \
    } else {                                                                \
      ctest_failed++;                                                       \
      printf("not ok %d - %s (%s:%d: %s)\n", ctest_n, name, __FILE__,       \
             __LINE__, #cond);                                              \
    }                                                                       \
  } while (0)

static int ctest_done(void) {
  printf("1..%d\n", ctest_n);
  return ctest_failed ? 1 : 0;
}
#endif
