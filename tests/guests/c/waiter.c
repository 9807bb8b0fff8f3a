/* waiter: waits to be stopped. With the argument `graceful` it handles SIGTERM and SIGINT, says which arrived and
 * exits 0; with `stubborn` it ignores SIGTERM (only SIGKILL ends it); without, it keeps the default actions (ending
 * with 128 + n). Prints "waiter: ready" first. A thread is
 * blocked in a futex-based join meanwhile, so the signal must reach a waiting program. */
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

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "graceful") == 0) {
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
  } else if (argc > 1 && strcmp(argv[1], "stubborn") == 0) {
    signal(SIGTERM, SIG_IGN);
  }
  pthread_t t;
  pthread_create(&t, 0, idle, 0);
  printf("waiter: ready\n");
  fflush(stdout);
  while (!stop) pause();
  pthread_join(t, 0);
  printf("waiter: stopped by signal %d\n", (int)stop);
  return 0;
}
