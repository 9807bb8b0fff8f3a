/* unix: AF_UNIX sockets, printed one fact a line so that the test can run it natively and in Kiln and compare:
 *   - socketpair of each type: message boundaries, truncation, end-of-file and EPIPE/SIGPIPE after a close, shutdown;
 *   - a listener on a path (a socket file appears; unlink takes the name away) and on an abstract name, served by
 *     a thread; getsockname, getpeername, SO_PEERCRED; named datagram sockets and their senders' names;
 *   - SCM_RIGHTS passing a pipe's write end and a file, and MSG_CTRUNC with a small control buffer;
 *   - poll and epoll readiness, a blocking read woken by another thread, non-blocking mode, buffer sizes.
 * Exits 0; what matters is the output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
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

static const char *errno_name(int e) {
  static const struct {
    int e;
    const char *name;
  } all[] = {{EAGAIN, "EAGAIN"},   {EPIPE, "EPIPE"},           {ECONNRESET, "ECONNRESET"}, {ECONNREFUSED, "ECONNREFUSED"},
             {ENOENT, "ENOENT"},   {EADDRINUSE, "EADDRINUSE"}, {EINVAL, "EINVAL"},         {ENOTCONN, "ENOTCONN"},
             {EBADF, "EBADF"},     {EOPNOTSUPP, "EOPNOTSUPP"}, {EPROTOTYPE, "EPROTOTYPE"}, {EISCONN, "EISCONN"},
             {EMSGSIZE, "EMSGSIZE"}, {ESOCKTNOSUPPORT, "ESOCKTNOSUPPORT"}, {EPERM, "EPERM"}, {EDESTADDRREQ, "EDESTADDRREQ"}};
  for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++)
    if (all[i].e == e) return all[i].name;
  static char out[16];
  snprintf(out, sizeof out, "errno %d", e);
  return out;
}

static const char *outcome(long n) {
  static char out[64];
  if (n < 0)
    snprintf(out, sizeof out, "-1 %s", errno_name(errno));
  else
    snprintf(out, sizeof out, "%ld", n);
  return out;
}

static const char *events(int fd) {
  char out[64];
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT | POLLRDHUP};
  if (poll(&p, 1, 0) < 0) die("poll");
  out[0] = 0;
  if (p.revents & POLLIN) strcat(out, "IN ");
  if (p.revents & POLLOUT) strcat(out, "OUT ");
  if (p.revents & POLLRDHUP) strcat(out, "RDHUP ");
  if (p.revents & POLLHUP) strcat(out, "HUP ");
  if (p.revents & POLLERR) strcat(out, "ERR ");
  if (!out[0]) strcat(out, "none ");
  out[strlen(out) - 1] = 0;
  return strdup(out);
}

static const char *recv_now(int fd, size_t len, int flags) {
  static char out[128];
  char buf[256] = {0};
  long n = recv(fd, buf, len, flags | MSG_DONTWAIT);
  snprintf(out, sizeof out, "%s \"%.*s\"", outcome(n), n > 0 ? (int)n : 0, buf);
  return out;
}

static const char *type_name(int type) {
  return type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "dgram" : "seqpacket";
}

static void pairs(void) {
  int types[] = {SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET};
  for (int i = 0; i < 3; i++) {
    const char *t = type_name(types[i]);
    int sv[2];
    if (socketpair(AF_UNIX, types[i], 0, sv) < 0) die("socketpair");
    printf("%s: fresh events %s", t, events(sv[0]));
    printf(" / %s\n", events(sv[1]));
    send(sv[0], "hello", 5, 0);
    send(sv[0], "world", 5, 0);
    printf("%s: events with data %s\n", t, events(sv[1]));
    int avail = -1;
    ioctl(sv[1], FIONREAD, &avail);
    printf("%s: FIONREAD %d\n", t, avail);
    printf("%s: peek 3: %s\n", t, recv_now(sv[1], 3, MSG_PEEK));
    printf("%s: recv 3: %s\n", t, recv_now(sv[1], 3, 0));
    printf("%s: recv 64: %s\n", t, recv_now(sv[1], 64, 0));
    printf("%s: recv empty: %s\n", t, recv_now(sv[1], 64, 0));
    send(sv[0], "truncated", 9, 0);
    printf("%s: recv 4 with MSG_TRUNC: %s\n", t, recv_now(sv[1], 4, MSG_TRUNC));
    recv_now(sv[1], 64, 0);
    send(sv[0], "abcdef", 6, 0);
    char buf[8];
    struct iovec iov = {buf, 4};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    long n = recvmsg(sv[1], &m, MSG_DONTWAIT);
    printf("%s: recvmsg 4: %s MSG_TRUNC %s\n", t, outcome(n), m.msg_flags & MSG_TRUNC ? "set" : "clear");
    recv_now(sv[1], 64, 0);
    /* A zero-length message. */
    printf("%s: send 0: %s\n", t, outcome(send(sv[0], "", 0, 0)));
    printf("%s: recv after send 0: %s\n", t, recv_now(sv[1], 64, 0));
    send(sv[1], "left", 4, 0);
    shutdown(sv[0], SHUT_WR);
    printf("%s: after SHUT_WR: events %s", t, events(sv[0]));
    printf(" / peer %s\n", events(sv[1]));
    int before = sigpipes;
    long sent = send(sv[0], "x", 1, MSG_NOSIGNAL);
    printf("%s: write after SHUT_WR with MSG_NOSIGNAL: %s, SIGPIPE %d\n", t, outcome(sent), sigpipes - before);
    printf("%s: peer read after SHUT_WR: %s\n", t, recv_now(sv[1], 64, 0));
    close(sv[1]);
    printf("%s: after peer close: events %s\n", t, events(sv[0]));
    printf("%s: read after peer close: %s\n", t, recv_now(sv[0], 64, 0));
    printf("%s: read again: %s\n", t, recv_now(sv[0], 64, 0));
    close(sv[0]);

    if (socketpair(AF_UNIX, types[i], 0, sv) < 0) die("socketpair");
    close(sv[1]);
    before = sigpipes;
    sent = write(sv[0], "x", 1);
    printf("%s: write to closed peer: %s, SIGPIPE %d\n", t, outcome(sent), sigpipes - before);
    printf("%s: again: %s\n", t, outcome(send(sv[0], "x", 1, MSG_NOSIGNAL)));
    close(sv[0]);

    /* Unread data at close resets the connection. */
    if (socketpair(AF_UNIX, types[i], 0, sv) < 0) die("socketpair");
    send(sv[0], "unread", 6, 0);
    send(sv[1], "mine", 4, 0);
    close(sv[0]);
    printf("%s: after close with unread data: %s\n", t, events(sv[1]));
    printf("%s: reads then: %s", t, recv_now(sv[1], 64, 0));
    printf(", %s", recv_now(sv[1], 64, 0));
    printf(", %s\n", recv_now(sv[1], 64, 0));
    close(sv[1]);
  }
}

/* Sets a socket address for `name` (a leading '@' makes it abstract); returns its length. */
static socklen_t address(struct sockaddr_un *a, const char *name) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  size_t len = strlen(name);
  memcpy(a->sun_path, name, len);
  if (name[0] == '@') a->sun_path[0] = 0;
  return offsetof(struct sockaddr_un, sun_path) + len + (name[0] == '@' ? 0 : 1);
}

static const char *name_of(struct sockaddr_un *a, socklen_t len) {
  static char out[128];
  if (len <= offsetof(struct sockaddr_un, sun_path)) return "(unnamed)";
  if (a->sun_path[0]) return a->sun_path;
  snprintf(out, sizeof out, "@%.*s", (int)(len - offsetof(struct sockaddr_un, sun_path) - 1), a->sun_path + 1);
  return out;
}

static int listener;

/* Accepts one connection and echoes it back in capitals until end-of-file. */
static void *serve(void *arg) {
  (void)arg;
  int c = accept(listener, NULL, NULL);
  if (c < 0) die("accept");
  char buf[64];
  long n;
  while ((n = read(c, buf, sizeof buf)) > 0) {
    for (long i = 0; i < n; i++) buf[i] &= ~0x20;
    write(c, buf, n);
  }
  close(c);
  return NULL;
}

static void listening(const char *label, const char *name, const char *shown) {
  struct sockaddr_un a;
  socklen_t len = address(&a, name);
  int c = socket(AF_UNIX, SOCK_STREAM, 0);
  printf("%s: connect with no listener: %s\n", label, outcome(connect(c, (struct sockaddr *)&a, len)));
  listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (bind(listener, (struct sockaddr *)&a, len) < 0) die("bind");
  int again = socket(AF_UNIX, SOCK_STREAM, 0);
  printf("%s: bind taken name: %s\n", label, outcome(bind(again, (struct sockaddr *)&a, len)));
  close(again);
  struct stat st;
  if (name[0] != '@') {
    int r = stat(name, &st);
    printf("%s: stat: %s, socket %d\n", label, outcome(r), S_ISSOCK(st.st_mode));
    printf("%s: open: %s\n", label, outcome(open(name, O_RDONLY)));
  }
  printf("%s: connect before listen: %s\n", label, outcome(connect(c, (struct sockaddr *)&a, len)));
  if (listen(listener, 8) < 0) die("listen");
  printf("%s: listener events %s\n", label, events(listener));
  pthread_t server;
  pthread_create(&server, NULL, serve, NULL);
  printf("%s: connect: %s\n", label, outcome(connect(c, (struct sockaddr *)&a, len)));
  struct sockaddr_un got;
  socklen_t got_len = sizeof got;
  getsockname(listener, (struct sockaddr *)&got, &got_len);
  printf("%s: listener name %s (len %s)\n", label, strcmp(name_of(&got, got_len), name) ? "differs" : shown,
         got_len == len ? "right" : "wrong");
  got_len = sizeof got;
  getpeername(c, (struct sockaddr *)&got, &got_len);
  printf("%s: client's peer %s\n", label, strcmp(name_of(&got, got_len), name) ? "differs" : shown);
  got_len = sizeof got;
  getsockname(c, (struct sockaddr *)&got, &got_len);
  printf("%s: client's name %s, len %u\n", label, name_of(&got, got_len), got_len);
  struct ucred cred;
  socklen_t cred_len = sizeof cred;
  getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len);
  printf("%s: SO_PEERCRED pid is mine %d, uid %d, gid %d\n", label, cred.pid == getpid(), cred.uid == getuid(),
         cred.gid == getgid());
  write(c, "echo me", 7);
  char buf[16] = {0};
  got_len = sizeof got;
  long n = recvfrom(c, buf, sizeof buf, 0, (struct sockaddr *)&got, &got_len);
  printf("%s: echo %s \"%s\" from %s\n", label, outcome(n), buf,
         strcmp(name_of(&got, got_len), name) ? name_of(&got, got_len) : shown);
  int d = socket(AF_UNIX, SOCK_DGRAM, 0);
  printf("%s: datagram to the stream listener: %s\n", label, outcome(sendto(d, "x", 1, 0, (struct sockaddr *)&a, len)));
  close(d);
  shutdown(c, SHUT_WR);
  printf("%s: read after server closed: %s\n", label, outcome(read(c, buf, sizeof buf)));
  pthread_join(server, NULL);
  close(c);
  if (name[0] != '@') {
    printf("%s: unlink: %s\n", label, outcome(unlink(name)));
    c = socket(AF_UNIX, SOCK_STREAM, 0);
    printf("%s: connect after unlink: %s\n", label, outcome(connect(c, (struct sockaddr *)&a, len)));
    close(c);
  }
  close(listener);
  c = socket(AF_UNIX, SOCK_STREAM, 0);
  printf("%s: connect after close: %s\n", label, outcome(connect(c, (struct sockaddr *)&a, len)));
  close(c);
  c = socket(AF_UNIX, SOCK_DGRAM, 0);
  printf("%s: dgram connect to nothing: %s\n", label, outcome(connect(c, (struct sockaddr *)&a, len)));
  close(c);
}

static void datagrams(const char *dir) {
  char one[108], two[108];
  snprintf(one, sizeof one, "%s/one.sock", dir);
  snprintf(two, sizeof two, "%s/two.sock", dir);
  struct sockaddr_un a, b;
  socklen_t a_len = address(&a, one), b_len = address(&b, two);
  int x = socket(AF_UNIX, SOCK_DGRAM, 0), y = socket(AF_UNIX, SOCK_DGRAM, 0), z = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (bind(x, (struct sockaddr *)&a, a_len) < 0 || bind(y, (struct sockaddr *)&b, b_len) < 0) die("bind dgram");
  printf("dgram names: send to named: %s\n", outcome(sendto(x, "from one", 8, 0, (struct sockaddr *)&b, b_len)));
  sendto(z, "from nobody", 11, 0, (struct sockaddr *)&b, b_len);
  for (int i = 0; i < 2; i++) {
    char buf[32] = {0};
    struct sockaddr_un from;
    socklen_t from_len = sizeof from;
    long n = recvfrom(y, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &from_len);
    printf("dgram names: got %s \"%s\" from %s, address length %s\n", outcome(n), buf,
           strcmp(name_of(&from, from_len), one) ? name_of(&from, from_len) : "one.sock",
           from_len == a_len ? "of the name" : from_len == 0 ? "0" : "other");
  }
  printf("dgram names: send unconnected without address: %s\n", outcome(send(z, "x", 1, 0)));
  connect(z, (struct sockaddr *)&a, a_len);
  printf("dgram names: send connected: %s\n", outcome(send(z, "to one", 6, 0)));
  printf("dgram names: x got %s\n", recv_now(x, 32, 0));
  close(x);
  printf("dgram names: send to a closed receiver: %s\n", outcome(send(z, "x", 1, 0)));
  printf("dgram names: and again: %s\n", outcome(send(z, "x", 1, 0)));
  /* Autobind: only the family. */
  int w = socket(AF_UNIX, SOCK_DGRAM, 0);
  struct sockaddr_un auto_name = {.sun_family = AF_UNIX};
  printf("dgram names: autobind %s", outcome(bind(w, (struct sockaddr *)&auto_name, sizeof(sa_family_t))));
  socklen_t len = sizeof auto_name;
  getsockname(w, (struct sockaddr *)&auto_name, &len);
  printf(", name length %u, abstract %d\n", len, auto_name.sun_path[0] == 0);
  close(y);
  close(z);
  close(w);
  unlink(one);
  unlink(two);
}

static int open_temp(const char *dir, const char *contents) {
  char path[128];
  snprintf(path, sizeof path, "%s/passed.txt", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) die("open");
  write(fd, contents, strlen(contents));
  lseek(fd, 0, SEEK_SET);
  unlink(path);
  return fd;
}

static int send_fds(int sock, const int *fds, int count) {
  char control[CMSG_SPACE(sizeof(int) * 4)];
  memset(control, 0, sizeof control);
  struct iovec iov = {"F", 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                     .msg_controllen = CMSG_SPACE(sizeof(int) * count)};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * count);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
  return sendmsg(sock, &m, 0);
}

/* Receives with `room` bytes of control buffer; prints what came and returns the descriptors in `fds`. */
static int recv_fds(int sock, size_t room, int *fds, const char *label) {
  char control[256];
  char byte;
  struct iovec iov = {&byte, 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = room};
  long n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  int count = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      memcpy(fds, CMSG_DATA(c), sizeof(int) * count);
    }
  }
  printf("rights %s: recvmsg %s, %d descriptors, MSG_CTRUNC %s\n", label, outcome(n), count,
         m.msg_flags & MSG_CTRUNC ? "set" : "clear");
  return count;
}

static void rights(const char *dir) {
  int sv[2], p[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || pipe(p) < 0) die("socketpair/pipe");
  int file = open_temp(dir, "passed file");
  int fds[2] = {p[1], file};
  printf("rights: sendmsg %s\n", outcome(send_fds(sv[0], fds, 2)));
  close(p[1]);
  close(file);
  int got[4] = {-1, -1, -1, -1};
  if (recv_fds(sv[1], sizeof(char[CMSG_SPACE(sizeof(int) * 2)]), got, "pipe and file") == 2) {
    printf("rights: received cloexec %d\n", (fcntl(got[0], F_GETFD) & FD_CLOEXEC) != 0);
    write(got[0], "through the pipe", 16);
    close(got[0]);
    char buf[32] = {0};
    printf("rights: pipe read %s \"%s\"\n", outcome(read(p[0], buf, sizeof buf)), buf);
    printf("rights: pipe at end %s\n", outcome(read(p[0], buf, sizeof buf)));
    memset(buf, 0, sizeof buf);
    printf("rights: file read %s \"%s\"\n", outcome(read(got[1], buf, sizeof buf)), buf);
    close(got[1]);
  }
  close(p[0]);
  /* Too little room: the descriptors that do not fit are closed. */
  if (pipe(p) < 0) die("pipe");
  int both[2] = {p[1], p[1]};
  send_fds(sv[0], both, 2);
  close(p[1]);
  int n = recv_fds(sv[1], CMSG_LEN(sizeof(int)), got, "small buffer");
  for (int i = 0; i < n; i++) close(got[i]);
  char buf[4];
  printf("rights: pipe after the passed ends closed: %s\n", outcome(read(p[0], buf, sizeof buf)));
  close(p[0]);
  /* sendfile from a file to the socket. */
  int source = open_temp(dir, "sent by sendfile");
  off_t offset = 8;
  long moved = sendfile(sv[0], source, &offset, 100);
  char sent[32] = {0};
  long got_back = recv(sv[1], sent, sizeof sent, MSG_DONTWAIT);
  printf("sendfile: %ld moved, offset %ld, received %ld \"%s\"\n", moved, (long)offset, got_back, sent);
  close(source);
  send_fds(sv[0], fds, 0 + 1);
  printf("rights: bad descriptor: %s\n", outcome(send_fds(sv[0], (int[]){999}, 1)));
  close(sv[0]);
  close(sv[1]);
}

static void *write_in_pieces(void *arg) {
  int fd = *(int *)arg;
  for (int i = 0; i < 3; i++) {
    struct timespec t = {0, 20 * 1000000L};
    nanosleep(&t, NULL);
    write(fd, "abcd", 4);
  }
  return NULL;
}

#define BIG (3 << 20)

static void *write_big(void *arg) {
  int fd = *(int *)arg;
  char *big = malloc(BIG);
  for (int i = 0; i < BIG; i++) big[i] = (char)(i % 251);
  static long written;
  written = write(fd, big, BIG);
  free(big);
  return &written;
}

/* One write of 3 MiB, more than the buffers hold, goes whole while the reader drains it. */
static void big_write(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
  pthread_t t;
  pthread_create(&t, NULL, write_big, &sv[0]);
  static char buf[65536];
  long total = 0, n;
  int in_order = 1;
  while (total < BIG && (n = read(sv[1], buf, sizeof buf)) > 0) {
    for (long i = 0; i < n; i++) in_order &= buf[i] == (char)((total + i) % 251);
    total += n;
  }
  void *written;
  pthread_join(t, &written);
  printf("big write: write returned %ld, read %ld, in order %d\n", *(long *)written, total, in_order);
  close(sv[0]);
  close(sv[1]);
}

/* MSG_WAITALL waits for the whole buffer; SO_PASSCRED brings the sender's pid and ids (SCM_CREDENTIALS). */
static void waitall_and_credentials(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
  pthread_t t;
  pthread_create(&t, NULL, write_in_pieces, &sv[0]);
  char buf[16] = {0};
  long n = recv(sv[1], buf, 12, MSG_WAITALL);
  printf("MSG_WAITALL: %s \"%s\"\n", outcome(n), buf);
  pthread_join(t, NULL);
  int on = 1;
  setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
  send(sv[0], "c", 1, 0);
  char control[CMSG_SPACE(sizeof(struct ucred))];
  struct iovec iov = {buf, sizeof buf};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  n = recvmsg(sv[1], &m, 0);
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
    struct ucred cred;
    memcpy(&cred, CMSG_DATA(c), sizeof cred);
    printf("SCM_CREDENTIALS: %s, pid is mine %d, uid %d, gid %d\n", outcome(n), cred.pid == getpid(),
           cred.uid == getuid(), cred.gid == getgid());
  } else {
    printf("SCM_CREDENTIALS: %s, none\n", outcome(n));
  }
  close(sv[0]);
  close(sv[1]);
}

struct waker {
  int fd;
  int delay_ms;
};

static void *write_later(void *arg) {
  struct waker *w = arg;
  struct timespec t = {0, w->delay_ms * 1000000L};
  nanosleep(&t, NULL);
  write(w->fd, "late", 4);
  return NULL;
}

static void readiness(void) {
  int sv[2], s;
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = sv[1]};
  epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &e);
  struct epoll_event out[4];
  int n = epoll_wait(ep, out, 4, 0);
  printf("epoll: fresh %d events %#x\n", n, n > 0 ? out[0].events : 0);
  n = epoll_wait(ep, out, 4, 0);
  printf("epoll: edge again %d\n", n);
  pthread_t t;
  struct waker w = {sv[0], 50};
  pthread_create(&t, NULL, write_later, &w);
  n = epoll_wait(ep, out, 4, 5000);
  printf("epoll: after a thread's write %d events %#x\n", n, n > 0 ? out[0].events : 0);
  pthread_join(t, NULL);
  char buf[8] = {0};
  read(sv[1], buf, sizeof buf);
  pthread_create(&t, NULL, write_later, &w);
  printf("blocking read woken by a thread: %s \"%.4s\"\n", outcome(read(sv[1], buf, sizeof buf)), buf);
  pthread_join(t, NULL);
  close(sv[0]);
  n = epoll_wait(ep, out, 4, 1000);
  printf("epoll: after peer close %d events %#x\n", n, n > 0 ? out[0].events : 0);
  close(ep);
  close(sv[1]);

  /* readv takes what is there: a first buffer filled exactly does not make it wait for the second. */
  int p[2];
  if (pipe(p) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("pipe/socketpair");
  char one[4], two[4];
  struct iovec both[2] = {{one, 4}, {two, 4}};
  write(p[1], "pipe", 4);
  printf("readv: a pipe with 4 bytes into 4+4: %s\n", outcome(readv(p[0], both, 2)));
  write(sv[0], "sock", 4);
  printf("readv: a stream socket with 4 bytes into 4+4: %s\n", outcome(readv(sv[1], both, 2)));
  write(p[1], "abcdef", 6);
  long got = readv(p[0], both, 2);
  printf("readv: 6 bytes into 4+4: %s \"%.4s\" \"%.2s\"\n", outcome(got), one, two);
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0) die("socketpair");
  printf("nonblocking: flags %s\n", fcntl(sv[0], F_GETFL) & O_NONBLOCK ? "O_NONBLOCK" : "blocking");
  printf("nonblocking: empty read %s\n", outcome(read(sv[0], buf, 1)));
  static char block[4096];
  long total = 0, r;
  while ((r = write(sv[0], block, sizeof block)) > 0) total += r;
  printf("nonblocking: fill ends with %s, %s\n", outcome(r), total > 100000 ? "over 100000 bytes" : "few bytes");
  printf("nonblocking: full events %s\n", events(sv[0]));
  while (read(sv[1], block, sizeof block) > 0) {
  }
  printf("nonblocking: drained events %s\n", events(sv[0]));
  int size;
  socklen_t len = sizeof size;
  getsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, &len);
  printf("buffers: SO_SNDBUF %d", size);
  getsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &size, &len);
  printf(", SO_RCVBUF %d", size);
  size = 10000;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  getsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, &len);
  printf(", set 10000 reads %d\n", size);
  getsockopt(sv[0], SOL_SOCKET, SO_TYPE, &size, &len);
  printf("options: SO_TYPE %d", size);
  getsockopt(sv[0], SOL_SOCKET, SO_DOMAIN, &size, &len);
  printf(", SO_DOMAIN %d\n", size);
  close(sv[0]);
  close(sv[1]);
  s = socket(AF_UNIX, SOCK_RAW, 0);
  len = sizeof size;
  getsockopt(s, SOL_SOCKET, SO_TYPE, &size, &len);
  printf("errors: socket(AF_UNIX, SOCK_RAW) is SO_TYPE %d\n", size);
  close(s);
  s = socket(AF_UNIX, SOCK_DGRAM, 0);
  printf("errors: listen on dgram: %s\n", outcome(listen(s, 1)));
  close(s);
  s = socket(AF_UNIX, SOCK_STREAM, 0);
  printf("errors: listen unbound: %s\n", outcome(listen(s, 1)));
  printf("errors: read unconnected stream: %s\n", outcome(read(s, buf, 1)));
  printf("errors: getpeername unconnected: %s\n", outcome(getpeername(s, NULL, NULL)));
  close(s);
}

int main(void) {
  signal(SIGPIPE, on_sigpipe);
  setvbuf(stdout, NULL, _IOLBF, 0);
  char dir[] = "/tmp/kiln-unix-XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp");
  pairs();
  char path[128], abstract[64];
  snprintf(path, sizeof path, "%s/listener.sock", dir);
  listening("path", path, "the bound path");
  snprintf(abstract, sizeof abstract, "@kiln-unix-test-%d-%ld", getpid(), (long)time(NULL));
  listening("abstract", abstract, "the abstract name");
  datagrams(dir);
  rights(dir);
  readiness();
  waitall_and_credentials();
  big_write();
  rmdir(dir);
  printf("unix: done\n");
  return 0;
}
