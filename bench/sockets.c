/* sockets: what TCP over the loopback costs, printed as "name value" lines, run natively and under kiln by
 * bench/sockets.sh. Cases: a 1-byte ping-pong round trip between two threads (the latency of a small request),
 * connect + accept + close of a connection, and a 256 MiB one-way transfer in 64 KiB writes (MiB/s). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int listener(uint16_t *port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128) || getsockname(s, (struct sockaddr *)&a, &len)) {
    perror("listener");
    exit(1);
  }
  *port = ntohs(a.sin_port);
  return s;
}

static int connect_to(uint16_t port) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(c, (struct sockaddr *)&a, sizeof a)) {
    perror("connect");
    exit(1);
  }
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return c;
}

#define ROUNDS 20000
#define CONNECTIONS 2000
#define BULK (256L << 20)

static void *echo_bytes(void *arg) {
  int c = accept(*(int *)arg, NULL, NULL);
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char b;
  while (read(c, &b, 1) == 1 && write(c, &b, 1) == 1) {
  }
  close(c);
  return NULL;
}

static void *accept_many(void *arg) {
  for (int i = 0; i < CONNECTIONS; i++) close(accept(*(int *)arg, NULL, NULL));
  return NULL;
}

static void *drain(void *arg) {
  int c = accept(*(int *)arg, NULL, NULL);
  static char buf[64 << 10];
  long total = 0;
  ssize_t n;
  while ((n = read(c, buf, sizeof buf)) > 0) total += n;
  close(c);
  return (void *)total;
}

int main(void) {
  uint16_t port;
  int l = listener(&port);
  pthread_t t;

  pthread_create(&t, NULL, echo_bytes, &l);
  int c = connect_to(port);
  char b = 'x';
  double t0 = now_ns();
  for (int i = 0; i < ROUNDS; i++) {
    if (write(c, &b, 1) != 1 || read(c, &b, 1) != 1) exit(1);
  }
  printf("tcp_ping_pong_round_us %.2f\n", (now_ns() - t0) / ROUNDS / 1000);
  close(c);
  pthread_join(t, NULL);

  pthread_create(&t, NULL, accept_many, &l);
  t0 = now_ns();
  for (int i = 0; i < CONNECTIONS; i++) close(connect_to(port));
  pthread_join(t, NULL);
  printf("tcp_connect_accept_close_us %.2f\n", (now_ns() - t0) / CONNECTIONS / 1000);

  pthread_create(&t, NULL, drain, &l);
  c = connect_to(port);
  static char chunk[64 << 10];
  t0 = now_ns();
  for (long sent = 0; sent < BULK; sent += (long)sizeof chunk) {
    if (write(c, chunk, sizeof chunk) != (ssize_t)sizeof chunk) exit(1);
  }
  close(c);
  void *received;
  pthread_join(t, &received);
  if ((long)received != BULK) exit(1);
  printf("tcp_stream_MiB_per_s %.1f\n", (double)BULK / (1 << 20) / ((now_ns() - t0) / 1e9));
  return 0;
}
