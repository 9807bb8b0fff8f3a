/* atcalls: files named by relative paths through the *at calls and AT_FDCWD, and int arguments whose register has
 * garbage in its upper half. Linux reads only the low 32 bits of an `int` argument (16 of a `umode_t`); glibc relies
 * on it (it passes AT_FDCWD as 0x00000000ffffff9c), so it is built with glibc as well as musl. Works in the new
 * directory argv[1], made and entered by a relative path; each check prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

/* Garbage for the upper half of a register that carries a 32-bit argument. */
static const long HI = 0x5a5a5a5a00000000L;

static long lo(long v) { return HI | (unsigned int)v; }

static void relative_paths(void) {
  int fd = open("a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
  check(fd >= 0 && write(fd, "hello\n", 6) == 6 && close(fd) == 0, "create a file by a relative path");
  char buf[16] = {0};
  fd = openat(AT_FDCWD, "a.txt", O_RDONLY);
  check(fd >= 0 && read(fd, buf, sizeof buf) == 6 && memcmp(buf, "hello\n", 6) == 0 && close(fd) == 0,
        "openat(AT_FDCWD) reads it back");
  struct stat st;
  check(fstatat(AT_FDCWD, "a.txt", &st, 0) == 0 && st.st_size == 6 && S_ISREG(st.st_mode), "fstatat(AT_FDCWD)");
  check(stat("a.txt", &st) == 0 && st.st_size == 6, "stat of a relative path");
  check(mkdirat(AT_FDCWD, "sub", 0700) == 0 && stat("sub", &st) == 0 && (st.st_mode & 07777) == 0700,
        "mkdirat(AT_FDCWD) with its mode");
  check(renameat(AT_FDCWD, "a.txt", AT_FDCWD, "sub/b.txt") == 0 && access("a.txt", F_OK) == -1 && errno == ENOENT,
        "renameat(AT_FDCWD, AT_FDCWD)");
  check(faccessat(AT_FDCWD, "sub/b.txt", R_OK | W_OK, 0) == 0, "faccessat(AT_FDCWD)");
  check(fchmodat(AT_FDCWD, "sub/b.txt", 0600, 0) == 0 && stat("sub/b.txt", &st) == 0 && (st.st_mode & 07777) == 0600,
        "fchmodat(AT_FDCWD)");
  check(fchownat(AT_FDCWD, "sub/b.txt", getuid(), getgid(), 0) == 0, "fchownat(AT_FDCWD)");
  check(utimensat(AT_FDCWD, "sub/b.txt", NULL, 0) == 0, "utimensat(AT_FDCWD)");
  int dir = open("sub", O_RDONLY | O_DIRECTORY);
  check(dir >= 0 && fstatat(dir, "b.txt", &st, 0) == 0 && st.st_size == 6, "fstatat relative to a directory");
  check(unlinkat(dir, "b.txt", 0) == 0 && close(dir) == 0, "unlinkat relative to a directory");
  check(unlinkat(AT_FDCWD, "sub", AT_REMOVEDIR) == 0 && access("sub", F_OK) == -1, "unlinkat(AT_FDCWD, AT_REMOVEDIR)");
  FILE *f = fopen("c.txt", "w");
  check(f && fputs("via stdio\n", f) >= 0 && fclose(f) == 0, "fopen of a relative path");
  f = fopen("c.txt", "r");
  check(f && fgets(buf, sizeof buf, f) && strcmp(buf, "via stdio\n") == 0 && fclose(f) == 0, "read it back");
  check(unlink("c.txt") == 0, "unlink of a relative path");
}

/* The same calls through raw registers, each 32-bit argument with the upper half set. */
static void narrowed_arguments(void) {
  umask(0);
  long fd = syscall(SYS_openat, lo(AT_FDCWD), "r.txt", lo(O_CREAT | O_RDWR | O_TRUNC), HI | 0x10000 | 0640);
  check(fd >= 0, "openat: dirfd, flags and mode are narrowed");
  struct stat st;
  check(fstat((int)fd, &st) == 0 && (st.st_mode & 07777) == 0640, "the mode is the low 16 bits");
  check(syscall(SYS_write, lo(fd), "abc", 3L) == 3, "write: fd is unsigned int");
  check(syscall(SYS_lseek, lo(fd), 1L, lo(SEEK_SET)) == 1, "lseek: fd and whence");
  check(syscall(SYS_fcntl, lo(fd), lo(F_SETFD), (long)FD_CLOEXEC) == 0 && fcntl((int)fd, F_GETFD) == FD_CLOEXEC,
        "fcntl: fd and cmd");
  long copy = syscall(SYS_dup3, lo(fd), lo(40), lo(0));
  check(copy == 40 && syscall(SYS_close, lo(copy)) == 0, "dup3 and close");
  check(syscall(SYS_ftruncate, lo(fd), 2L) == 0 && fstat((int)fd, &st) == 0 && st.st_size == 2, "ftruncate");
  check(syscall(SYS_close, lo(fd)) == 0 && close((int)fd) == -1 && errno == EBADF, "close: the fd was closed");
  check(syscall(SYS_mkdirat, lo(AT_FDCWD), "m", HI | 0x10000 | 0750) == 0 && stat("m", &st) == 0 &&
            (st.st_mode & 07777) == 0750,
        "mkdirat: the mode is the low 16 bits");
  check(syscall(SYS_unlinkat, lo(AT_FDCWD), "m", lo(AT_REMOVEDIR)) == 0, "unlinkat: dirfd and flags");
  check(syscall(SYS_newfstatat, lo(AT_FDCWD), "r.txt", &st, lo(0)) == 0 && st.st_size == 2, "newfstatat");
  check(syscall(SYS_faccessat, lo(AT_FDCWD), "r.txt", lo(R_OK)) == 0, "faccessat");
  check(syscall(SYS_fchmodat, lo(AT_FDCWD), "r.txt", HI | 0x10000 | 0604) == 0 && stat("r.txt", &st) == 0 &&
            (st.st_mode & 07777) == 0604,
        "fchmodat: the mode is the low 16 bits");
  check(syscall(SYS_renameat, lo(AT_FDCWD), "r.txt", lo(AT_FDCWD), "s.txt") == 0, "renameat");
  check(syscall(SYS_unlinkat, lo(AT_FDCWD), "s.txt", lo(0)) == 0, "unlinkat");
  check(syscall(SYS_kill, lo(getpid()), lo(0)) == 0, "kill: pid and signal");
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  check(syscall(SYS_rt_sigprocmask, lo(SIG_BLOCK), &set, &old, 8L) == 0 &&
            syscall(SYS_rt_sigprocmask, lo(SIG_SETMASK), &old, NULL, 8L) == 0,
        "rt_sigprocmask: how");
  struct timespec ts;
  check(syscall(SYS_clock_gettime, lo(CLOCK_MONOTONIC), &ts) == 0, "clock_gettime: the clock id");
  long s = syscall(SYS_socket, lo(AF_INET), lo(SOCK_DGRAM), lo(0));
  int one = 1;
  check(s >= 0 && syscall(SYS_setsockopt, lo(s), lo(SOL_SOCKET), lo(SO_REUSEADDR), &one, lo(sizeof one)) == 0,
        "socket and setsockopt: family, type, level, name, length");
  check(syscall(SYS_close, lo(s)) == 0, "close the socket");
  errno = 0;
  check(syscall(SYS_close, -1L) == -1 && errno == EBADF, "close(-1) is still EBADF");
}

int main(int argc, char **argv) {
  check(argc == 2 && mkdir(argv[1], 0755) == 0 && chdir(argv[1]) == 0, "make and enter a directory");
  relative_paths();
  narrowed_arguments();
  printf("atcalls: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
