/* churn: creates and joins 3,000 threads one after another, as thread pools do over a long life. Each thread's stack
 * is mapped and unmapped by musl; in a 64 MiB VM this only works if unmapped stacks are reused. */
#include <pthread.h>
#include <stdio.h>

static void *nothing(void *arg) { return arg; }

int main(void) {
  enum { N = 3000 };
  for (long i = 0; i < N; i++) {
    pthread_t t;
    void *r;
    if (pthread_create(&t, 0, nothing, (void *)i) != 0) {
      printf("churn: pthread_create failed at %ld\n", i);
      return 1;
    }
    pthread_join(t, &r);
    if ((long)r != i) {
      printf("churn: thread %ld returned %ld\n", i, (long)r);
      return 1;
    }
  }
  printf("churn: %d threads\n", N);
  return 0;
}
