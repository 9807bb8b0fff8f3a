/* nullread: reads through a NULL pointer, as Linux answers it: SIGSEGV with si_addr the address read. Without an
 * argument the read is unhandled and the program dies of SIGSEGV (exit 139). With `handled` a SIGSEGV handler catches
 * reads at 0x8 and 0x0 (a NULL struct's field, a NULL byte) and at the last byte of page 0, and leaves each with
 * siglongjmp; prints one line per read and exits 0. Natively the output is the same. */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static sigjmp_buf escape;
static void *volatile fault_addr;
static volatile int fault_code;

static void caught(int sig, siginfo_t *info, void *context) {
  (void)sig;
  (void)context;
  fault_addr = info->si_addr;
  fault_code = info->si_code;
  siglongjmp(escape, 1);
}

/* Kept in a volatile so the compiler sees an ordinary load, not a constant address it warns about. */
static volatile uintptr_t addresses[] = {0x8, 0x0, 0xfff};

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "handled") != 0) {
    printf("nullread: reading 0x8\n");
    fflush(stdout);
    long value = *(volatile long *)addresses[0];
    printf("nullread: read %#lx\n", value);
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = caught;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, NULL);
  int failed = 0;
  for (unsigned i = 0; i < sizeof addresses / sizeof addresses[0]; i++) {
    uintptr_t at = addresses[i];
    if (sigsetjmp(escape, 1) == 0) {
      unsigned char value = *(volatile unsigned char *)at;
      printf("nullread: read %#lx gave %#x, no fault\n", (unsigned long)at, value);
      failed++;
    } else {
      printf("nullread: SIGSEGV reading %#lx: si_addr %p, %s\n", (unsigned long)at, fault_addr,
             fault_code == SEGV_MAPERR ? "SEGV_MAPERR" : "another si_code");
      failed += fault_addr != (void *)at || fault_code != SEGV_MAPERR;
    }
  }
  printf("nullread: %d failed\n", failed);
  return failed != 0;
}
