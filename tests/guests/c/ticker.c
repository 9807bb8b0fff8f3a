/* Counts, one line every 20 ms, forever: "tick N". A snapshot test checks that a restored ticker goes on from the
 * number after the last one it printed before the snapshot (its state is guest memory and registers, nothing else).
 *
 *   ticker */
#include <stdio.h>
#include <time.h>

int main(void) {
  struct timespec pause = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
  for (unsigned long n = 1;; n++) {
    printf("tick %lu\n", n);
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
