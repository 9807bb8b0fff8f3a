/* bigbss: a program whose zero-initialised data alone is 32 MiB. It fits the default 64 MiB VM; with --memory 16M
 * kiln must refuse it up front with a one-line "does not fit" message, not crash or half-boot. */
#include <stdio.h>

/* Global and read back, so that the compiler keeps all of it. */
char big[32 << 20];

int main(void) {
  size_t touched = 0;
  for (size_t i = 0; i < sizeof big; i += 4096) big[i] = 1;
  for (size_t i = 0; i < sizeof big; i += 4096) touched += big[i];
  printf("bigbss: touched %zu MiB\n", touched * 4096 >> 20);
  return 0;
}
