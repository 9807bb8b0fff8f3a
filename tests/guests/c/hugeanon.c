/* hugeanon: anonymous memory at chosen addresses and the break, which Kiln maps with 2 MiB pages in a VM with
 * huge pages (--memory 256M and up), behaves as on Linux when the program changes part of a 2 MiB page: munmap,
 * mprotect, MAP_FIXED over it, MADV_DONTNEED, and fresh memory (also memory mapped again where some was unmapped, and
 * the break grown again after it shrank) reads as zeros. Each check prints one line; exits 0 when all held.
 *
 * With the argument `touch`: writes one byte in each page of 32 MiB mapped with MAP_FIXED at a 2 MiB-aligned address
 * (what Go's heap does) and of 8 MiB of break, and checks them (tests/boot.rs counts the shadow faults). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "check.h"
#include "touch.h"

#define PAGE 4096ul
#define HUGE (2ul << 20)
#define AT ((char *)0x7e0000000000ul)

/* Whether every page of [p, p+len) reads zero at its first and last byte. */
static int zeros(const char *p, size_t len) {
  for (size_t i = 0; i < len; i += PAGE)
    if (((volatile const char *)p)[i] != 0 || ((volatile const char *)p)[i + PAGE - 1] != 0) return 0;
  return 1;
}

/* The byte a page holds at both ends: from its address, so that any part of a range can be checked alone. */
static char value(const char *page, char seed) { return (char)(seed + (uintptr_t)page / PAGE % 101 + 1); }

static void fill(char *p, size_t len, char seed) {
  for (size_t i = 0; i < len; i += PAGE) p[i] = p[i + PAGE - 1] = value(p + i, seed);
}

static int filled(const char *p, size_t len, char seed) {
  for (size_t i = 0; i < len; i += PAGE) {
    char want = value(p + i, seed);
    if (p[i] != want || p[i + PAGE - 1] != want) return 0;
  }
  return 1;
}

static char *fixed(char *at, size_t len) {
  return mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
}

static int touch(void) {
  size_t len = 32ul << 20;
  char *p = fixed(AT, len);
  if (p != AT) return 1;
  fill(p, len, 3);
  char *brk0 = (char *)syscall(SYS_brk, 0);
  size_t blen = 8ul << 20;
  if ((char *)syscall(SYS_brk, brk0 + blen) != brk0 + blen) return 1;
  fill(brk0, blen, 5);
  if (!filled(p, len, 3) || !filled(brk0, blen, 5)) return 1;
  printf("hugeanon: touched %zu pages\n", (len + blen) / PAGE);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "touch")) return touch();
  catch_faults();
  size_t len = 8 * HUGE;
  char *p = fixed(AT, len);
  check(p == AT && zeros(p, len), "MAP_FIXED at a 2 MiB boundary: 16 MiB of zeros");
  fill(p, len, 0);
  check(filled(p, len, 0), "written and read back");

  /* Window 0: one page in the middle unmapped. */
  char *w = p;
  /* (Whether it faults at once is not checked: Kiln flushes TLBs for 4 KiB pages unmapped in batches.) */
  check(munmap(w + 100 * PAGE, PAGE) == 0, "munmap of a page inside a 2 MiB page");
  check(filled(w, 100 * PAGE, 0) && filled(w + 101 * PAGE, HUGE - 101 * PAGE, 0), "its neighbours keep their bytes");
  check(fixed(w + 100 * PAGE, PAGE) == w + 100 * PAGE && zeros(w + 100 * PAGE, PAGE), "mapped again there: zeros");

  /* Window 1: one page made read-only, then PROT_NONE, then read-write again. */
  w = p + HUGE;
  char keep = w[7 * PAGE];
  check(mprotect(w + 7 * PAGE, PAGE, PROT_READ) == 0 && faults(w + 7 * PAGE, 1) && !faults(w + 7 * PAGE, 0) &&
            !faults(w + 6 * PAGE, 1) && !faults(w + 8 * PAGE, 1),
        "mprotect of a page inside a 2 MiB page: writes fault there only");
  check(mprotect(w + 7 * PAGE, PAGE, PROT_NONE) == 0 && faults(w + 7 * PAGE, 0), "PROT_NONE: reads fault");
  check(mprotect(w + 7 * PAGE, PAGE, PROT_READ | PROT_WRITE) == 0 && w[7 * PAGE] == keep && !faults(w + 7 * PAGE, 1),
        "read-write again, with its bytes");
  w[6 * PAGE] = 0, w[8 * PAGE] = 0; /* the writes above */

  /* Window 2: MAP_FIXED over 16 KiB inside it, then window 3 replaced whole. */
  w = p + 2 * HUGE;
  check(fixed(w + 16 * PAGE, 4 * PAGE) == w + 16 * PAGE && zeros(w + 16 * PAGE, 4 * PAGE) && filled(w, 16 * PAGE, 0) &&
            filled(w + 20 * PAGE, HUGE - 20 * PAGE, 0),
        "MAP_FIXED over part of a 2 MiB page: zeros there, the rest kept");
  check(fixed(p + 3 * HUGE, HUGE) == p + 3 * HUGE && zeros(p + 3 * HUGE, HUGE) &&
            filled(p + 4 * HUGE, HUGE, 0),
        "MAP_FIXED over a whole 2 MiB page: zeros, the next one kept");

  /* Window 4: MADV_DONTNEED of a page, then of a whole 2 MiB page (window 5). */
  w = p + 4 * HUGE;
  check(madvise(w + 3 * PAGE, PAGE, MADV_DONTNEED) == 0 && zeros(w + 3 * PAGE, PAGE) &&
            filled(w + 4 * PAGE, HUGE - 4 * PAGE, 0),
        "MADV_DONTNEED of a page inside a 2 MiB page: it reads zero, the rest kept");
  check(madvise(p + 5 * HUGE, HUGE, MADV_DONTNEED) == 0 && zeros(p + 5 * HUGE, HUGE), "MADV_DONTNEED of a whole one");

  /* Windows 6-7: unmapped from the middle of 6 to the middle of 7, and mapped again. */
  char *cut = p + 6 * HUGE + HUGE / 2;
  check(munmap(cut, HUGE) == 0 && faults(cut, 0) && faults(cut + HUGE - PAGE, 0) && !faults(cut - PAGE, 0) &&
            !faults(cut + HUGE, 0),
        "munmap across two 2 MiB pages: the halves inside fault, the outer halves stay");
  check(fixed(cut, HUGE) == cut && zeros(cut, HUGE), "mapped again: zeros");

  /* All of it unmapped, then mapped again at the same place: zeros (the frames were cleared). */
  check(munmap(p, len) == 0 && faults(p + HUGE, 0), "all unmapped");
  p = fixed(AT, len);
  check(p == AT && zeros(p, len), "mapped again at the same place: zeros");
  fill(p, len, 9);
  check(munmap(p, len) == 0, "unmapped after being written");
  /* Somewhere else, by a hint, unaligned: 5 MiB starting 1 MiB past a boundary. */
  char *q = mmap(AT + HUGE / 2, 5ul << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(q != MAP_FAILED && zeros(q, 5ul << 20), "5 MiB by a hint, unaligned: zeros");
  fill(q, 5ul << 20, 1);
  check(filled(q, 5ul << 20, 1) && munmap(q, 5ul << 20) == 0, "written, read back and unmapped");
  char *r = fixed(AT, len);
  check(r == AT && zeros(r, len), "and the same place once more: zeros");

  /* The break: grown by 6 MiB, written, shrunk by 3 MiB and grown again: the part given back reads as zeros. */
  char *b = (char *)syscall(SYS_brk, 0);
  size_t blen = 6ul << 20;
  check((char *)syscall(SYS_brk, b + blen) == b + blen && zeros(b, blen), "the break grown by 6 MiB: zeros");
  fill(b, blen, 2);
  check((char *)syscall(SYS_brk, b + blen / 2) == b + blen / 2 && (char *)syscall(SYS_brk, b + blen) == b + blen &&
            filled(b, blen / 2, 2) && zeros(b + blen / 2, blen / 2),
        "shrunk by half and grown again: the first half kept, the second zeros");
  printf("hugeanon: %d failed\n", failures);
  return failures != 0;
}
