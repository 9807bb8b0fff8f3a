/* fds: file descriptors beyond the standard streams: a pipe between two threads (with a write larger than the pipe),
 * end-of-file when the writer closes, EPIPE with SIGPIPE ignored, O_NONBLOCK and EAGAIN, an eventfd woken from
 * another thread, poll with and without a timeout, dup2 and fcntl, /dev/null, /dev/zero and /dev/urandom. Each check
 * prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

enum { BIG = 200 * 1000 };
static int pipe_fds[2];
static int efd;

static void *writer(void *arg) {
  (void)arg;
  unsigned char *buf = malloc(BIG);
  for (int i = 0; i < BIG; i++) buf[i] = (unsigned char)(i * 7);
  ssize_t n = write(pipe_fds[1], buf, BIG);
  close(pipe_fds[1]);
  free(buf);
  return (void *)n;
}

static void *poster(void *arg) {
  (void)arg;
  struct timespec nap = {0, 20 * 1000 * 1000};
  nanosleep(&nap, 0);
  uint64_t one = 5;
  write(efd, &one, sizeof one);
  return 0;
}

static long ms_since(struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

int main(void) {
  check(pipe(pipe_fds) == 0 && pipe_fds[0] > 2 && pipe_fds[1] > 2, "pipe");
  pthread_t w;
  pthread_create(&w, 0, writer, 0);
  unsigned char *got = malloc(BIG);
  size_t total = 0;
  ssize_t n;
  while ((n = read(pipe_fds[0], got + total, BIG - total + 1)) > 0) total += (size_t)n;
  void *written;
  pthread_join(w, &written);
  int same = total == BIG;
  for (int i = 0; same && i < BIG; i++) same = got[i] == (unsigned char)(i * 7);
  check(same && (long)written == BIG && n == 0, "200 KB through a 64 KiB pipe between threads, then end-of-file");
  close(pipe_fds[0]);

  int p[2];
  pipe2(p, O_NONBLOCK | O_CLOEXEC);
  char c;
  check(read(p[0], &c, 1) == -1 && errno == EAGAIN, "empty non-blocking pipe is EAGAIN");
  check((fcntl(p[0], F_GETFD) & FD_CLOEXEC) && (fcntl(p[0], F_GETFL) & O_NONBLOCK), "pipe2 flags show in fcntl");
  struct pollfd pf = {p[0], POLLIN, 0};
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  check(poll(&pf, 1, 30) == 0 && ms_since(&t0) >= 30, "poll times out after 30 ms");
  write(p[1], "x", 1);
  check(poll(&pf, 1, -1) == 1 && (pf.revents & POLLIN), "poll sees data");
  int d = dup2(p[0], 40);
  check(d == 40 && read(40, &c, 1) == 1 && c == 'x', "dup2 shares the pipe");
  close(p[0]);
  close(40);
  signal(SIGPIPE, SIG_IGN);
  check(write(p[1], "y", 1) == -1 && errno == EPIPE, "write without a reader is EPIPE");
  close(p[1]);

  efd = eventfd(0, 0);
  pthread_t q;
  pthread_create(&q, 0, poster, 0);
  uint64_t value = 0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  check(read(efd, &value, sizeof value) == 8 && value == 5 && ms_since(&t0) >= 15, "eventfd read waits for a write");
  pthread_join(q, 0);

  int null = open("/dev/null", O_RDWR);
  check(null > 2 && write(null, "abc", 3) == 3 && read(null, &c, 1) == 0, "/dev/null");
  int zero = open("/dev/zero", O_RDONLY);
  char z[4096];
  memset(z, 1, sizeof z);
  int all_zero = read(zero, z, sizeof z) == sizeof z;
  for (size_t i = 0; all_zero && i < sizeof z; i++) all_zero = z[i] == 0;
  check(all_zero, "/dev/zero");
  int urandom = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  unsigned char r[32] = {0};
  int any = 0;
  check(read(urandom, r, sizeof r) == sizeof r, "/dev/urandom reads");
  for (size_t i = 0; i < sizeof r; i++) any |= r[i];
  check(any != 0, "/dev/urandom is not all zero");
  struct stat st;
  check(fstat(null, &st) == 0 && S_ISCHR(st.st_mode), "fstat /dev/null is a character device");
  check(open("/etc/missing", O_RDONLY) == -1 && errno == ENOENT, "other paths do not exist yet");
  check(close(12345) == -1 && errno == EBADF, "closing a bad descriptor is EBADF");

  printf("fds: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
