/* reserve: huge PROT_NONE reservations cost what is committed in them, not their size.
 *
 * Each round reserves 2^44 bytes PROT_NONE (as allocators and runtimes that probe the address space do), commits
 * 2 MiB at a place that moves every round (mprotect) and one page at its end (mmap MAP_FIXED), checks the bytes,
 * protects and advises the whole span, then munmaps it. 64 rounds commit 128 MiB in all: under `kiln run --memory
 * 64M` that only works if munmap frees the committed pages, and in reasonable time only if munmap, mprotect and
 * madvise of the span do not walk all of its 2^32 pages. After the last round the address space is re-reserved and
 * must read as fresh zeros. Prints one line per failed check and a summary; exits 0 when all held. With an argument
 * N (a power of two, in bits), it times one munmap of a 2^N reservation with a few pages committed and prints
 * "munmap 2^N: T us" (bench/munmap.sh). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define SPAN (1UL << 44)
#define ROUNDS 64
#define COMMIT (2UL << 20)

static int failures;
static void check(int ok, const char *what, int round) {
  if (!ok) {
    printf("FAILED: %s (round %d, errno %d)\n", what, round, errno);
    failures++;
  }
}

static void *reserve(unsigned long len) {
  return mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int time_munmap(int bits) {
  unsigned long len = 1UL << bits;
  char *p = reserve(len);
  if (p == MAP_FAILED) {
    perror("reserve: mmap");
    return 1;
  }
  /* A few committed pages: the first, one in the middle, the last. */
  unsigned long at[] = {0, len / 2, len - PAGE};
  for (int i = 0; i < 3; i++) {
    if (mprotect(p + at[i], PAGE, PROT_READ | PROT_WRITE) != 0) {
      perror("reserve: mprotect");
      return 1;
    }
    p[at[i]] = 1;
  }
  double t0 = now_us();
  int r = munmap(p, len);
  double t1 = now_us();
  if (r != 0) {
    perror("reserve: munmap");
    return 1;
  }
  printf("munmap 2^%d: %.1f us\n", bits, t1 - t0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) return time_munmap(atoi(argv[1]));
  for (int round = 0; round < ROUNDS; round++) {
    char *p = reserve(SPAN);
    check(p != MAP_FAILED, "reserving 2^44 bytes", round);
    if (p == MAP_FAILED) break;
    char *c = p + (unsigned long)(round + 1) * (SPAN / (ROUNDS + 2) & ~(PAGE - 1));
    check(mprotect(c, COMMIT, PROT_READ | PROT_WRITE) == 0, "committing 2 MiB with mprotect", round);
    check(c[0] == 0 && c[COMMIT - 1] == 0, "committed memory reads as zero", round);
    memset(c, round + 1, COMMIT);
    char *end = mmap(p + SPAN - PAGE, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    check(end == p + SPAN - PAGE, "committing the last page with MAP_FIXED", round);
    if (end == p + SPAN - PAGE) end[PAGE - 1] = 42;
    /* The whole span at once: only what is committed changes. */
    check(mprotect(p, SPAN, PROT_NONE) == 0, "mprotect PROT_NONE of the span", round);
    check(mprotect(c, PAGE, PROT_READ) == 0 && c[PAGE - 1] == round + 1, "bytes kept across PROT_NONE", round);
    check(msync(p, SPAN, MS_ASYNC) == 0, "msync of the span", round);
    check(madvise(p, SPAN, MADV_DONTNEED) == 0, "MADV_DONTNEED of the span", round);
    check(c[0] == 0, "MADV_DONTNEED zeroed the committed pages", round);
    check(munmap(p, SPAN) == 0, "munmap of the span", round);
    unsigned char v;
    check(mincore(c, PAGE, &v) == -1 && errno == ENOMEM, "no page left after munmap", round);
  }
  /* The address space is free again, and what was committed there is gone: the same places read as zeros. */
  char *p = reserve(SPAN);
  check(p != MAP_FAILED, "re-reserving after the last munmap", ROUNDS);
  if (p != MAP_FAILED) {
    char *c = p + (unsigned long)ROUNDS * (SPAN / (ROUNDS + 2) & ~(PAGE - 1));
    check(mprotect(c, PAGE, PROT_READ) == 0 && c[0] == 0, "a page committed again reads as zero", ROUNDS);
    check(mprotect(p + SPAN - PAGE, PAGE, PROT_READ) == 0 && p[SPAN - 1] == 0, "so does the last one", ROUNDS);
    check(munmap(p, SPAN) == 0, "munmap of the last reservation", ROUNDS);
  }
  printf("reserve: %d failed\n", failures);
  return failures != 0;
}
