/* syscalls: what common system calls cost, printed as "name ns_per_op" lines, run natively and under kiln by
 * bench/syscalls.sh. Cases: getppid (a syscall round trip), clock_gettime, pthread create+join, a futex ping-pong
 * between two threads (one round = two wakes), mprotect of a touched page to read-only and back (each a TLB flush),
 * and a sequential read of FILE (argument 1) in 1 MiB chunks. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void *nothing(void *arg) { return arg; }

/* musl's headers have no linux/futex.h; the two operations used here. */
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129

static _Atomic int turn;

static void futex_wait(_Atomic int *addr, int val) { syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, 0, 0, 0); }
static void futex_wake(_Atomic int *addr) { syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0); }

enum { ROUNDS = 20000 };

static void *pong(void *arg) {
  (void)arg;
  for (int i = 0; i < ROUNDS; i++) {
    while (atomic_load(&turn) != 1) futex_wait(&turn, 0);
    atomic_store(&turn, 0);
    futex_wake(&turn);
  }
  return 0;
}

int main(int argc, char **argv) {
  const int n = 1000000;
  double t0 = now_ns();
  for (int i = 0; i < n; i++) syscall(SYS_getppid);
  printf("getppid %.1f\n", (now_ns() - t0) / n);

  struct timespec ts;
  t0 = now_ns();
  for (int i = 0; i < n; i++) clock_gettime(CLOCK_MONOTONIC, &ts);
  printf("clock_gettime %.1f\n", (now_ns() - t0) / n);

  const int threads = 2000;
  t0 = now_ns();
  for (int i = 0; i < threads; i++) {
    pthread_t t;
    pthread_create(&t, 0, nothing, 0);
    pthread_join(t, 0);
  }
  printf("thread_create_join %.1f\n", (now_ns() - t0) / threads);

  pthread_t p;
  pthread_create(&p, 0, pong, 0);
  t0 = now_ns();
  for (int i = 0; i < ROUNDS; i++) {
    atomic_store(&turn, 1);
    futex_wake(&turn);
    while (atomic_load(&turn) != 0) futex_wait(&turn, 1);
  }
  printf("futex_pingpong_round %.1f\n", (now_ns() - t0) / ROUNDS);
  pthread_join(p, 0);

  const int flips = 2000;
  volatile char *page = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  t0 = now_ns();
  for (int i = 0; i < flips; i++) {
    page[0] = (char)i;
    mprotect((void *)page, 4096, PROT_READ);
    mprotect((void *)page, 4096, PROT_READ | PROT_WRITE);
  }
  printf("mprotect_pair %.1f\n", (now_ns() - t0) / flips);

  if (argc > 1) {
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
      perror(argv[1]);
      return 1;
    }
    char *buf = malloc(1 << 20);
    long total = 0, got;
    t0 = now_ns();
    while ((got = read(fd, buf, 1 << 20)) > 0) total += got;
    double secs = (now_ns() - t0) / 1e9;
    printf("file_read_MiB_per_s %.1f\n", (double)total / (1 << 20) / secs);
  }
  return 0;
}
