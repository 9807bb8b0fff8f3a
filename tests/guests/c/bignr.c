/* bignr: a syscall number far beyond Linux's (100000). Linux answers -ENOSYS, and so does Kiln from a site the
 * rewriter moved to a stub (any site libc makes). A site it could not move (here: a branch right before the `syscall`
 * and one right after) goes through Kiln's page-0 trampoline, which covers numbers below 0xf00 only: there kiln must
 * end the VM naming the number (SIGSYS, exit 159) rather than fault somewhere obscure. */
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static long cramped_syscall(long nr) {
  long ret;
  __asm__ volatile("jmp 1f\n1: syscall\njmp 2f\n2:" : "=a"(ret) : "a"(nr) : "rcx", "r11", "memory");
  return ret;
}

int main(void) {
  printf("bignr: calling syscall 100000\n");
  fflush(stdout);
  long r = syscall(100000);
  printf("bignr: returned %ld (%s)\n", r, r == -1 && errno == ENOSYS ? "ENOSYS" : "not ENOSYS");
  printf("bignr: calling syscall 100000 from a site that stays in place\n");
  fflush(stdout);
  r = cramped_syscall(100000);
  printf("bignr: returned %ld\n", r);
  return 0;
}
