/* bignr: a syscall number far beyond Linux's (100000). Linux answers -ENOSYS; Kiln's trampoline covers numbers below
 * 0xf00 only, so kiln must end the VM naming the number (SIGSYS, exit 159) rather than fault somewhere obscure. */
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
  printf("bignr: calling syscall 100000\n");
  fflush(stdout);
  long r = syscall(100000);
  printf("bignr: returned %ld\n", r);
  return 0;
}
