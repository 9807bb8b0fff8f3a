/* floor: the least a process can do that boots a VM the way Kiln does, to time `kiln run` against.
 *
 *   cc -O2 -o floor floor.c && ./floor
 *
 * Opens /dev/kvm, creates a VM with 64 MiB of MAP_NORESERVE guest RAM and one vCPU, enters 64-bit mode directly at
 * CPL 3 (page tables, GDT and registers written from the host, as Kiln's VMM does), and runs one instruction:
 * `out %al, $0xf4`, the single VM exit a program must at least make to report that it is done. Exits 0 when that exit
 * arrives, 1 on anything else. Everything `kiln run hello` does beyond this is Kiln's own cost.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUEST_RAM (64ul << 20)
#define DONE_PORT 0xf4

/* Guest-physical layout, all inside the first 2 MiB page. */
enum { GDT_AT = 0x1000, PML4_AT = 0x2000, PDPT_AT = 0x3000, PD_AT = 0x4000, CODE_AT = 0x10000, STACK_TOP = 0x1ff000 };

/* Page-table entry bits. */
enum { PRESENT = 1, WRITABLE = 2, USER = 4, HUGE = 0x80 };

static int checked(int r, const char *what) {
  if (r < 0) {
    perror(what);
    exit(1);
  }
  return r;
}

static void put64(uint8_t *ram, uint64_t at, uint64_t v) { memcpy(ram + at, &v, sizeof v); }

/* A flat 64-bit segment: code (long mode) or data, at privilege level `dpl`. */
static struct kvm_segment flat(uint16_t selector, int code, uint8_t dpl) {
  struct kvm_segment s;
  memset(&s, 0, sizeof s);
  s.limit = 0xfffff;
  s.selector = selector;
  s.type = code ? 0xb : 0x3; /* execute/read accessed, or read/write accessed */
  s.present = 1;
  s.dpl = dpl;
  s.s = 1;
  s.l = code;
  s.db = !code;
  s.g = 1;
  return s;
}

int main(void) {
  int kvm = checked(open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
  int vm = checked(ioctl(kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");

  uint8_t *ram = mmap(NULL, GUEST_RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) checked(-1, "mmap guest RAM");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = GUEST_RAM, .userspace_addr = (uint64_t)(uintptr_t)ram};
  checked(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");

  /* Identity-map all guest RAM with 2 MiB user pages: PML4[0] -> PDPT[0] -> PD[0..31]. */
  put64(ram, PML4_AT, PDPT_AT | PRESENT | WRITABLE | USER);
  put64(ram, PDPT_AT, PD_AT | PRESENT | WRITABLE | USER);
  for (uint64_t i = 0; i < GUEST_RAM >> 21; i++) put64(ram, PD_AT + 8 * i, (i << 21) | PRESENT | WRITABLE | USER | HUGE);

  /* GDT: null, kernel code, kernel data, user data (0x1b), user code (0x23) — the layout sysret expects. */
  static const uint64_t gdt[] = {0, 0x00af9b000000ffff, 0x00cf93000000ffff, 0x00cff3000000ffff, 0x00affb000000ffff};
  memcpy(ram + GDT_AT, gdt, sizeof gdt);

  static const uint8_t code[] = {0xe6, DONE_PORT, /* out %al, $DONE_PORT */ 0xf4 /* hlt: never reached */};
  memcpy(ram + CODE_AT, code, sizeof code);

  int vcpu = checked(ioctl(vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
  int run_size = checked(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) checked(-1, "mmap kvm_run");

  struct kvm_sregs sregs;
  checked(ioctl(vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
  sregs.cr0 = (1u << 0) | (1u << 1) | (1u << 4) | (1u << 5) | (1u << 16) | (1u << 31); /* PE MP ET NE WP PG */
  sregs.cr3 = PML4_AT;
  sregs.cr4 = (1u << 5) | (1u << 9) | (1u << 10) | (1u << 16); /* PAE OSFXSR OSXMMEXCPT FSGSBASE */
  sregs.efer = (1u << 8) | (1u << 10);                          /* LME LMA */
  sregs.gdt.base = GDT_AT;
  sregs.gdt.limit = sizeof gdt - 1;
  sregs.cs = flat(0x23, 1, 3);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat(0x1b, 0, 3);
  checked(ioctl(vcpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");

  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = CODE_AT;
  regs.rsp = STACK_TOP;
  regs.rflags = 0x2 | (3u << 12); /* IOPL 3: port I/O allowed at CPL 3 */
  checked(ioctl(vcpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");

  checked(ioctl(vcpu, KVM_RUN, 0), "KVM_RUN");
  if (run->exit_reason != KVM_EXIT_IO || run->io.port != DONE_PORT) {
    fprintf(stderr, "floor: unexpected VM exit: reason %u (port %#x)\n", run->exit_reason,
            run->exit_reason == KVM_EXIT_IO ? run->io.port : 0);
    return 1;
  }
  return 0;
}
