/* signals: handlers run for signals a program sends itself and its threads: SA_SIGINFO with si_signo/si_code, the
 * interrupted code's registers and FPU state intact afterwards, a masked signal held until unblocked, SA_ONSTACK on
 * a sigaltstack, a sleeping thread woken by pthread_kill with EINTR, SA_RESTART resuming an interrupted read (and
 * EINTR without it), SA_RESETHAND, and SIG_IGN. Each check prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static volatile sig_atomic_t got, got_code, got_signo, on_alt;
static char altstack[64 * 1024];

static void on_usr1(int sig, siginfo_t *info, void *uc) {
  (void)uc;
  got++;
  got_signo = info->si_signo;
  got_code = info->si_code;
  /* Use the FPU in the handler: the interrupted code must not notice. */
  volatile double x = 3.0;
  for (int i = 0; i < 10; i++) x = x * 1.5 + sig;
  char here;
  on_alt = &here >= altstack && &here < altstack + sizeof altstack;
}

static void on_usr2(int sig) {
  (void)sig;
  got++;
}

static int pipe_fds[2];
static pthread_t reader;

/* Interrupts the reader after 20 ms, then writes to its pipe after 60 ms. */
static void *interrupter(void *arg) {
  (void)arg;
  struct timespec nap = {0, 20 * 1000 * 1000};
  nanosleep(&nap, 0);
  pthread_kill(reader, SIGUSR2);
  nap.tv_nsec = 40 * 1000 * 1000;
  nanosleep(&nap, 0);
  write(pipe_fds[1], "x", 1);
  return 0;
}

/* A blocking read interrupted by a handler installed with `flags`: returns what read returned (or -errno). */
static long read_interrupted(int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr2;
  sa.sa_flags = flags;
  sigaction(SIGUSR2, &sa, 0);
  pipe(pipe_fds);
  reader = pthread_self();
  pthread_t t;
  pthread_create(&t, 0, interrupter, 0);
  char c;
  long r = read(pipe_fds[0], &c, 1);
  if (r < 0) r = -errno;
  pthread_join(t, 0);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  return r;
}

static void *sleeper(void *arg) {
  (void)arg;
  struct timespec long_nap = {10, 0}, left = {0, 0};
  int r = nanosleep(&long_nap, &left);
  return (void *)(intptr_t)(r == -1 && errno == EINTR && left.tv_sec > 5 ? 1 : 0);
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO;
  check(sigaction(SIGUSR1, &sa, 0) == 0, "sigaction");

  volatile double before = 1.25;
  long marker = 0x1234567890;
  raise(SIGUSR1);
  check(got == 1 && got_signo == SIGUSR1, "raise runs the handler with si_signo");
  check(got_code == SI_TKILL || got_code == SI_USER, "si_code says who sent it");
  check(before == 1.25 && marker == 0x1234567890, "registers and FPU state survive the handler");

  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigprocmask(SIG_BLOCK, &set, &old);
  raise(SIGUSR1);
  check(got == 1, "a blocked signal waits");
  sigprocmask(SIG_SETMASK, &old, 0);
  check(got == 2, "it runs once unblocked");

  stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
  check(sigaltstack(&ss, 0) == 0, "sigaltstack");
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGUSR1, &sa, 0);
  raise(SIGUSR1);
  check(got == 3 && on_alt, "SA_ONSTACK runs the handler on the alternate stack");

  signal(SIGUSR2, on_usr2);
  pthread_t t;
  pthread_create(&t, 0, sleeper, 0);
  struct timespec nap = {0, 30 * 1000 * 1000};
  nanosleep(&nap, 0);
  pthread_kill(t, SIGUSR2);
  void *interrupted;
  pthread_join(t, &interrupted);
  check(interrupted == (void *)1 && got == 4, "pthread_kill wakes a sleeping thread with EINTR and runs the handler");

  sa.sa_handler = on_usr2;
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGUSR2, &sa, 0);
  raise(SIGUSR2);
  struct sigaction now;
  sigaction(SIGUSR2, 0, &now);
  check(got == 5 && now.sa_handler == SIG_DFL, "SA_RESETHAND runs once, then the default");

  signal(SIGUSR2, SIG_IGN);
  raise(SIGUSR2);
  check(got == 5, "SIG_IGN ignores");

  check(read_interrupted(SA_RESTART) == 1 && got == 6, "SA_RESTART: the handler runs and the read carries on");
  check(read_interrupted(0) == -EINTR && got == 7, "without SA_RESTART the read fails with EINTR");

  printf("signals: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
