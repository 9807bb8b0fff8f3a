/* sockets: TCP and UDP over the loopback, as a server and its clients in one program: an echo between threads, a
 * 4 MiB transfer, 64 and then 2,000 connections open at once, more connects than the backlog holds, non-blocking connect/accept/recv with epoll, IPv6, UDP datagrams with
 * their senders, and the errors Linux gives. Each check prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include "check.h"

/* A TCP listener on 127.0.0.1 at a port the system picks; returns the socket and sets *port. */
static int listener(int type, uint16_t *port) {
  int s = socket(AF_INET, SOCK_STREAM | type, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 128) != 0) return -1;
  socklen_t len = sizeof a;
  getsockname(s, (struct sockaddr *)&a, &len);
  *port = ntohs(a.sin_port);
  return s;
}

static int connect_to(uint16_t port, int type) {
  int c = socket(AF_INET, SOCK_STREAM | type, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int r = connect(c, (struct sockaddr *)&a, sizeof a);
  if (r != 0 && errno != EINPROGRESS) {
    close(c);
    return -1;
  }
  return c;
}

static size_t read_all(int fd, char *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  return got;
}

/* The echo server: one connection, uppercases what it reads until EOF, then closes. */
static void *echo(void *arg) {
  int l = *(int *)arg;
  int c = accept(l, NULL, NULL);
  char buf[256];
  ssize_t n;
  while ((n = read(c, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n; i++) buf[i] = (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 32 : buf[i]);
    if (write(c, buf, (size_t)n) != n) break;
  }
  close(c);
  return NULL;
}

#define BULK (4 << 20)
static char bulk_out[BULK], bulk_in[BULK];

static void *bulk_sender(void *arg) {
  int l = *(int *)arg;
  int c = accept(l, NULL, NULL);
  size_t sent = 0;
  while (sent < BULK) {
    ssize_t n = write(c, bulk_out + sent, BULK - sent);
    if (n <= 0) break;
    sent += (size_t)n;
  }
  close(c);
  return (void *)sent;
}

static void tcp_basics(void) {
  uint16_t port;
  int l = listener(0, &port);
  check(l >= 0 && port != 0, "bind 127.0.0.1:0 and listen: the system picks a port");
  pthread_t t;
  pthread_create(&t, NULL, echo, &l);
  int c = connect_to(port, 0);
  check(c >= 0, "connect");
  struct sockaddr_in peer, me;
  socklen_t plen = sizeof peer, mlen = sizeof me;
  check(getpeername(c, (struct sockaddr *)&peer, &plen) == 0 && ntohs(peer.sin_port) == port &&
            peer.sin_addr.s_addr == htonl(INADDR_LOOPBACK) && getsockname(c, (struct sockaddr *)&me, &mlen) == 0 &&
            ntohs(me.sin_port) != 0 && ntohs(me.sin_port) != port,
        "getpeername and getsockname");
  int one = 1;
  check(setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0, "TCP_NODELAY");
  char reply[16] = {0};
  check(write(c, "hello, kiln", 11) == 11 && read_all(c, reply, 11) == 11 && strcmp(reply, "HELLO, KILN") == 0,
        "a round trip through the echo server");
  shutdown(c, SHUT_WR);
  check(read(c, reply, sizeof reply) == 0, "after shutdown(SHUT_WR) the server closes: read gives end-of-file");
  pthread_join(t, NULL);
  close(c);

  for (size_t i = 0; i < BULK; i++) bulk_out[i] = (char)(i * 31 + i / 4096);
  pthread_create(&t, NULL, bulk_sender, &l);
  c = connect_to(port, 0);
  size_t got = read_all(c, bulk_in, BULK);
  char extra;
  void *sent;
  pthread_join(t, &sent);
  check(got == BULK && (size_t)sent == BULK && memcmp(bulk_in, bulk_out, BULK) == 0 && read(c, &extra, 1) == 0,
        "4 MiB arrive byte-exact, then end-of-file");
  close(c);

  int clients[64], servers[64], all = 1;
  for (int i = 0; i < 64; i++) clients[i] = connect_to(port, 0);
  for (int i = 0; i < 64; i++) servers[i] = accept(l, NULL, NULL);
  for (int i = 0; i < 64; i++) {
    char b = (char)i, back = 0;
    all &= clients[i] >= 0 && servers[i] >= 0 && write(clients[i], &b, 1) == 1 && read(servers[i], &back, 1) == 1 &&
           back == b;
  }
  for (int i = 0; i < 64; i++) close(clients[i]), close(servers[i]);
  check(all, "64 connections open at once, each its own");

  errno = 0;
  int taken = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  check(bind(taken, (struct sockaddr *)&a, sizeof a) == -1 && errno == EADDRINUSE, "a port in use is EADDRINUSE");
  close(taken);
  close(l);
  errno = 0;
  check(connect_to(port, 0) == -1 && errno == ECONNREFUSED, "connecting to a closed port is ECONNREFUSED");
}

static void *accept_ten(void *arg) {
  int l = *(int *)arg, got = 0;
  for (int i = 0; i < 10; i++) {
    int s = accept(l, NULL, NULL);
    got += s >= 0;
    close(s);
  }
  return (void *)(long)got;
}

/* More connections than the backlog holds, made before they are accepted: connect waits for room, as Linux retries
 * the SYN, instead of being refused. */
static void backlog_full(void) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  bind(l, (struct sockaddr *)&a, sizeof a);
  listen(l, 2);
  getsockname(l, (struct sockaddr *)&a, &len);
  int clients[10], connected = 0;
  pthread_t t;
  pthread_create(&t, NULL, accept_ten, &l);
  for (int i = 0; i < 10; i++) {
    clients[i] = connect_to(ntohs(a.sin_port), 0);
    connected += clients[i] >= 0;
  }
  void *accepted;
  pthread_join(t, &accepted);
  check(connected == 10 && (long)accepted == 10, "ten connects to a listener with a backlog of 2 all succeed");
  for (int i = 0; i < 10; i++) close(clients[i]);
  close(l);
}

/* 2,000 connections open at once: 4,000 descriptors, past the default soft limit of 1,024 (raised first, as servers
 * do). */
static void many_connections(void) {
  struct rlimit nofile;
  getrlimit(RLIMIT_NOFILE, &nofile);
  nofile.rlim_cur = nofile.rlim_max;
  setrlimit(RLIMIT_NOFILE, &nofile);
  uint16_t port;
  int l = listener(0, &port);
  static int clients[2000], servers[2000];
  int all = nofile.rlim_cur >= 4100;
  for (int i = 0; i < 2000 && all; i++) {
    clients[i] = connect_to(port, 0);
    servers[i] = accept(l, NULL, NULL);
    char b = (char)i, back = 0;
    all = clients[i] >= 0 && servers[i] >= 0 && write(clients[i], &b, 1) == 1 && read(servers[i], &back, 1) == 1 &&
          back == b;
  }
  check(all, "2000 connections open at once");
  for (int i = 0; i < 2000; i++) close(clients[i]), close(servers[i]);
  close(l);
}

static void nonblocking_with_epoll(void) {
  uint16_t port;
  int l = listener(SOCK_NONBLOCK, &port);
  errno = 0;
  check(accept(l, NULL, NULL) == -1 && errno == EAGAIN, "accept with nothing waiting is EAGAIN");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  int c = connect_to(port, SOCK_NONBLOCK);
  struct epoll_event out;
  check(c >= 0 && epoll_wait(ep, &out, 1, 5000) == 1 && out.data.fd == l, "epoll: the listener becomes readable");
  int s = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  check(s >= 0, "accept4(SOCK_NONBLOCK)");
  ev.events = EPOLLOUT;
  ev.data.fd = c;
  epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
  check(epoll_wait(ep, &out, 1, 5000) == 1 && out.data.fd == c && (out.events & EPOLLOUT), "epoll: connected");
  int err = -1;
  socklen_t len = sizeof err;
  check(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR is 0 after the connect");
  char b;
  errno = 0;
  check(recv(s, &b, 1, 0) == -1 && errno == EAGAIN, "recv with nothing to read is EAGAIN");
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.fd = s;
  epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
  epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL);
  epoll_ctl(ep, EPOLL_CTL_DEL, l, NULL);
  int pending = 0;
  check(send(c, "xyz", 3, 0) == 3 && epoll_wait(ep, &out, 1, 5000) == 1 && out.data.fd == s &&
            ioctl(s, FIONREAD, &pending) == 0 && pending == 3,
        "epoll: data arrives; FIONREAD counts it");
  char buf[8];
  check(recv(s, buf, sizeof buf, MSG_PEEK) == 3 && recv(s, buf, sizeof buf, 0) == 3 && memcmp(buf, "xyz", 3) == 0,
        "MSG_PEEK, then recv");
  close(c);
  check(epoll_wait(ep, &out, 1, 5000) == 1 && (out.events & EPOLLRDHUP) && recv(s, buf, sizeof buf, 0) == 0,
        "epoll: the peer hung up (EPOLLRDHUP), recv gives end-of-file");
  close(s);
  close(ep);
  close(l);
}

static void ipv6_and_udp(void) {
  int l = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  socklen_t len = sizeof a;
  check(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 4) == 0 &&
            getsockname(l, (struct sockaddr *)&a, &len) == 0 && len == sizeof a,
        "IPv6: bind [::1]:0 and listen");
  int c = socket(AF_INET6, SOCK_STREAM, 0);
  int s = connect(c, (struct sockaddr *)&a, sizeof a) == 0 ? accept(l, NULL, NULL) : -1;
  char b = 0;
  check(s >= 0 && write(c, "6", 1) == 1 && read(s, &b, 1) == 1 && b == '6', "IPv6: a connection over ::1");
  close(c), close(s), close(l);

  int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a1 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)}, a2 = a1, from;
  socklen_t l1 = sizeof a1, l2 = sizeof a2, lf = sizeof from;
  bind(u1, (struct sockaddr *)&a1, sizeof a1);
  bind(u2, (struct sockaddr *)&a2, sizeof a2);
  getsockname(u1, (struct sockaddr *)&a1, &l1);
  getsockname(u2, (struct sockaddr *)&a2, &l2);
  char buf[32] = {0};
  check(sendto(u1, "ping", 4, 0, (struct sockaddr *)&a2, sizeof a2) == 4 &&
            recvfrom(u2, buf, sizeof buf, 0, (struct sockaddr *)&from, &lf) == 4 && memcmp(buf, "ping", 4) == 0 &&
            from.sin_port == a1.sin_port,
        "UDP: a datagram and its sender");
  check(connect(u2, (struct sockaddr *)&a1, sizeof a1) == 0 && send(u2, "pong!", 5, 0) == 5 &&
            recv(u1, buf, sizeof buf, 0) == 5 && memcmp(buf, "pong!", 5) == 0,
        "UDP: connect, then send and recv");
  struct mmsghdr out[3], in[3];
  struct iovec out_iov[3], in_iov[3];
  char in_buf[3][16];
  const char *words[3] = {"one", "three", "seven"};
  memset(out, 0, sizeof out);
  memset(in, 0, sizeof in);
  for (int i = 0; i < 3; i++) {
    out_iov[i] = (struct iovec){(void *)words[i], strlen(words[i])};
    out[i].msg_hdr = (struct msghdr){.msg_name = &a1, .msg_namelen = sizeof a1, .msg_iov = &out_iov[i], .msg_iovlen = 1};
    in_iov[i] = (struct iovec){in_buf[i], sizeof in_buf[i]};
    in[i].msg_hdr = (struct msghdr){.msg_iov = &in_iov[i], .msg_iovlen = 1};
  }
  check(sendmmsg(u2, out, 3, 0) == 3 && out[2].msg_len == 5, "UDP: sendmmsg sends three datagrams");
  check(recvmmsg(u1, in, 3, MSG_WAITFORONE, NULL) == 3 && in[0].msg_len == 3 && in[1].msg_len == 5 &&
            in[2].msg_len == 5 && memcmp(in_buf[2], "seven", 5) == 0,
        "UDP: recvmmsg receives them, each with its length");
  close(u1), close(u2);
}

static void errors(void) {
  errno = 0;
  check(socket(AF_UNIX + 100, SOCK_STREAM, 0) == -1 && errno == EAFNOSUPPORT, "an unknown family is EAFNOSUPPORT");
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  errno = 0;
  check(getpeername(s, (struct sockaddr *)&a, &len) == -1 && errno == ENOTCONN, "getpeername unconnected: ENOTCONN");
  close(s);
  int fds[2];
  char b;
  errno = 0;
  check(pipe(fds) == 0 && recv(fds[0], &b, 1, MSG_DONTWAIT) == -1 && errno == ENOTSOCK, "recv on a pipe: ENOTSOCK");
}

int main(void) {
  tcp_basics();
  backlog_full();
  many_connections();
  nonblocking_with_epoll();
  ipv6_and_udp();
  errors();
  printf("sockets: %d failed\n", failures);
  return failures != 0;
}
