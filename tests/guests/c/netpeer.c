/* netpeer: the guest side of the network card tests; the test drives the other side from the host. An IP with a
 * ':' is IPv6.
 *   netpeer serve PORT COUNT [IP]   accept TCP connections on IP:PORT (default 0.0.0.0), one at a time, echo each
 *                                   until its peer half-closes, until COUNT ended so (reset ones do not count);
 *                                   print "listening" first
 *   netpeer fetch IP PORT BYTES     connect, send BYTES bytes of a pattern, half-close, read the echo, check it
 *   netpeer udp PORT COUNT [IP]     echo COUNT datagrams received on IP:PORT; print "listening" first
 *   netpeer udp-ttl PORT COUNT TTL  the same on 0.0.0.0:PORT, the echoes sent with IP_TTL TTL
 *   netpeer refused IP PORT         connect to a closed port: expect ECONNREFUSED
 *   netpeer stuck IP PORT           listen on IP:PORT and wait in accept for good
 *   netpeer closed-then-stuck IP PORT  connect to IP:PORT and close (the peer keeps its side open, so the
 *                                   connection is still closing), then wait in accept on 127.0.0.1:9999 for good
 * Exits 0 when everything matched. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
  printf("netpeer: %s: %s\n", what, strerror(errno));
  exit(1);
}

struct address {
  struct sockaddr_storage sa;
  socklen_t len;
  int family;
};

static struct address address(const char *ip, int port) {
  struct address a = {0};
  int ok;
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a.sa;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    ok = inet_pton(AF_INET6, ip, &v6->sin6_addr);
    a.len = sizeof *v6;
  } else {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a.sa;
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    ok = inet_pton(AF_INET, ip, &v4->sin_addr);
    a.len = sizeof *v4;
  }
  if (ok != 1) {
    printf("netpeer: bad address %s\n", ip);
    exit(2);
  }
  a.family = a.sa.ss_family;
  return a;
}

/* The IP of a peer's address, as text. */
static const char *shown(struct sockaddr_storage *peer, char *buf, socklen_t size) {
  void *ip = peer->ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)peer)->sin6_addr
                                         : (void *)&((struct sockaddr_in *)peer)->sin_addr;
  return inet_ntop(peer->ss_family, ip, buf, size);
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + i / 251); }

static int serve(int port, int count, const char *ip) {
  struct address a = address(ip, port);
  int s = socket(a.family, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&a.sa, a.len) < 0) die("bind");
  if (listen(s, 16) < 0) die("listen");
  printf("listening on %d\n", port);
  fflush(stdout);
  static char buf[65536];
  for (int i = 0; i < count;) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int c = accept(s, (struct sockaddr *)&peer, &len);
    if (c < 0) die("accept");
    long total = 0;
    const char *ended = "closed";
    for (;;) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n < 0) {
        ended = strerror(errno);
        break;
      }
      if (n == 0) break;
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = write(c, buf + off, n - off);
        if (w < 0) break;
        off += w;
      }
      total += off;
      if (off < n) {
        ended = strerror(errno);
        break;
      }
    }
    close(c);
    char text[INET6_ADDRSTRLEN];
    printf("echoed %ld bytes to %s (%s)\n", total, shown(&peer, text, sizeof text), ended);
    if (!strcmp(ended, "closed")) i++;
    fflush(stdout);
  }
  return 0;
}

static int fetch(const char *ip, int port, long bytes) {
  struct address a = address(ip, port);
  int s = socket(a.family, SOCK_STREAM, 0);
  if (connect(s, (struct sockaddr *)&a.sa, a.len) < 0) die("connect");
  static unsigned char buf[65536];
  long sent = 0, got = 0, bad = 0;
  /* Send and receive in turns, so that neither side's buffers have to hold everything. */
  while (got < bytes) {
    if (sent < bytes) {
      size_t n = bytes - sent < 16384 ? (size_t)(bytes - sent) : 16384;
      for (size_t i = 0; i < n; i++) buf[i] = pattern(sent + i);
      ssize_t w = write(s, buf, n);
      if (w < 0) die("write");
      sent += w;
      if (sent == bytes) shutdown(s, SHUT_WR);
    }
    ssize_t r = read(s, buf, sizeof buf);
    if (r < 0) die("read");
    if (r == 0) break;
    for (ssize_t i = 0; i < r; i++) bad += buf[i] != pattern(got + i);
    got += r;
  }
  printf("fetched %ld of %ld bytes, %ld wrong\n", got, bytes, bad);
  return got == bytes && bad == 0 ? 0 : 1;
}

static int udp(int port, int count, const char *ip, int ttl) {
  struct address a = address(ip, port);
  int s = socket(a.family, SOCK_DGRAM, 0);
  if (ttl && setsockopt(s, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl) < 0) die("IP_TTL");
  if (bind(s, (struct sockaddr *)&a.sa, a.len) < 0) die("bind");
  printf("listening on %d\n", port);
  fflush(stdout);
  char buf[2048];
  for (int i = 0; i < count; i++) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
    if (n < 0) die("recvfrom");
    if (sendto(s, buf, n, 0, (struct sockaddr *)&peer, len) != n) die("sendto");
  }
  printf("echoed %d datagrams\n", count);
  return 0;
}

static int refused(const char *ip, int port) {
  struct address a = address(ip, port);
  int s = socket(a.family, SOCK_STREAM, 0);
  int r = connect(s, (struct sockaddr *)&a.sa, a.len);
  printf("connect: %s\n", r == 0 ? "connected" : strerror(errno));
  return r < 0 && errno == ECONNREFUSED ? 0 : 1;
}

static int stuck(const char *ip, int port) {
  struct address a = address(ip, port);
  int s = socket(a.family, SOCK_STREAM, 0);
  if (bind(s, (struct sockaddr *)&a.sa, a.len) < 0) die("bind");
  if (listen(s, 4) < 0) die("listen");
  accept(s, NULL, NULL);
  return 0;
}

static int closed_then_stuck(const char *ip, int port) {
  struct address a = address(ip, port);
  int c = socket(a.family, SOCK_STREAM, 0);
  if (connect(c, (struct sockaddr *)&a.sa, a.len) < 0) die("connect");
  close(c);
  printf("closed\n");
  return stuck("127.0.0.1", 9999);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN); /* a peer that resets mid-echo is reported, not fatal */
  const char *any = argc == 5 ? argv[4] : "0.0.0.0";
  if ((argc == 4 || argc == 5) && !strcmp(argv[1], "serve")) return serve(atoi(argv[2]), atoi(argv[3]), any);
  if (argc == 5 && !strcmp(argv[1], "fetch")) return fetch(argv[2], atoi(argv[3]), atol(argv[4]));
  if ((argc == 4 || argc == 5) && !strcmp(argv[1], "udp")) return udp(atoi(argv[2]), atoi(argv[3]), any, 0);
  if (argc == 5 && !strcmp(argv[1], "udp-ttl")) return udp(atoi(argv[2]), atoi(argv[3]), "0.0.0.0", atoi(argv[4]));
  if (argc == 4 && !strcmp(argv[1], "refused")) return refused(argv[2], atoi(argv[3]));
  if (argc == 4 && !strcmp(argv[1], "stuck")) return stuck(argv[2], atoi(argv[3]));
  if (argc == 4 && !strcmp(argv[1], "closed-then-stuck")) return closed_then_stuck(argv[2], atoi(argv[3]));
  printf("usage: netpeer serve PORT COUNT [IP] | fetch IP PORT BYTES | udp PORT COUNT [IP] | udp-ttl PORT COUNT TTL | "
         "refused IP PORT | "
         "stuck IP PORT | closed-then-stuck IP PORT\n");
  return 2;
}
