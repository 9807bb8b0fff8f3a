/* abort: abort() raises SIGABRT at itself; the default action ends the program, and the shell reports 134. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  printf("abort: aborting\n");
  fflush(stdout);
  abort();
}
