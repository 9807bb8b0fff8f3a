/* overflow: deep recursion (far deeper than any stack) runs off the end of the main stack. Natively SIGSEGV (139);
 * under Kiln the crash report names it a stack overflow. */
#include <stdio.h>

static long depth(volatile char *prev, long n) {
  volatile char frame[1024];
  frame[0] = prev ? prev[0] + 1 : 0;
  if (n == 0) return frame[0];
  return depth(frame, n - 1) + frame[1023];
}

int main(int argc, char **argv) {
  (void)argv;
  printf("overflow: recursing\n");
  fflush(stdout);
  return (int)depth(0, (long)argc << 40);
}
