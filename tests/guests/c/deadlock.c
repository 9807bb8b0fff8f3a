/* deadlock: two threads take two mutexes in opposite orders. Natively this hangs forever; under Kiln every thread
 * waits on a futex with no deadline and nothing can wake one, so kiln says so and exits 124. */
#include <pthread.h>
#include <stdio.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER, b = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t both_locked;

static void *other(void *arg) {
  (void)arg;
  pthread_mutex_lock(&b);
  pthread_barrier_wait(&both_locked);
  pthread_mutex_lock(&a);
  return 0;
}

int main(void) {
  pthread_t t;
  pthread_barrier_init(&both_locked, 0, 2);
  pthread_mutex_lock(&a);
  pthread_create(&t, 0, other, 0);
  pthread_barrier_wait(&both_locked);
  printf("deadlock: taking the second lock\n");
  fflush(stdout);
  pthread_mutex_lock(&b);
  printf("deadlock: unreachable\n");
  return 0;
}
