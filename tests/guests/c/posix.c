/* posix: answers of Linux that programs and libcs build on, each as the man pages give it: mkdir("/") is EEXIST,
 * readlink of a non-link EINVAL (realpath depends on it), a path through a non-directory ENOTDIR, utimensat and
 * futimens keep both times (UTIME_NOW, UTIME_OMIT), sigaltstack says SS_ONSTACK in a handler running on it and refuses
 * to change it there (EPERM), fcntl record locks (POSIX locks are the process's, OFD locks the open file
 * description's, and the two kinds conflict), flock locks, RLIMIT_NOFILE kept and enforced. Built with musl and with glibc; works
 * in the new directory argv[1]. Each check prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static int fails_with(int ret, int err) { return ret == -1 && errno == err; }

static void directories(void) {
  errno = 0;
  check(fails_with(mkdir("/", 0755), EEXIST), "mkdir(\"/\") is EEXIST");
  check(fails_with(mkdir("/tmp", 0755), EEXIST), "mkdir of an existing directory is EEXIST");
  check(fails_with(mkdir(".", 0755), EEXIST), "mkdir(\".\") is EEXIST");
  check(fails_with(rmdir("/"), EBUSY), "rmdir(\"/\") is EBUSY");
}

static void links(void) {
  char buf[PATH_MAX];
  int fd = open("f", O_CREAT | O_WRONLY, 0644);
  check(fd >= 0 && close(fd) == 0, "create f");
  check(fails_with(readlink("f", buf, sizeof buf), EINVAL), "readlink of a file is EINVAL");
  check(fails_with(readlink(".", buf, sizeof buf), EINVAL), "readlink of a directory is EINVAL");
  check(fails_with(readlink("/dev/null", buf, sizeof buf), EINVAL), "readlink of a device is EINVAL");
  check(fails_with(readlinkat(AT_FDCWD, "f", buf, sizeof buf), EINVAL), "readlinkat of a file is EINVAL");
  int dir = open(".", O_RDONLY | O_DIRECTORY);
  check(fails_with(readlinkat(dir, "f", buf, sizeof buf), EINVAL), "readlinkat relative to a directory");
  check(fails_with(readlinkat(dir, "missing", buf, sizeof buf), ENOENT), "readlinkat of a missing name is ENOENT");
  close(dir);
  check(fails_with(readlink("missing", buf, sizeof buf), ENOENT), "readlink of a missing name is ENOENT");
  check(fails_with(readlink("f", buf, 0), EINVAL), "readlink with no room is EINVAL");
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf);
  check(n > 0 && buf[0] == '/', "readlink of /proc/self/exe names the program");
  char *a = realpath("f", NULL), *b = realpath("./sub/../f", NULL);
  check(mkdir("sub", 0755) == 0, "mkdir sub");
  free(b);
  b = realpath("./sub/../f", NULL);
  check(a && b && a[0] == '/' && strcmp(a, b) == 0 && strcmp(strrchr(a, '/'), "/f") == 0, "realpath");
  free(a);
  free(b);
}

static void not_directories(void) {
  struct stat st;
  char buf[16];
  check(fails_with(stat("f/x", &st), ENOTDIR), "stat through a file is ENOTDIR");
  check(fails_with(open("f/x", O_RDONLY), ENOTDIR), "open through a file is ENOTDIR");
  check(fails_with(open("f/x", O_CREAT | O_WRONLY, 0644), ENOTDIR), "create through a file is ENOTDIR");
  check(fails_with(mkdir("f/x", 0755), ENOTDIR), "mkdir through a file is ENOTDIR");
  check(fails_with(unlink("f/x"), ENOTDIR), "unlink through a file is ENOTDIR");
  check(fails_with(rename("f/x", "g"), ENOTDIR), "rename from through a file is ENOTDIR");
  check(fails_with(rename("sub", "f/x"), ENOTDIR), "rename to through a file is ENOTDIR");
  check(fails_with(access("f/x", F_OK), ENOTDIR), "access through a file is ENOTDIR");
  check(fails_with(readlink("f/x", buf, sizeof buf), ENOTDIR), "readlink through a file is ENOTDIR");
  check(fails_with(stat("f/", &st), ENOTDIR), "a file with a trailing slash is ENOTDIR");
  check(fails_with(stat("f/.", &st), ENOTDIR), "f/. is ENOTDIR");
  check(fails_with(stat("f/..", &st), ENOTDIR), "f/.. is ENOTDIR");
  check(fails_with(open("f/", O_RDONLY), ENOTDIR), "open of a file with a trailing slash is ENOTDIR");
  check(stat("sub/", &st) == 0 && stat("sub/.", &st) == 0 && stat("sub/..", &st) == 0, "a directory's are fine");
  check(fails_with(chdir("f"), ENOTDIR), "chdir to a file is ENOTDIR");
  check(fails_with(mkdir("f/", 0755), EEXIST), "mkdir(\"f/\") of a file is EEXIST");
  check(fails_with(mkdir("/dev/null/", 0755), EEXIST), "mkdir(\"/dev/null/\") is EEXIST");
  check(mkdir("d/", 0755) == 0 && rmdir("d/") == 0, "mkdir and rmdir with a trailing slash");
  check(fails_with(open("new/", O_CREAT | O_WRONLY, 0644), EISDIR), "creating \"new/\" is EISDIR");
  check(fails_with(open("f/", O_CREAT | O_WRONLY, 0644), EISDIR), "creating \"f/\" is EISDIR");
  check(fails_with(open("missing/new/", O_CREAT | O_WRONLY, 0644), ENOENT), "creating below a missing name is ENOENT");
  check(fails_with(rename("f", "g/"), ENOTDIR), "renaming a file to \"g/\" is ENOTDIR");
  check(fails_with(rename("f/", "g"), ENOTDIR), "renaming \"f/\" is ENOTDIR");
  check(rename("sub/", "sub2/") == 0 && rename("sub2", "sub") == 0, "a directory renames with trailing slashes");
  check(fails_with(stat("/dev/null/x", &st), ENOTDIR), "stat(/dev/null/x) is ENOTDIR");
  check(fails_with(open("/dev/null/x", O_RDONLY), ENOTDIR), "open(/dev/null/x) is ENOTDIR");
  check(fails_with(stat("/etc/hosts/x", &st), ENOTDIR), "stat(/etc/hosts/x) is ENOTDIR");
  check(fails_with(stat("missing/x", &st), ENOENT), "through a missing name is still ENOENT");
  check(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "/dev/null is 1,3");
  check(fails_with(open("/dev/null", O_RDONLY | O_DIRECTORY), ENOTDIR), "/dev/null with O_DIRECTORY is ENOTDIR");
  DIR *devices = opendir("/dev");
  int null_is_chr = 0;
  for (struct dirent *e; devices && (e = readdir(devices));) null_is_chr |= !strcmp(e->d_name, "null") && e->d_type == DT_CHR;
  check(devices && closedir(devices) == 0 && null_is_chr, "/dev lists null as a character device");
  int dev = open("/dev/zero", O_RDONLY);
  char zero = 1;
  check(dev >= 0 && read(dev, &zero, 1) == 1 && zero == 0 && close(dev) == 0, "/dev/zero reads zeros");
}

static int same(struct timespec t, time_t sec, long nsec) { return t.tv_sec == sec && t.tv_nsec == nsec; }

static void times(void) {
  struct stat st;
  struct timespec set[2] = {{1000000000, 5}, {1200000000, 7}};
  check(utimensat(AT_FDCWD, "f", set, 0) == 0 && stat("f", &st) == 0 && same(st.st_atim, 1000000000, 5) &&
            same(st.st_mtim, 1200000000, 7),
        "utimensat sets both times");
  struct timespec omit_atime[2] = {{0, UTIME_OMIT}, {1300000000, 0}};
  check(utimensat(AT_FDCWD, "f", omit_atime, 0) == 0 && stat("f", &st) == 0 && same(st.st_atim, 1000000000, 5) &&
            same(st.st_mtim, 1300000000, 0),
        "UTIME_OMIT keeps the access time");
  time_t before = time(NULL);
  struct timespec now_atime[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
  check(utimensat(AT_FDCWD, "f", now_atime, 0) == 0 && stat("f", &st) == 0 && st.st_atim.tv_sec >= before &&
            same(st.st_mtim, 1300000000, 0),
        "UTIME_NOW sets the access time, UTIME_OMIT keeps the modification time");
  int fd = open("f", O_RDONLY);
  struct timespec again[2] = {{900000000, 9}, {800000000, 8}};
  check(fd >= 0 && futimens(fd, again) == 0 && fstat(fd, &st) == 0 && same(st.st_atim, 900000000, 9) &&
            same(st.st_mtim, 800000000, 8),
        "futimens sets both times");
  close(fd);
  struct timeval tv[2] = {{500, 0}, {600, 0}};
  check(utimes("f", tv) == 0 && stat("f", &st) == 0 && same(st.st_atim, 500, 0) && same(st.st_mtim, 600, 0),
        "utimes sets both times");
  int p[2];
  fd = open("/dev/null", O_RDONLY);
  check(pipe(p) == 0 && futimens(p[0], NULL) == 0 && futimens(fd, NULL) == 0, "futimens of a pipe and a device");
  close(p[0]);
  close(p[1]);
  close(fd);
  struct timespec bad[2] = {{0, 1000000000}, {0, 0}};
  check(fails_with(utimensat(AT_FDCWD, "f", bad, 0), EINVAL), "a bad nanosecond count is EINVAL");
}

/* Larger than SIGSTKSZ in either libc (glibc's is not a constant). */
#define ALT_SIZE 65536

static stack_t in_handler;
static int in_handler_ret = -1, in_handler_errno;

static void on_alternate_stack(int sig) {
  (void)sig;
  sigaltstack(NULL, &in_handler);
  stack_t other = {.ss_sp = malloc(ALT_SIZE), .ss_size = ALT_SIZE};
  in_handler_ret = sigaltstack(&other, NULL);
  in_handler_errno = errno;
}

static void alternate_stack(void) {
  stack_t ss = {.ss_sp = malloc(ALT_SIZE), .ss_size = ALT_SIZE}, old;
  check(sigaltstack(&ss, NULL) == 0 && sigaltstack(NULL, &old) == 0 && old.ss_flags == 0 && old.ss_sp == ss.ss_sp &&
            old.ss_size == ALT_SIZE,
        "sigaltstack set, then read back off it: flags 0");
  struct sigaction sa = {.sa_handler = on_alternate_stack, .sa_flags = SA_ONSTACK};
  sigemptyset(&sa.sa_mask);
  check(sigaction(SIGUSR1, &sa, NULL) == 0 && raise(SIGUSR1) == 0, "a handler on the alternate stack ran");
  check(in_handler.ss_flags == SS_ONSTACK && in_handler.ss_sp == ss.ss_sp, "in it, sigaltstack says SS_ONSTACK");
  check(in_handler_ret == -1 && in_handler_errno == EPERM, "in it, changing the stack is EPERM");
  stack_t small = {.ss_sp = ss.ss_sp, .ss_size = 1024};
  check(fails_with(sigaltstack(&small, NULL), ENOMEM), "a stack below MINSIGSTKSZ is ENOMEM");
  stack_t bad = {.ss_sp = ss.ss_sp, .ss_size = ALT_SIZE, .ss_flags = 4};
  check(fails_with(sigaltstack(&bad, NULL), EINVAL), "unknown flags are EINVAL");
  stack_t off = {.ss_flags = SS_DISABLE};
  check(sigaltstack(&off, NULL) == 0 && sigaltstack(NULL, &old) == 0 && old.ss_flags == SS_DISABLE,
        "SS_DISABLE turns it off");
}

static struct flock range(short type, off_t start, off_t len) {
  struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  return fl;
}

static int lock(int fd, int cmd, struct flock fl) { return fcntl(fd, cmd, &fl); }

static volatile int released;

static void *release_later(void *fd) {
  usleep(100000);
  released = 1;
  close(*(int *)fd);
  return NULL;
}

static void record_locks(void) {
  int a = open("lk", O_CREAT | O_RDWR, 0644), b = open("lk", O_RDWR), ro = open("lk", O_RDONLY);
  check(a >= 0 && b >= 0 && ro >= 0, "open one file three times");
  check(lock(a, F_SETLK, range(F_WRLCK, 0, 10)) == 0, "F_SETLK takes a write lock");
  struct flock q = range(F_WRLCK, 0, 10);
  check(fcntl(b, F_GETLK, &q) == 0 && q.l_type == F_UNLCK, "F_GETLK: the process's own locks do not conflict");
  check(lock(b, F_SETLKW, range(F_WRLCK, 5, 10)) == 0, "F_SETLKW through another descriptor is granted");
  q = range(F_WRLCK, 0, 4);
  check(fcntl(b, F_OFD_GETLK, &q) == 0 && q.l_type == F_WRLCK && q.l_pid == getpid(),
        "F_OFD_GETLK reports the process's POSIX lock, with its pid");
  check(lock(b, F_OFD_SETLK, range(F_RDLCK, 0, 4)) == -1 && errno == EAGAIN, "an OFD lock conflicts with it");
  check(close(ro) == 0 && lock(b, F_OFD_SETLK, range(F_RDLCK, 0, 4)) == 0,
        "closing any descriptor of the file drops the process's POSIX locks");
  check(lock(b, F_OFD_SETLK, range(F_UNLCK, 0, 0)) == 0, "F_UNLCK releases it");

  check(lock(a, F_OFD_SETLK, range(F_WRLCK, 0, 10)) == 0, "F_OFD_SETLK takes a write lock");
  q = range(F_RDLCK, 3, 1);
  check(fcntl(b, F_OFD_GETLK, &q) == 0 && q.l_type == F_WRLCK && q.l_pid == -1 && q.l_start == 0 && q.l_len == 10,
        "F_OFD_GETLK reports another description's lock, with l_pid -1");
  check(lock(b, F_OFD_SETLK, range(F_RDLCK, 9, 1)) == -1 && errno == EAGAIN, "a conflicting OFD lock is EAGAIN");
  q = range(F_WRLCK, 0, 1);
  check(fcntl(b, F_GETLK, &q) == 0 && q.l_type == F_WRLCK && q.l_pid == -1, "F_GETLK sees the OFD lock too");
  check(lock(b, F_OFD_SETLK, range(F_RDLCK, 10, 5)) == 0, "a lock beside it is granted");
  struct flock back = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 25, .l_len = -5};
  check(fcntl(b, F_OFD_SETLK, &back) == 0, "a negative length ends the range at l_start");
  q = range(F_WRLCK, 21, 1);
  check(fcntl(a, F_OFD_GETLK, &q) == 0 && q.l_type == F_RDLCK && q.l_start == 20 && q.l_len == 5,
        "F_OFD_GETLK reports it as 20..25");
  check(lseek(a, 100, SEEK_SET) == 100 && lock(a, F_OFD_SETLK, (struct flock){F_WRLCK, SEEK_CUR, -50, 0, 0}) == 0,
        "SEEK_CUR ranges start at the offset; a length of 0 runs to the end");
  q = range(F_RDLCK, 1000000, 1);
  check(fcntl(b, F_OFD_GETLK, &q) == 0 && q.l_type == F_WRLCK && q.l_start == 50 && q.l_len == 0, "reported as 50..");

  check(lock(a, F_OFD_SETLK, (struct flock){F_WRLCK, SEEK_SET, 0, 1, 5}) == -1 && errno == EINVAL,
        "an OFD lock with l_pid set is EINVAL");
  check(lock(a, F_SETLK, (struct flock){F_WRLCK, 7, 0, 1, 0}) == -1 && errno == EINVAL, "a bad l_whence is EINVAL");
  check(lock(a, F_SETLK, range(9, 0, 1)) == -1 && errno == EINVAL, "a bad l_type is EINVAL");
  check(lock(a, F_SETLK, range(F_WRLCK, -5, 1)) == -1 && errno == EINVAL, "a negative start is EINVAL");
  check(lock(a, F_SETLK, range(F_WRLCK, 0, -1)) == -1 && errno == EINVAL, "a range before 0 is EINVAL");
  q = range(F_UNLCK, 0, 1);
  check(fcntl(a, F_GETLK, &q) == -1 && errno == EINVAL, "F_GETLK of F_UNLCK is EINVAL");
  ro = open("lk", O_RDONLY);
  check(lock(ro, F_SETLK, range(F_WRLCK, 200, 1)) == -1 && errno == EBADF, "a write lock needs a writable descriptor");
  close(ro);

  int copy = dup(a);
  check(copy >= 0 && close(a) == 0 && lock(b, F_OFD_SETLK, range(F_WRLCK, 0, 1)) == -1 && errno == EAGAIN,
        "an OFD lock outlives one of its description's descriptors");
  pthread_t t;
  check(pthread_create(&t, NULL, release_later, &copy) == 0, "a thread will close the last one");
  check(lock(b, F_OFD_SETLKW, range(F_WRLCK, 0, 1)) == 0 && released, "F_OFD_SETLKW waits until then");
  pthread_join(t, NULL);
  close(b);
}

static void whole_file_locks(void) {
  int a = open("fl", O_CREAT | O_RDWR, 0644), b = open("fl", O_RDWR);
  check(flock(a, LOCK_EX) == 0, "flock takes an exclusive lock");
  check(flock(b, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK, "another open file's flock conflicts");
  check(lock(b, F_OFD_SETLK, range(F_WRLCK, 0, 0)) == 0 && lock(b, F_OFD_SETLK, range(F_UNLCK, 0, 0)) == 0,
        "flock locks and record locks do not meet");
  check(flock(a, LOCK_SH) == 0 && flock(b, LOCK_SH | LOCK_NB) == 0, "shared flock locks share");
  int copy = dup(a);
  check(close(a) == 0 && flock(b, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK,
        "a flock lock outlives one of its description's descriptors");
  check(close(copy) == 0 && flock(b, LOCK_EX | LOCK_NB) == 0, "and goes with the last one");
  check(fails_with(flock(b, LOCK_SH | LOCK_EX), EINVAL), "an unknown operation is EINVAL");
  close(b);
}

static void open_files_limit(void) {
  struct rlimit old, rl;
  check(getrlimit(RLIMIT_NOFILE, &old) == 0 && old.rlim_cur <= old.rlim_max, "getrlimit(RLIMIT_NOFILE)");
  rl = (struct rlimit){16, old.rlim_max};
  check(setrlimit(RLIMIT_NOFILE, &rl) == 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur == 16 &&
            rl.rlim_max == old.rlim_max,
        "a lower soft limit is kept");
  int listener = socket(AF_INET, SOCK_STREAM, 0), client = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof at;
  check(bind(listener, (struct sockaddr *)&at, sizeof at) == 0 && listen(listener, 4) == 0 &&
            getsockname(listener, (struct sockaddr *)&at, &len) == 0 &&
            connect(client, (struct sockaddr *)&at, sizeof at) == 0,
        "a connection waits to be accepted");
  int fds[16], n = 0, fd;
  while (n < 16 && (fd = open("/dev/null", O_RDONLY)) >= 0) fds[n++] = fd;
  check(n > 0 && n < 16 && fds[n - 1] == 15 && errno == EMFILE, "open is EMFILE at the soft limit");
  check(dup(0) == -1 && errno == EMFILE, "dup is EMFILE");
  check(accept(listener, NULL, NULL) == -1 && errno == EMFILE, "accept is EMFILE");
  close(fds[--n]);
  int accepted = accept(listener, NULL, NULL);
  check(accepted == 15 && close(accepted) == 0, "the connection stayed queued: accepted once a descriptor is free");
  fds[n++] = open("/dev/null", O_RDONLY);
  check(socket(AF_INET, SOCK_DGRAM, 0) == -1 && errno == EMFILE, "socket is EMFILE");
  check(fcntl(0, F_DUPFD, 3) == -1 && errno == EMFILE, "F_DUPFD is EMFILE");
  close(fds[--n]);
  int p[2];
  check(pipe(p) == -1 && errno == EMFILE && (fd = open("/dev/null", O_RDONLY)) == 15 && close(fd) == 0,
        "pipe needs two free descriptors, and takes none without them");
  check(dup2(0, 16) == -1 && errno == EBADF, "dup2 to the soft limit is EBADF");
  check(dup3(0, 100, 0) == -1 && errno == EBADF, "dup3 past it is EBADF");
  check(fcntl(0, F_DUPFD, 16) == -1 && errno == EINVAL, "F_DUPFD from the soft limit is EINVAL");
  check(dup2(0, 15) == 15 && close(15) == 0, "dup2 below it works");
  while (n > 0) close(fds[--n]);
  close(listener);
  close(client);
  rl = (struct rlimit){old.rlim_max, old.rlim_max};
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? RLIM_INFINITY : rl.rlim_max + 1;
  check(rl.rlim_max == RLIM_INFINITY || (setrlimit(RLIMIT_NOFILE, &rl) == -1 && errno == EINVAL),
        "a soft limit above the hard one is EINVAL");
  rl = (struct rlimit){RLIM_INFINITY, RLIM_INFINITY};
  check(setrlimit(RLIMIT_NOFILE, &rl) == -1 && errno == EPERM, "an unlimited RLIMIT_NOFILE is EPERM");
  struct rlimit was;
  check(prlimit(0, RLIMIT_NOFILE, &old, &was) == 0 && was.rlim_cur == 16 && getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
            rl.rlim_cur == old.rlim_cur,
        "prlimit sets it back and reports the old one");
}

int main(int argc, char **argv) {
  check(argc == 2 && mkdir(argv[1], 0755) == 0 && chdir(argv[1]) == 0, "make and enter a directory");
  directories();
  links();
  not_directories();
  times();
  alternate_stack();
  record_locks();
  whole_file_locks();
  open_files_limit();
  printf("posix: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
