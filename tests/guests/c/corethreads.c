/* corethreads: three threads wait on a barrier that never fills while the main thread crashes writing through a NULL
 * pointer in record_total: a core file of it must show four threads, the faulting frame, the local `total` (4242)
 * and xmm7 as the crashing thread left it. With the argument `wait` it says "corethreads: waiting" first and crashes
 * only once a SIGTERM came (a snapshot taken meanwhile crashes after its restore). Built with -g. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static pthread_barrier_t never;
static volatile sig_atomic_t stop;

static void on_stop(int sig) { stop = sig; }

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
  pthread_t threads[3];
  pthread_barrier_init(&never, NULL, 5);
  for (int i = 0; i < 3; i++)
    pthread_create(&threads[i], NULL, waiter, NULL);
  usleep(100000); /* the waiters reach the barrier */
  if (argc > 1 && strcmp(argv[1], "wait") == 0) {
    signal(SIGTERM, on_stop);
    printf("corethreads: waiting\n");
    fflush(stdout);
    while (!stop) pause();
  }
  printf("corethreads: crashing\n");
  fflush(stdout);
  record_total(argc > 5 ? (int *)&argc : NULL, 3);
  return 0;
}
