/* corethreads: three threads wait on a barrier that never fills while the main thread crashes writing through a NULL
 * pointer in record_total: a core file of it must show four threads, the faulting frame, the local `total` (4242)
 * and xmm7 as the crashing thread left it. Built with -g. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static pthread_barrier_t never;

static void *waiter(void *arg) {
  (void)arg;
  pthread_barrier_wait(&never);
  return NULL;
}

__attribute__((noinline)) static void record_total(int *slot, int parts) {
  volatile int total = parts * 1414; /* 4242 for 3 parts */
  /* A value the core's FP note must carry: gdb reads it back as $xmm7. */
  __asm__ volatile("movq %0, %%xmm7" : : "r"(0x1122334455667788ULL) : "xmm7");
  *slot = total;                     /* the crash */
}

int main(int argc, char **argv) {
  (void)argv;
  pthread_t threads[3];
  pthread_barrier_init(&never, NULL, 5);
  for (int i = 0; i < 3; i++)
    pthread_create(&threads[i], NULL, waiter, NULL);
  usleep(100000); /* the waiters reach the barrier */
  printf("corethreads: crashing\n");
  fflush(stdout);
  record_total(argc > 5 ? (int *)&argc : NULL, 3);
  return 0;
}
