/* mapfixed: mmap(MAP_FIXED) at addresses high in the address space (in Kiln, above the direct map, where a PIE, its
 * loader and the stack live) maps memory there as anywhere else: anonymous memory and file mappings at a fresh
 * address, over the program's own writable data (which must then read as the new mapping, not as what was there),
 * protections, and munmap. Built static and static-pie (tests/boot.rs). Each check prints one line; exits 0 when all
 * held.
 *
 * With the arguments `loader FILE`: maps FILE as a dynamic loader maps a library (all of it read-only, most of it
 * made PROT_NONE, then piece by piece with MAP_FIXED from the same offsets), and checks that every piece reads the
 * file's bytes, also after the program wrote into the first copy and mapped over it again. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "check.h"
#define TOUCH_WRITES 1
#include "touch.h"

#define PAGE 4096
#define HIGH ((char *)0x600000000000)

/* A page of the program's own data, initialised so that it lies in the file. */
static char data[3 * PAGE] __attribute__((aligned(PAGE))) = {[0 ... 3 * PAGE - 1] = 'd'};


static int all(const char *p, size_t n, char c) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != c) return 0;
  return 1;
}

/* Whether the page at `p` reads the bytes of `fd` at `offset`. */
static int reads_file(const char *p, int fd, off_t offset) {
  char expect[PAGE];
  memset(expect, 0, sizeof expect);
  if (pread(fd, expect, PAGE, offset) < 0) return 0;
  return memcmp(p, expect, PAGE) == 0;
}

static int loader(const char *path) {
  int fd = open(path, O_RDONLY);
  off_t size = fd < 0 ? 0 : lseek(fd, 0, SEEK_END);
  size_t pages = (size_t)(size / PAGE);
  if (pages < 12) return 2;
  char *p = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
  check(p != MAP_FAILED && mprotect(p + PAGE, (pages - 1) * PAGE, PROT_NONE) == 0 && faults(p + PAGE, 0),
        "a file mapped whole, then PROT_NONE after its first page");
  int ok = 1;
  for (size_t i = 1; i + 2 <= pages; i += 2) {
    int prot = i % 4 == 1 ? PROT_READ | PROT_EXEC : PROT_READ;
    ok &= mmap(p + i * PAGE, 2 * PAGE, prot, MAP_PRIVATE | MAP_FIXED, fd, (off_t)(i * PAGE)) == p + i * PAGE;
  }
  for (size_t i = 0; i + 2 <= pages; i++) ok &= reads_file(p + i * PAGE, fd, (off_t)(i * PAGE)) && faults(p + i * PAGE, 1);
  check(ok, "mapped over piece by piece from the same offsets: the file's bytes, read-only");
  ok = mprotect(p + 2 * PAGE, PAGE, PROT_READ | PROT_WRITE) == 0;
  if (ok) memset(p + 2 * PAGE, 'X', PAGE);
  ok &= mprotect(p + 2 * PAGE, PAGE, PROT_NONE) == 0;
  ok &= mmap(p + 2 * PAGE, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 2 * PAGE) == p + 2 * PAGE;
  check(ok && reads_file(p + 2 * PAGE, fd, 2 * PAGE), "mapped again after the program wrote there: the file's bytes");
  ok = mmap(p + 4 * PAGE, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 6 * PAGE) == p + 4 * PAGE;
  check(ok && reads_file(p + 4 * PAGE, fd, 6 * PAGE) && reads_file(p + 5 * PAGE, fd, 7 * PAGE),
        "mapped from other offsets: those bytes");
  check(munmap(p, (size_t)size) == 0, "munmap");
  printf("mapfixed: %d failed\n", failures);
  return failures != 0;
}

int main(int argc, char **argv) {
  catch_faults();
  if (argc > 2 && strcmp(argv[1], "loader") == 0) return loader(argv[2]);

  char *p = mmap(HIGH, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  check(p == HIGH && all(p, 4 * PAGE, 0) && !faults(p + 3 * PAGE, 1) && p[3 * PAGE] == 1,
        "anonymous MAP_FIXED high up: zeros, writable");
  check(mprotect(p, PAGE, PROT_READ) == 0 && faults(p, 1) && !faults(p + PAGE, 1), "mprotect there applies");
  /* (Kiln may leave unmapped pages reachable until its next batched TLB flush: no check that an access faults.) */
  check(munmap(p, 4 * PAGE) == 0 && mmap(p, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == p &&
            all(p, PAGE, 0) && munmap(p, PAGE) == 0,
        "munmap there, and a mapping there again reads zeros");

  char path[] = "/tmp/mapfixed-XXXXXX";
  int fd = mkstemp(path);
  char bytes[PAGE + 100];
  memset(bytes, 'f', sizeof bytes);
  int written = fd >= 0 && write(fd, bytes, sizeof bytes) == (ssize_t)sizeof bytes;
  char *f = written ? mmap(HIGH + 16 * PAGE, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) : MAP_FAILED;
  check(f == HIGH + 16 * PAGE && all(f, PAGE + 100, 'f') && all(f + PAGE + 100, PAGE - 100, 0) && faults(f, 1),
        "a file MAP_FIXED high up: the file's bytes, zeros after its end, read-only");

  /* Over the program's own data (in a static-pie, above the direct map in Kiln). */
  char *d = data + PAGE;
  char *over = mmap(d, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  check(over == d && all(d, PAGE, 0) && all(data, PAGE, 'd') && all(data + 2 * PAGE, PAGE, 'd'),
        "anonymous MAP_FIXED over the program's data: zeros there, the neighbours kept");
  over = written ? mmap(d, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, PAGE) : MAP_FAILED;
  check(over == d && all(d, 100, 'f') && all(d + 100, PAGE - 100, 0) && faults(d, 1),
        "a file MAP_FIXED over the program's data: the file's bytes, zeros after its end, read-only");
  if (fd >= 0) unlink(path);

  printf("mapfixed: %d failed\n", failures);
  return failures != 0;
}
