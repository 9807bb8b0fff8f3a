/* epoll: readiness through epoll and select: level-triggered reports while data waits, edge-triggered reports once
 * per change, one-shot disarms until EPOLL_CTL_MOD, a wait woken by another thread's eventfd write, a wait woken by
 * another thread adding a descriptor that is ready already, timeouts, and select on a pipe. Each check prints one line; exits 0 when all held. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static int efd;

static void *poster(void *arg) {
  (void)arg;
  struct timespec nap = {0, 20 * 1000 * 1000};
  nanosleep(&nap, 0);
  uint64_t one = 1;
  write(efd, &one, sizeof one);
  return 0;
}

static int waiting_epoll;

static void *wait_for_one(void *arg) {
  (void)arg;
  struct epoll_event got;
  return (void *)(long)epoll_wait(waiting_epoll, &got, 1, -1);
}

/* Another thread adds a descriptor that is ready already, while this one waits with nothing to wait for. */
static void added_while_waiting(void) {
  waiting_epoll = epoll_create1(0);
  int p[2];
  pipe(p);
  write(p[1], "x", 1);
  pthread_t t;
  pthread_create(&t, 0, wait_for_one, 0);
  struct timespec later = {0, 20000000};
  nanosleep(&later, 0);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = p[0]};
  epoll_ctl(waiting_epoll, EPOLL_CTL_ADD, p[0], &ev);
  void *got;
  pthread_join(t, &got);
  check((long)got == 1, "epoll_wait wakes for a ready descriptor another thread adds");
  close(p[0]), close(p[1]), close(waiting_epoll);
}

/* Two descriptors always ready and room for one event per wait: each wait reports the other one (Linux requeues a
 * reported entry behind the rest). An epoll descriptor polled in turn is readable only for what epoll_wait would
 * report: not for an edge already reported, and for a hang-up whatever the interest. */
static void fairness_and_polled_epoll(void) {
  int ep = epoll_create1(0), a = eventfd(1, 0), b = eventfd(1, 0);
  struct epoll_event ea = {.events = EPOLLIN, .data.u64 = 1}, eb = {.events = EPOLLIN, .data.u64 = 2}, out[1];
  epoll_ctl(ep, EPOLL_CTL_ADD, a, &ea);
  epoll_ctl(ep, EPOLL_CTL_ADD, b, &eb);
  int first = epoll_wait(ep, out, 1, 0) == 1 ? (int)out[0].data.u64 : 0;
  int second = epoll_wait(ep, out, 1, 0) == 1 ? (int)out[0].data.u64 : 0;
  int third = epoll_wait(ep, out, 1, 0) == 1 ? (int)out[0].data.u64 : 0;
  check(first && second && first != second && third == first, "maxevents 1: ready descriptors take turns");
  close(ep);

  ep = epoll_create1(0);
  struct epoll_event edge = {.events = EPOLLIN | EPOLLET, .data.u64 = 1};
  epoll_ctl(ep, EPOLL_CTL_ADD, a, &edge);
  struct pollfd pe = {.fd = ep, .events = POLLIN};
  check(poll(&pe, 1, 0) == 1, "a polled epoll descriptor is readable while an edge waits");
  check(epoll_wait(ep, out, 1, 0) == 1 && poll(&pe, 1, 0) == 0,
        "a polled epoll descriptor is not readable once the edge is reported");
  close(ep);

  ep = epoll_create1(0);
  int p[2];
  pipe(p);
  struct epoll_event out_only = {.events = EPOLLOUT, .data.u64 = 3};
  epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &out_only);
  close(p[1]);
  pe.fd = ep;
  check(poll(&pe, 1, 0) == 1, "a polled epoll descriptor is readable for a hang-up it was not asked about");
  close(p[0]);
  close(ep);
  close(a);
  close(b);
}

static int late_fd;

static void *write_late(void *arg) {
  (void)arg;
  struct timespec nap = {0, 500 * 1000 * 1000};
  nanosleep(&nap, 0);
  write(late_fd, "x", 1);
  return 0;
}

int main(void) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int p[2];
  pipe(p);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42}, out[4];
  check(ep > 2 && epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0, "epoll_create1 and EPOLL_CTL_ADD");
  check(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == -1 && errno == EEXIST, "adding twice is EEXIST");
  check(epoll_wait(ep, out, 4, 0) == 0, "nothing ready yet");
  write(p[1], "ab", 2);
  check(epoll_wait(ep, out, 4, 0) == 1 && out[0].data.u64 == 42 && (out[0].events & EPOLLIN), "level: ready");
  check(epoll_wait(ep, out, 4, 0) == 1, "level: still ready while data waits");

  ev.events = EPOLLIN | EPOLLET;
  epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev);
  check(epoll_wait(ep, out, 4, 0) == 1, "edge: reported once");
  check(epoll_wait(ep, out, 4, 0) == 0, "edge: not again without a change");
  write(p[1], "c", 1);
  check(epoll_wait(ep, out, 4, 0) == 1, "edge: again after new data");

  ev.events = EPOLLIN | EPOLLONESHOT;
  epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev);
  check(epoll_wait(ep, out, 4, 0) == 1 && epoll_wait(ep, out, 4, 0) == 0, "one-shot: disarmed after one report");
  epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev);
  check(epoll_wait(ep, out, 4, 0) == 1, "one-shot: re-armed by EPOLL_CTL_MOD");
  check(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], 0) == 0 && epoll_wait(ep, out, 4, 0) == 0, "EPOLL_CTL_DEL");

  efd = eventfd(0, EFD_NONBLOCK);
  struct epoll_event eev = {.events = EPOLLIN, .data.u64 = 7};
  epoll_ctl(ep, EPOLL_CTL_ADD, efd, &eev);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  check(epoll_wait(ep, out, 4, 25) == 0, "epoll_wait times out");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  check((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 >= 25, "after 25 ms");
  pthread_t t;
  pthread_create(&t, 0, poster, 0);
  check(epoll_wait(ep, out, 4, -1) == 1 && out[0].data.u64 == 7, "a write from another thread wakes epoll_wait");
  pthread_join(t, 0);
  uint64_t drained;
  check(read(efd, &drained, sizeof drained) == 8 && drained == 1, "the eventfd held the write");

  fd_set r;
  FD_ZERO(&r);
  FD_SET(p[0], &r);
  struct timeval tv = {0, 0};
  check(select(p[0] + 1, &r, 0, 0, &tv) == 1 && FD_ISSET(p[0], &r), "select sees the pipe's data");
  char buf[8];
  read(p[0], buf, sizeof buf);
  FD_ZERO(&r);
  FD_SET(p[0], &r);
  tv.tv_usec = 10000;
  check(select(p[0] + 1, &r, 0, 0, &tv) == 0 && !FD_ISSET(p[0], &r), "select times out on an empty pipe");
  /* 18,446,744,074 s in nanoseconds is 2^64 + 0.29 s: computed without saturating, the wait would end in 0.29 s. */
  late_fd = p[1];
  pthread_t late;
  pthread_create(&late, 0, write_late, 0);
  FD_SET(p[0], &r);
  struct timeval huge = {18446744074LL, 0};
  check(select(p[0] + 1, &r, 0, 0, &huge) == 1 && FD_ISSET(p[0], &r),
        "select with a timeout beyond 2^64 ns waits (for a write 0.5 s later)");
  pthread_join(late, 0);
  read(p[0], buf, sizeof buf);
  close(p[1]);
  check(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0 && epoll_wait(ep, out, 4, 0) == 1 && (out[0].events & EPOLLHUP),
        "a pipe without writers reports EPOLLHUP");

  added_while_waiting();
  fairness_and_polled_epoll();
  printf("epoll: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
