/* faults: a program's own handlers for the faults it makes (SIGSEGV, SIGILL, SIGFPE, SIGTRAP), as Linux runs them:
 * si_code and si_addr, the faulting instruction's registers in the ucontext, resuming there (every register and the
 * flags as they were, or as the handler changed them), siglongjmp out, a stack overflow handled on the alternate
 * stack. Each check prints one line; exits 0 when all held. With the argument `breakpoint`: an int3 without a handler,
 * which ends the program with SIGTRAP (exit 133). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include "check.h"

#define PAGE 4096

static volatile sig_atomic_t faults;
static volatile int last_signal, last_code;
static void *volatile last_addr;
static volatile uintptr_t last_rip;
static sigjmp_buf escape;

static void record(int sig, siginfo_t *info, void *context) {
  faults++;
  last_signal = sig;
  last_code = info->si_code;
  last_addr = info->si_addr;
  last_rip = (uintptr_t)((ucontext_t *)context)->uc_mcontext.gregs[REG_RIP];
}

/* Makes the faulting page accessible and returns: the access runs again and succeeds. */
static void unprotect(int sig, siginfo_t *info, void *context) {
  record(sig, info, context);
  uintptr_t page = (uintptr_t)info->si_addr & ~(uintptr_t)(PAGE - 1);
  mprotect((void *)page, PAGE, PROT_READ | PROT_WRITE);
}

static void jump_out(int sig, siginfo_t *info, void *context) {
  record(sig, info, context);
  siglongjmp(escape, 1);
}

/* Skips the 2-byte ud2 by editing the saved %rip. */
static void skip_ud2(int sig, siginfo_t *info, void *context) {
  record(sig, info, context);
  ((ucontext_t *)context)->uc_mcontext.gregs[REG_RIP] += 2;
}

static void handle(int sig, void (*handler)(int, siginfo_t *, void *), int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | flags;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

long registers_after[14];
unsigned char carry_after;

/* Every general register holds a known value when a load from `page` faults; they must hold the same after the
 * handler made the page readable and the load ran again. The carry flag too. */
static void registers_survive(char *page) {
  register char *p __asm__("r15") = page;
  __asm__ volatile(
      "mov $0x1001, %%rax\n mov $0x1002, %%rbx\n mov $0x1003, %%rcx\n mov $0x1004, %%rdx\n"
      "mov $0x1005, %%rsi\n mov $0x1006, %%rdi\n mov $0x1008, %%r8\n mov $0x1009, %%r9\n"
      "mov $0x100a, %%r10\n mov $0x100b, %%r11\n mov $0x100c, %%r12\n mov $0x100d, %%r13\n"
      "mov $0x100e, %%r14\n"
      "stc\n"
      "movzbl (%%r15), %%r15d\n"
      "setc carry_after(%%rip)\n"
      "mov %%rax, registers_after+0(%%rip)\n mov %%rbx, registers_after+8(%%rip)\n"
      "mov %%rcx, registers_after+16(%%rip)\n mov %%rdx, registers_after+24(%%rip)\n"
      "mov %%rsi, registers_after+32(%%rip)\n mov %%rdi, registers_after+40(%%rip)\n"
      "mov %%r8, registers_after+48(%%rip)\n mov %%r9, registers_after+56(%%rip)\n"
      "mov %%r10, registers_after+64(%%rip)\n mov %%r11, registers_after+72(%%rip)\n"
      "mov %%r12, registers_after+80(%%rip)\n mov %%r13, registers_after+88(%%rip)\n"
      "mov %%r14, registers_after+96(%%rip)\n"
      : "+r"(p)
      :
      : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "memory", "cc");
}

/* Recurses `n` levels deep: far deeper than any stack. */
static long recursion(volatile char *prev, long n) {
  volatile char frame[1024];
  frame[0] = prev ? prev[0] + 1 : 0;
  if (n == 0) return frame[0];
  return recursion(frame, n - 1) + frame[1023];
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "breakpoint") == 0) {
    printf("faults: a breakpoint without a handler\n");
    fflush(stdout);
    __asm__ volatile("int3");
    return 0;
  }
  /* A write to a PROT_NONE page: SEGV_ACCERR at the exact address; the handler gives access and the write runs
   * again, eight pages in a row (lazy allocation, as garbage collectors do it). */
  char *lazy = mmap(NULL, 8 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  handle(SIGSEGV, unprotect, 0);
  long sum = 0;
  for (int i = 0; i < 8; i++) {
    lazy[i * PAGE + 123] = (char)(i + 1);
    sum += lazy[i * PAGE + 123];
  }
  check(faults == 8 && sum == 36, "eight writes to PROT_NONE pages, each resumed after its handler");
  check(last_signal == SIGSEGV && last_code == SEGV_ACCERR && last_addr == lazy + 7 * PAGE + 123,
        "SIGSEGV with SEGV_ACCERR and the exact address");

  volatile char *ro = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  faults = 0;
  ro[42] = 7;
  check(faults == 1 && last_code == SEGV_ACCERR && last_addr == ro + 42 && ro[42] == 7,
        "a write to a read-only page, resumed");

  char *hidden = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  registers_survive(hidden);
  int same = 1;
  long expected[] = {0x1001, 0x1002, 0x1003, 0x1004, 0x1005, 0x1006, 0x1008,
                     0x1009, 0x100a, 0x100b, 0x100c, 0x100d, 0x100e};
  for (int i = 0; i < 13; i++) same &= registers_after[i] == expected[i];
  check(same && carry_after == 1, "every register and the carry flag survive a fault and its handler");

  handle(SIGSEGV, jump_out, 0);
  faults = 0;
  if (sigsetjmp(escape, 1) == 0) {
    (void)*(volatile char *)0x100000000000;
  }
  check(faults == 1 && last_code == SEGV_MAPERR && last_addr == (void *)0x100000000000,
        "a read of unmapped memory: SEGV_MAPERR, and siglongjmp out of the handler");
  faults = 0;
  if (sigsetjmp(escape, 1) == 0) {
    (void)*(volatile char *)0x100000000000;
  }
  check(faults == 1, "the same again: siglongjmp gave back the signal mask");

  handle(SIGILL, jump_out, 0);
  if (sigsetjmp(escape, 1) == 0) {
    __builtin_trap();
  }
  check(last_signal == SIGILL && last_code == ILL_ILLOPN && last_addr == (void *)last_rip,
        "ud2: SIGILL with ILL_ILLOPN at the instruction");
  handle(SIGILL, skip_ud2, 0);
  faults = 0;
  __asm__ volatile("ud2");
  check(faults == 1, "a handler that moves the saved %rip past ud2 resumes there");

  handle(SIGFPE, jump_out, 0);
  volatile int zero = 0, hundred = 100;
  if (sigsetjmp(escape, 1) == 0) {
    printf("%d\n", hundred / zero);
  }
  check(last_signal == SIGFPE && last_code == FPE_INTDIV, "division by zero: SIGFPE with FPE_INTDIV");

  handle(SIGTRAP, record, 0);
  faults = 0;
  __asm__ volatile("int3");
  check(faults == 1 && last_signal == SIGTRAP, "int3: SIGTRAP, resumed after the instruction");

  static char alternate[64 * 1024];
  stack_t ss = {.ss_sp = alternate, .ss_size = sizeof alternate, .ss_flags = 0};
  sigaltstack(&ss, NULL);
  handle(SIGSEGV, jump_out, SA_ONSTACK);
  faults = 0;
  if (sigsetjmp(escape, 1) == 0) {
    recursion(0, 1L << 40);
  }
  check(faults == 1 && last_signal == SIGSEGV, "a stack overflow is handled on the alternate stack");

  printf("faults: %d failed\n", failures);
  return failures != 0;
}
