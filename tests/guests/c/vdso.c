/* vdso: the clock through the vDSO (AT_SYSINFO_EHDR), as musl's clock_gettime, gettimeofday, time and sched_getcpu
 * use it: consistent with the syscall, monotonic, the errors Linux gives, and a bad pointer faulting in the program.
 * Makes exactly one clock_gettime syscall (the comparison); everything else must not enter the kernel. Each check
 * prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static sigjmp_buf escape;
static void jump_out(int sig) {
  (void)sig;
  siglongjmp(escape, 1);
}

int main(void) {
  check(getauxval(AT_SYSINFO_EHDR) != 0, "the program is given a vDSO");

  struct timespec before, by_syscall, after;
  clock_gettime(CLOCK_MONOTONIC, &before);
  syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &by_syscall);
  clock_gettime(CLOCK_MONOTONIC, &after);
  check(ns(before) <= ns(by_syscall) && ns(by_syscall) <= ns(after), "the vDSO's clock agrees with the syscall's");

  int monotonic = 1;
  struct timespec last = after, now;
  for (int i = 0; i < 100000; i++) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    monotonic &= ns(now) >= ns(last);
    last = now;
  }
  check(monotonic, "100000 readings never go back");

  struct timespec real;
  struct timeval tv;
  clock_gettime(CLOCK_REALTIME, &real);
  gettimeofday(&tv, NULL);
  time_t t = time(NULL);
  check(real.tv_sec > 1600000000 && tv.tv_sec - real.tv_sec <= 1 && t - tv.tv_sec <= 1 && t >= real.tv_sec,
        "CLOCK_REALTIME, gettimeofday and time agree");

  struct timespec res;
  check(clock_getres(CLOCK_MONOTONIC, &res) == 0 && res.tv_sec == 0 && res.tv_nsec > 0, "clock_getres");
  int cpu = sched_getcpu();
  check(cpu >= 0 && cpu < sysconf(_SC_NPROCESSORS_ONLN), "sched_getcpu names one of the CPUs");
  errno = 0;
  check(clock_gettime(1234, &now) == -1 && errno == EINVAL, "an unknown clock is EINVAL");

  signal(SIGSEGV, jump_out);
  int faulted = 0;
  if (sigsetjmp(escape, 1) == 0) {
    clock_gettime(CLOCK_MONOTONIC, (struct timespec *)16);
  } else {
    faulted = 1;
  }
  check(faulted, "a bad pointer is the program's SIGSEGV");

  printf("vdso: %d failed\n", failures);
  return failures != 0;
}
