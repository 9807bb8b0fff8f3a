/* mutexes: robust and priority-inheritance mutexes, as musl builds them on get_robust_list/set_robust_list and
 * FUTEX_LOCK_PI/FUTEX_TRYLOCK_PI/FUTEX_UNLOCK_PI, and the futex word protocol the kernel keeps for them (owner's tid,
 * FUTEX_WAITERS, FUTEX_OWNER_DIED), checked with raw futex calls.
 *
 * Robust: an owner that exits holding the mutex (through pthread_exit, where musl walks its own list, and through a
 * bare exit syscall, where the kernel must) leaves EOWNERDEAD to the next locker, also to one already waiting;
 * pthread_mutex_consistent makes it usable again; a robust list that loops or points nowhere does not hurt.
 * PI: EDEADLK, EPERM, EAGAIN, ETIMEDOUT (absolute CLOCK_REALTIME) as Linux gives them, hand-over to a waiter, and
 * threads counting under one PI mutex. One line per check; exits 0 when all held. The output is the same natively. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

/* From <linux/futex.h>, which musl-gcc does not see. */
#define FUTEX_LOCK_PI 6
#define FUTEX_UNLOCK_PI 7
#define FUTEX_TRYLOCK_PI 8
#define FUTEX_CLOCK_REALTIME 256
#define FUTEX_WAITERS 0x80000000u
#define TID_MASK 0x3fffffffu

static long futex(atomic_uint *w, int op, const struct timespec *t) {
  return syscall(SYS_futex, w, op, 0, t, NULL, 0);
}
static int gettid_(void) { return (int)syscall(SYS_gettid); }

/* Waits until thread `tid` is gone (a thread that left through a bare exit syscall cannot be joined safely: musl
 * never unlinked it). */
static void wait_gone(int tid) {
  while (syscall(SYS_tgkill, getpid(), tid, 0) == 0) sched_yield();
}

/* ---- robust mutexes ---- */

static pthread_mutex_t robust;
static atomic_int holder_tid;
static atomic_int locked_it;

static void *hold_and_leave(void *how) {
  pthread_mutex_lock(&robust);
  atomic_store(&holder_tid, gettid_());
  atomic_store(&locked_it, 1);
  if (how) {
    /* Let the main thread block on the mutex first, then leave without musl's help. */
    usleep(50000);
    syscall(SYS_exit, 0);
  }
  return NULL;
}

static void robust_mutexes(void) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  check(pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0, "pthread_mutexattr_setrobust is supported");
  /* musl hands the kernel its robust list for process-shared mutexes only (it walks the list itself in
   * pthread_exit): the bare exit below needs the kernel's walk. */
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  check(pthread_mutex_init(&robust, &a) == 0, "a robust mutex");

  void *head = NULL;
  size_t len = 0;
  check(syscall(SYS_get_robust_list, 0, &head, &len) == 0 && len == 24, "get_robust_list of this thread");
  check(syscall(SYS_get_robust_list, 999999, &head, &len) == -1 && errno == ESRCH, "get_robust_list: ESRCH");
  check(syscall(SYS_set_robust_list, head, 23) == -1 && errno == EINVAL, "set_robust_list: a bad size is EINVAL");

  pthread_t t;
  pthread_create(&t, NULL, hold_and_leave, NULL);
  pthread_join(t, NULL);
  int r = pthread_mutex_lock(&robust);
  check(r == EOWNERDEAD, "an owner gone through pthread_exit: EOWNERDEAD");
  check(pthread_mutex_consistent(&robust) == 0, "pthread_mutex_consistent");
  check(pthread_mutex_unlock(&robust) == 0, "unlocked after being made consistent");
  check(pthread_mutex_lock(&robust) == 0 && pthread_mutex_unlock(&robust) == 0, "usable again");

  /* The kernel's walk: the owner leaves by the bare exit syscall while we wait for the mutex. */
  atomic_store(&locked_it, 0);
  pthread_create(&t, NULL, hold_and_leave, (void *)1);
  while (!atomic_load(&locked_it)) sched_yield();
  r = pthread_mutex_lock(&robust);
  check(r == EOWNERDEAD, "a waiter is woken with EOWNERDEAD when the owner exits without unlocking");
  wait_gone(atomic_load(&holder_tid));
  /* Not made consistent: unlocking leaves it unusable, as POSIX says. */
  pthread_mutex_unlock(&robust);
  check(pthread_mutex_lock(&robust) == ENOTRECOVERABLE, "not made consistent: ENOTRECOVERABLE");
}

/* Hostile robust lists: the thread sets one, then leaves by the bare exit syscall. */
struct robust_head {
  void *next;
  long offset;
  void *pending;
};
static struct robust_head looping_head;
static void *looping_entry[2];
static atomic_int bad_tid;

static void *leave_with_list(void *list) {
  atomic_store(&bad_tid, gettid_());
  syscall(SYS_set_robust_list, list, sizeof(struct robust_head));
  syscall(SYS_exit, 0);
  return NULL;
}

static void hostile_robust_lists(void) {
  /* An entry that points at itself (the walk must stop), and a head that points nowhere. */
  looping_entry[0] = &looping_entry[0];
  looping_head = (struct robust_head){.next = &looping_entry[0], .offset = 8, .pending = (void *)0x10};
  static struct robust_head nowhere = {.next = (void *)0xdead0000, .offset = 0, .pending = (void *)0xbad1};
  void *lists[] = {&looping_head, &nowhere, (void *)0x8};
  for (int i = 0; i < 3; i++) {
    pthread_t t;
    atomic_store(&bad_tid, 0);
    pthread_create(&t, NULL, leave_with_list, lists[i]);
    while (!atomic_load(&bad_tid)) sched_yield();
    wait_gone(atomic_load(&bad_tid));
  }
  check(1, "threads leaving looping and dangling robust lists");
}

/* ---- priority-inheritance futexes ---- */

static atomic_uint word;
static atomic_long answer;

static void *try_other(void *op) {
  long r = futex(&word, (int)(intptr_t)op, NULL);
  atomic_store(&answer, r == -1 ? -errno : r);
  return NULL;
}

static long from_other_thread(int op) {
  pthread_t t;
  pthread_create(&t, NULL, try_other, (void *)(intptr_t)op);
  pthread_join(t, NULL);
  return atomic_load(&answer);
}

static void *lock_timed(void *unused) {
  (void)unused;
  struct timespec at;
  clock_gettime(CLOCK_REALTIME, &at);
  at.tv_nsec += 50 * 1000 * 1000;
  if (at.tv_nsec >= 1000000000) at.tv_sec++, at.tv_nsec -= 1000000000;
  long r = futex(&word, FUTEX_LOCK_PI, &at);
  atomic_store(&answer, r == -1 ? -errno : r);
  return NULL;
}

static atomic_int waiter_tid;
static void *lock_and_wait(void *unused) {
  (void)unused;
  atomic_store(&waiter_tid, gettid_());
  long r = futex(&word, FUTEX_LOCK_PI, NULL);
  /* Handed over: the word names us. */
  atomic_store(&answer, r == 0 && (atomic_load(&word) & TID_MASK) == (unsigned)gettid_());
  futex(&word, FUTEX_UNLOCK_PI, NULL);
  return NULL;
}

static void pi_futex_words(void) {
  unsigned me = (unsigned)gettid_();
  check(futex(&word, FUTEX_LOCK_PI, NULL) == 0 && atomic_load(&word) == me, "FUTEX_LOCK_PI of a free word: our tid");
  check(futex(&word, FUTEX_LOCK_PI, NULL) == -1 && errno == EDEADLK, "FUTEX_LOCK_PI of what we hold: EDEADLK");
  check(futex(&word, FUTEX_TRYLOCK_PI, NULL) == -1 && errno == EDEADLK, "FUTEX_TRYLOCK_PI of it too");
  check(from_other_thread(FUTEX_TRYLOCK_PI) == -EAGAIN, "FUTEX_TRYLOCK_PI of a held word: EAGAIN");
  check(from_other_thread(FUTEX_UNLOCK_PI) == -EPERM, "FUTEX_UNLOCK_PI by a non-owner: EPERM");
  struct timespec rel = {0, 1000};
  check(futex(&word, FUTEX_LOCK_PI | FUTEX_CLOCK_REALTIME, &rel) == -1 && errno == ENOSYS,
        "FUTEX_LOCK_PI with FUTEX_CLOCK_REALTIME: ENOSYS");
  pthread_t t;
  pthread_create(&t, NULL, lock_timed, NULL);
  pthread_join(t, NULL);
  check(atomic_load(&answer) == -ETIMEDOUT, "FUTEX_LOCK_PI with an absolute CLOCK_REALTIME timeout: ETIMEDOUT");
  check((atomic_load(&word) & TID_MASK) == me, "still ours after the timeout");

  atomic_store(&waiter_tid, 0);
  atomic_store(&answer, 0);
  pthread_create(&t, NULL, lock_and_wait, NULL);
  while (!(atomic_load(&word) & FUTEX_WAITERS)) sched_yield();
  check(atomic_load(&word) == (me | FUTEX_WAITERS), "a waiter sets FUTEX_WAITERS");
  check(futex(&word, FUTEX_UNLOCK_PI, NULL) == 0, "FUTEX_UNLOCK_PI with a waiter");
  pthread_join(t, NULL);
  check(atomic_load(&answer) == 1, "the waiter is handed the futex");
  check(atomic_load(&word) == 0, "and leaves it free");
  check(futex(&word, FUTEX_UNLOCK_PI, NULL) == -1 && errno == EPERM, "FUTEX_UNLOCK_PI of a free word: EPERM");
  check(futex((atomic_uint *)((char *)&word + 1), FUTEX_LOCK_PI, NULL) == -1 && errno == EINVAL,
        "a misaligned word: EINVAL");
}

static pthread_mutex_t pi;
static long counted;
#define COUNTERS 4
#define STEPS 20000

static void *count(void *unused) {
  (void)unused;
  for (int i = 0; i < STEPS; i++) {
    pthread_mutex_lock(&pi);
    counted++;
    if (i % 64 == 0) sched_yield(); /* hold it across a switch now and then: contention */
    pthread_mutex_unlock(&pi);
  }
  return NULL;
}

static void *hold_pi_and_leave(void *unused) {
  (void)unused;
  pthread_mutex_lock(&pi);
  atomic_store(&holder_tid, gettid_());
  atomic_store(&locked_it, 1);
  usleep(50000);
  syscall(SYS_exit, 0);
  return NULL;
}

static void pi_mutexes(void) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  check(pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT) == 0, "PTHREAD_PRIO_INHERIT is supported");
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
  check(pthread_mutex_init(&pi, &a) == 0, "a PI mutex");
  check(pthread_mutex_lock(&pi) == 0 && pthread_mutex_lock(&pi) == EDEADLK, "relocking an error-checking one");
  struct timespec past = {1, 0};
  check(pthread_mutex_unlock(&pi) == 0, "unlocked");

  pthread_t t[COUNTERS];
  for (int i = 0; i < COUNTERS; i++) pthread_create(&t[i], NULL, count, NULL);
  for (int i = 0; i < COUNTERS; i++) pthread_join(t[i], NULL);
  check(counted == COUNTERS * STEPS, "threads counting under a PI mutex lose no step");

  atomic_store(&locked_it, 0);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_NORMAL);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutex_destroy(&pi);
  check(pthread_mutex_init(&pi, &a) == 0, "a robust PI mutex");
  pthread_t holder;
  pthread_create(&holder, NULL, hold_pi_and_leave, NULL);
  while (!atomic_load(&locked_it)) sched_yield();
  check(pthread_mutex_timedlock(&pi, &past) == ETIMEDOUT, "pthread_mutex_timedlock of a held PI mutex: ETIMEDOUT");
  check(pthread_mutex_lock(&pi) == EOWNERDEAD, "its owner exits while we wait: EOWNERDEAD");
  check(pthread_mutex_consistent(&pi) == 0 && pthread_mutex_unlock(&pi) == 0, "made consistent and unlocked");
  check(pthread_mutex_lock(&pi) == 0 && pthread_mutex_unlock(&pi) == 0, "usable again");
  wait_gone(atomic_load(&holder_tid));
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  robust_mutexes();
  pi_futex_words();
  pi_mutexes();
  hostile_robust_lists();
  printf("mutexes: %d failed\n", failures);
  return failures != 0;
}
