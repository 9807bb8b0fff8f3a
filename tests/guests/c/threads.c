/* threads: pthreads on Kiln's scheduler: 16 threads contend for a mutex, signal a condition variable, return values
 * through pthread_join, and sleep; a detached thread and a thread-local variable too. Exits 0 when every result is
 * right. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static int counter, finished;
static _Thread_local int mine;

static void *worker(void *arg) {
  long id = (long)arg;
  mine = (int)id;
  for (int i = 0; i < 1000; i++) {
    pthread_mutex_lock(&lock);
    counter++;
    pthread_mutex_unlock(&lock);
    if (i % 100 == 0) sched_yield();
  }
  struct timespec nap = {0, 1000000};
  nanosleep(&nap, 0);
  pthread_mutex_lock(&lock);
  finished++;
  pthread_cond_signal(&done);
  pthread_mutex_unlock(&lock);
  return (void *)(long)(mine * 2);
}

static void *detached(void *arg) {
  (void)arg;
  return 0;
}

int main(void) {
  enum { N = 16 };
  pthread_t t[N], d;
  for (long i = 0; i < N; i++) {
    if (pthread_create(&t[i], 0, worker, (void *)i) != 0) {
      printf("threads: pthread_create failed\n");
      return 1;
    }
  }
  pthread_create(&d, 0, detached, 0);
  pthread_detach(d);
  pthread_mutex_lock(&lock);
  while (finished < N) pthread_cond_wait(&done, &lock);
  pthread_mutex_unlock(&lock);
  long sum = 0;
  for (int i = 0; i < N; i++) {
    void *r;
    pthread_join(t[i], &r);
    sum += (long)r;
  }
  printf("threads: counter=%d sum=%ld\n", counter, sum);
  return counter == N * 1000 && sum == 240 ? 0 : 1;
}
