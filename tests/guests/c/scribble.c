/* scribble: a program that corrupts the library OS's memory, which it shares an address space and a privilege
 * level with, and keeps going. `scribble MIB percpu` (in a VM of MIB MiB) overwrites this vCPU's per-vCPU data (the
 * library OS's stack, hypercall block and return address) with garbage, then makes a syscall; `scribble MIB ram
 * SEED` writes pseudo-random words over every page of RAM, from the top down (its own pages, the library OS, the page
 * tables), printing each 8 MiB it gets through, and makes syscalls as it goes; `scribble MIB rootfs PATH` overwrites
 * the root file system image in guest memory (found by its magic) and then reads PATH, which must come from the
 * image as the VMM mapped it (the host file behind it must not change). Each must end the VM with a `kiln:` line.
 * Natively the first access of the direct map faults. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rogue.h"

static void percpu(void) {
  volatile uint64_t *cpu = (volatile uint64_t *)gs_base();
  for (int i = 1; i < 8; i++) cpu[i] = 0xdead000000000000ull | (uint64_t)i << 12;
  write(1, "scribble: after\n", 16);
}

static void ram(uint64_t size, uint64_t seed) {
  uint64_t x = seed | 1;
  for (uint64_t p = size; p >= 4096; p -= 4096) {
    volatile uint64_t *page = (volatile uint64_t *)(DIRECT_MAP_BASE + p - 4096);
    for (int i = 0; i < 512; i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      page[i] = x;
    }
    if (p % (8 << 20) == 0) {
      char line[64];
      int n = snprintf(line, sizeof line, "scribble: %llu MiB left\n", (unsigned long long)(p >> 20));
      write(1, line, n);
    }
  }
  write(1, "scribble: all of RAM\n", 21);
}

static void rootfs(uint64_t size, const char *path) {
  static const char magic[8] = "KILNFS2";
  int found = 0;
  for (uint64_t p = 0; p < size; p += 4096) {
    volatile char *page = (volatile char *)(DIRECT_MAP_BASE + p);
    if (memcmp((const char *)page, magic, 8) == 0) {
      memset((char *)page + 16, 0x5a, 4096 - 16);
      found++;
    }
  }
  printf("scribble: %d images overwritten\n", found);
  char buf[256] = {0};
  int fd = open(path, O_RDONLY);
  ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  printf("scribble: open %s, read %zd: %s", fd < 0 ? "failed" : "ok", n, buf);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: scribble MIB percpu|ram SEED|rootfs PATH\n");
    return 2;
  }
  uint64_t size = strtoull(argv[1], 0, 10) << 20;
  printf("scribble: %s\n", argv[2]);
  fflush(stdout);
  if (strcmp(argv[2], "percpu") == 0) percpu();
  else if (strcmp(argv[2], "ram") == 0 && argc > 3) ram(size, strtoull(argv[3], 0, 0));
  else if (strcmp(argv[2], "rootfs") == 0 && argc > 3) rootfs(size, argv[3]);
  printf("scribble: still running\n");
  return 0;
}
