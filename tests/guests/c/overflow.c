/* overflow: unbounded recursion runs off the end of the main stack. Natively SIGSEGV (139); under Kiln the crash
 * report names it a stack overflow. */
#include <stdio.h>

static int depth(volatile char *prev) {
  volatile char frame[1024];
  frame[0] = prev ? prev[0] + 1 : 0;
  return depth(frame) + frame[1023];
}

int main(void) {
  printf("overflow: recursing\n");
  fflush(stdout);
  return depth(0);
}
