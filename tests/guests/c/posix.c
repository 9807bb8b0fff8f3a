/* posix: answers of Linux that programs and libcs build on, each as the man pages give it: mkdir("/") is EEXIST,
 * readlink of a non-link EINVAL (realpath depends on it), a path through a non-directory ENOTDIR, utimensat and
 * futimens keep both times (UTIME_NOW, UTIME_OMIT), sigaltstack says SS_ONSTACK in a handler running on it and refuses
 * to change it there (EPERM). Built with musl and with glibc; works in the new directory argv[1]. Each check prints
 * one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
  check(fails_with(stat("/dev/null/x", &st), ENOTDIR), "stat(/dev/null/x) is ENOTDIR");
  check(fails_with(open("/dev/null/x", O_RDONLY), ENOTDIR), "open(/dev/null/x) is ENOTDIR");
  check(fails_with(stat("/etc/hosts/x", &st), ENOTDIR), "stat(/etc/hosts/x) is ENOTDIR");
  check(fails_with(stat("missing/x", &st), ENOENT), "through a missing name is still ENOENT");
  check(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "/dev/null is 1,3");
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

int main(int argc, char **argv) {
  check(argc == 2 && mkdir(argv[1], 0755) == 0 && chdir(argv[1]) == 0, "make and enter a directory");
  directories();
  links();
  not_directories();
  times();
  alternate_stack();
  printf("posix: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
