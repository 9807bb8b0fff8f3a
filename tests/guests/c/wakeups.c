/* wakeups: pairs of threads play ping-pong, many rounds, each side waiting its own way (a blocking read, poll,
 * select, level- or edge-triggered epoll) over a pipe, an eventfd or a TCP connection on the loopback. A lost
 * wake-up stalls a pair for good (kiln then reports a deadlock); a wrong one shows as a wrong byte. While the pairs
 * play, idle threads block on objects nobody touches, which must not disturb them. First, a thread spins on
 * sched_yield until a sleeping thread wakes. Prints "wakeups: ok" at the end. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 5000
#define IDLE 32

enum how { BLOCKING, POLL, SELECT, EPOLL_LEVEL, EPOLL_EDGE, HOWS };
enum kind { PIPE, EVENTFD, TCP, KINDS };

struct side {
  int in, out;
  enum how how;
  enum kind kind;
  int serve; /* answers instead of starting each round */
  int failed;
};

static void die(const char *what) {
  printf("wakeups: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* Waits until `fd` is readable, the side's way (a blocking read waits in the read itself). */
static void wait_readable(int fd, enum how how, int ep) {
  if (how == POLL) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, -1) != 1) {
    }
  } else if (how == SELECT) {
    fd_set set;
    do {
      FD_ZERO(&set);
      FD_SET(fd, &set);
    } while (select(fd + 1, &set, NULL, NULL, NULL) != 1);
  } else if (how == EPOLL_LEVEL || how == EPOLL_EDGE) {
    struct epoll_event e;
    while (epoll_wait(ep, &e, 1, -1) != 1) {
    }
  }
}

/* Reads one message: a byte (pipe, TCP) or a counter value (eventfd). Edge-triggered and non-blocking sides read
 * until EAGAIN, as such programs must. Returns the value. */
static uint64_t receive(struct side *s, int ep) {
  for (;;) {
    if (s->how != BLOCKING) wait_readable(s->in, s->how, ep);
    uint64_t value = 0;
    ssize_t n = s->kind == EVENTFD ? read(s->in, &value, 8) : read(s->in, &value, 1);
    if (n > 0) return value;
    if (n == 0) die("end-of-file");
    if (errno != EAGAIN) die("read");
  }
}

static void send_one(struct side *s, uint64_t value) {
  ssize_t n = s->kind == EVENTFD ? write(s->out, &value, 8) : write(s->out, &value, 1);
  if (n <= 0) die("write");
}

static void *play(void *arg) {
  struct side *s = arg;
  int ep = -1;
  if (s->how == EPOLL_LEVEL || s->how == EPOLL_EDGE) {
    ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN | (s->how == EPOLL_EDGE ? EPOLLET : 0)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->in, &e) < 0) die("epoll_ctl");
  }
  if (s->how != BLOCKING && fcntl(s->in, F_SETFL, fcntl(s->in, F_GETFL) | O_NONBLOCK) < 0) die("O_NONBLOCK");
  for (int i = 0; i < ROUNDS; i++) {
    uint64_t want = s->kind == EVENTFD ? (uint64_t)i + 1 : (uint64_t)(i & 0x7f) + 1;
    if (s->serve) {
      uint64_t got = receive(s, ep);
      if (got != want) s->failed++;
      send_one(s, got);
    } else {
      send_one(s, want);
      if (receive(s, ep) != want) s->failed++;
    }
  }
  return NULL;
}

static void *idle(void *arg) {
  char byte;
  read(*(int *)arg, &byte, 1); /* returns at the end, when the write end closes */
  return NULL;
}

/* Two one-way channels of `kind`: [0] from the starter to the server, [1] back. */
static void channels(enum kind kind, int fds[2][2]) {
  for (int c = 0; c < 2; c++) {
    if (kind == PIPE) {
      if (pipe(fds[c]) < 0) die("pipe");
    } else if (kind == EVENTFD) {
      int e = eventfd(0, 0);
      if (e < 0) die("eventfd");
      fds[c][0] = fds[c][1] = e;
    }
  }
  if (kind == TCP) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0) die("listen");
    getsockname(l, (struct sockaddr *)&a, &len);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int s = accept(l, NULL, NULL);
    if (s < 0) die("accept");
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(l);
    /* starter -> server: c writes, s reads; back: s writes, c reads. */
    fds[0][1] = c;
    fds[0][0] = s;
    fds[1][1] = s;
    fds[1][0] = c;
  }
}

static volatile int slept;

static void *sleeper(void *arg) {
  (void)arg;
  struct timespec nap = {0, 20 * 1000 * 1000};
  nanosleep(&nap, NULL);
  slept = 1;
  return NULL;
}

/* A thread that spins on sched_yield until a sleeping thread's time has come: on one vCPU, yield must run the
 * sleeper once its deadline passed, or the spin never ends (nothing else would look at the clock). */
static void yield_until_a_sleeper_wakes(void) {
  pthread_t t;
  pthread_create(&t, NULL, sleeper, NULL);
  while (!slept) sched_yield();
  pthread_join(t, NULL);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  yield_until_a_sleeper_wakes();
  int quiet[2];
  if (pipe(quiet) < 0) die("pipe");
  pthread_t idlers[IDLE];
  for (int i = 0; i < IDLE; i++) pthread_create(&idlers[i], NULL, idle, &quiet[0]);

  enum { PAIRS = KINDS * HOWS };
  static struct side sides[PAIRS][2];
  pthread_t threads[PAIRS][2];
  for (int p = 0; p < PAIRS; p++) {
    enum kind kind = p % KINDS;
    int fds[2][2];
    channels(kind, fds);
    /* The server waits the pair's way; the starter the next way round, so every way meets every other. */
    sides[p][0] = (struct side){.in = fds[1][0], .out = fds[0][1], .how = (p / KINDS + 1) % HOWS, .kind = kind};
    sides[p][1] = (struct side){.in = fds[0][0], .out = fds[1][1], .how = p / KINDS, .kind = kind, .serve = 1};
    for (int s = 0; s < 2; s++) pthread_create(&threads[p][s], NULL, play, &sides[p][s]);
  }
  int failed = 0;
  for (int p = 0; p < PAIRS; p++) {
    for (int s = 0; s < 2; s++) {
      pthread_join(threads[p][s], NULL);
      failed += sides[p][s].failed;
    }
  }
  close(quiet[1]);
  for (int i = 0; i < IDLE; i++) pthread_join(idlers[i], NULL);
  if (failed) {
    printf("wakeups: %d wrong messages\n", failed);
    return 1;
  }
  printf("wakeups: ok\n");
  return 0;
}
