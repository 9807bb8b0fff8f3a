/* threads: pthreads on Kiln's scheduler: 16 threads contend for a mutex, signal a condition variable, return values
 * through pthread_join, and sleep; a detached thread and a thread-local variable too. A raw clone checks that the
 * child's tid is in the PARENT_SETTID and CHILD_SETTID words by the time the child runs (musl's thread-list lock
 * depends on it). Exits 0 when every result is right. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
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

static volatile pid_t parent_word, child_word;
static volatile int child_saw = -1;
static char raw_stack[64 << 10] __attribute__((aligned(16)));

static int raw_child(void *arg) {
  (void)arg;
  pid_t me = (pid_t)syscall(SYS_gettid);
  child_saw = parent_word == me && child_word == me;
  return 0;
}

/* 1 if the raw clone's child saw its tid in both words. */
static int settid_before_start(void) {
  int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_PARENT_SETTID |
              CLONE_CHILD_SETTID;
  pid_t tid = clone(raw_child, raw_stack + sizeof raw_stack, flags, 0, &parent_word, 0, &child_word);
  if (tid <= 0) return 0;
  while (child_saw == -1) sched_yield();
  return child_saw == 1 && parent_word == tid;
}

int main(void) {
  enum { N = 16 };
  if (!settid_before_start()) {
    printf("threads: a cloned child did not see its tid in the SETTID words\n");
    return 1;
  }
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
