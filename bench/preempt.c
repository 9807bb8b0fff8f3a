/* preempt: what interrupting a thread that computes without syscalls costs, natively or in Kiln.
 *
 *   musl-gcc -static -O2 -o preempt preempt.c -lpthread
 *   ./preempt latency N     one thread spins; the main thread sends it SIGUSR1 N times with pthread_kill, each
 *                           after a pause of 0.2 to 2 ms, and times from just before the call to the handler's
 *                           first instruction; prints "latency_us median p99 max" (microseconds)
 *   ./preempt work T S      T threads share S million steps of a dependent multiply-xorshift chain (no syscalls,
 *                           no memory traffic); prints "work_s SECONDS" (wall time from the first start to the
 *                           last end)
 *
 * With more threads than CPUs, `work` shows what time slicing costs against as many threads as CPUs.
 */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void nap_ns(long ns) {
  struct timespec t = {ns / 1000000000L, ns % 1000000000L};
  nanosleep(&t, 0);
}

static atomic_long sent_at, seen_at;
/* Posted by the handler: the main thread waits for it without using a CPU (in Kiln, waking every few microseconds
 * to look would cost a VM exit each time, which competes with the spinning thread for the host's CPUs). */
static sem_t seen;
static atomic_int spinning;
static volatile unsigned long spins;

static void handler(int sig) {
  (void)sig;
  atomic_store(&seen_at, now_ns());
  sem_post(&seen);
}

static void *spin(void *arg) {
  (void)arg;
  atomic_store(&spinning, 1);
  for (;;) spins++;
  return 0;
}

static int by_value(const void *a, const void *b) {
  long x = *(const long *)a, y = *(const long *)b;
  return (x > y) - (x < y);
}

static int latency(int n) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigaction(SIGUSR1, &sa, 0);
  sem_init(&seen, 0, 0);
  pthread_t t;
  pthread_create(&t, 0, spin, 0);
  while (!atomic_load(&spinning)) nap_ns(100000);
  long *samples = calloc(n, sizeof *samples);
  unsigned seed = 12345;
  for (int i = 0; i < n; i++) {
    seed = seed * 1103515245 + 12345;
    nap_ns(200000 + (long)(seed >> 8) % 1800000);
    atomic_store(&seen_at, 0);
    atomic_store(&sent_at, now_ns());
    pthread_kill(t, SIGUSR1);
    while (sem_wait(&seen) != 0) {
    }
    samples[i] = atomic_load(&seen_at) - atomic_load(&sent_at);
  }
  qsort(samples, n, sizeof *samples, by_value);
  printf("latency_us %.1f %.1f %.1f\n", samples[n / 2] / 1e3, samples[(n * 99) / 100] / 1e3, samples[n - 1] / 1e3);
  return 0;
}

static unsigned long steps_each;

static void *chain(void *arg) {
  unsigned long x = (unsigned long)arg | 1;
  for (unsigned long i = 0; i < steps_each; i++) {
    x *= 0x9E3779B97F4A7C15UL;
    x ^= x >> 29;
  }
  return (void *)x;
}

static int work(int threads, long millions) {
  steps_each = (unsigned long)millions * 1000000UL / (unsigned long)threads;
  pthread_t *t = calloc(threads, sizeof *t);
  long start = now_ns();
  for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, chain, (void *)(long)(i + 1));
  unsigned long all = 0;
  for (int i = 0; i < threads; i++) {
    void *x;
    pthread_join(t[i], &x);
    all ^= (unsigned long)x;
  }
  printf("work_s %.4f %lx\n", (now_ns() - start) / 1e9, all & 0xf);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "latency") == 0) return latency(atoi(argv[2]));
  if (argc == 4 && strcmp(argv[1], "work") == 0) return work(atoi(argv[2]), atol(argv[3]));
  fprintf(stderr, "usage: preempt latency N | preempt work THREADS MILLION_STEPS\n");
  return 2;
}
