/* asynccancel: pthread_cancel of threads that compute without syscalls, with asynchronous cancellation
 * (PTHREAD_CANCEL_ASYNCHRONOUS), as on Linux: the cancellation signal must interrupt the spinning thread where it is;
 * the thread then runs its cleanup handlers (innermost first) and its thread-specific data destructor, and its join
 * gives PTHREAD_CANCELED. With glibc the thread is unwound from the signal frame (libgcc_s, loaded by pthread_cancel),
 * with musl it exits from the signal handler. Ten rounds, each cancelled after a different time. */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static atomic_int started, cleaned[2], destroyed;
static atomic_int order;
static pthread_key_t key;
static volatile unsigned long spins;

static void cleanup(void *which) {
  int i = (int)(long)which;
  /* The first handler to run (the innermost, pushed last) records 1, the next 2. */
  atomic_store(&cleaned[i], atomic_fetch_add(&order, 1) + 1);
}

static void destructor(void *value) {
  (void)value;
  atomic_fetch_add(&destroyed, 1);
}

static void *spin(void *arg) {
  (void)arg;
  int old;
  pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &old);
  pthread_setspecific(key, &old);
  pthread_cleanup_push(cleanup, (void *)0);
  pthread_cleanup_push(cleanup, (void *)1);
  atomic_store(&started, 1);
  for (;;) spins++;
  pthread_cleanup_pop(0);
  pthread_cleanup_pop(0);
  return 0;
}

static void nap_us(long us) {
  struct timespec t = {us / 1000000, us % 1000000 * 1000};
  nanosleep(&t, 0);
}

int main(void) {
  pthread_key_create(&key, destructor);
  int rounds = 10, cancelled = 0, in_order = 0, destroyed_each = 0, spun = 0;
  for (int round = 0; round < rounds; round++) {
    atomic_store(&started, 0);
    atomic_store(&order, 0);
    atomic_store(&cleaned[0], 0);
    atomic_store(&cleaned[1], 0);
    atomic_store(&destroyed, 0);
    spins = 0;
    pthread_t t;
    if (pthread_create(&t, 0, spin, 0) != 0) {
      check(0, "pthread_create");
      return 1;
    }
    while (!atomic_load(&started)) nap_us(100);
    nap_us(200 + 1500 * round);
    /* Seen to move (within 10 s: a loaded machine may leave the thread unscheduled for a while). */
    unsigned long before = spins;
    for (int wait = 0; wait < 20000 && spins == before; wait++) nap_us(500);
    spun += spins != before;
    if (pthread_cancel(t) != 0) check(0, "pthread_cancel");
    void *ret = 0;
    pthread_join(t, &ret);
    cancelled += ret == PTHREAD_CANCELED;
    in_order += atomic_load(&cleaned[1]) == 1 && atomic_load(&cleaned[0]) == 2;
    destroyed_each += atomic_load(&destroyed) == 1;
  }
  check(spun == rounds, "each thread was computing when it was cancelled");
  check(cancelled == rounds, "each join gives PTHREAD_CANCELED");
  check(in_order == rounds, "each thread ran its two cleanup handlers, innermost first");
  check(destroyed_each == rounds, "each thread ran its thread-specific data destructor once");
  return failures;
}
