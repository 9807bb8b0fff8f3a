/* waiter: waits to be stopped. With the argument `graceful` it handles SIGTERM and SIGINT, says which arrived and
 * exits 0; with `lingering` it handles them too but goes on making syscalls for 3 s more, then exits 7; with
 * `stubborn` it ignores SIGTERM (only SIGKILL ends it); with `spin` it computes forever without a syscall, keeping
 * the default actions; with `busy` it computes without a syscall until its SIGTERM or SIGINT handler runs, then
 * exits as `graceful` does; with `masked` it blocks SIGTERM and SIGINT and computes forever; without, it keeps the
 * default actions (ending with 128 + n). Prints "waiter: ready" first. A
 * thread is blocked in a futex-based join meanwhile, so the signal must reach a waiting program. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) { stop = sig; }

static void *idle(void *arg) {
  (void)arg;
  while (!stop) {
    struct timespec nap = {0, 50 * 1000 * 1000};
    nanosleep(&nap, 0);
  }
  return 0;
}

/* Busy without syscalls until a handler sets `stop` (forever if none is installed or the signals are blocked). */
static void spin(void) {
  volatile unsigned long x = 1;
  while (!stop) x = x * 6364136223846793005UL + 1442695040888963407UL;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "graceful") == 0 || strcmp(mode, "lingering") == 0 || strcmp(mode, "busy") == 0) {
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
  } else if (strcmp(mode, "stubborn") == 0) {
    signal(SIGTERM, SIG_IGN);
  } else if (strcmp(mode, "masked") == 0) {
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    sigset_t stops;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigprocmask(SIG_BLOCK, &stops, 0);
  }
  pthread_t t;
  pthread_create(&t, 0, idle, 0);
  printf("waiter: ready\n");
  fflush(stdout);
  if (strcmp(mode, "spin") == 0 || strcmp(mode, "busy") == 0 || strcmp(mode, "masked") == 0) spin();
  while (!stop) pause();
  pthread_join(t, 0);
  if (strcmp(mode, "lingering") == 0) {
    /* Shutting down slowly, but taking its time in syscalls: longer than a short grace period. */
    for (int i = 0; i < 60; i++) {
      struct timespec nap = {0, 50 * 1000 * 1000};
      nanosleep(&nap, 0);
    }
    printf("waiter: stopped by signal %d after lingering\n", (int)stop);
    return 7;
  }
  printf("waiter: stopped by signal %d\n", (int)stop);
  return 0;
}
