/* syscalls: checks what the first slice of Kiln's syscall layer promises, the way a program sees it. Each check prints
 * one line; the program exits 0 only if all held. Natively it passes too (run it with NOW=$(date +%s)). */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/times.h>
#include <signal.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/sysinfo.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static volatile sig_atomic_t usr1_seen;
static void on_usr1(int sig) { usr1_seen = sig; }

/* Priorities, policies, memory locks, advice, times and a pending signal. */
static void odds_and_ends(void) {
  errno = 0;
  check(setpriority(PRIO_PROCESS, 0, 5) == 0 && getpriority(PRIO_PROCESS, 0) == 5 && errno == 0 &&
            setpriority(PRIO_PROCESS, 0, 0) == 0,
        "setpriority and getpriority");
  struct sched_param param;
  param.sched_priority = 1;
  check(syscall(SYS_sched_getscheduler, 0) == SCHED_OTHER && syscall(SYS_sched_getparam, 0, &param) == 0 &&
            param.sched_priority == 0,
        "sched_getscheduler and sched_getparam");
  check(sched_get_priority_max(SCHED_FIFO) == 99 && sched_get_priority_min(SCHED_FIFO) == 1 &&
            sched_get_priority_max(SCHED_OTHER) == 0,
        "sched_get_priority_max and _min");
  static char locked[8192];
  check(mlock(locked, sizeof locked) == 0 && munlock(locked, sizeof locked) == 0 && mlockall(MCL_CURRENT) == 0 &&
            munlockall() == 0,
        "mlock, munlock, mlockall, munlockall");
  errno = 0;
  check(mlockall(0) == -1 && errno == EINVAL, "mlockall without flags is EINVAL");
  int fd = open("/tmp/advised", O_CREAT | O_RDWR, 0600), pipefd[2];
  check(fd >= 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL) == 0 && pipe(pipefd) == 0 &&
            posix_fadvise(pipefd[0], 0, 0, POSIX_FADV_SEQUENTIAL) == ESPIPE,
        "posix_fadvise");
  close(fd);
  close(pipefd[0]);
  close(pipefd[1]);
  unlink("/tmp/advised");
  sync();
  struct tms t;
  check(times(&t) != (clock_t)-1 && t.tms_cutime == 0, "times");
  sigset_t usr1, pending;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  signal(SIGUSR1, on_usr1);
  sigprocmask(SIG_BLOCK, &usr1, NULL);
  raise(SIGUSR1);
  check(sigpending(&pending) == 0 && sigismember(&pending, SIGUSR1) && !usr1_seen, "a blocked signal is pending");
  sigprocmask(SIG_UNBLOCK, &usr1, NULL);
  check(usr1_seen == SIGUSR1 && sigpending(&pending) == 0 && !sigismember(&pending, SIGUSR1),
        "unblocked, it is delivered");
}

/* Ids as root changes them, then as an ordinary user who cannot change them back. Natively it needs root. */
/* No children, locks, owners and times of files, affinity, msync/mincore, sendfile, socketpair. */
static void files_and_processes(void) {
  int status;
  errno = 0;
  check(wait4(-1, &status, WNOHANG, NULL) == -1 && errno == ECHILD, "wait4 without children: ECHILD");
  int fd = open("/tmp/sendfile.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
  check(fd >= 0 && write(fd, "hello world", 11) == 11, "a file to work on");
  errno = 0;
  check(flock(fd, LOCK_EX) == 0 && flock(fd, LOCK_UN) == 0 && flock(fd, 0) == -1 && errno == EINVAL, "flock");
  errno = 0;
  check(chown("/tmp/sendfile.txt", 0, 0) == 0 && fchown(fd, 0, 0) == 0 && chown("/tmp/missing", 0, 0) == -1 &&
            errno == ENOENT,
        "chown and fchown");
  struct timespec times[2] = {{0, UTIME_OMIT}, {1000000000, 0}};
  struct stat st;
  check(utimensat(AT_FDCWD, "/tmp/sendfile.txt", times, 0) == 0 && stat("/tmp/sendfile.txt", &st) == 0 &&
            st.st_mtime == 1000000000,
        "utimensat sets the modification time");
  struct timeval tv[2] = {{0, 0}, {1200000000, 0}};
  check(utimes("/tmp/sendfile.txt", tv) == 0 && fstat(fd, &st) == 0 && st.st_mtime == 1200000000, "utimes");
  check(futimens(fd, NULL) == 0 && fstat(fd, &st) == 0 && st.st_mtime > 1600000000, "futimens: now");
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(0, &set);
  check(sched_setaffinity(0, sizeof set, &set) == 0, "sched_setaffinity to CPU 0");
  CPU_ZERO(&set);
  errno = 0;
  check(sched_setaffinity(0, sizeof set, &set) == -1 && errno == EINVAL, "sched_setaffinity to no CPU: EINVAL");
  char *page = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  page[0] = page[4096] = 1;
  unsigned char resident[2] = {0, 0};
  check(msync(page, 8192, MS_SYNC) == 0 && mincore(page, 8192, resident) == 0 && resident[0] & resident[1] & 1,
        "msync and mincore");
  int pipefd[2];
  off_t offset = 6;
  char got[8] = {0};
  check(pipe(pipefd) == 0 && sendfile(pipefd[1], fd, &offset, 5) == 5 && offset == 11 && read(pipefd[0], got, 5) == 5 &&
            strcmp(got, "world") == 0,
        "sendfile from a file to a pipe");
  close(fd);
  int sv[2];
  char c = 0;
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0 && write(sv[0], "a", 1) == 1 &&
            read(sv[1], &c, 1) == 1 && c == 'a' && send(sv[1], "b", 1, 0) == 1 && recv(sv[0], &c, 1, 0) == 1 &&
            c == 'b',
        "socketpair: both ways");
  struct pollfd p = {.fd = sv[0], .events = POLLIN};
  close(sv[1]);
  check(poll(&p, 1, 1000) == 1 && read(sv[0], &c, 1) == 0, "socketpair: the other end closed, end-of-file");
  close(sv[0]);
}

static void credentials(void) {
  uid_t r, e, s;
  gid_t groups[4] = {10, 20}, got[4] = {0};
  check(setpgid(0, 0) == 0 && getpgrp() == getpid() && getpgid(0) == getpid() && getsid(0) > 0,
        "process group and session");
  errno = 0;
  check(setsid() == -1 && errno == EPERM, "setsid as a group leader is EPERM");
  check(setgroups(2, groups) == 0 && getgroups(0, NULL) == 2 && getgroups(4, got) == 2 && got[0] == 10 && got[1] == 20,
        "setgroups and getgroups");
  errno = 0;
  check(getgroups(1, got) == -1 && errno == EINVAL, "getgroups with too small a list is EINVAL");
  check(setresgid(100, 100, 100) == 0 && getgid() == 100 && getegid() == 100, "setresgid as root");
  check(setreuid(-1, 1000) == 0 && getresuid(&r, &e, &s) == 0 && r == 0 && e == 1000 && s == 1000,
        "setreuid moves the saved id with the effective one");
  check(seteuid(0) == 0 && geteuid() == 0, "the real id lets the effective one go back to root");
  check(setresuid(1000, 1000, 1000) == 0 && getuid() == 1000 && geteuid() == 1000, "setresuid drops root");
  errno = 0;
  check(setuid(0) == -1 && errno == EPERM, "an ordinary user cannot become root again");
  errno = 0;
  check(setgroups(0, NULL) == -1 && errno == EPERM, "nor set groups");
  check(setuid(1000) == 0, "setuid to its own id");
}

int main(void) {
  struct utsname u;
  check(uname(&u) == 0 && strcmp(u.sysname, "Linux") == 0 && strcmp(u.machine, "x86_64") == 0, "uname");
  check(getpid() > 0 && syscall(SYS_gettid) == getpid(), "getpid and gettid");

  struct timespec rt, m1, m2;
  clock_gettime(CLOCK_REALTIME, &rt);
  const char *now = getenv("NOW");
  long host_now = now ? atol(now) : rt.tv_sec;
  check(labs(rt.tv_sec - host_now) < 120, "CLOCK_REALTIME agrees with the host clock");
  clock_gettime(CLOCK_MONOTONIC, &m1);
  for (volatile int i = 0; i < 1000000; i++) {
  }
  clock_gettime(CLOCK_MONOTONIC, &m2);
  check(m2.tv_sec > m1.tv_sec || (m2.tv_sec == m1.tv_sec && m2.tv_nsec > m1.tv_nsec), "CLOCK_MONOTONIC advances");
  check(clock_gettime(12345, &m1) == -1 && errno == EINVAL, "an unknown clock is EINVAL");

  struct timespec nap = {0, 20 * 1000 * 1000}, t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int slept = nanosleep(&nap, 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  check(slept == 0 && ms >= 20 && ms < 2000, "nanosleep sleeps 20 ms");
  struct timespec until = t1;
  until.tv_nsec += 10 * 1000 * 1000;
  if (until.tv_nsec >= 1000000000) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000;
  }
  int abs = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  check(abs == 0 && (t0.tv_sec > until.tv_sec || (t0.tv_sec == until.tv_sec && t0.tv_nsec >= until.tv_nsec)),
        "clock_nanosleep to an absolute time");
  struct timespec bad = {0, 2000000000};
  check(nanosleep(&bad, 0) == -1 && errno == EINVAL, "nanosleep with tv_nsec >= 1e9 is EINVAL");

  unsigned char r1[32] = {0}, r2[32] = {0};
  check(getrandom(r1, sizeof r1, 0) == 32 && getrandom(r2, sizeof r2, 0) == 32 && memcmp(r1, r2, 32) != 0,
        "getrandom fills and differs");

  char buf[64];
  check(read(0, buf, sizeof buf) == 0, "stdin reads as end-of-file");
  /* Through a volatile, so that glibc's fortified headers do not see the bad pointer at compile time. */
  void *volatile bad_pointer = (void *)16;
  check(write(1, bad_pointer, 4) == -1 && errno == EFAULT, "write from a bad pointer is EFAULT");
  check(write(7, "x", 1) == -1 && errno == EBADF, "write to a closed fd is EBADF");
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  check(n > 1 && buf[0] == '/', "readlink /proc/self/exe is an absolute path");

  struct rlimit rl;
  check(getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur >= 256 * 1024, "RLIMIT_STACK");
  cpu_set_t set;
  check(sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) >= 1, "sched_getaffinity");

  struct pollfd p[3] = {{0, POLLIN, 0}, {1, POLLOUT, 0}, {42, POLLIN, 0}};
  check(poll(p, 3, 0) == 3 && (p[0].revents & POLLIN) && (p[1].revents & POLLOUT) && (p[2].revents & POLLNVAL), "poll");

  size_t len = 3 << 20;
  unsigned char *m = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  int zero = m != MAP_FAILED;
  for (size_t i = 0; zero && i < len; i += 4096) zero = m[i] == 0;
  check(zero, "anonymous mmap is zeroed");
  memset(m, 0xab, len);
  check(madvise(m, len, MADV_DONTNEED) == 0 && m[12345] == 0, "madvise(MADV_DONTNEED) zeroes");
  memset(m, 0xcd, len);
  unsigned char *g = mremap(m, len, 2 * len, MREMAP_MAYMOVE);
  check(g != MAP_FAILED && g[0] == 0xcd && g[len - 1] == 0xcd && g[2 * len - 1] == 0, "mremap keeps the contents");
  check(munmap(g, 2 * len) == 0, "munmap");
  unsigned char *again = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(again != MAP_FAILED && again[0] == 0 && again[len - 1] == 0, "memory handed back is zero again");

  /* Address space reserved without memory, committed in parts, as Go's runtime does. */
  size_t arena = (size_t)1 << 30;
  unsigned char *hint = (unsigned char *)0xc000000000UL;
  unsigned char *res = mmap(hint, arena, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(res == hint, "a 1 GiB PROT_NONE reservation at the hinted address");
  unsigned char *part = mmap(res + (4 << 20), 1 << 20, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(part == res + (4 << 20) && part[0] == 0 && part[(1 << 20) - 1] == 0, "MAP_FIXED commits part of it, zeroed");
  memset(part, 0x5a, 1 << 20);
  check(mprotect(res + (8 << 20), 8192, PROT_READ | PROT_WRITE) == 0, "mprotect commits more");
  res[(8 << 20) + 100] = 7;
  check(res[(8 << 20) + 100] == 7 && part[12345] == 0x5a, "committed memory holds its data");
  check(mmap(res, 4096, PROT_READ, MAP_FIXED_NOREPLACE | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED &&
            errno == EEXIST,
        "MAP_FIXED_NOREPLACE over a reservation is EEXIST");
  check(madvise(part, 1 << 20, MADV_DONTNEED) == 0 && part[777] == 0, "MADV_DONTNEED zeroes committed memory");
  check(munmap(res, arena) == 0, "munmap of the reservation");
  unsigned char *again2 = mmap(hint, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(again2 == hint && again2[4 << 10] == 0, "the hint is free again after munmap");

  /* musl's sbrk() refuses to grow, so ask brk directly. */
  char *b0 = (char *)syscall(SYS_brk, 0);
  char *b1 = (char *)syscall(SYS_brk, b0 + (1 << 20));
  check(b1 == b0 + (1 << 20), "brk grows");
  if (b1 == b0 + (1 << 20)) {
    memset(b0, 1, 1 << 20);
    check(b0[(1 << 20) - 1] == 1 && (char *)syscall(SYS_brk, 0) == b1, "brk memory is usable");
  }
  check((char *)syscall(SYS_brk, (char *)0x600000000000) == b1, "an impossible break fails and keeps the old one");
  void *small = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(small != MAP_FAILED, "memory is still there after a failed break");

  struct sysinfo si;
  check(sysinfo(&si) == 0 && si.totalram > 0 && si.freeram <= si.totalram, "sysinfo");
  check(umask(027) == 022 && umask(022) == 027, "umask");
  struct rusage ru;
  check(getrusage(RUSAGE_SELF, &ru) == 0, "getrusage");
  char thread_name[16] = {0};
  check(prctl(PR_SET_NAME, "worker-1") == 0 && prctl(PR_GET_NAME, thread_name) == 0 &&
            strcmp(thread_name, "worker-1") == 0,
        "prctl names the thread");
  unsigned cpu = 99;
  check(syscall(SYS_getcpu, &cpu, 0, 0) == 0 && cpu < 64, "getcpu");
  struct rlimit nofile = {1024, 1024};
  check(setrlimit(RLIMIT_NOFILE, &nofile) == 0, "setrlimit");
  odds_and_ends();
  files_and_processes();
  /* Last: it gives up root. Kiln starts every program as root. */
  if (getuid() == 0 && geteuid() == 0 && getgid() == 0)
    credentials();
  else
    check(0, "starts as root");

  printf("syscalls: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
