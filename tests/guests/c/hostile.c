/* hostile: a guest that talks to the VMM's hypercall port directly with garbage, as a buggy or hostile guest could.
 * The VMM must stop the VM with a message and stay sound. `hostile unknown` makes a hypercall with an unknown number;
 * `hostile write` a Write hypercall whose block holds whatever the last call left (in-range or not, the VMM checks);
 * `hostile port` writes a byte to an I/O port the TSS opens next to the hypercall port; `hostile closed` writes to the
 * serial port, which the TSS keeps closed, so that the program faults as natively; `hostile trace` makes a Trace hypercall, which
 * Kiln refuses unless run with --trace-syscalls (the block's first argument, left by the last write, names a "record"
 * that is guest memory either way). `hostile net MIB` (in a VM of MIB MiB) sets the network card up itself through its
 * registers in the direct map, with a transmit queue whose available index is a queue and one ahead of the device, then
 * waits (the Wait hypercall sends what the transmit queue holds): the VMM must stop the VM, once, with why. Natively the
 * `out` instruction faults (SIGSEGV). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void out32(unsigned short port, unsigned int value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }
static void out8(unsigned short port, unsigned char value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }

/* kiln-abi's layout: guest-physical p is virtual DIRECT_MAP_BASE + p; the card's registers are just above RAM. */
#define DIRECT_MAP_BASE 0x400000000000ull
#define QUEUE_SIZE 16

/* For each queue a descriptor table, an available ring and a used ring, a page each; physically contiguous, as the
 * program's whole span is. Starts with a marker, so that the program finds its guest-physical address by scanning the
 * direct map. */
static uint64_t rings[6 * 4096 / 8] __attribute__((aligned(4096))) = {0x6b696c6e686f7374ull, 0x71756575652d3130ull};

static void reg(volatile uint32_t *regs, unsigned offset, uint32_t value) { regs[offset / 4] = value; }

static void break_the_card(uint64_t ram) {
  uint64_t phys = 0;
  /* The marker, built at run time so that no second copy of it lies in memory. */
  uint64_t want[2] = {0x6b696c6e686f7374ull ^ 1, 0x71756575652d3130ull ^ 1};
  want[0] ^= 1, want[1] ^= 1;
  rings[2] = (uint64_t)&phys; /* and a third word, written now through the program's own mapping */
  for (uint64_t p = 0; p < ram && !phys; p += 4096) {
    const volatile uint64_t *page = (const volatile uint64_t *)(DIRECT_MAP_BASE + p);
    if (page[0] == want[0] && page[1] == want[1] && page[2] == rings[2]) phys = p;
  }
  if (!phys) {
    printf("hostile: rings not found\n");
    exit(1);
  }
  memset(rings, 0, sizeof rings);
  volatile uint32_t *regs = (volatile uint32_t *)(DIRECT_MAP_BASE + ram);
  reg(regs, 0x70, 0); /* reset */
  reg(regs, 0x70, 1 | 2);
  reg(regs, 0x24, 1);
  reg(regs, 0x20, 1); /* VIRTIO_F_VERSION_1 */
  reg(regs, 0x70, 1 | 2 | 8);
  for (unsigned q = 0; q < 2; q++) {
    uint64_t desc = phys + q * 3 * 4096, avail = desc + 4096, used = avail + 4096;
    reg(regs, 0x30, q);
    reg(regs, 0x38, QUEUE_SIZE);
    reg(regs, 0x80, (uint32_t)desc), reg(regs, 0x84, (uint32_t)(desc >> 32));
    reg(regs, 0x90, (uint32_t)avail), reg(regs, 0x94, (uint32_t)(avail >> 32));
    reg(regs, 0xa0, (uint32_t)used), reg(regs, 0xa4, (uint32_t)(used >> 32));
    reg(regs, 0x44, 1);
  }
  reg(regs, 0x70, 1 | 2 | 8 | 4);
  /* The transmit queue's (queue 1's) avail->idx: more than a queue ahead of the device's 0. */
  ((volatile uint16_t *)&rings[4 * 4096 / 8])[1] = QUEUE_SIZE + 1;
  out32(0x4b0, 5); /* Wait */
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "unknown";
  printf("hostile: %s\n", what);
  fflush(stdout);
  if (strcmp(what, "unknown") == 0) out32(0x4b0, 0x7777);
  else if (strcmp(what, "port") == 0) out8(0x4b1, 1);
  else if (strcmp(what, "closed") == 0) out8(0x3f8, 'x');
  else if (strcmp(what, "trace") == 0) out32(0x4b0, 3);
  else if (strcmp(what, "net") == 0 && argc > 2) break_the_card(strtoull(argv[2], 0, 10) << 20);
  printf("hostile: still running\n");
  return 0;
}
