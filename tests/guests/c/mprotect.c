/* mprotect: protection is enforced, and memory keeps its bytes across changes.
 *
 * Without an argument: read-only and PROT_NONE pages in anonymous memory (placed by the kernel or at an address we
 * chose), in a static array and in read-only mmaps; syscalls given such pages fail with EFAULT; giving access back
 * finds the same bytes; munmap, MADV_DONTNEED and mremap of protected memory; the errors Linux gives. Each check
 * prints one line; exits 0 when all held.
 *
 * With the argument beside-a-spinner, the same while a second thread spins without syscalls (on Kiln with --cpus 2,
 * every TLB flush must get that thread's vCPU out of the guest and back, or the suite hangs).
 *
 * With another argument, the program must die of SIGSEGV (exit 139) at the access it names; it prints what it does first:
 *   read-none   reads a page made PROT_NONE
 *   write-ro    writes a page made read-only
 *   other-cpu   a second thread reads a page in a loop without syscalls; the first makes it PROT_NONE: the second
 *               must fault (on Kiln with --cpus 2, its vCPU's cached translation must be dropped). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

#define PAGE 4096

static int pipefd[2];

/* What a syscall that reads `p` (write to a pipe) and one that writes it (read from the pipe) return. */
static int kernel_reads(const char *p) {
  int n = (int)write(pipefd[1], p, 16);
  char sink[16];
  if (n > 0) (void)!read(pipefd[0], sink, sizeof sink);
  return n == 16;
}
static int kernel_writes(char *p) {
  (void)!write(pipefd[1], "0123456789abcdef", 16);
  int n = (int)read(pipefd[0], p, 16);
  if (n < 0) {
    char sink[16];
    (void)!read(pipefd[0], sink, sizeof sink);
  }
  return n == 16 ? 1 : (n < 0 && errno == EFAULT ? 0 : -1);
}

/* Byte i of a filled range is seed + i % 251, counting from the range's start even when only part is (re)filled. */
static void fill_part(char *p, size_t from, size_t n, char seed) {
  for (size_t i = from; i < from + n; i++) p[i] = (char)(seed + i % 251);
}
static void fill(char *p, size_t n, char seed) { fill_part(p, 0, n, seed); }
static int same(const char *p, size_t n, char seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (char)(seed + i % 251)) return 0;
  return 1;
}
static int zeros(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

/* Three pages; the middle one goes read-only, PROT_NONE and back. */
static void three_pages(char *p, const char *where) {
  char what[160];
  fill(p, 3 * PAGE, 'a');
  snprintf(what, sizeof what, "%s: mprotect(PROT_READ) keeps the bytes, the kernel may read them, not write them", where);
  check(mprotect(p + PAGE, PAGE, PROT_READ) == 0 && same(p, 3 * PAGE, 'a') && kernel_reads(p + PAGE) &&
            kernel_writes(p + PAGE) == 0 && kernel_writes(p) == 1 && kernel_writes(p + 2 * PAGE) == 1,
        what);
  fill_part(p, 0, PAGE, 'a');
  fill_part(p, 2 * PAGE, PAGE, 'a');
  snprintf(what, sizeof what, "%s: PROT_NONE: the kernel can neither read nor write it, neighbours unaffected", where);
  check(mprotect(p + PAGE, PAGE, PROT_NONE) == 0 && !kernel_reads(p + PAGE) && kernel_writes(p + PAGE) == 0 &&
            kernel_reads(p) && kernel_reads(p + 2 * PAGE),
        what);
  snprintf(what, sizeof what, "%s: read-write again: the same bytes, writable", where);
  check(mprotect(p + PAGE, PAGE, PROT_READ | PROT_WRITE) == 0 && same(p, 3 * PAGE, 'a') &&
            (p[PAGE] = 'Z', p[PAGE] == 'Z') && kernel_writes(p + PAGE) == 1,
        what);
}

static void suite(void) {
  check(pipe(pipefd) == 0, "pipe");

  char *p = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(p != MAP_FAILED, "mmap three pages");
  three_pages(p, "anonymous");
  check(mprotect(p + PAGE, PAGE, PROT_NONE) == 0 && madvise(p + PAGE, PAGE, MADV_DONTNEED) == 0 &&
            mprotect(p + PAGE, PAGE, PROT_READ) == 0 && zeros(p + PAGE, PAGE) && kernel_writes(p + PAGE) == 0,
        "anonymous: MADV_DONTNEED on a PROT_NONE page zeroes it and keeps it protected");
  check(mprotect(p, 3 * PAGE, PROT_NONE) == 0 && munmap(p, 3 * PAGE) == 0, "anonymous: munmap of PROT_NONE memory");
  char *again = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(again != MAP_FAILED && zeros(again, 3 * PAGE) && kernel_writes(again + PAGE) == 1,
        "anonymous: memory mapped after that is zero and writable");

  fill(again, 3 * PAGE, 'm');
  check(mprotect(again, 3 * PAGE, PROT_READ) == 0, "mremap: make the memory read-only first");
  char *moved = mremap(again, 3 * PAGE, 512 * PAGE, MREMAP_MAYMOVE);
  check(moved != MAP_FAILED && same(moved, 3 * PAGE, 'm'), "mremap moves read-only memory with its bytes");
  check(munmap(moved, 512 * PAGE) == 0, "munmap the moved memory");

  char *chosen = mmap((void *)0x300000000000, 3 * PAGE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  check(chosen == (void *)0x300000000000, "mmap three pages at a chosen address");
  three_pages(chosen, "chosen address");
  check(mprotect(chosen + PAGE, PAGE, PROT_NONE) == 0 && madvise(chosen + PAGE, PAGE, MADV_DONTNEED) == 0 &&
            mprotect(chosen + PAGE, PAGE, PROT_READ) == 0 && zeros(chosen + PAGE, PAGE) &&
            kernel_writes(chosen + PAGE) == 0,
        "chosen address: MADV_DONTNEED on a PROT_NONE page zeroes it and keeps it protected");
  check(mmap(chosen, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == chosen &&
            zeros(chosen, 3 * PAGE) && kernel_writes(chosen + PAGE) == 1,
        "chosen address: MAP_FIXED over a read-only page gives fresh writable memory");
  check(mmap(chosen, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == chosen &&
            !kernel_reads(chosen) && kernel_writes(chosen + PAGE) == 1,
        "chosen address: MAP_FIXED with PROT_NONE takes access away");
  check(munmap(chosen, 3 * PAGE) == 0, "chosen address: munmap");

  char *reserved = mmap(NULL, 16 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(reserved != MAP_FAILED && mprotect(reserved, 16 * PAGE, PROT_NONE) == 0 &&
            mprotect(reserved + 4 * PAGE, PAGE, PROT_READ) == 0 && zeros(reserved + 4 * PAGE, PAGE) &&
            kernel_writes(reserved + 4 * PAGE) == 0 && !kernel_reads(reserved + 5 * PAGE),
        "a PROT_NONE reservation: mprotect(PROT_READ) gives readable zeros");

  static char page_aligned[2 * PAGE] __attribute__((aligned(PAGE)));
  fill(page_aligned, 2 * PAGE, 's');
  check(mprotect(page_aligned, PAGE, PROT_READ) == 0 && same(page_aligned, 2 * PAGE, 's') &&
            kernel_writes(page_aligned) == 0 && kernel_writes(page_aligned + PAGE) == 1,
        "the program's own data: read-only (as RELRO does)");
  check(mprotect(page_aligned, PAGE, PROT_READ | PROT_WRITE) == 0 && kernel_writes(page_aligned) == 1,
        "the program's own data: writable again");

  char *ro = mmap(NULL, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(ro != MAP_FAILED && zeros(ro, 2 * PAGE) && kernel_reads(ro) && kernel_writes(ro) == 0,
        "mmap(PROT_READ) is read-only from the start");
  check(mprotect(ro, 2 * PAGE, PROT_READ | PROT_WRITE) == 0 && (ro[5] = 1, ro[5] == 1) && munmap(ro, 2 * PAGE) == 0,
        "mprotect makes it writable");
  check(mprotect(page_aligned, PAGE, PROT_READ | PROT_EXEC) == 0 && kernel_reads(page_aligned) &&
            kernel_writes(page_aligned) == 0 && mprotect(page_aligned, PAGE, PROT_READ | PROT_WRITE) == 0,
        "PROT_READ|PROT_EXEC is read-only");

  errno = 0;
  check(mprotect((void *)0x100000000000, PAGE, PROT_READ) == -1 && errno == ENOMEM, "unmapped memory is ENOMEM");
  errno = 0;
  /* musl's mprotect rounds the address down; the syscall does not. */
  check(syscall(SYS_mprotect, page_aligned + 1, PAGE, PROT_READ) == -1 && errno == EINVAL,
        "an unaligned address is EINVAL");
  errno = 0;
  check(mprotect(page_aligned, PAGE, 0x80) == -1 && errno == EINVAL, "unknown protection bits are EINVAL");
}

static char *victim;
static atomic_int spinning;

static void *spin(void *arg) {
  (void)arg;
  unsigned long sum = 0;
  for (;;) {
    sum += *(volatile char *)victim;
    atomic_store(&spinning, 1);
  }
  return (void *)sum;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "beside-a-spinner") == 0) {
    if (argc >= 2) {
      victim = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      pthread_t t;
      pthread_create(&t, NULL, spin, NULL);
      while (!atomic_load(&spinning)) sched_yield();
    }
    suite();
    printf("mprotect: %d failed\n", failures);
    return failures != 0;
  }
  victim = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  victim[0] = 1;
  if (strcmp(argv[1], "read-none") == 0) {
    printf("reading a PROT_NONE page\n");
    fflush(stdout);
    mprotect(victim, PAGE, PROT_NONE);
    printf("read %d\n", *(volatile char *)victim);
  } else if (strcmp(argv[1], "write-ro") == 0) {
    printf("writing a read-only page\n");
    fflush(stdout);
    mprotect(victim, PAGE, PROT_READ);
    *(volatile char *)victim = 2;
  } else if (strcmp(argv[1], "other-cpu") == 0) {
    pthread_t t;
    pthread_create(&t, NULL, spin, NULL);
    while (!atomic_load(&spinning)) sched_yield();
    printf("the other thread reads the page; taking it away\n");
    fflush(stdout);
    mprotect(victim, PAGE, PROT_NONE);
    struct timespec second = {1, 0};
    nanosleep(&second, NULL);
  }
  printf("still alive\n");
  return 0;
}
