/* A minimal HTTP/1.1 keep-alive server on one epoll loop (one thread): answers every request head it reads with a
 * 16-byte body, as the Rust and Go servers of bench/http.sh do. Used by bench/http.sh ("epoll C").
 *
 *   epollhttp PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 16\r\nContent-Type: text/plain\r\n\r\nhello from kiln\n";

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 8080, one = 1;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4096) != 0) {
    perror("epollhttp: listen");
    return 1;
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, events[256];
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  static char buf[65536];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == l) {
        int c;
        while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      ssize_t got = read(fd, buf, sizeof buf);
      if (got <= 0) {
        if (got == 0 || errno != EAGAIN) close(fd);
        continue;
      }
      /* One reply per request head in what was read (wrk sends one at a time per connection). */
      int requests = 0;
      for (char *p = buf; (p = memmem(p, (size_t)(buf + got - p), "\r\n\r\n", 4)) != NULL; p += 4) requests++;
      for (int r = 0; r < requests; r++)
        if (write(fd, reply, sizeof reply - 1) < 0) break;
    }
  }
}
