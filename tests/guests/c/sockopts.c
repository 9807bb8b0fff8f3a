/* sockopts: socket options that change what a TCP connection does, each checked by its effect.
 *   sockopts local              on the loopback: SO_RCVBUF/SO_SNDBUF (Linux's reporting, and how much a connection
 *                               takes in before a non-blocking send stops), SO_LINGER (a zero timeout resets the
 *                               connection; a timeout makes close wait for the peer's acknowledgement, up to it),
 *                               SO_KEEPALIVE and TCP_KEEP* (values, limits, inheritance by accepted connections)
 *   sockopts keepalive IP PORT  connect twice to IP:PORT, the first with keep-alive after 1 s, probes 1 s apart, 2 of
 *                               them; print "connected", then wait: the first must fail once the peer goes silent
 *                               (the test makes it so), the second, without keep-alive, must stay open
 * One "ok: ..." or "FAILED: ..." line per check; exits with the number of failures. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static void die(const char *what) {
  printf("FAILED: %s: %s\n", what, strerror(errno));
  exit(100);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int get_int(int s, int level, int name) {
  int value = -1;
  socklen_t len = sizeof value;
  if (getsockopt(s, level, name, &value, &len) < 0) die("getsockopt");
  return value;
}

static int set_int(int s, int level, int name, int value) {
  return setsockopt(s, level, name, &value, sizeof value);
}

static struct sockaddr_in address(const char *ip, int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    printf("sockopts: bad address %s\n", ip);
    exit(100);
  }
  return a;
}

/* A listener on the loopback with SO_RCVBUF `rcvbuf` (0: default), set before listen; returns its port. */
static int listener(int rcvbuf, int *port) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  if (rcvbuf && set_int(l, SOL_SOCKET, SO_RCVBUF, rcvbuf) < 0) die("SO_RCVBUF");
  struct sockaddr_in a = address("127.0.0.1", 0);
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(l, 8) < 0) die("listen");
  socklen_t len = sizeof a;
  getsockname(l, (struct sockaddr *)&a, &len);
  *port = ntohs(a.sin_port);
  return l;
}

/* A client with SO_SNDBUF `sndbuf` (0: default), set before connect, connected to the loopback's `port`. */
static int client(int port, int sndbuf) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (sndbuf && set_int(c, SOL_SOCKET, SO_SNDBUF, sndbuf) < 0) die("SO_SNDBUF");
  struct sockaddr_in a = address("127.0.0.1", port);
  if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  return c;
}

/* Sends without blocking until the connection takes no more (three tries 20 ms apart); returns the bytes taken. */
static long fill(int c) {
  static char chunk[1024];
  fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
  long total = 0;
  for (int refused = 0; refused < 3;) {
    ssize_t n = write(c, chunk, sizeof chunk);
    if (n > 0) {
      total += n;
    } else if (errno == EAGAIN) {
      refused++;
      usleep(20000);
    } else {
      die("write");
    }
  }
  fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK);
  return total;
}

/* Reads until end-of-file; returns the bytes read, or -errno. */
static long drain(int s) {
  static char buf[65536];
  long total = 0;
  for (;;) {
    ssize_t n = read(s, buf, sizeof buf);
    if (n < 0) return -errno;
    if (n == 0) return total;
    total += n;
  }
}

static void buffers(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  check(get_int(s, SOL_SOCKET, SO_RCVBUF) == 131072 && get_int(s, SOL_SOCKET, SO_SNDBUF) == 131072,
        "the buffers are 64 KiB each way by default, reported doubled");
  set_int(s, SOL_SOCKET, SO_RCVBUF, 4096);
  set_int(s, SOL_SOCKET, SO_SNDBUF, 10000);
  check(get_int(s, SOL_SOCKET, SO_RCVBUF) == 8192 && get_int(s, SOL_SOCKET, SO_SNDBUF) == 20000,
        "SO_RCVBUF and SO_SNDBUF report double the value set");
  set_int(s, SOL_SOCKET, SO_RCVBUF, 1 << 30);
  set_int(s, SOL_SOCKET, SO_SNDBUF, 1);
  check(get_int(s, SOL_SOCKET, SO_RCVBUF) == 425984 && get_int(s, SOL_SOCKET, SO_SNDBUF) == 4608,
        "buffer sizes are capped at rmem_max/wmem_max and raised to Linux's minimum");
  check(setsockopt(s, SOL_SOCKET, SO_RCVBUF, "", 1) < 0 && errno == EINVAL, "a short SO_RCVBUF is EINVAL");
  set_int(s, SOL_SOCKET, SO_SNDBUF, -1);
  check(get_int(s, SOL_SOCKET, SO_SNDBUF) == 425984, "a negative SO_SNDBUF, read as unsigned, is capped at wmem_max");
  check(setsockopt(s, IPPROTO_TCP, TCP_NODELAY, "", 1) < 0 && errno == EINVAL, "a short TCP_NODELAY is EINVAL");
  check(setsockopt(s, SOL_SOCKET, SO_REUSEADDR, "", 2) < 0 && errno == EINVAL, "a short SO_REUSEADDR is EINVAL");
  /* getsockopt gives as much as optlen has room for, and says how much it gave. */
  unsigned char two[4] = {0xee, 0xee, 0xee, 0xee};
  socklen_t len = 2;
  check(getsockopt(s, SOL_SOCKET, SO_SNDBUF, two, &len) == 0 && len == 2 && two[0] == 0x00 && two[1] == 0x80 &&
            two[2] == 0xee,
        "getsockopt with a 2-byte optlen writes 2 bytes and sets optlen to 2");
  struct linger half = {7, 7};
  len = 4;
  check(getsockopt(s, SOL_SOCKET, SO_LINGER, &half, &len) == 0 && len == 4 && half.l_onoff == 0 && half.l_linger == 7,
        "getsockopt SO_LINGER with a 4-byte optlen writes l_onoff only and sets optlen to 4");
  len = (socklen_t)-1;
  check(getsockopt(s, SOL_SOCKET, SO_SNDBUF, two, &len) < 0 && errno == EINVAL, "a negative optlen is EINVAL");
  check(getsockopt(s, IPPROTO_TCP, TCP_NODELAY, two, &len) < 0 && errno == EINVAL,
        "a negative optlen is EINVAL for a TCP option too");
  check(getsockopt(s, SOL_SOCKET, SO_SNDBUF, two, NULL) < 0 && errno == EFAULT, "a NULL optlen is EFAULT");
  close(s);

  int port;
  int l = listener(4096, &port);
  int c = client(port, 8192);
  int a = accept(l, NULL, NULL);
  check(get_int(a, SOL_SOCKET, SO_RCVBUF) == 8192, "an accepted connection has its listener's SO_RCVBUF");
  long small = fill(c);
  printf("a 4 KiB receive buffer and an 8 KiB send buffer took %ld bytes\n", small);
  check(small >= 8192 && small <= 4096 + 8192, "a connection takes in no more than its two buffers hold");
  close(c);
  check(drain(a) == small, "the peer reads every byte the small buffers took, then end-of-file");
  close(a);
  close(l);

  l = listener(0, &port);
  c = client(port, 0);
  a = accept(l, NULL, NULL);
  long large = fill(c);
  printf("default buffers took %ld bytes\n", large);
  check(large > 120000 && large <= 2 * 65536, "with the default buffers, a connection takes in about 128 KiB");
  close(c);
  check(drain(a) == large, "the peer reads every byte the default buffers took, then end-of-file");
  close(a);
  close(l);
}

static void linger(void) {
  int port;
  int l = listener(4096, &port);

  int c = client(port, 0);
  int a = accept(l, NULL, NULL);
  struct linger reset = {.l_onoff = 1, .l_linger = 0};
  check(setsockopt(c, SOL_SOCKET, SO_LINGER, &reset, sizeof reset) == 0, "SO_LINGER {1, 0} is taken");
  struct linger got = {0};
  socklen_t len = sizeof got;
  check(getsockopt(c, SOL_SOCKET, SO_LINGER, &got, &len) == 0 && len == sizeof got && got.l_onoff == 1 &&
            got.l_linger == 0,
        "SO_LINGER reads back");
  close(c);
  check(drain(a) == -ECONNRESET, "closing with SO_LINGER {1, 0} resets the connection: the peer reads ECONNRESET");
  close(a);

  c = client(port, 0);
  a = accept(l, NULL, NULL);
  close(c);
  check(drain(a) == 0, "closing without SO_LINGER ends the connection normally: the peer reads end-of-file");
  close(a);

  /* The peer reads nothing and its window is full: nothing more can be acknowledged. */
  c = client(port, 0);
  a = accept(l, NULL, NULL);
  long sent = fill(c);
  struct linger wait1 = {.l_onoff = 1, .l_linger = 1};
  setsockopt(c, SOL_SOCKET, SO_LINGER, &wait1, sizeof wait1);
  double start = now_s();
  close(c);
  double waited = now_s() - start;
  printf("close with SO_LINGER {1, 1} and unacknowledged data took %.2f s\n", waited);
  check(waited >= 0.95, "close with SO_LINGER {1, 1} waits up to its timeout while data is unacknowledged");
  check(drain(a) == sent, "the data still arrives after the linger timeout, then end-of-file");
  close(a);

  c = client(port, 0);
  a = accept(l, NULL, NULL);
  static char some[2000];
  if (write(c, some, sizeof some) != sizeof some) die("write");
  struct linger wait5 = {.l_onoff = 1, .l_linger = 5};
  setsockopt(c, SOL_SOCKET, SO_LINGER, &wait5, sizeof wait5);
  start = now_s();
  close(c);
  waited = now_s() - start;
  printf("close with SO_LINGER {1, 5} and a peer that acknowledges took %.2f s\n", waited);
  check(waited < 4, "close with SO_LINGER returns once the peer acknowledged everything, before the timeout");
  check(drain(a) == sizeof some, "the peer got the data and end-of-file");
  close(a);
  close(l);
}

static void keepalive_options(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  check(get_int(s, SOL_SOCKET, SO_KEEPALIVE) == 0 && get_int(s, IPPROTO_TCP, TCP_KEEPIDLE) == 7200 &&
            get_int(s, IPPROTO_TCP, TCP_KEEPINTVL) == 75 && get_int(s, IPPROTO_TCP, TCP_KEEPCNT) == 9,
        "keep-alive is off by default, with Linux's default timing");
  check(set_int(s, IPPROTO_TCP, TCP_KEEPIDLE, 0) < 0 && errno == EINVAL, "TCP_KEEPIDLE 0 is EINVAL");
  check(set_int(s, IPPROTO_TCP, TCP_KEEPCNT, 128) < 0 && errno == EINVAL, "TCP_KEEPCNT 128 is EINVAL");
  close(s);

  int port;
  int l = listener(0, &port);
  set_int(l, SOL_SOCKET, SO_KEEPALIVE, 1);
  set_int(l, IPPROTO_TCP, TCP_KEEPIDLE, 30);
  int c = client(port, 0);
  int a = accept(l, NULL, NULL);
  check(get_int(a, SOL_SOCKET, SO_KEEPALIVE) == 1 && get_int(a, IPPROTO_TCP, TCP_KEEPIDLE) == 30,
        "an accepted connection has its listener's keep-alive settings");
  close(c);
  close(a);
  close(l);
}

static int connect_to(const char *ip, int port, int keepalive) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (keepalive) {
    if (set_int(c, SOL_SOCKET, SO_KEEPALIVE, 1) < 0 || set_int(c, IPPROTO_TCP, TCP_KEEPIDLE, 1) < 0 ||
        set_int(c, IPPROTO_TCP, TCP_KEEPINTVL, 1) < 0 || set_int(c, IPPROTO_TCP, TCP_KEEPCNT, 2) < 0)
      die("keep-alive options");
  }
  struct sockaddr_in a = address(ip, port);
  if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  return c;
}

static void keepalive(const char *ip, int port) {
  int probed = connect_to(ip, port, 1);
  int quiet = connect_to(ip, port, 0);
  printf("connected\n");
  fflush(stdout);
  double start = now_s();
  char byte;
  ssize_t n = read(probed, &byte, 1);
  int error = errno;
  printf("the keep-alive connection's read ended after %.1f s: %zd (%s)\n", now_s() - start, n, strerror(error));
  check(n < 0 && (error == ETIMEDOUT || error == ECONNRESET),
        "a connection with keep-alive fails once its peer stops answering");
  struct pollfd p = {.fd = quiet, .events = POLLIN};
  check(poll(&p, 1, 0) == 0, "a connection without keep-alive stays open meanwhile");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 2 && strcmp(argv[1], "local") == 0) {
    buffers();
    linger();
    keepalive_options();
  } else if (argc == 4 && strcmp(argv[1], "keepalive") == 0) {
    keepalive(argv[2], atoi(argv[3]));
  } else {
    printf("usage: sockopts local | sockopts keepalive IP PORT\n");
    return 100;
  }
  return failures;
}
