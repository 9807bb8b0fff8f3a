/* sockstate: what a socket reports about its connection and its options, printed one fact a line, so that the test
 * can run it natively and in Kiln and compare the two outputs line by line (everything is on the loopback):
 *   - a peer's FIN while data is unread: poll and edge-triggered epoll report it (EPOLLRDHUP) at once;
 *   - a close with unread data resets the connection; the peer's reads, writes, SO_ERROR and poll after the reset;
 *   - shutdown(SHUT_RD / SHUT_WR / SHUT_RDWR): events, reads, writes (EPIPE, SIGPIPE unless MSG_NOSIGNAL);
 *   - UDP datagrams read into smaller buffers: truncated, MSG_TRUNC, MSG_PEEK, readv over several buffers;
 *   - socket options: defaults, values kept, Linux's validation, inheritance by accepted connections, timeouts.
 * Exits 0; what matters is the output. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t sigpipes;

static void on_sigpipe(int sig) {
  (void)sig;
  sigpipes++;
}

static void die(const char *what) {
  printf("FAILED: %s: %s\n", what, strerror(errno));
  exit(100);
}

/* The names of the poll/epoll bits set in `events` (the same bits for both). */
static const char *names(unsigned events) {
  static char out[64];
  out[0] = 0;
  static const struct {
    unsigned bit;
    const char *name;
  } all[] = {{POLLIN, "IN"}, {POLLPRI, "PRI"}, {POLLOUT, "OUT"}, {POLLRDHUP, "RDHUP"}, {POLLHUP, "HUP"}, {POLLERR, "ERR"}};
  for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++) {
    if (events & all[i].bit) {
      strcat(out, out[0] ? " " : "");
      strcat(out, all[i].name);
    }
  }
  return strdup(out[0] ? out : "none");
}

static const char *poll_now(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT | POLLRDHUP | POLLPRI};
  if (poll(&p, 1, 0) < 0) die("poll");
  return names(p.revents);
}

/* One epoll_wait on `ep` (one entry) up to `ms`: the events, or "nothing". */
static const char *epoll_once(int ep, int ms) {
  struct epoll_event e;
  int n = epoll_wait(ep, &e, 1, ms);
  if (n < 0) die("epoll_wait");
  return n == 0 ? "nothing" : names(e.events);
}

static int edge_watch(int fd) {
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl");
  return ep;
}

/* "n bytes" / "end of file" / the error of a read (or recv with `flags`) of up to `len` bytes. */
static const char *outcome(ssize_t n) {
  static char out[96];
  if (n < 0)
    snprintf(out, sizeof out, "error %s", strerror(errno));
  else if (n == 0)
    snprintf(out, sizeof out, "0");
  else
    snprintf(out, sizeof out, "%zd", n);
  return strdup(out);
}

static const char *recv_now(int fd, size_t len, int flags) {
  char buf[256];
  return outcome(recv(fd, buf, len, flags | MSG_DONTWAIT));
}

static const char *send_now(int fd, const char *data, int flags) {
  return outcome(send(fd, data, strlen(data), flags | MSG_DONTWAIT));
}

static int family_listener(int family, int *port) {
  int l = socket(family, SOCK_STREAM, 0);
  if (l < 0) die("socket");
  struct sockaddr_storage a = {0};
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
    v4->sin_family = AF_INET;
    v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *v4;
  } else {
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
    v6->sin6_family = AF_INET6;
    v6->sin6_addr = in6addr_loopback;
    len = sizeof *v6;
  }
  if (bind(l, (struct sockaddr *)&a, len) < 0 || listen(l, 16) < 0) die("bind/listen");
  getsockname(l, (struct sockaddr *)&a, &len);
  *port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port : ((struct sockaddr_in6 *)&a)->sin6_port);
  return l;
}

static int connect_loopback(int family, int port) {
  int c = socket(family, SOCK_STREAM, 0);
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) return -errno;
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_loopback};
    if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) return -errno;
  }
  return c;
}

/* A connected pair over the loopback: *c the client, *a the accepted end. */
static void pair(int *c, int *a) {
  int port;
  int l = family_listener(AF_INET, &port);
  *c = connect_loopback(AF_INET, port);
  if (*c < 0) die("connect");
  *a = accept(l, NULL, NULL);
  if (*a < 0) die("accept");
  close(l);
}

static void write_all(int fd, const char *data) {
  if (write(fd, data, strlen(data)) != (ssize_t)strlen(data)) die("write");
}

/* Item 10: the peer's FIN is an event of its own, while data is still unread. */
static void fin(void) {
  int c, a;
  pair(&c, &a);
  int ep = edge_watch(a);
  write_all(c, "hello");
  shutdown(c, SHUT_WR);
  printf("fin with unread data: epoll (edge) %s\n", epoll_once(ep, 2000));
  printf("fin with unread data: poll %s\n", poll_now(a));
  printf("fin with unread data: read 2: %s\n", recv_now(a, 2, 0));
  printf("fin with unread data: epoll (edge) after a short read: %s\n", epoll_once(ep, 0));
  printf("fin with unread data: read: %s\n", recv_now(a, 100, 0));
  printf("fin with unread data: read again: %s\n", recv_now(a, 100, 0));
  printf("fin with unread data: poll after the data: %s\n", poll_now(a));
  printf("fin with unread data: the sender's poll: %s\n", poll_now(c));
  shutdown(a, SHUT_WR);
  printf("fin both ways: poll %s,", poll_now(a));
  printf(" the peer's poll %s\n", poll_now(c));
  close(ep);
  close(a);
  close(c);

  /* As an edge-triggered server sees it: data, a short read, then the FIN. */
  pair(&c, &a);
  ep = edge_watch(a);
  write_all(c, "hello");
  printf("fin after a short read: epoll (edge) %s\n", epoll_once(ep, 2000));
  printf("fin after a short read: read 2: %s\n", recv_now(a, 2, 0));
  close(c);
  printf("fin after a short read: epoll (edge) after the close %s\n", epoll_once(ep, 2000));
  printf("fin after a short read: read: %s,", recv_now(a, 100, 0));
  printf(" then %s\n", recv_now(a, 100, 0));
  close(ep);
  close(a);
}

static const char *so_error(int fd) {
  int e = -1;
  socklen_t len = sizeof e;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0) die("SO_ERROR");
  return e ? strerror(e) : "0";
}

/* Item 11: a close with unread data resets the connection. */
static void reset(void) {
  int c, a;
  pair(&c, &a);
  write_all(c, "unread");
  close(a);
  printf("reset: the peer's poll %s\n", poll_now(c));
  sigpipes = 0;
  printf("reset: write %s\n", send_now(c, "x", 0));
  printf("reset: write again %s,", send_now(c, "x", 0));
  printf(" SIGPIPEs %d\n", (int)sigpipes);
  printf("reset: read %s,", recv_now(c, 100, 0));
  printf(" SO_ERROR %s\n", so_error(c));
  printf("reset: poll after the error %s\n", poll_now(c));
  close(c);

  pair(&c, &a);
  write_all(a, "bye");
  write_all(c, "unread");
  close(a);
  printf("reset with data for the peer: read %s\n", recv_now(c, 100, 0));
  printf("reset with data for the peer: read again %s,", recv_now(c, 100, 0));
  printf(" then %s\n", recv_now(c, 100, 0));
  sigpipes = 0;
  printf("reset with data for the peer: write %s,", send_now(c, "x", MSG_NOSIGNAL));
  printf(" SIGPIPEs %d\n", (int)sigpipes);
  close(c);

  pair(&c, &a);
  write_all(c, "unread");
  close(a);
  printf("reset: SO_ERROR first %s,", so_error(c));
  printf(" then %s\n", so_error(c));
  printf("reset: read after SO_ERROR %s\n", recv_now(c, 100, 0));
  close(c);

  /* The peer had finished sending and the closing side had not read: still a reset. */
  pair(&c, &a);
  write_all(c, "unread");
  shutdown(c, SHUT_WR);
  close(a);
  printf("reset after the peer's FIN: poll %s,", poll_now(c));
  printf(" read %s\n", recv_now(c, 100, 0));
  close(c);

  /* All read: a normal close. */
  pair(&c, &a);
  write_all(c, "read");
  char buf[16];
  read(a, buf, sizeof buf);
  close(a);
  printf("close after reading everything: poll %s,", poll_now(c));
  printf(" read %s\n", recv_now(c, 100, 0));
  printf("close after reading everything: write %s\n", send_now(c, "x", MSG_NOSIGNAL));
  close(c);

  /* A close that resets (SO_LINGER {1, 0}) with nothing unread. */
  pair(&c, &a);
  struct linger zero = {1, 0};
  setsockopt(a, SOL_SOCKET, SO_LINGER, &zero, sizeof zero);
  close(a);
  printf("SO_LINGER {1, 0}: poll %s,", poll_now(c));
  printf(" read %s,", recv_now(c, 100, 0));
  printf(" then %s\n", recv_now(c, 100, 0));
  close(c);
}

/* Item 11: a local shutdown produces its events. */
static void shutdowns(void) {
  int c, a;
  pair(&c, &a);
  int ep = edge_watch(a);
  printf("shutdown: epoll (edge) before %s\n", epoll_once(ep, 0));
  printf("shutdown: epoll (edge) again %s\n", epoll_once(ep, 0));
  shutdown(a, SHUT_RD);
  printf("SHUT_RD: epoll (edge) %s\n", epoll_once(ep, 0));
  printf("SHUT_RD: poll %s,", poll_now(a));
  printf(" read %s,", recv_now(a, 100, 0));
  printf(" the peer's poll %s\n", poll_now(c));
  close(ep);
  close(a);
  close(c);

  pair(&c, &a);
  shutdown(a, SHUT_WR);
  printf("SHUT_WR: poll %s,", poll_now(a));
  printf(" the peer's poll %s,", poll_now(c));
  printf(" the peer reads %s\n", recv_now(c, 100, 0));
  sigpipes = 0;
  printf("SHUT_WR: write with MSG_NOSIGNAL %s,", send_now(a, "x", MSG_NOSIGNAL));
  printf(" SIGPIPEs %d\n", (int)sigpipes);
  printf("SHUT_WR: write %s,", send_now(a, "x", 0));
  printf(" SIGPIPEs %d\n", (int)sigpipes);
  write_all(c, "back");
  struct pollfd p = {.fd = a, .events = POLLIN};
  poll(&p, 1, 2000);
  printf("SHUT_WR: still reads %s\n", recv_now(a, 100, 0));
  shutdown(c, SHUT_WR);
  p.events = POLLRDHUP;
  poll(&p, 1, 2000);
  printf("SHUT_WR both ways: poll %s,", poll_now(a));
  printf(" the peer's poll %s\n", poll_now(c));
  close(a);
  close(c);

  pair(&c, &a);
  shutdown(a, SHUT_RDWR);
  printf("SHUT_RDWR: poll %s,", poll_now(a));
  printf(" read %s,", recv_now(a, 100, 0));
  printf(" write %s\n", send_now(a, "x", MSG_NOSIGNAL));
  printf("SHUT_RDWR: the peer's poll %s,", poll_now(c));
  printf(" the peer reads %s\n", recv_now(c, 100, 0));
  close(a);
  close(c);

  int s = socket(AF_INET, SOCK_STREAM, 0);
  printf("shutdown unconnected: %s\n", outcome(shutdown(s, SHUT_RD)));
  pair(&c, &a);
  printf("shutdown how 7: %s\n", outcome(shutdown(a, 7)));
  close(s);
  close(a);
  close(c);
}

/* Item 12: UDP datagrams read into smaller buffers. */
/* A UDP socket bound on the loopback (*u) and one connected to it (*s). */
static void udp_pair(int *u, int *s) {
  *u = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(*u, (struct sockaddr *)&a, sizeof a) < 0) die("bind udp");
  socklen_t len = sizeof a;
  getsockname(*u, (struct sockaddr *)&a, &len);
  *s = socket(AF_INET, SOCK_DGRAM, 0);
  if (connect(*s, (struct sockaddr *)&a, sizeof a) < 0) die("connect udp");
}

static void datagrams(void) {
  int u, s;
  udp_pair(&u, &s);
  send(s, "0123456789", 10, 0);
  send(s, "abcdef", 6, 0);
  send(s, "xyz12345", 8, 0);
  send(s, "next", 4, 0);
  send(s, "dropped", 7, 0);
  send(s, "last", 4, 0);
  char buf[64] = {0};
  int avail = -1;
  ioctl(u, FIONREAD, &avail);
  printf("udp: FIONREAD %d\n", avail);
  ssize_t n = recv(u, buf, 4, MSG_PEEK | MSG_DONTWAIT);
  printf("udp: peek into 4: %s \"%.*s\"\n", outcome(n), n > 0 ? (int)n : 0, buf);
  printf("udp: peek into 4 with MSG_TRUNC: %s\n", recv_now(u, 4, MSG_PEEK | MSG_TRUNC));
  struct iovec iov = {.iov_base = buf, .iov_len = 4};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  n = recvmsg(u, &m, MSG_DONTWAIT);
  printf("udp: recvmsg into 4: %s \"%.*s\" MSG_TRUNC %s\n", outcome(n), n > 0 ? (int)n : 0, buf,
         m.msg_flags & MSG_TRUNC ? "set" : "clear");
  memset(buf, 0, sizeof buf);
  n = recv(u, buf, 4, MSG_TRUNC | MSG_DONTWAIT);
  printf("udp: recv into 4 with MSG_TRUNC: %s \"%.4s\"\n", outcome(n), buf);
  n = read(u, buf, 3);
  printf("udp: read into 3: %s \"%.3s\"\n", outcome(n), buf);
  n = recv(u, buf, sizeof buf, MSG_DONTWAIT);
  printf("udp: the next read: %s \"%.*s\"\n", outcome(n), n > 0 ? (int)n : 0, buf);
  printf("udp: read into 0: %s\n", recv_now(u, 0, 0));
  n = recv(u, buf, sizeof buf, MSG_DONTWAIT);
  printf("udp: after it: %s \"%.*s\"\n", outcome(n), n > 0 ? (int)n : 0, buf);
  m.msg_flags = 0;
  iov.iov_len = sizeof buf;
  send(s, "whole", 5, 0);
  n = recvmsg(u, &m, MSG_DONTWAIT);
  printf("udp: recvmsg of a whole datagram: %s MSG_TRUNC %s\n", outcome(n), m.msg_flags & MSG_TRUNC ? "set" : "clear");
  /* readv takes one datagram, scattered over the buffers; one that fills the first buffer exactly does not make it
   * wait for another (a timeout keeps a wrong answer from hanging the test). */
  struct timeval patience = {1, 0};
  setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
  char first[4] = {0}, second[4] = {0};
  struct iovec two[2] = {{first, 4}, {second, 4}};
  send(s, "scattered", 9, 0);
  n = readv(u, two, 2);
  printf("udp: readv of 9 bytes into 4+4: %s \"%.4s\" \"%.4s\"\n", outcome(n), first, second);
  send(s, "four", 4, 0);
  send(s, "more", 4, 0);
  n = readv(u, two, 2);
  printf("udp: readv of 4 bytes into 4+4: %s\n", outcome(n));
  printf("udp: the datagram after it: %s\n", recv_now(u, 100, 0));
  printf("udp: empty: %s\n", recv_now(u, 100, 0));
  close(s);
  close(u);
}

/* write and writev of one 20,000-byte datagram on the loopback: one datagram each, however the library OS copies
 * it in. (Beyond a network card's MTU: Kiln runs this section without one, as it does not fragment.) */
static void big_datagrams(void) {
  int u, s;
  udp_pair(&u, &s);
  static char big[65536];
  memset(big, 'd', 20000);
  printf("bigudp: write of 20000: %s\n", outcome(write(s, big, 20000)));
  struct iovec halves[2] = {{big, 12000}, {big + 12000, 8000}};
  printf("bigudp: writev of 12000+8000: %s\n", outcome(writev(s, halves, 2)));
  for (int i = 0; i < 2; i++) printf("bigudp: datagram %d: %s\n", i, outcome(recv(u, big, sizeof big, MSG_DONTWAIT)));
  printf("bigudp: empty after them: %s\n", recv_now(u, 100, 0));
  close(s);
  close(u);
}

/* Item 13: options. */
static const char *get(int fd, int level, int name) {
  static char out[64];
  int v = -12345;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) < 0)
    snprintf(out, sizeof out, "error %s", strerror(errno));
  else
    snprintf(out, sizeof out, "%d", v);
  return strdup(out);
}

static const char *set(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value) < 0 ? strerror(errno) : "ok";
}

struct option {
  int level, name;
  const char *label;
  int values[4]; /* set in turn, each followed by a read back; 12345 ends the list */
};

#define END 12345
static const struct option options[] = {
    {SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR", {1, 5, 0, END}},
    {SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT", {1, 0, END}},
    {SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE", {7, 0, END}},
    {SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST", {1, 0, END}},
    {SOL_SOCKET, SO_OOBINLINE, "SO_OOBINLINE", {1, 0, END}},
    {SOL_SOCKET, SO_DONTROUTE, "SO_DONTROUTE", {1, 0, END}},
    {SOL_SOCKET, SO_RCVLOWAT, "SO_RCVLOWAT", {5, 0, END}},
    {SOL_SOCKET, SO_SNDLOWAT, "SO_SNDLOWAT", {5, END}},
    {SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY", {3, 0, END}},
    {SOL_SOCKET, SO_TYPE, "SO_TYPE", {1, END}},
    {SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN", {END}},
    {SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL", {END}},
    {SOL_SOCKET, SO_ACCEPTCONN, "SO_ACCEPTCONN", {END}},
    {SOL_SOCKET, SO_ERROR, "SO_ERROR", {END}},
    {IPPROTO_IP, IP_TTL, "IP_TTL", {40, 0, 256, -1}},
    {IPPROTO_IP, IP_TOS, "IP_TOS", {96, 0x1ff, 3, 0}},
    {IPPROTO_IP, IP_MULTICAST_TTL, "IP_MULTICAST_TTL", {40, 256, -1, -2}},
    {IPPROTO_IP, IP_MULTICAST_LOOP, "IP_MULTICAST_LOOP", {0, 5, END}},
    {IPPROTO_IP, IP_RECVTOS, "IP_RECVTOS", {1, 0, END}},
    {IPPROTO_IP, IP_PKTINFO, "IP_PKTINFO", {1, 0, END}},
    {IPPROTO_IP, IP_FREEBIND, "IP_FREEBIND", {1, 0, END}},
    {IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY", {1, 0, END}},
    {IPPROTO_IPV6, IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS", {20, 256, -2, -1}},
    {IPPROTO_IPV6, IPV6_MULTICAST_HOPS, "IPV6_MULTICAST_HOPS", {20, 256, -1, END}},
    {IPPROTO_IPV6, IPV6_MULTICAST_LOOP, "IPV6_MULTICAST_LOOP", {0, 2, 1, END}},
    {IPPROTO_IPV6, IPV6_TCLASS, "IPV6_TCLASS", {96, 256, -1, END}},
    {IPPROTO_IPV6, IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", {1, 0, END}},
    {IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY", {9, 0, END}},
    {IPPROTO_TCP, TCP_MAXSEG, "TCP_MAXSEG", {256, 10, 40000, 0}},
    {IPPROTO_TCP, TCP_CORK, "TCP_CORK", {1, 0, END}},
    {IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE", {30, 0, END}},
    {IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL", {5, 40000, END}},
    {IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT", {3, 128, END}},
    {IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", {10000, -1, END}},
    {IPPROTO_TCP, TCP_LINGER2, "TCP_LINGER2", {30, END}},
    {IPPROTO_TCP, TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP", {END}},
};

static void option_table(const char *what, int family, int type) {
  for (unsigned i = 0; i < sizeof options / sizeof options[0]; i++) {
    const struct option *o = &options[i];
    int s = socket(family, type, 0);
    printf("%s %s: %s", what, o->label, get(s, o->level, o->name));
    for (int k = 0; k < 4 && o->values[k] != END; k++) {
      const char *result = set(s, o->level, o->name, o->values[k]);
      const char *got = get(s, o->level, o->name);
      printf(", set %d %s -> %s", o->values[k], result, got);
    }
    printf("\n");
    close(s);
  }
}

static void timeval_option(int s, int name, const char *label, long sec, long usec) {
  struct timeval t = {sec, usec};
  const char *result = setsockopt(s, SOL_SOCKET, name, &t, sizeof t) < 0 ? strerror(errno) : "ok";
  struct timeval got = {-1, -1};
  socklen_t len = sizeof got;
  getsockopt(s, SOL_SOCKET, name, &got, &len);
  printf("%s {%ld, %ld}: %s -> {%ld, %ld}\n", label, sec, usec, result, (long)got.tv_sec, (long)got.tv_usec);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void options_in_effect(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  timeval_option(s, SO_RCVTIMEO, "SO_RCVTIMEO", 1, 20000);
  timeval_option(s, SO_RCVTIMEO, "SO_RCVTIMEO", 0, 1000000);
  timeval_option(s, SO_SNDTIMEO, "SO_SNDTIMEO", 2, 0);
  timeval_option(s, SO_SNDTIMEO, "SO_SNDTIMEO", 0, 0);
  int v = 1;
  printf("a short IP_TTL (1 byte): %s", setsockopt(s, IPPROTO_IP, IP_TTL, &v, 1) < 0 ? strerror(errno) : "ok");
  printf(" -> %s\n", get(s, IPPROTO_IP, IP_TTL));
  printf("IPV6_V6ONLY on an IPv4 socket: %s\n", set(s, IPPROTO_IPV6, IPV6_V6ONLY, 1));
  close(s);

  s = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 any = {.sin6_family = AF_INET6};
  bind(s, (struct sockaddr *)&any, sizeof any);
  printf("IPV6_V6ONLY after bind: %s", set(s, IPPROTO_IPV6, IPV6_V6ONLY, 1));
  printf(" -> %s\n", get(s, IPPROTO_IPV6, IPV6_V6ONLY));
  close(s);

  /* Timeouts act: a read and an accept that wait no longer than SO_RCVTIMEO. */
  int c, a;
  pair(&c, &a);
  timeval_option(a, SO_RCVTIMEO, "SO_RCVTIMEO on a connection", 0, 100000);
  double start = now_s();
  char byte;
  ssize_t n = read(a, &byte, 1);
  double waited = now_s() - start;
  printf("a read with SO_RCVTIMEO 0.1 s: %s, waited %s\n", outcome(n), waited >= 0.09 && waited < 1 ? "0.1 s" : "wrong");
  close(a);
  close(c);
  int port;
  int l = family_listener(AF_INET, &port);
  timeval_option(l, SO_RCVTIMEO, "SO_RCVTIMEO on a listener", 0, 100000);
  start = now_s();
  int r = accept(l, NULL, NULL);
  waited = now_s() - start;
  printf("an accept with SO_RCVTIMEO 0.1 s: %s, waited %s\n", outcome(r), waited >= 0.09 && waited < 1 ? "0.1 s" : "wrong");

  /* SO_RCVLOWAT: readable once that many bytes wait; a read waits for them, up to its timeout. */
  pair(&c, &a);
  set(a, SOL_SOCKET, SO_RCVLOWAT, 5);
  write_all(c, "abc");
  usleep(20000);
  printf("SO_RCVLOWAT 5 with 3 bytes: poll %s,", poll_now(a));
  printf(" a non-blocking read %s\n", recv_now(a, 100, 0));
  write_all(c, "abcde");
  usleep(20000);
  printf("SO_RCVLOWAT 5 with 5 bytes: poll %s\n", poll_now(a));
  char low[16];
  recv(a, low, sizeof low, 0);
  write_all(c, "ab");
  timeval_option(a, SO_RCVTIMEO, "SO_RCVTIMEO with SO_RCVLOWAT", 0, 100000);
  start = now_s();
  n = read(a, low, sizeof low);
  waited = now_s() - start;
  printf("a read of 2 bytes under SO_RCVLOWAT 5: %s, waited %s\n", outcome(n),
         waited >= 0.09 && waited < 1 ? "0.1 s" : "wrong");
  write_all(c, "ab");
  usleep(20000);
  printf("a read of at most 2 under SO_RCVLOWAT 5: %s\n", outcome(read(a, low, 2)));
  shutdown(c, SHUT_WR);
  usleep(20000);
  printf("after the peer's FIN under SO_RCVLOWAT 5: poll %s\n", poll_now(a));
  close(a);
  close(c);

  /* Accepted connections start with their listener's options. */
  set(l, IPPROTO_IP, IP_TTL, 33);
  set(l, IPPROTO_IP, IP_TOS, 0x20);
  set(l, IPPROTO_TCP, TCP_NODELAY, 1);
  set(l, SOL_SOCKET, SO_KEEPALIVE, 1);
  set(l, SOL_SOCKET, SO_OOBINLINE, 1);
  set(l, SOL_SOCKET, SO_REUSEADDR, 1);
  set(l, SOL_SOCKET, SO_RCVLOWAT, 3);
  set(l, IPPROTO_TCP, TCP_KEEPCNT, 4);
  timeval_option(l, SO_SNDTIMEO, "SO_SNDTIMEO on a listener", 3, 0);
  printf("a listener: SO_ACCEPTCONN %s\n", get(l, SOL_SOCKET, SO_ACCEPTCONN));
  c = connect_loopback(AF_INET, port);
  a = accept(l, NULL, NULL);
  printf("accepted: IP_TTL %s,", get(a, IPPROTO_IP, IP_TTL));
  printf(" IP_TOS %s,", get(a, IPPROTO_IP, IP_TOS));
  printf(" TCP_NODELAY %s,", get(a, IPPROTO_TCP, TCP_NODELAY));
  printf(" SO_KEEPALIVE %s,", get(a, SOL_SOCKET, SO_KEEPALIVE));
  printf(" SO_OOBINLINE %s,", get(a, SOL_SOCKET, SO_OOBINLINE));
  printf(" SO_REUSEADDR %s,", get(a, SOL_SOCKET, SO_REUSEADDR));
  printf(" SO_RCVLOWAT %s,", get(a, SOL_SOCKET, SO_RCVLOWAT));
  printf(" TCP_KEEPCNT %s,", get(a, IPPROTO_TCP, TCP_KEEPCNT));
  printf(" SO_ACCEPTCONN %s\n", get(a, SOL_SOCKET, SO_ACCEPTCONN));
  timeval_option(a, SO_SNDTIMEO, "accepted: SO_SNDTIMEO kept, then", 0, 0);
  printf("the client: IP_TTL %s,", get(c, IPPROTO_IP, IP_TTL));
  printf(" TCP_NODELAY %s\n", get(c, IPPROTO_TCP, TCP_NODELAY));
  close(a);
  close(c);
  close(l);

  /* SO_ERROR holds a failed connect's error until read. */
  s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in nobody = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  r = connect(s, (struct sockaddr *)&nobody, sizeof nobody);
  printf("a non-blocking connect to a closed port: %s\n", r < 0 && errno == EINPROGRESS ? "in progress" : outcome(r));
  struct pollfd p = {.fd = s, .events = POLLOUT};
  poll(&p, 1, 2000);
  printf("SO_ERROR %s,", so_error(s));
  printf(" then %s\n", so_error(s));
  close(s);

  /* IPV6_V6ONLY: a v6-only listener on :: does not hear IPv4, and leaves the port's IPv4 side to others. */
  int l6 = socket(AF_INET6, SOCK_STREAM, 0);
  set(l6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
  if (bind(l6, (struct sockaddr *)&a6, sizeof a6) < 0 || listen(l6, 4) < 0) die("v6 listener");
  socklen_t len = sizeof a6;
  getsockname(l6, (struct sockaddr *)&a6, &len);
  port = ntohs(a6.sin6_port);
  c = connect_loopback(AF_INET, port);
  printf("IPV6_V6ONLY: an IPv4 connect to its port: %s\n", c < 0 ? strerror(-c) : "connected");
  if (c >= 0) close(c);
  c = connect_loopback(AF_INET6, port);
  printf("IPV6_V6ONLY: an IPv6 connect to its port: %s\n", c < 0 ? strerror(-c) : "connected");
  if (c >= 0) close(c);
  int l4 = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port)};
  printf("IPV6_V6ONLY: an IPv4 bind of the same port: %s\n", outcome(bind(l4, (struct sockaddr *)&a4, sizeof a4)));
  listen(l4, 4);
  c = connect_loopback(AF_INET, port);
  printf("IPV6_V6ONLY: an IPv4 connect with an IPv4 listener beside: %s,", c < 0 ? strerror(-c) : "connected");
  a = accept(l4, NULL, NULL);
  printf(" accepted by the IPv4 listener: %s\n", a >= 0 ? "yes" : strerror(errno));
  if (a >= 0) close(a);
  if (c >= 0) close(c);
  close(l4);
  close(l6);

  int u6 = socket(AF_INET6, SOCK_DGRAM, 0);
  set(u6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
  a6.sin6_port = 0;
  if (bind(u6, (struct sockaddr *)&a6, sizeof a6) < 0) die("v6 udp");
  len = sizeof a6;
  getsockname(u6, (struct sockaddr *)&a6, &len);
  port = ntohs(a6.sin6_port);
  int s4 = socket(AF_INET, SOCK_DGRAM, 0), s6 = socket(AF_INET6, SOCK_DGRAM, 0);
  struct sockaddr_in to4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct sockaddr_in6 to6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_loopback};
  sendto(s4, "v4", 2, 0, (struct sockaddr *)&to4, sizeof to4);
  sendto(s6, "v6", 2, 0, (struct sockaddr *)&to6, sizeof to6);
  char got[8] = {0};
  struct pollfd p6 = {.fd = u6, .events = POLLIN};
  poll(&p6, 1, 2000);
  ssize_t n6 = recv(u6, got, sizeof got, MSG_DONTWAIT);
  printf("IPV6_V6ONLY udp: receives %s \"%.*s\",", outcome(n6), n6 > 0 ? (int)n6 : 0, got);
  printf(" then %s\n", recv_now(u6, sizeof got, 0));
  int u4 = socket(AF_INET, SOCK_DGRAM, 0);
  to4.sin_addr.s_addr = htonl(INADDR_ANY);
  printf("IPV6_V6ONLY udp: an IPv4 bind of the same port: %s\n", outcome(bind(u4, (struct sockaddr *)&to4, sizeof to4)));
  close(u4);
  close(s4);
  close(s6);
  close(u6);

  /* Without IPV6_V6ONLY, a listener on :: holds the port for IPv4 too, and hears it. */
  a6.sin6_port = 0;
  a4.sin_port = 0;
  l6 = socket(AF_INET6, SOCK_STREAM, 0);
  if (bind(l6, (struct sockaddr *)&a6, sizeof a6) < 0 || listen(l6, 4) < 0) die("v6 listener");
  len = sizeof a6;
  getsockname(l6, (struct sockaddr *)&a6, &len);
  port = ntohs(a6.sin6_port);
  a4.sin_port = htons(port);
  l4 = socket(AF_INET, SOCK_STREAM, 0);
  printf("without IPV6_V6ONLY: an IPv4 bind of the same port: %s\n",
         outcome(bind(l4, (struct sockaddr *)&a4, sizeof a4)));
  c = connect_loopback(AF_INET, port);
  printf("without IPV6_V6ONLY: an IPv4 connect to its port: %s\n", c < 0 ? strerror(-c) : "connected");
  if (c >= 0) close(c);
  close(l4);
  close(l6);

  /* Multicast membership: joined once, left once. */
  int mu = socket(AF_INET, SOCK_DGRAM, 0), mt = socket(AF_INET, SOCK_STREAM, 0);
  struct ip_mreqn group = {.imr_multiaddr.s_addr = htonl(0xe0000101)};
  struct ip_mreq plain = {.imr_multiaddr.s_addr = htonl(0xe0000102)};
  struct ip_mreq unicast = {.imr_multiaddr.s_addr = htonl(INADDR_LOOPBACK)};
  printf("IP_DROP_MEMBERSHIP of a group not joined: %s\n",
         outcome(setsockopt(mu, IPPROTO_IP, IP_DROP_MEMBERSHIP, &group, sizeof group)));
  printf("IP_ADD_MEMBERSHIP: %s,", outcome(setsockopt(mu, IPPROTO_IP, IP_ADD_MEMBERSHIP, &group, sizeof group)));
  printf(" again: %s,", outcome(setsockopt(mu, IPPROTO_IP, IP_ADD_MEMBERSHIP, &group, sizeof group)));
  printf(" dropped: %s\n", outcome(setsockopt(mu, IPPROTO_IP, IP_DROP_MEMBERSHIP, &group, sizeof group)));
  printf("IP_ADD_MEMBERSHIP with an ip_mreq: %s,",
         outcome(setsockopt(mu, IPPROTO_IP, IP_ADD_MEMBERSHIP, &plain, sizeof plain)));
  printf(" a short one: %s,", outcome(setsockopt(mu, IPPROTO_IP, IP_ADD_MEMBERSHIP, &plain, 4)));
  printf(" a unicast group: %s,", outcome(setsockopt(mu, IPPROTO_IP, IP_ADD_MEMBERSHIP, &unicast, sizeof unicast)));
  printf(" on TCP: %s\n", outcome(setsockopt(mt, IPPROTO_IP, IP_ADD_MEMBERSHIP, &group, sizeof group)));
  close(mu);
  close(mt);
  mu = socket(AF_INET6, SOCK_DGRAM, 0);
  struct ipv6_mreq group6 = {.ipv6mr_multiaddr = {{{0xff, 0x02, [13] = 1, [15] = 3}}}};
  printf("IPV6_DROP_MEMBERSHIP of a group not joined: %s\n",
         outcome(setsockopt(mu, IPPROTO_IPV6, IPV6_DROP_MEMBERSHIP, &group6, sizeof group6)));
  printf("IPV6_ADD_MEMBERSHIP: %s,", outcome(setsockopt(mu, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, &group6, sizeof group6)));
  printf(" again: %s,", outcome(setsockopt(mu, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, &group6, sizeof group6)));
  printf(" dropped: %s\n", outcome(setsockopt(mu, IPPROTO_IPV6, IPV6_DROP_MEMBERSHIP, &group6, sizeof group6)));
  close(mu);

  /* SO_REUSEPORT: two listeners on one port when both ask for it. */
  int r1 = socket(AF_INET, SOCK_STREAM, 0), r2 = socket(AF_INET, SOCK_STREAM, 0), r3 = socket(AF_INET, SOCK_STREAM, 0);
  set(r1, SOL_SOCKET, SO_REUSEPORT, 1);
  set(r2, SOL_SOCKET, SO_REUSEPORT, 1);
  struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(r1, (struct sockaddr *)&lo, sizeof lo);
  len = sizeof lo;
  getsockname(r1, (struct sockaddr *)&lo, &len);
  listen(r1, 4);
  printf("SO_REUSEPORT: a second bind of the port with it: %s\n", outcome(bind(r2, (struct sockaddr *)&lo, sizeof lo)));
  printf("SO_REUSEPORT: a bind of the port without it: %s\n", outcome(bind(r3, (struct sockaddr *)&lo, sizeof lo)));
  close(r1);
  close(r2);
  close(r3);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, on_sigpipe);
  const char *only = argc > 1 ? argv[1] : "all";
  int all = strcmp(only, "all") == 0;
  if (all || strcmp(only, "fin") == 0) fin();
  if (all || strcmp(only, "reset") == 0) reset();
  if (all || strcmp(only, "shutdown") == 0) shutdowns();
  if (all || strcmp(only, "udp") == 0) datagrams();
  if (strcmp(only, "bigudp") == 0) big_datagrams();
  if (all || strcmp(only, "options") == 0) {
    option_table("tcp4", AF_INET, SOCK_STREAM);
    option_table("tcp6", AF_INET6, SOCK_STREAM);
    option_table("udp4", AF_INET, SOCK_DGRAM);
    option_table("udp6", AF_INET6, SOCK_DGRAM);
    options_in_effect();
  }
  printf("sockstate: done\n");
  return 0;
}
