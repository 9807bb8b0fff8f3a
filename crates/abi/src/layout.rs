//! Where things live in the guest. Guest-physical RAM starts at 0; all of it is also mapped at [`DIRECT_MAP_BASE`], where
//! the library OS itself runs and where it hands out anonymous memory. The application keeps the virtual addresses its
//! ELF asks for.

pub const PAGE_SIZE: u64 = 4096;
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// Guest RAM from this size up is backed by the host's transparent huge pages, and the library OS maps the program's
/// large anonymous memory with 2 MiB pages: a VM given that much is there to use it (docs/architecture.md, "Huge
/// pages"), while smaller ones, there to be dense, keep 4 KiB pages, which cost the host only what is touched.
pub const HUGE_PAGES_FROM: u64 = 256 << 20;

/// Whether guest RAM of `memory` bytes is in huge pages (see [`HUGE_PAGES_FROM`]).
pub const fn huge_pages_for(memory: u64) -> bool {
    memory >= HUGE_PAGES_FROM
}

/// Virtual page 0 holds the syscall trampoline: `call *%rax` with the syscall number in `%rax` lands on the NOP slide.
/// It is mapped only for syscall sites the rewriter could not move to a stub; most programs have none, and then a
/// NULL read faults as on Linux.
pub const TRAMPOLINE_VADDR: u64 = 0;
/// Length of `call *%rax`, the call an in-place site makes into the trampoline.
pub const TRAMPOLINE_CALL_LEN: u64 = 2;
/// Length of `call *disp32(%rip)`, the call a relocated site's stub makes to the syscall entry.
pub const STUB_CALL_LEN: u64 = 6;
/// Offset in the trampoline page of the `jmp *DISPATCH_POINTER(%rip)` that ends the NOP slide. It is just above the
/// highest Linux x86-64 syscall number, so that a call slides over as few NOPs as possible.
pub const TRAMPOLINE_SLIDE_END: u64 = 0x200;
/// A second slide from here to [`TRAMPOLINE_SECOND_JUMP`] catches larger (invalid) numbers, which the dispatcher
/// answers with -ENOSYS. Only the five numbers landing inside the first jump's bytes cannot be caught.
pub const TRAMPOLINE_SECOND_SLIDE: u64 = TRAMPOLINE_SLIDE_END + 6;
pub const TRAMPOLINE_SECOND_JUMP: u64 = 0xf00;
/// Offset in the trampoline page of the 64-bit address of the library OS's syscall entry.
pub const TRAMPOLINE_DISPATCH_POINTER: u64 = 0xff0;

/// Virtual page 1: a supervisor page holding the code `syscall` jumps to (LSTAR) if one was not rewritten, and, for
/// hosts that run CPL 0 natively, the IDT and its exception stubs (the VMM's `arch::trap_page`).
pub const SYSCALL_TRAP_VADDR: u64 = 0x1000;

/// Virtual page 2, for dynamically linked programs: the trampoline page mapped a second time, read+execute. The stubs
/// of rewritten shared objects call through a slot holding this page's address plus [`TRAMPOLINE_SLIDE_END`], whose
/// `jmp` reaches the syscall entry: so an object's rewrite names no address that depends on where the library OS is.
pub const SYSCALL_GATEWAY_VADDR: u64 = 0x2000;
/// What the entry slot of a rewritten shared object's stubs holds: the gateway page's `jmp` to the syscall entry.
pub const SYSCALL_GATEWAY_ENTRY: u64 = SYSCALL_GATEWAY_VADDR + TRAMPOLINE_SLIDE_END;

/// Offset in the library OS's per-vCPU area (its GS base) of the word where the CPL 0 code at LSTAR leaves the return
/// address of an unrewritten `syscall` before it enters `kiln_unrewritten_syscall_entry` at CPL 3 (hardware KVM only).
pub const PERCPU_UNREWRITTEN_RETURN: u64 = 56;

/// Lowest address that can belong to the program: pages 0 to 2 are Kiln's. A syscall given a pointer below it fails
/// with EFAULT, as a NULL pointer does on Linux, even where page 0 is mapped.
pub const PROGRAM_MIN_ADDR: u64 = 3 * PAGE_SIZE;

/// All guest-physical RAM, mapped read-write with 2 MiB pages: guest physical `p` is virtual `DIRECT_MAP_BASE + p`.
pub const DIRECT_MAP_BASE: u64 = 0x4000_0000_0000;
/// Load base of static-pie (`ET_DYN`) applications.
pub const PIE_BASE: u64 = 0x5555_5555_4000;
/// Load base of a dynamically linked program's loader (`PT_INTERP`), below the main thread's stack, as on Linux.
pub const INTERP_BASE: u64 = 0x7fff_e000_0000;
/// Top of the main thread's stack (exclusive).
pub const STACK_TOP: u64 = 0x7fff_ffff_f000;

/// Guest-virtual address of guest-physical `phys` in the direct map.
pub const fn direct_map(phys: u64) -> u64 {
    DIRECT_MAP_BASE + phys
}

pub const fn page_align_down(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}

pub const fn page_align_up(addr: u64) -> u64 {
    addr.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}
