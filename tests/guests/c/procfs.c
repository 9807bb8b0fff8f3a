/* procfs: what a program learns of itself through /proc and O_PATH descriptors, printed as facts that hold on Linux
 * and in Kiln alike (no ids, times or addresses, only how they relate), so that the test compares the two outputs:
 *  - /proc/self/stat and /proc/self/task/TID/stat laid out as Linux lays them out (52 fields; pid, comm, state,
 *    ppid, pgrp, session, num_threads, starttime, exit_signal, processor...), as ps and psutil parse them;
 *  - O_PATH: a descriptor that names a file or directory without opening it for I/O: fstat, fchdir, *at calls
 *    relative to it and AT_EMPTY_PATH work; read, write, lseek, getdents, fsync, fchmod, ftruncate, mmap give EBADF
 *    (musl's fchmod then changes the mode through /proc/self/fd/N);
 *  - /proc/self/fd: readdir lists the open descriptors, readlink of each names its file as Linux does ("pipe:[INO]",
 *    "socket:[INO]" with the inode fstat gives, "anon_inode:[eventfd]"), opening one opens the file again (a socket:
 *    ENXIO; O_PATH names a pipe or socket without opening it), and stat of one follows it to the open file itself,
 *    a pipe or a socket too. */
#define _GNU_SOURCE
#include "check.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef O_PATH
#define O_PATH 010000000
#endif

static int wake[2];

static void *sleeper(void *arg) {
  pthread_setname_np(pthread_self(), (const char *)arg);
  char c;
  read(wake[0], &c, 1);
  return 0;
}

/* The fields of a stat file: fields[0] is the pid, fields[1] the comm (without parentheses), then the rest. */
static int read_stat(const char *path, char fields[64][64]) {
  char buf[2048];
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');
  if (!open_paren || !close_paren || buf[n - 1] != '\n') return -1;
  int count = 0;
  snprintf(fields[count++], 64, "%.*s", (int)(open_paren - buf - 1), buf);
  snprintf(fields[count++], 64, "%.*s", (int)(close_paren - open_paren - 1), open_paren + 1);
  for (char *tok = strtok(close_paren + 2, " \n"); tok && count < 64; tok = strtok(0, " \n")) {
    snprintf(fields[count++], 64, "%s", tok);
  }
  return count;
}

static long field(char fields[64][64], int number) { return atol(fields[number - 1]); }

/* The program's name as Linux keeps it: the file name it was started by, at most 15 bytes. */
static char comm[16];

/* How many threads other than the caller are asleep under the names they set. */
static int asleep(void) {
  char f[64][64];
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  for (struct dirent *e; d && (e = readdir(d));) {
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
    if (e->d_name[0] != '.' && read_stat(path, f) == 52 && field(f, 1) != gettid()) {
      n += strcmp(f[2], "S") == 0 && strncmp(f[1], "sleeper-", 8) == 0;
    }
  }
  if (d) closedir(d);
  return n;
}

static void stat_files(void) {
  char f[64][64];
  int n = read_stat("/proc/self/stat", f);
  check(n == 52, "/proc/self/stat has 52 fields");
  check(field(f, 1) == getpid(), "its pid is getpid()");
  check(strcmp(f[1], comm) == 0, "its comm is the program's name");
  check(strcmp(f[2], "R") == 0, "the reading process is running (R)");
  check(field(f, 4) == getppid(), "its ppid is getppid()");
  check(field(f, 5) == getpgrp() && field(f, 6) == getsid(0), "its process group and session are getpgrp() and getsid()");
  check(field(f, 20) == 3, "num_threads counts the three threads");
  struct timespec up;
  clock_gettime(CLOCK_BOOTTIME, &up);
  long ticks = sysconf(_SC_CLK_TCK);
  check(field(f, 22) <= up.tv_sec * ticks + up.tv_nsec / (1000000000 / ticks) + 1, "starttime is not after now");
  check(field(f, 14) >= 0 && field(f, 15) >= 0 && field(f, 23) > 0 && field(f, 24) >= 0,
        "utime, stime, vsize and rss read as numbers (vsize non-zero)");
  check(field(f, 36) == 0 && field(f, 37) == 0 && field(f, 38) == SIGCHLD, "nswap is 0 and exit_signal is SIGCHLD");
  check(field(f, 39) >= 0 && field(f, 39) < sysconf(_SC_NPROCESSORS_CONF), "processor is a CPU of the machine");

  DIR *d = opendir("/proc/self/task");
  int tasks = 0, sleeping = 0, named = 0, laid_out = 0, own = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
    tasks++;
    if (read_stat(path, f) != 52) continue;
    laid_out += field(f, 1) == atol(e->d_name) && field(f, 20) == 3 && field(f, 4) == getppid();
    if (field(f, 1) == gettid()) {
      own += strcmp(f[2], "R") == 0 && strcmp(f[1], comm) == 0 && field(f, 38) == SIGCHLD;
    } else {
      sleeping += strcmp(f[2], "S") == 0;
      named += strcmp(f[1], "sleeper-a") == 0 || strcmp(f[1], "sleeper-b") == 0;
    }
  }
  if (d) closedir(d);
  check(tasks == 3 && laid_out == 3, "/proc/self/task/TID/stat for each of the three: its tid, num_threads and ppid");
  check(own == 1, "the reading thread's own: running, the program's name, exit_signal SIGCHLD");
  check(sleeping == 2 && named == 2, "the two others: sleeping (S), by the names they set");
}

static int ebadf(long r) { return r == -1 && errno == EBADF; }

/* The directory the program works in (argv[1], else /tmp/procfs-dir), and its file and link. */
static char dir_path[200], file_path[256], link_path[256];

static void o_path(void) {
  mkdir(dir_path, 0755);
  int w = open(file_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  write(w, "through O_PATH\n", 15);
  close(w);
  symlink("file", link_path);

  int dir = open(dir_path, O_PATH | O_DIRECTORY);
  struct stat st;
  check(dir >= 0 && fstat(dir, &st) == 0 && S_ISDIR(st.st_mode), "O_PATH on a directory: fstat sees a directory");
  check((fcntl(dir, F_GETFL) & O_PATH) != 0, "F_GETFL shows O_PATH");
  char buf[64] = {0};
  int in = openat(dir, "file", O_RDONLY);
  check(in >= 0 && read(in, buf, sizeof buf) == 15 && strcmp(buf, "through O_PATH\n") == 0,
        "openat relative to it opens and reads the file");
  close(in);
  check(fstatat(dir, "file", &st, 0) == 0 && st.st_size == 15, "fstatat relative to it");
  char dents[256];
  check(ebadf(syscall(SYS_getdents64, dir, dents, sizeof dents)), "getdents64 on it is EBADF");
  check(ebadf(read(dir, buf, 1)), "read of it is EBADF");
  int cwd = open(".", O_PATH | O_DIRECTORY);
  char here[256];
  check(fchdir(dir) == 0 && getcwd(here, sizeof here) && strcmp(here, dir_path) == 0, "fchdir to it");
  fchdir(cwd);
  close(cwd);

  int file = open(file_path, O_PATH);
  check(file >= 0 && fstat(file, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 15, "O_PATH on a file: fstat");
  check(fstatat(file, "", &st, AT_EMPTY_PATH) == 0 && st.st_size == 15, "fstatat with AT_EMPTY_PATH");
  check(ebadf(read(file, buf, 1)) && ebadf(write(file, "x", 1)), "read and write of it are EBADF");
  check(ebadf(pread(file, buf, 1, 0)) && ebadf(lseek(file, 0, SEEK_SET)), "pread and lseek are EBADF");
  check(mmap(0, 4096, PROT_READ, MAP_PRIVATE, file, 0) == MAP_FAILED && errno == EBADF, "mmap of it is EBADF");
  check(fcntl(file, F_SETFL, O_NONBLOCK) == -1 && errno == EBADF, "F_SETFL is EBADF");
  /* Linux refuses fchmod of an O_PATH descriptor (EBADF). musl's fchmod then changes the mode through
   * /proc/self/fd/N, glibc's reports the error: each is compared with its own native run. */
  check(ebadf(syscall(SYS_fchmod, file, 0600)), "the fchmod call on it is EBADF");
  int changed = fchmod(file, 0600);
  printf("fchmod (the C library's) of it: %s, mode %o\n", changed == 0 ? "changed" : strerror(errno),
         stat(file_path, &st) == 0 ? (unsigned)(st.st_mode & 0777) : 0u);
  chmod(file_path, 0644);
  int copy = dup(file);
  check(copy >= 0 && fstat(copy, &st) == 0 && st.st_size == 15 && ebadf(read(copy, buf, 1)), "a dup is O_PATH too");
  close(copy);
  close(file);
  check(fstat(open(file_path, O_RDONLY), &st) == 0 && st.st_size == 15, "O_PATH left the file as it was");

  int link = open(link_path, O_PATH | O_NOFOLLOW);
  check(link >= 0 && fstat(link, &st) == 0 && S_ISLNK(st.st_mode), "O_PATH | O_NOFOLLOW names the link itself");
  close(link);
  close(dir);
}

static void fd_dir(void) {
  int fds[2], sv[2];
  pipe(fds);
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  int ev = eventfd(0, 0), ep = epoll_create1(0), null = open("/dev/null", O_RDONLY);
  int file = open(file_path, O_RDWR);
  lseek(file, 5, SEEK_SET);

  DIR *d = opendir("/proc/self/fd");
  int listed[64] = {0}, links = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    if (fd >= 0 && fd < 64) {
      listed[fd] = 1;
      links += e->d_type == DT_LNK;
    }
  }
  int all = 1, count = 0;
  for (int fd = 0; fd < 64; fd++) {
    int open_now = fcntl(fd, F_GETFD) != -1;
    all &= listed[fd] == open_now || fd == dirfd(d);
    count += listed[fd];
  }
  closedir(d);
  check(all && links == count, "readdir of /proc/self/fd lists every open descriptor, each a link");

  struct {
    int fd;
    const char *what;
  } named[] = {{fds[0], "pipe"}, {fds[1], "pipe"}, {sv[0], "socket"}, {ev, "anon_inode:[eventfd]"},
               {ep, "anon_inode:[eventpoll]"}, {null, "/dev/null"}, {file, file_path}};
  for (unsigned i = 0; i < sizeof named / sizeof named[0]; i++) {
    char path[64], target[128] = {0}, expected[128];
    snprintf(path, sizeof path, "/proc/self/fd/%d", named[i].fd);
    struct stat st;
    fstat(named[i].fd, &st);
    if (strcmp(named[i].what, "pipe") == 0 || strcmp(named[i].what, "socket") == 0) {
      snprintf(expected, sizeof expected, "%s:[%lu]", named[i].what, (unsigned long)st.st_ino);
    } else {
      snprintf(expected, sizeof expected, "%s", named[i].what);
    }
    ssize_t n = readlink(path, target, sizeof target - 1);
    printf("readlink of a %s descriptor: %s\n", named[i].fd == file ? "file's" : named[i].what,
           n > 0 && strcmp(target, expected) == 0 ? "as expected" : target);
  }
  char path[64], buf[16] = {0};
  snprintf(path, sizeof path, "/proc/self/fd/%d", file);
  int again = open(path, O_RDONLY);
  check(again >= 0 && again != file && read(again, buf, 7) == 7 && strcmp(buf, "through") == 0,
        "opening /proc/self/fd/N opens the file again, at its start");
  check(lseek(file, 0, SEEK_CUR) == 5, "and leaves the first descriptor's offset alone");
  struct stat a, b;
  fstat(fds[0], &a);
  fstat(fds[1], &b);
  check(a.st_ino == b.st_ino, "both ends of a pipe have one inode");

  /* stat follows a descriptor's link to the open file itself, even one with no path: the pipe or the socket. */
  struct {
    int fd;
    const char *what;
    mode_t type;
  } linked[] = {{fds[0], "a pipe's", S_IFIFO}, {sv[0], "a socket's", S_IFSOCK}, {file, "a file's", S_IFREG}};
  for (unsigned i = 0; i < sizeof linked / sizeof linked[0]; i++) {
    struct stat of_fd, through, link, reopened;
    snprintf(path, sizeof path, "/proc/self/fd/%d", linked[i].fd);
    fstat(linked[i].fd, &of_fd);
    int same = stat(path, &through) == 0 && (through.st_mode & S_IFMT) == linked[i].type &&
               through.st_ino == of_fd.st_ino && through.st_mode == of_fd.st_mode;
    printf("stat of %s /proc/self/fd/N: %s\n", linked[i].what, same ? "the descriptor's file" : "not it");
    same = fstatat(AT_FDCWD, path, &through, 0) == 0 && through.st_ino == of_fd.st_ino;
    printf("fstatat of it: %s\n", same ? "the descriptor's file" : "not it");
    printf("lstat of it: %s\n", lstat(path, &link) == 0 && S_ISLNK(link.st_mode) ? "a link" : "not a link");
    /* statx of the descriptor itself (AT_EMPTY_PATH), as Rust's std stats a file: the same file as fstat. */
    struct {
      uint32_t mask, blksize;
      uint64_t attributes;
      uint32_t nlink, uid, gid;
      uint16_t mode, pad;
      uint64_t ino;
      uint64_t rest[30];
    } sx;
    long got = syscall(SYS_statx, linked[i].fd, "", AT_EMPTY_PATH, 0x7ff, &sx);
    same = got == 0 && sx.ino == of_fd.st_ino && (sx.mode & S_IFMT) == linked[i].type;
    printf("statx of the descriptor: %s\n", got != 0 ? strerror(errno) : same ? "the descriptor's file" : "not it");
    int opened = open(path, O_RDONLY);
    same = opened >= 0 && fstat(opened, &reopened) == 0 && reopened.st_ino == of_fd.st_ino &&
           (reopened.st_mode & S_IFMT) == linked[i].type;
    printf("fstat after opening it: %s\n", opened < 0 ? strerror(errno) : same ? "the descriptor's file" : "not it");
    close(opened);
    int by_path = open(path, O_PATH);
    same = by_path >= 0 && fstat(by_path, &reopened) == 0 && reopened.st_ino == of_fd.st_ino &&
           (reopened.st_mode & S_IFMT) == linked[i].type;
    printf("fstat after opening it O_PATH: %s\n",
           by_path < 0 ? strerror(errno) : same ? "the descriptor's file" : "not it");
    close(by_path);
  }
  /* An O_PATH descriptor of a pipe's read end names the pipe without reading it: when the reader goes, a write
   * fails (EPIPE). */
  int p[2];
  pipe(p);
  snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
  int by_path = open(path, O_PATH);
  close(p[0]);
  signal(SIGPIPE, SIG_IGN);
  check(by_path >= 0 && write(p[1], "x", 1) == -1 && errno == EPIPE, "an O_PATH descriptor of a pipe is no reader");
  signal(SIGPIPE, SIG_DFL);
  close(by_path);
  close(p[1]);
}

int main(int argc, char **argv) {
  snprintf(dir_path, sizeof dir_path, "%s", argc > 1 ? argv[1] : "/tmp/procfs-dir");
  snprintf(file_path, sizeof file_path, "%s/file", dir_path);
  snprintf(link_path, sizeof link_path, "%s/link", dir_path);
  const char *slash = strrchr(argv[0], '/');
  snprintf(comm, sizeof comm, "%s", slash ? slash + 1 : argv[0]);
  pipe(wake);
  pthread_t t[2];
  pthread_create(&t[0], 0, sleeper, "sleeper-a");
  pthread_create(&t[1], 0, sleeper, "sleeper-b");
  /* Until both have named themselves and sleep (at most 10 s: a loaded machine may be slow to run them). */
  struct timespec nap = {0, 10 * 1000 * 1000};
  for (int i = 0; i < 1000 && asleep() < 2; i++) nanosleep(&nap, 0);
  stat_files();
  write(wake[1], "xx", 2);
  pthread_join(t[0], 0);
  pthread_join(t[1], 0);
  o_path();
  fd_dir();
  return failures;
}
