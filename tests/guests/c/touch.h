/* touch.h: whether touching a byte faults, for the guests that check protections. The program installs on_segv as
 * its SIGSEGV handler (SA_NODEFER not needed: siglongjmp restores the mask). A write stores TOUCH_WRITES (7 unless
 * the program defines it first). */
#ifndef KILN_TOUCH_H
#define KILN_TOUCH_H
#include <setjmp.h>

#ifndef TOUCH_WRITES
#define TOUCH_WRITES 7
#endif

static sigjmp_buf escape;
static void on_segv(int sig) {
  (void)sig;
  siglongjmp(escape, 1);
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
