/* virtqueue: a program that takes a virtio device from the library OS and drives it with queues of its own, as a
 * hostile guest could: `virtqueue MIB net|blk CASE` (in a VM of MIB MiB; `blk` needs a volume) resets the network
 * card (its transmit queue) or the first volume's disk, sets up one queue of 16 entries in its own memory, makes one
 * request or frame of the kind CASE names, notifies, and prints what the device returned: the used index, the
 * length and, for the disk, the status byte (0xff if the device left it alone). Cases: `good` (a well-formed one),
 * `outside` (a buffer beyond RAM), `wrap` (a buffer whose end wraps the address space), `huge` (a 4 GiB - 1 buffer),
 * `loop` (two descriptors that point at each other), `selfloop`, `badnext` (a next outside the table), `rings` (the
 * descriptor table beyond RAM: the queue is never used), `storm` (10,000 notifications of nothing new); and, after
 * which the VMM stops the VM, `badhead` (a head outside the table) and `ahead` (an available index a queue and one
 * ahead). It ends through the Exit hypercall, so that the library OS does not use the device it took.
 * Natively the first access faults. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rogue.h"

#define QUEUE_SIZE 16
#define F_NEXT 1
#define F_WRITE 2

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};

/* Pages: descriptor table, available ring, used ring, then data (header at 0, buffer at 512, status at 3000). */
static uint64_t area[6 * 4096 / 8] __attribute__((aligned(4096)));

static volatile uint32_t *regs;
static void reg(unsigned offset, uint32_t value) { regs[offset / 4] = value; }

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: virtqueue MIB net|blk CASE\n");
    return 2;
  }
  uint64_t ram = strtoull(argv[1], 0, 10) << 20;
  int blk = strcmp(argv[2], "blk") == 0;
  const char *what = argv[3];
  printf("virtqueue: %s %s\n", argv[2], what);
  fflush(stdout);
  uint64_t phys = find_phys(area, ram);
  if (!phys) {
    printf("virtqueue: own pages not found\n");
    hard_exit(1);
  }
  memset(area, 0, sizeof area);
  volatile struct desc *table = (volatile struct desc *)area;
  volatile uint16_t *avail = (volatile uint16_t *)((char *)area + 4096);
  volatile uint16_t *used = (volatile uint16_t *)((char *)area + 2 * 4096);
  volatile unsigned char *data = (volatile unsigned char *)area + 3 * 4096;
  uint64_t desc_phys = phys, data_phys = phys + 3 * 4096;
  unsigned queue = blk ? 0 : 1;
  if (strcmp(what, "rings") == 0) desc_phys = ram + (1ull << 30);

  /* The card's registers lie right after RAM, the first volume's a window above them. */
  regs = (volatile uint32_t *)(DIRECT_MAP_BASE + ram + (blk ? 0x1000 : 0));
  if (regs[0] != 0x74726976) {
    printf("virtqueue: no device there\n");
    hard_exit(1);
  }
  reg(0x70, 0);
  reg(0x70, 1 | 2);
  reg(0x24, 1);
  reg(0x20, 1); /* VIRTIO_F_VERSION_1 only */
  reg(0x70, 1 | 2 | 8);
  reg(0x30, queue);
  reg(0x38, QUEUE_SIZE);
  uint64_t rings[3] = {desc_phys, phys + 4096, phys + 2 * 4096};
  for (int i = 0; i < 3; i++) reg(0x80 + 0x10 * i, (uint32_t)rings[i]), reg(0x84 + 0x10 * i, (uint32_t)(rings[i] >> 32));
  reg(0x44, 1);
  reg(0x70, 1 | 2 | 8 | 4);

  /* One request (header, 512-byte buffer, status) or one frame (a 12-byte header and 64 bytes). */
  data[3000] = 0xff;
  if (blk) {
    uint32_t kind = 0; /* VIRTIO_BLK_T_IN, sector 0 */
    memcpy((void *)data, &kind, 4);
    table[0] = (struct desc){data_phys, 16, F_NEXT, 1};
    table[1] = (struct desc){data_phys + 512, 512, F_NEXT | F_WRITE, 2};
    table[2] = (struct desc){data_phys + 3000, 1, F_WRITE, 0};
  } else {
    table[0] = (struct desc){data_phys, 12, F_NEXT, 1};
    table[1] = (struct desc){data_phys + 512, 64, 0, 0};
  }
  volatile struct desc *buffer = &table[1];
  if (strcmp(what, "outside") == 0) buffer->addr = ram + (1ull << 30);
  else if (strcmp(what, "wrap") == 0) buffer->addr = UINT64_MAX - 255;
  else if (strcmp(what, "huge") == 0) buffer->len = UINT32_MAX;
  else if (strcmp(what, "loop") == 0) buffer->flags |= F_NEXT, buffer->next = 0;
  else if (strcmp(what, "selfloop") == 0) buffer->flags |= F_NEXT, buffer->next = 1;
  else if (strcmp(what, "badnext") == 0) buffer->flags |= F_NEXT, buffer->next = 1000;
  avail[2] = strcmp(what, "badhead") == 0 ? 1000 : 0; /* ring[0] */
  avail[1] = strcmp(what, "ahead") == 0 ? QUEUE_SIZE + 1 : 1; /* idx */
  int notifications = strcmp(what, "storm") == 0 ? 10000 : 1;
  for (int i = 0; i < notifications; i++) reg(0x50, queue);
  /* used: flags, idx, then (id u32, len u32) elements. */
  uint32_t len = *(volatile uint32_t *)&used[4];
  printf("virtqueue: used %u, length %u", used[1], len);
  if (blk) printf(", status %#x", data[3000]);
  printf("\n");
  fflush(stdout);
  hard_exit(0);
}
