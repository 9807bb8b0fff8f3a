/* spinsignal: threads that compute without syscalls get their signals and share the vCPUs. Without an argument (on
 * any number of vCPUs): a pthread_kill reaches a spinning thread; a thread interrupted over and over in a loop that
 * holds a known value in every register and flag finds them all intact; a timer's signal reaches the main thread
 * spinning; the main thread spinning on a flag lets the thread that sets it run; three threads spinning until all
 * three have arrived all run. With `term`: prints "spinsignal: ready", then spins on one thread until its SIGTERM
 * handler ends the program. */
#include "check.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int started, flag, handled, ticks, arrived;
static volatile int stop_loop;

static void set_flag(int sig) {
  (void)sig;
  atomic_store(&flag, 1);
}

static void count(int sig) {
  (void)sig;
  atomic_fetch_add(&handled, 1);
}

static void tick(int sig) {
  (void)sig;
  atomic_fetch_add(&ticks, 1);
}

static void nap_us(long us) {
  struct timespec t = {0, us * 1000};
  nanosleep(&t, 0);
}

static void *spin_until_flag(void *arg) {
  (void)arg;
  atomic_store(&started, 1);
  while (!atomic_load_explicit(&flag, memory_order_relaxed)) {
  }
  return 0;
}

static void *set_flag_and_leave(void *arg) {
  (void)arg;
  atomic_store(&flag, 1);
  return 0;
}

static void *arrive_and_wait(void *arg) {
  (void)arg;
  atomic_fetch_add(&arrived, 1);
  while (atomic_load_explicit(&arrived, memory_order_relaxed) < 3) {
  }
  return 0;
}

static const unsigned long long xmm_pattern[2] = {0x1122334455667788ULL, 0x99aabbccddeeff00ULL};

/* Spins with a known value in every general register but %rsp, in %xmm0 and in the carry flag, checking them each
 * round, until `stop_loop` is set; returns 1 if any changed. (The signal handler may change all of them; returning
 * from it must give them back.) */
static void *spin_holding_registers(void *arg) {
  long bad = 0;
  atomic_store(&started, 1);
  __asm__ volatile(
      /* Step over the red zone of this function, then keep the callee-saved registers. */
      "sub $128, %%rsp\n"
      "push %%rbp\n push %%rbx\n push %%r12\n push %%r13\n push %%r14\n push %%r15\n"
      "movdqu %[pat], %%xmm0\n"
      "mov $0x1001, %%rax\n mov $0x1002, %%rbx\n mov $0x1003, %%rcx\n mov $0x1004, %%rdx\n"
      "mov $0x1005, %%rsi\n mov $0x1006, %%rdi\n mov $0x1007, %%rbp\n mov $0x1008, %%r8\n"
      "mov $0x1009, %%r9\n mov $0x100a, %%r10\n mov $0x100b, %%r11\n mov $0x100c, %%r12\n"
      "mov $0x100d, %%r13\n mov $0x100e, %%r14\n mov $0x100f, %%r15\n"
      "1:\n"
      "cmp $0x1001, %%rax\n jne 2f\n cmp $0x1002, %%rbx\n jne 2f\n cmp $0x1003, %%rcx\n jne 2f\n"
      "cmp $0x1004, %%rdx\n jne 2f\n cmp $0x1005, %%rsi\n jne 2f\n cmp $0x1006, %%rdi\n jne 2f\n"
      "cmp $0x1007, %%rbp\n jne 2f\n cmp $0x1008, %%r8\n jne 2f\n cmp $0x1009, %%r9\n jne 2f\n"
      "cmp $0x100a, %%r10\n jne 2f\n cmp $0x100b, %%r11\n jne 2f\n cmp $0x100c, %%r12\n jne 2f\n"
      "cmp $0x100d, %%r13\n jne 2f\n cmp $0x100e, %%r14\n jne 2f\n cmp $0x100f, %%r15\n jne 2f\n"
      "movq %%xmm0, %%r11\n cmp %[pat], %%r11\n jne 2f\n mov $0x100b, %%r11\n"
      "stc\n nop\n nop\n nop\n nop\n nop\n nop\n nop\n nop\n jnc 2f\n"
      "clc\n nop\n nop\n nop\n nop\n nop\n nop\n nop\n nop\n jc 2f\n"
      "cmpl $0, %[stop]\n je 1b\n"
      "jmp 3f\n"
      "2:\n mov $1, %%rax\n jmp 4f\n"
      "3:\n xor %%eax, %%eax\n"
      "4:\n"
      "pop %%r15\n pop %%r14\n pop %%r13\n pop %%r12\n pop %%rbx\n pop %%rbp\n"
      "add $128, %%rsp\n"
      : "=a"(bad)
      : [pat] "m"(xmm_pattern), [stop] "m"(stop_loop)
      : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "memory", "cc");
  (void)arg;
  return (void *)bad;
}

static void term(int sig) {
  (void)sig;
  static const char said[] = "spinsignal: stopped by SIGTERM\n";
  write(1, said, sizeof said - 1);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "term") == 0) {
    signal(SIGTERM, term);
    printf("spinsignal: ready\n");
    fflush(stdout);
    for (;;) {
    }
  }
  setvbuf(stdout, 0, _IONBF, 0);

  signal(SIGUSR1, set_flag);
  pthread_t t;
  pthread_create(&t, 0, spin_until_flag, 0);
  while (!atomic_load(&started)) nap_us(100);
  pthread_kill(t, SIGUSR1);
  pthread_join(t, 0);
  check(atomic_load(&flag) == 1, "pthread_kill reaches a spinning thread");

  signal(SIGUSR2, count);
  atomic_store(&started, 0);
  pthread_create(&t, 0, spin_holding_registers, 0);
  while (!atomic_load(&started)) nap_us(100);
  int sent = 0;
  for (; sent < 50; sent++) {
    pthread_kill(t, SIGUSR2);
    while (atomic_load(&handled) <= sent) nap_us(50);
    nap_us(100 + 37 * sent % 200);
  }
  stop_loop = 1;
  void *bad;
  pthread_join(t, &bad);
  check(atomic_load(&handled) == sent, "each signal to the spinning thread ran its handler once");
  check(bad == 0, "every register and the carry flag survive the interruptions");

  signal(SIGALRM, tick);
  struct itimerval every = {{0, 5000}, {0, 5000}};
  setitimer(ITIMER_REAL, &every, 0);
  while (atomic_load_explicit(&ticks, memory_order_relaxed) < 3) {
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, 0);
  check(atomic_load(&ticks) >= 3, "a periodic timer's signals reach the main thread spinning");

  atomic_store(&flag, 0);
  pthread_create(&t, 0, set_flag_and_leave, 0);
  while (!atomic_load_explicit(&flag, memory_order_relaxed)) {
  }
  pthread_join(t, 0);
  check(1, "the main thread spinning on a flag lets the thread that sets it run");

  pthread_t three[3];
  for (int i = 0; i < 3; i++) pthread_create(&three[i], 0, arrive_and_wait, 0);
  for (int i = 0; i < 3; i++) pthread_join(three[i], 0);
  check(atomic_load(&arrived) == 3, "three threads spinning until all three have arrived all run");
  return failures;
}
