/* counter: a program for `kiln debug`'s test (tests/gdb.rs), built with DWARF at -O0. Counts in tick() every 10 ms
 * until a debugger sets `done` (or a minute passes), then prints how far it counted and exits 0: a program that is
 * running when gdb attaches, and must run on after gdb detaches. */
#include <stdio.h>
#include <time.h>

volatile int done;
volatile long count;

__attribute__((noinline)) void tick(long n) {
  count = n;
}

int main(void) {
  struct timespec pause = {0, 10 * 1000 * 1000};
  printf("counter: started\n");
  fflush(stdout);
  for (long n = 1; !done && n <= 6000; n++) {
    tick(n);
    nanosleep(&pause, NULL);
  }
  printf("counter: %s after %ld\n", done ? "stopped by gdb" : "gave up", count);
  return 0;
}
