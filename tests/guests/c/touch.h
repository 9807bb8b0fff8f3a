/* touch.h: whether touching a byte faults, for the guests that check protections. The program calls catch_faults()
 * first (or installs on_segv as its SIGSEGV handler itself). A write stores TOUCH_WRITES (7 unless the program
 * defines it first). */
#ifndef KILN_TOUCH_H
#define KILN_TOUCH_H
#include <setjmp.h>
#include <signal.h>
#include <string.h>

#ifndef TOUCH_WRITES
#define TOUCH_WRITES 7
#endif

static sigjmp_buf escape;
static void on_segv(int sig) {
  (void)sig;
  siglongjmp(escape, 1);
}

/* Makes on_segv the SIGSEGV handler, for faults() to come back from each fault it provokes. */
static void catch_faults(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_segv;
  sa.sa_flags = SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
}

/* Whether touching `p` (a write if `write`) faults. */
static int faults(volatile char *p, int write) {
  if (sigsetjmp(escape, 1)) return 1;
  if (write)
    *p = TOUCH_WRITES;
  else
    (void)*p;
  return 0;
}
#endif
