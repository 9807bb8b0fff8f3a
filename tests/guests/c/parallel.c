/* parallel: two threads that run at the same moment. They hand a counter back and forth 2,000 times, each spinning
 * (no syscalls) until it is its turn, so that a hand-over needs both threads running: on two vCPUs that takes
 * milliseconds; on one, every hand-over waits for a time slice to end (10 ms), and 2,000 of them would take 20 s,
 * past the 10 s the threads give themselves. At the middle hand-over each thread notes its vCPU (sched_getcpu), and
 * the two differ only if they ran at once. First prints how many vCPUs the program has; with `count`, only that. */
#define _GNU_SOURCE
#include "check.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 2000
#define LIMIT_NS 10000000000LL

static atomic_long turn;
static atomic_int gave_up;
static long long started;
static int cpu_at_middle[2];

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *player(void *arg) {
  long me = (long)arg;
  for (long round = me; round < 2 * ROUNDS; round += 2) {
    for (long spins = 1; atomic_load_explicit(&turn, memory_order_acquire) != round; spins++) {
      if (spins % 4096 == 0 && (atomic_load(&gave_up) || now_ns() - started > LIMIT_NS)) {
        atomic_store(&gave_up, 1);
        return 0;
      }
    }
    if (round / 2 == ROUNDS / 2) cpu_at_middle[me] = sched_getcpu();
    atomic_store_explicit(&turn, round + 1, memory_order_release);
  }
  return 0;
}

int main(int argc, char **argv) {
  printf("vCPUs: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
  if (argc > 1 && strcmp(argv[1], "count") == 0) return 0;
  started = now_ns();
  pthread_t threads[2];
  for (long i = 0; i < 2; i++) pthread_create(&threads[i], 0, player, (void *)i);
  for (int i = 0; i < 2; i++) pthread_join(threads[i], 0);
  check(!atomic_load(&gave_up), "two spinning threads hand a counter back and forth 2000 times within 10 s");
  check(cpu_at_middle[0] != cpu_at_middle[1], "the two ran on different vCPUs at once");
  printf("parallel: %d failed\n", failures);
  return failures;
}
