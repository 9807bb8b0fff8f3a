/* One TCP listener and many connections over the loopback, each line a fact Linux and Kiln must agree on:
 *   order:   accept hands out connections in the order they were made (Linux's accept queue is first in, first out);
 *   many:    1,000 connections to one listener, made and accepted 100 at a time, each echoing its own byte; then
 *            half closed normally (the peer reads end-of-file) and half reset by SO_LINGER 0 (ECONNRESET);
 *   backlog: listen(2) takes backlog + 1 connections ahead of accept, as Linux does; a connect beyond them waits,
 *            and completes once an accept makes room. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in listener(int *fd, int backlog) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  if (bind(*fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(*fd, backlog) != 0 ||
      getsockname(*fd, (struct sockaddr *)&a, &len) != 0)
    perror("listener");
  return a;
}

static int dial(struct sockaddr_in *a, int nonblocking) {
  int c = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  if (connect(c, (struct sockaddr *)a, sizeof *a) != 0 && errno != EINPROGRESS) {
    close(c);
    return -1;
  }
  return c;
}

/* Whether connecting socket `c` is connected within `ms`. */
static int connected_within(int c, int ms) {
  struct pollfd p = {.fd = c, .events = POLLOUT};
  int err = -1;
  socklen_t len = sizeof err;
  return poll(&p, 1, ms) == 1 && getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
}

static void order(void) {
  int l, c[100], in_order = 1;
  struct sockaddr_in a = listener(&l, 128);
  for (int i = 0; i < 100; i++) {
    c[i] = dial(&a, 0);
    char b = (char)i;
    if (write(c[i], &b, 1) != 1) in_order = 0;
  }
  for (int i = 0; i < 100; i++) {
    int s = accept(l, NULL, NULL);
    char b = -1;
    if (read(s, &b, 1) != 1 || b != (char)i) in_order = 0;
    close(s);
  }
  for (int i = 0; i < 100; i++) close(c[i]);
  close(l);
  printf("order: 100 connections accepted in the order they were made: %s\n", in_order ? "yes" : "no");
}

static void many(void) {
  int l, echoed = 0, eof = 0, reset = 0, other = 0;
  struct sockaddr_in a = listener(&l, 128);
  for (int round = 0; round < 10; round++) {
    int c[100], s[100];
    for (int i = 0; i < 100; i++) c[i] = dial(&a, 0);
    for (int i = 0; i < 100; i++) s[i] = accept(l, NULL, NULL);
    for (int i = 0; i < 100; i++) {
      char b = (char)(round * 100 + i), back = 0;
      if (write(c[i], &b, 1) == 1 && read(s[i], &back, 1) == 1 && back == b && write(s[i], &back, 1) == 1 &&
          read(c[i], &back, 1) == 1 && back == b)
        echoed++;
    }
    for (int i = 0; i < 100; i++) {
      if (i % 2) {
        struct linger now = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s[i], SOL_SOCKET, SO_LINGER, &now, sizeof now);
      }
      close(s[i]);
    }
    for (int i = 0; i < 100; i++) {
      char b;
      ssize_t n = read(c[i], &b, 1);
      if (n == 0)
        eof++;
      else if (n < 0 && errno == ECONNRESET)
        reset++;
      else
        other++;
      close(c[i]);
    }
  }
  close(l);
  printf("many: 1000 connections to one listener: %d echoed, %d read end-of-file, %d read ECONNRESET, %d else\n", echoed,
         eof, reset, other);
}

static void backlog(void) {
  int l, c[4], at_once = 0;
  struct sockaddr_in a = listener(&l, 2);
  for (int i = 0; i < 4; i++) c[i] = dial(&a, 1);
  for (int i = 0; i < 3; i++) at_once += connected_within(c[i], 1000);
  int fourth_waits = !connected_within(c[3], 300);
  int s = accept(l, NULL, NULL);
  int fourth_later = connected_within(c[3], 5000);
  printf("backlog: listen(2) takes %d at once; a fourth waits: %s; after an accept it connects: %s\n", at_once,
         fourth_waits ? "yes" : "no", fourth_later ? "yes" : "no");
  close(s);
  for (int i = 0; i < 4; i++) close(c[i]);
  close(l);
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : "";
  if (!*only || !strcmp(only, "order")) order();
  if (!*only || !strcmp(only, "many")) many();
  if (!*only || !strcmp(only, "backlog")) backlog();
  printf("listenq: done\n");
  return 0;
}
