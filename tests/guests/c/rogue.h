/* rogue.h: what the hostile guests share: the library OS's own way to the VMM (this vCPU's hypercall block, found
 * through the per-vCPU data at the GS base, and the `out` to the hypercall port), which a program at CPL 3 can use
 * as well as the library OS, since both run at CPL 3 in one address space. Natively the first `out` faults. */
#ifndef KILN_ROGUE_H
#define KILN_ROGUE_H
#include <stdint.h>

/* kiln-abi's layout: guest-physical p is virtual DIRECT_MAP_BASE + p. */
#define DIRECT_MAP_BASE 0x400000000000ull
#define HYPERCALL_PORT 0x4b0
/* The library OS's per-vCPU data (kernel/src/percpu.rs): the direct-map address of the hypercall block at 16. */
#define PERCPU_HYPERCALL_BLOCK 16

struct block {
  uint64_t args[6];
  int64_t ret;
};

static inline uint64_t gs_base(void) {
  uint64_t base;
  __asm__ volatile("rdgsbase %0" : "=r"(base));
  return base;
}

static inline volatile struct block *hypercall_block(void) {
  return (volatile struct block *)*(volatile uint64_t *)(gs_base() + PERCPU_HYPERCALL_BLOCK);
}

/* Hypercall `nr` with these six arguments, as the library OS makes one; the VMM's answer. */
static inline int64_t hypercall(uint32_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                uint64_t a5) {
  volatile struct block *b = hypercall_block();
  b->args[0] = a0, b->args[1] = a1, b->args[2] = a2, b->args[3] = a3, b->args[4] = a4, b->args[5] = a5;
  b->ret = 0x7777;
  __asm__ volatile("outl %0, %w1" : : "a"(nr), "Nd"(HYPERCALL_PORT) : "memory");
  return b->ret;
}

/* The guest-physical address of a direct-map address. */
static inline uint64_t phys_of_direct(const volatile void *p) { return (uint64_t)p - DIRECT_MAP_BASE; }

/* The guest-physical address of the page-aligned `area` of the program, found by a marker it writes in its first
 * two words and a third word written through the program's own mapping; 0 if not found in `ram` bytes. The marker
 * is built at run time so that no other copy of it lies in memory. */
static inline uint64_t find_phys(volatile uint64_t *area, uint64_t ram) {
  uint64_t want[2] = {0x6b696c6e726f6775ull ^ 1, 0x652d6172656121ull ^ 1};
  want[0] ^= 1, want[1] ^= 1;
  area[0] = want[0], area[1] = want[1], area[2] = (uint64_t)&want;
  for (uint64_t p = 0; p < ram; p += 4096) {
    const volatile uint64_t *page = (const volatile uint64_t *)(DIRECT_MAP_BASE + p);
    if (page[0] == want[0] && page[1] == want[1] && page[2] == area[2]) return p;
  }
  return 0;
}

/* Ends the VM at once with `code` through the Exit hypercall, skipping the library OS's exit path (which would
 * write volumes back through a device the program has reprogrammed). */
static inline void hard_exit(int code) {
  hypercall(2, (uint64_t)code, 0, 0, 0, 0, 0);
  for (;;) {
  }
}
#endif
