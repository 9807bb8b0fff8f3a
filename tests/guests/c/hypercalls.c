/* hypercalls: a program that makes the library OS's hypercalls itself, with the arguments a hostile guest would
 * give: addresses outside RAM, lengths and counts that are huge or wrap, a bad fd, unknown numbers. `hypercalls
 * MIB args` (in a VM of MIB MiB) makes a batch of calls the VMM must refuse with an errno (and keep running), one
 * line each with the answer, then exits 0; `hypercalls MIB stop WHAT` makes one call after which the VMM must stop
 * the VM with a message: an unknown number (`unknown`, `zero`, `max`), a kick of a vCPU that does not exist
 * (`kick`), a preemption of such vCPUs (`preempt`), an exit by a signal that does not exist (`signal`), a panic
 * message outside RAM (`panic`), a deadlock report whose message wraps around the address space (`deadlock`). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rogue.h"

enum { WRITE = 1, EXIT = 2, TRACE = 3, PANIC = 4, WAIT = 5, DEADLOCK = 6, KICK = 7, FLUSH = 8, DISCARD = 10,
       PREEMPT = 11 };

static uint64_t segs[512] __attribute__((aligned(4096)));
static char text[] = "hypercalls: written by the VMM\n";

static void show(const char *what, int64_t ret) {
  printf("%s: %lld\n", what, (long long)ret);
  fflush(stdout);
}

static void args(uint64_t ram) {
  uint64_t segs_phys = 0, text_phys = 0;
  /* Through the direct map: the page of `segs` is found by scanning (a program does not know its physical pages). */
  segs_phys = find_phys(segs, ram);
  if (!segs_phys) {
    printf("hypercalls: own page not found\n");
    exit(1);
  }
  memset(segs, 0, sizeof segs);
  memcpy((char *)segs + 2048, text, sizeof text - 1);
  text_phys = segs_phys + 2048;
  /* A good write first, so that a refusal below is the argument's, not the call's. */
  segs[0] = text_phys, segs[1] = sizeof text - 1;
  show("good write", hypercall(WRITE, 1, segs_phys, 1, 0, 0, 0));
  show("segments beyond RAM", hypercall(WRITE, 1, ram + (1ull << 30), 1, 0, 0, 0));
  show("segments wrapping the address space", hypercall(WRITE, 1, UINT64_MAX - 7, 2, 0, 0, 0));
  show("2^62 segments", hypercall(WRITE, 1, segs_phys, 1ull << 62, 0, 0, 0));
  show("257 segments", hypercall(WRITE, 1, segs_phys, 257, 0, 0, 0));
  segs[0] = ram - 4, segs[1] = 8;
  show("a segment across the end of RAM", hypercall(WRITE, 1, segs_phys, 1, 0, 0, 0));
  segs[0] = UINT64_MAX - 3, segs[1] = 8;
  show("a segment wrapping the address space", hypercall(WRITE, 2, segs_phys, 1, 0, 0, 0));
  segs[0] = text_phys, segs[1] = UINT64_MAX;
  show("a segment of 2^64-1 bytes", hypercall(WRITE, 1, segs_phys, 1, 0, 0, 0));
  segs[0] = text_phys, segs[1] = 1ull << 63, segs[2] = text_phys, segs[3] = 1ull << 63;
  show("lengths whose sum wraps", hypercall(WRITE, 1, segs_phys, 2, 0, 0, 0));
  segs[0] = text_phys, segs[1] = 1 << 20, segs[2] = text_phys, segs[3] = 1;
  show("one byte more than a write may move", hypercall(WRITE, 1, segs_phys, 2, 0, 0, 0));
  segs[0] = text_phys, segs[1] = sizeof text - 1;
  show("fd 3", hypercall(WRITE, 3, segs_phys, 1, 0, 0, 0));
  show("fd 2^64-1", hypercall(WRITE, UINT64_MAX, segs_phys, 1, 0, 0, 0));
  show("a trace record beyond RAM, unasked", hypercall(TRACE, UINT64_MAX - 8, 0, 0, 0, 0, 0));
  show("discard: 2^63 ranges", hypercall(DISCARD, segs_phys, 1ull << 63, 0, 0, 0, 0));
  show("discard: the list beyond RAM", hypercall(DISCARD, ram, 1, 0, 0, 0, 0));
  segs[0] = (UINT64_MAX & ~0xfffull), segs[1] = 0x2000;
  show("discard: a range wrapping the address space", hypercall(DISCARD, segs_phys, 1, 0, 0, 0, 0));
  segs[0] = ram - 0x1000, segs[1] = 0x2000;
  show("discard: a range across the end of RAM", hypercall(DISCARD, segs_phys, 1, 0, 0, 0, 0));
  segs[0] = 0x1001, segs[1] = 0x1000;
  show("discard: an unaligned range", hypercall(DISCARD, segs_phys, 1, 0, 0, 0, 0));
  show("preempt: this vCPU in 584 years", hypercall(PREEMPT, 1, UINT64_MAX - 1, 0, 0, 0, 0));
  show("preempt: no deadline at all", hypercall(PREEMPT, 1, UINT64_MAX, 1, 0, 0, 0));
  show("wait 1 ns, then a look in 584 years", hypercall(WAIT, 1, UINT64_MAX - 1, 0, 0, 0, 0));
  show("kick this vCPU", hypercall(KICK, 0, 0, 0, 0, 0, 0));
  show("flush the TLBs", hypercall(FLUSH, 0, 0, 0, 0, 0, 0));
  /* The library OS's next Wait must not be skipped for ever: the kick above is used up by this wait. */
  show("wait 1 ns", hypercall(WAIT, 1, 0, 0, 0, 0, 0));
  printf("hypercalls: still running\n");
}

static void stop(const char *what, uint64_t ram) {
  static char message[] = "rogue";
  uint64_t phys = find_phys(segs, ram);
  if (strcmp(what, "unknown") == 0) hypercall(0x4b1d, 0, 0, 0, 0, 0, 0);
  else if (strcmp(what, "zero") == 0) hypercall(0, 0, 0, 0, 0, 0, 0);
  else if (strcmp(what, "max") == 0) hypercall(UINT32_MAX, 0, 0, 0, 0, 0, 0);
  else if (strcmp(what, "kick") == 0) hypercall(KICK, 1ull << 40, 0, 0, 0, 0, 0);
  else if (strcmp(what, "preempt") == 0) hypercall(PREEMPT, UINT64_MAX, 0, 0, 0, 0, 0);
  else if (strcmp(what, "signal") == 0) hypercall(EXIT, 0, 1000, 0, 0, 0, 0);
  else if (strcmp(what, "panic") == 0) hypercall(PANIC, ram + 4096, UINT64_MAX, 0, 0, 0, 0);
  else if (strcmp(what, "deadlock") == 0) hypercall(DEADLOCK, UINT64_MAX, UINT64_MAX - 16, 64, 0, 0, 0);
  else if (strcmp(what, "deadlock-ok") == 0) {
    memcpy((char *)segs + 64, message, sizeof message);
    hypercall(DEADLOCK, 3, phys + 64, sizeof message - 1, 0, 0, 0);
  }
  printf("hypercalls: still running after %s\n", what);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: hypercalls MIB args|stop WHAT\n");
    return 2;
  }
  uint64_t ram = strtoull(argv[1], 0, 10) << 20;
  printf("hypercalls: %s\n", argv[2]);
  fflush(stdout);
  if (strcmp(argv[2], "args") == 0) args(ram);
  else if (strcmp(argv[2], "stop") == 0 && argc > 3) stop(argv[3], ram);
  return 0;
}
