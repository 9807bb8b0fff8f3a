/* memtouch: the cost of a first touch of fresh memory, per 4 KiB page, in each kind of anonymous memory a program
 * gets. Writes one byte in each page of MIB MiB (default 16) and prints one line per kind:
 *
 *   KIND PAGES pages NS ns/page
 *
 * Kinds: mmap (MAP_PRIVATE|MAP_ANONYMOUS, the kernel's choice of address), thp (the same, 2 MiB-aligned and
 * madvise(MADV_HUGEPAGE): natively, what the host's transparent huge pages cost; Kiln ignores the advice), fixed (MAP_FIXED at a chosen address, as
 * Go's heap), reserve (PROT_NONE reserved, then made read-write by mprotect, as musl's thread stacks), brk (the
 * break grown by sbrk) and bss (a static array in the bss, up to 16 MiB). `memtouch [MIB] [KIND...]` (all kinds
 * when none is named). Built by bench/memory.sh, run natively and in Kiln. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define BSS_MIB 16

static char bss[BSS_MIB << 20] __attribute__((aligned(PAGE)));

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void touch(const char *kind, char *p, size_t bytes) {
  if (p == NULL || p == MAP_FAILED || p == (char *)-1) {
    printf("%s failed\n", kind);
    exit(1);
  }
  size_t pages = bytes / PAGE;
  uint64_t t0 = now_ns();
  for (size_t i = 0; i < pages; i++) ((volatile char *)p)[i * PAGE] = 1;
  uint64_t t1 = now_ns();
  printf("%s %zu pages %.0f ns/page\n", kind, pages, (double)(t1 - t0) / (double)pages);
}

static char *at_fixed(size_t bytes, int prot, int flags) {
  /* 2 MiB-aligned, far from everything else, as Go places its arenas. */
  static uintptr_t next = 0x7e0000000000;
  char *p = mmap((void *)next, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  next += (bytes + (4u << 20)) & ~(uintptr_t)((2u << 20) - 1);
  return p;
}

static void run(const char *kind, size_t bytes) {
  if (!strcmp(kind, "mmap")) {
    touch(kind, mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), bytes);
  } else if (!strcmp(kind, "thp")) {
    char *p = mmap(NULL, bytes + (2u << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      p = (char *)(((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1));
      madvise(p, bytes, MADV_HUGEPAGE);
    }
    touch(kind, p, bytes);
  } else if (!strcmp(kind, "fixed")) {
    touch(kind, at_fixed(bytes, PROT_READ | PROT_WRITE, MAP_FIXED), bytes);
  } else if (!strcmp(kind, "reserve")) {
    char *p = at_fixed(bytes, PROT_NONE, MAP_NORESERVE);
    if (p != MAP_FAILED && mprotect(p, bytes, PROT_READ | PROT_WRITE) != 0) p = MAP_FAILED;
    touch(kind, p, bytes);
  } else if (!strcmp(kind, "brk")) {
    /* musl's sbrk only reports the break: ask the kernel directly. */
    uintptr_t old = (uintptr_t)syscall(SYS_brk, 0);
    char *p = (uintptr_t)syscall(SYS_brk, old + bytes) == old + bytes ? (char *)old : MAP_FAILED;
    touch(kind, p, bytes);
  } else if (!strcmp(kind, "bss")) {
    touch(kind, bss, bytes < sizeof bss ? bytes : sizeof bss);
  } else {
    printf("unknown kind %s\n", kind);
    exit(2);
  }
}

int main(int argc, char **argv) {
  size_t bytes = (size_t)(argc > 1 ? atoi(argv[1]) : 16) << 20;
  static const char *all[] = {"mmap", "thp", "fixed", "reserve", "brk", "bss"};
  if (argc > 2) {
    for (int i = 2; i < argc; i++) run(argv[i], bytes);
  } else {
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) run(all[i], bytes);
  }
  return 0;
}
