/* ownedmem: mprotect, madvise, msync, mincore, mremap and munmap of a range that spans two of the program's
 * anonymous mappings and the unmapped hole between them, where the library OS has meanwhile placed memory of its
 * own (threads started after the hole was made). Every call must treat the hole as unmapped, as Linux does, and the
 * library OS must live on. The output is compared with the native run. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096L
#define HOLE_PAGES 16
#define THREADS 4

static int gate[2];

static void *sleeper(void *arg) {
  char c;
  (void)arg;
  return read(gate[0], &c, 1) == 1 ? NULL : (void *)1;
}

static void report(const char *what, long r) {
  printf("%s: %s\n", what, r == 0 ? "0" : r == -1 ? strerror(errno) : "unexpected");
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  long span = (HOLE_PAGES + 2) * PG;
  char *a = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) return 2;
  char *hole = a + PG, *b = a + span - PG;
  /* Two mappings, a and b, with nothing of the program's between them. */
  report("munmap of the middle", munmap(hole, HOLE_PAGES * PG));
  /* Threads make the library OS allocate (their stacks in the kernel), first-fit, in the freed middle. */
  pthread_t t[THREADS];
  if (pipe(gate) != 0) return 2;
  for (int i = 0; i < THREADS; i++)
    if (pthread_create(&t[i], NULL, sleeper, NULL) != 0) return 2;
  a[0] = 1;
  b[0] = 2;

  report("mprotect of the span", mprotect(a, span, PROT_READ));
  report("mprotect of the hole", mprotect(hole, PG, PROT_NONE));
  /* Linux may have protected the first mapping before meeting the hole: give both their access back. */
  report("mprotect of a", mprotect(a, PG, PROT_READ | PROT_WRITE));
  report("mprotect of b", mprotect(b, PG, PROT_READ | PROT_WRITE));
  a[0] = 3;
  b[0] = 4;
  report("msync of the span", msync(a, span, MS_SYNC));
  unsigned char vec[HOLE_PAGES + 2];
  report("mincore of the span", mincore(a, span, vec));
  void *moved = mremap(a, span, 2 * span, MREMAP_MAYMOVE);
  report("mremap of the span", moved == MAP_FAILED ? -1 : 0);
  moved = mremap(hole, PG, 2 * PG, MREMAP_MAYMOVE);
  report("mremap of the hole", moved == MAP_FAILED ? -1 : 0);
  report("madvise(MADV_DONTNEED) of the hole", madvise(hole, PG, MADV_DONTNEED));
  /* Linux drops what is mapped, then reports the hole. */
  report("madvise(MADV_DONTNEED) of the span", madvise(a, span, MADV_DONTNEED));
  printf("after madvise: a %d, b %d\n", a[0], b[0]);
  report("munmap of the hole", munmap(hole, PG));
  report("munmap of the span", munmap(a, span));
  report("msync of a after", msync(a, PG, MS_SYNC));
  report("msync of b after", msync(b, PG, MS_SYNC));

  /* The library OS still runs its threads and hands out memory. */
  if (write(gate[1], "xxxx", THREADS) != THREADS) return 2;
  int joined = 0;
  for (int i = 0; i < THREADS; i++) {
    void *r;
    joined += pthread_join(t[i], &r) == 0 && r == NULL;
  }
  printf("threads joined: %d\n", joined);
  char *c = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (c == MAP_FAILED) return 2;
  memset(c, 5, span);
  printf("fresh mapping: %d\n", c[span - 1]);
  return 0;
}
