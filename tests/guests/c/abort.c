/* abort: abort() raises SIGABRT at itself; the default action ends the program, and the shell reports 134. With
 * `assert`, an assertion fails instead (musl's __assert_fail prints the expression and aborts). */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static void check_order(int argc, char **argv) {
  assert(argc < 2 || strcmp(argv[1], "assert") != 0);
}

int main(int argc, char **argv) {
  printf("abort: aborting\n");
  fflush(stdout);
  check_order(argc, argv);
  abort();
}
