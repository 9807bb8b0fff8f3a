/* check.h: the self-checks the guest programs make, one line each ("ok: what" or "FAILED: what"), the failures
 * counted for the exit code. */
#ifndef KILN_CHECK_H
#define KILN_CHECK_H
#include <stdio.h>

static int failures;

static void check(int ok, const char *what) {
  printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) failures++;
}
#endif
