//! The PVH entry: the loader starts us in 32-bit protected mode with paging off, `%ebx` holding the start info's
//! physical address and no stack. We build boot page tables that map the first 4 GiB twice (where we run, and at the
//! direct map, where the platform layer is linked to run), enter long mode and call `kiln_pvh_main` on the platform's
//! stack at its direct-map address. The code is position-independent: it finds itself with a `call`.

use core::arch::global_asm;
use core::cell::UnsafeCell;

/// The platform layer's own stack: boot, and every trap from the library OS or the program (the TSS's RSP0).
pub const STACK_SIZE: usize = 32 << 10;

#[repr(C, align(4096))]
pub struct Stack(pub UnsafeCell<[u8; STACK_SIZE]>);
// SAFETY: used as a stack by the one vCPU only, never through a reference.
unsafe impl Sync for Stack {}

pub static STACK: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));

/// PML4, PDPT and four PDs of the boot page tables (the first 4 GiB, where firmware puts its tables, in 2 MiB pages).
/// Other vCPUs enter long mode on them too (`smp.rs`).
#[repr(C, align(4096))]
struct BootTables(UnsafeCell<[u8; 6 * 4096]>);
// SAFETY: written once by the 32-bit entry, before anything else runs; then only read by the CPUs.
unsafe impl Sync for BootTables {}

static BOOT_TABLES: BootTables = BootTables(UnsafeCell::new([0; 6 * 4096]));

/// The boot page tables' PML4, guest-physical.
pub fn boot_tables_phys() -> u64 {
    BOOT_TABLES.0.get() as u64 - kiln_abi::layout::DIRECT_MAP_BASE
}

global_asm!(
    ".pushsection .text.kiln_pvh_start32, \"ax\"",
    ".code32",
    ".globl kiln_pvh_start32",
    "kiln_pvh_start32:",
    // Also the ELF entry, so that the image reads as the executable it is (the PVH note names this address).
    ".globl _start",
    "_start:",
    "    cld",
    "    movl %ebx, %esi",
    "    call 2f",
    "2:  popl %ebp",
    "    leal ({stack} + {stack_size} - 2b)(%ebp), %esp",
    // The boot page tables: PML4[0] and PML4[128] (the direct map) -> one PDPT -> four PDs of 512 2 MiB pages each.
    "    leal ({tables} - 2b)(%ebp), %edi",
    "    movl $6 * 1024, %ecx",
    "    xorl %eax, %eax",
    "    rep stosl",
    "    leal ({tables} - 2b)(%ebp), %edi",
    "    leal 0x1003(%edi), %eax",
    "    movl %eax, (%edi)",
    "    movl %eax, 128 * 8(%edi)",
    "    xorl %ecx, %ecx",
    "7:  leal 0x2003(%edi), %eax",
    "    movl %ecx, %edx",
    "    shll $12, %edx",
    "    addl %edx, %eax",
    "    movl %eax, 0x1000(%edi, %ecx, 8)",
    "    incl %ecx",
    "    cmpl $4, %ecx",
    "    jb 7b",
    "    xorl %ecx, %ecx",
    "3:  movl %ecx, %eax",
    "    shll $21, %eax",
    "    orl $0x83, %eax",
    "    movl %eax, 0x2000(%edi, %ecx, 8)",
    "    incl %ecx",
    "    cmpl $2048, %ecx",
    "    jb 3b",
    // PAE, then EFER.LME, then paging: long mode.
    "    movl %cr4, %eax",
    "    orl $0x20, %eax",
    "    movl %eax, %cr4",
    "    movl %edi, %cr3",
    "    movl $0xc0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    wrmsr",
    "    movl %cr0, %eax",
    "    orl $0x80000001, %eax",
    "    movl %eax, %cr0",
    // A GDT with a 64-bit code segment at 0x08 and data at 0x10, given by its physical address.
    "    leal (4f - 2b)(%ebp), %eax",
    "    subl $8, %esp",
    "    movw $23, 2(%esp)",
    "    movl %eax, 4(%esp)",
    "    lgdt 2(%esp)",
    "    addl $8, %esp",
    "    leal (5f - 2b)(%ebp), %eax",
    "    pushl $0x08",
    "    pushl %eax",
    "    lret",
    "    .balign 8",
    "4:  .quad 0",
    "    .quad 0x00af9a000000ffff",
    "    .quad 0x00cf92000000ffff",
    ".code64",
    "5:  movl $0x10, %eax",
    "    movl %eax, %ds",
    "    movl %eax, %es",
    "    movl %eax, %ss",
    // Still at the physical address: go on at the direct-map one, stack included.
    "    movabsq ${direct_map}, %rax",
    "    leaq 6f(%rip), %rcx",
    "    addq %rax, %rcx",
    "    jmpq *%rcx",
    "6:  addq %rax, %rsp",
    "    movl %esi, %edi",
    "    call {main}",
    "    ud2",
    ".popsection",
    stack = sym STACK,
    stack_size = const STACK_SIZE,
    tables = sym BOOT_TABLES,
    direct_map = const kiln_abi::layout::DIRECT_MAP_BASE,
    main = sym crate::kiln_pvh_main,
    options(att_syntax),
);

/// The top of the platform's stack, at its direct-map address.
pub fn stack_top() -> u64 {
    STACK.0.get() as u64 + STACK_SIZE as u64
}
