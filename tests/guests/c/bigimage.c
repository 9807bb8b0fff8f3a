/* bigimage: a program whose read-only and writable segments are each several MiB (in the file), read and written page
 * by page, and changed inside as a program's loader and allocator change them: mprotect of a page in the read-only
 * data and of pages in the writable data, munmap of a page in the writable data and MAP_FIXED anonymous memory in
 * its place, /proc/self/maps. In Kiln with --memory 256M or more, their 2 MiB-aligned parts are 2 MiB pages
 * (tests/boot.rs counts the shadow faults). Each check prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "check.h"
#include "touch.h"

#define PAGE 4096
#define RODATA_PAGES 4096
#define DATA_PAGES 2048

/* In the file (initialised), read-only and writable; the rest of each is zero. */
static const char rodata[RODATA_PAGES * PAGE] __attribute__((aligned(PAGE))) = {1, 2, 3};
static char data[DATA_PAGES * PAGE] __attribute__((aligned(PAGE))) = {4, 5, 6};


/* The permissions /proc/self/maps gives the mapping holding `p` (the first two letters), "??" if none does. */
static const char *maps_perms(const void *p) {
  static char perms[3];
  strcpy(perms, "??");
  FILE *maps = fopen("/proc/self/maps", "r");
  if (!maps) return perms;
  char line[512];
  while (fgets(line, sizeof line, maps)) {
    unsigned long start, end;
    char rw[5];
    if (sscanf(line, "%lx-%lx %4s", &start, &end, rw) == 3 && start <= (uintptr_t)p && (uintptr_t)p < end) {
      memcpy(perms, rw, 2);
      break;
    }
  }
  fclose(maps);
  return perms;
}

int main(void) {
  catch_faults();
  setvbuf(stdout, NULL, _IONBF, 0);

  long sum = 0;
  for (size_t i = 0; i < RODATA_PAGES; i++) sum += ((volatile const char *)rodata)[i * PAGE];
  check(sum == 1 && rodata[0] == 1 && rodata[2] == 3, "16 MiB of read-only data read page by page");
  int ok = data[0] == 4 && data[2] == 6;
  for (size_t i = 0; i < DATA_PAGES; i++) data[i * PAGE + 8] = (char)(i % 251 + 1);
  for (size_t i = 0; i < DATA_PAGES; i++) ok &= data[i * PAGE + 8] == (char)(i % 251 + 1);
  check(ok, "8 MiB of writable data written and read back page by page");
  check(faults((char *)rodata + 1000 * PAGE, 1), "a write to the read-only data faults");

  /* As a loader's RELRO, the other way round: one page in the middle of the read-only data made writable. */
  volatile char *ro = (volatile char *)rodata + 2000 * PAGE;
  check(mprotect((void *)ro, PAGE, PROT_READ | PROT_WRITE) == 0 && !faults(ro, 1) && ro[0] == 7 && faults(ro + PAGE, 1) &&
            faults(ro - PAGE, 1),
        "a read-only page made writable takes writes, its neighbours do not");
  check(maps_perms((void *)ro)[1] == 'w' && maps_perms((void *)(ro + PAGE))[1] == '-', "/proc/self/maps shows it writable alone");

  char *rw = data + 1000 * PAGE;
  check(mprotect(rw, PAGE, PROT_READ) == 0 && faults(rw, 1) && !faults(rw - PAGE, 1) && !faults(rw + PAGE, 1),
        "a writable page made read-only faults on a write, its neighbours do not");
  check(maps_perms(rw)[1] == '-' && maps_perms(rw + PAGE)[1] == 'w', "/proc/self/maps shows it read-only alone");
  check(mprotect(rw + 2 * PAGE, PAGE, PROT_NONE) == 0 && faults(rw + 2 * PAGE, 0), "a page made PROT_NONE faults");
  check(mprotect(rw, 3 * PAGE, PROT_READ | PROT_WRITE) == 0 && rw[8] == (char)(1000 % 251 + 1) &&
            rw[2 * PAGE + 8] == (char)(1002 % 251 + 1) && !faults(rw, 1) && !faults(rw + 2 * PAGE, 1),
        "read-write again: writable, with their bytes");

  /* munmap of one page, fresh anonymous memory in its place: zero, and no other page lost its bytes. */
  char *gone = data + 1500 * PAGE;
  check(munmap(gone, PAGE) == 0 &&
            mmap(gone, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == gone &&
            gone[8] == 0,
        "a page unmapped and mapped anew is zero");
  ok = 1;
  for (size_t i = 0; i < DATA_PAGES; i++)
    if (i != 1000 && i != 1002 && i != 1500) ok &= data[i * PAGE + 8] == (char)(i % 251 + 1);
  check(ok, "every other page of the writable data kept its bytes");
  ok = 1;
  for (size_t i = 0; i < RODATA_PAGES; i++)
    if (i != 2000) ok &= ((volatile const char *)rodata)[i * PAGE + 8] == 0;
  check(ok && ((volatile const char *)rodata)[1] == 2, "and every other page of the read-only data");

  printf("bigimage: %d failed\n", failures);
  return failures != 0;
}
