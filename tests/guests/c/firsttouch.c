/* firsttouch: memory read before it is first written, in every kind of memory a program gets, keeps every protection.
 *
 * DATA_PAGES pages of initialised data (which the VMM writes into guest memory at boot, so the host's pages exist)
 * are all read, then all written: with the page-table entries' dirty bit preset, the reads give writable shadow
 * entries and the writes fault no more (tests/boot.rs counts the faults with `--stats`). Then, for the data, fresh
 * anonymous memory, the break and memory at a chosen address: read, write, and a write to a page made read-only
 * and a read of a page made PROT_NONE must still fault (SIGSEGV, caught). Each check prints one line; exits 0 when
 * all held.
 *
 * With the argument `fresh`: writes one byte in each page of 64 MiB of fresh anonymous memory, and reads them back
 * (in Kiln with --memory 256M or more, in 2 MiB host pages: tests/boot.rs counts the faults).
 *
 * With the argument `untouched`: changes the protection of pages never touched, one page per mprotect, many times
 * (in Kiln no TLB can hold them, so no flush is needed: tests/boot.rs counts the VM exits); then touches them, and
 * checks that protection taken away from touched pages still faults.
 *
 * With the argument `huge`: writes every page of 8 MiB of fresh anonymous memory, makes it all read-only, reads every
 * page, checks that writes fault, and makes it writable again (in Kiln with --memory 256M or more, 2 MiB pages the
 * change covers stay 2 MiB pages: tests/boot.rs counts the faults). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "check.h"
#include "touch.h"

#define PAGE 4096
#define DATA_PAGES 1024

/* Initialised, so it lies in the file (not the bss): every page starts as 1. */
static char data[DATA_PAGES * PAGE] __attribute__((aligned(PAGE))) = {[0 ... DATA_PAGES * PAGE - 1] = 1};


/* Reads every page of [p, p+pages), then writes each; whether every page read `expect` and kept what was written. */
static int read_then_write(char *p, size_t pages, char expect) {
  int ok = 1;
  for (size_t i = 0; i < pages; i++) ok &= ((volatile char *)p)[i * PAGE] == expect;
  for (size_t i = 0; i < pages; i++) p[i * PAGE] = (char)(i % 127 + 2);
  for (size_t i = 0; i < pages; i++) ok &= p[i * PAGE] == (char)(i % 127 + 2);
  return ok;
}

/* The protections of page 1 of `p` (three pages, read and written already) still fault as Linux makes them. */
static void protections_hold(char *p, const char *where) {
  char what[160];
  char before = p[PAGE];
  snprintf(what, sizeof what, "%s: a write to a page made read-only faults, its neighbours stay writable", where);
  check(mprotect(p + PAGE, PAGE, PROT_READ) == 0 && faults(p + PAGE, 1) && !faults(p + PAGE, 0) && !faults(p, 1) &&
            !faults(p + 2 * PAGE, 1),
        what);
  snprintf(what, sizeof what, "%s: a read of a page made PROT_NONE faults", where);
  check(mprotect(p + PAGE, PAGE, PROT_NONE) == 0 && faults(p + PAGE, 0), what);
  snprintf(what, sizeof what, "%s: read-write again: writable, with its bytes", where);
  check(mprotect(p + PAGE, PAGE, PROT_READ | PROT_WRITE) == 0 && p[PAGE] == before && !faults(p + PAGE, 1) && p[PAGE] == 7,
        what);
}

/* Writes a byte in every page of FRESH_MIB MiB of fresh memory, then checks them. */
#define FRESH_MIB 64
static int fresh_memory(void) {
  size_t pages = (size_t)FRESH_MIB << 20 >> 12;
  char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  for (size_t i = 0; i < pages; i++) p[i * PAGE] = (char)(i % 251 + 1);
  for (size_t i = 0; i < pages; i++)
    if (p[i * PAGE] != (char)(i % 251 + 1) || p[i * PAGE + 1] != 0) return 1;
  printf("firsttouch: wrote %zu fresh pages\n", pages);
  return 0;
}

#define UNTOUCHED_PAGES 64
static int untouched(void) {
  char *p = mmap((void *)0x310000000000, UNTOUCHED_PAGES * PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) return 1;
  int ok = 1;
  for (int i = 0; i < UNTOUCHED_PAGES; i++) {
    ok &= mprotect(p + i * PAGE, PAGE, PROT_READ) == 0;
    ok &= mprotect(p + i * PAGE, PAGE, PROT_NONE) == 0;
    ok &= mprotect(p + i * PAGE, PAGE, PROT_READ | PROT_WRITE) == 0;
  }
  check(ok, "mprotect of pages never touched");
  ok = 1;
  for (int i = 0; i < UNTOUCHED_PAGES; i++) ok &= !faults(p + i * PAGE, 1) && p[i * PAGE] == 7;
  check(ok, "the pages are writable and read what was written");
  for (int i = 0; i < UNTOUCHED_PAGES; i += 8) ok &= mprotect(p + i * PAGE, PAGE, PROT_READ) == 0;
  for (int i = 0; i < UNTOUCHED_PAGES; i++) ok &= faults(p + i * PAGE, 1) == (i % 8 == 0) && p[i * PAGE] == 7;
  check(ok, "touched pages made read-only fault on a write, their neighbours do not");
  for (int i = 0; i < UNTOUCHED_PAGES; i += 8) ok &= mprotect(p + i * PAGE, PAGE, PROT_NONE) == 0;
  for (int i = 0; i < UNTOUCHED_PAGES; i += 4) ok &= faults(p + i * PAGE, 0) == (i % 8 == 0);
  check(ok, "touched pages made PROT_NONE fault on a read");
  printf("firsttouch: %d failed\n", failures);
  return failures != 0;
}

static int huge(void) {
  size_t pages = (8 << 20) / PAGE;
  char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  for (size_t i = 0; i < pages; i++) p[i * PAGE] = (char)(i % 13 + 1);
  int ok = mprotect(p, pages * PAGE, PROT_READ) == 0;
  for (size_t i = 0; i < pages; i++) ok &= ((volatile char *)p)[i * PAGE] == (char)(i % 13 + 1);
  check(ok, "8 MiB written, then made read-only: every page reads what was written");
  ok = 1;
  for (size_t i = 0; i < pages; i += 256) ok &= faults(p + i * PAGE, 1);
  check(ok, "writes to it fault");
  ok = mprotect(p, pages * PAGE, PROT_READ | PROT_WRITE) == 0;
  for (size_t i = 0; i < pages; i += 256) ok &= !faults(p + i * PAGE, 1) && p[i * PAGE] == 7;
  check(ok, "read-write again: writable");
  /* Unmapped while read-only: the memory must be writable again when it is handed out next. */
  ok = mprotect(p, pages * PAGE, PROT_READ) == 0 && munmap(p, pages * PAGE) == 0;
  for (int round = 0; round < 4 && ok; round++) {
    char *q = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ok &= q != MAP_FAILED;
    for (size_t i = 0; ok && i < pages; i += 64) ok &= !faults(q + i * PAGE, 1) && q[i * PAGE] == 7;
  }
  check(ok, "unmapped while read-only: memory mapped next is writable");
  printf("firsttouch: %d failed\n", failures);
  return failures != 0;
}

int main(int argc, char **argv) {
  catch_faults();
  if (argc > 1 && strcmp(argv[1], "fresh") == 0) return fresh_memory();
  if (argc > 1 && strcmp(argv[1], "untouched") == 0) return untouched();
  if (argc > 1 && strcmp(argv[1], "huge") == 0) return huge();

  check(read_then_write(data, DATA_PAGES, 1), "initialised data: read, then written, page by page");
  protections_hold(data + 16 * PAGE, "initialised data");

  char *fresh = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(fresh != MAP_FAILED && read_then_write(fresh, 64, 0), "fresh anonymous memory: read, then written");
  if (fresh != MAP_FAILED) protections_hold(fresh, "fresh anonymous memory");

  /* The break by the syscall: musl's sbrk only reports it. */
  uintptr_t top = (uintptr_t)syscall(SYS_brk, 0);
  char *brk_start = (char *)((top + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
  int grown = (uintptr_t)syscall(SYS_brk, brk_start + 16 * PAGE) == (uintptr_t)(brk_start + 16 * PAGE);
  check(grown && read_then_write(brk_start, 16, 0), "the break: read, then written");
  if (grown) protections_hold(brk_start, "the break");

  char *chosen = mmap((void *)0x300000000000, 16 * PAGE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  check(chosen != MAP_FAILED && read_then_write(chosen, 16, 0), "memory at a chosen address: read, then written");
  if (chosen != MAP_FAILED) protections_hold(chosen, "memory at a chosen address");

  printf("firsttouch: %d failed\n", failures);
  return failures != 0;
}
