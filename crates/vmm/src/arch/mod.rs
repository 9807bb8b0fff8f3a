//! x86-64 CPU state for a Kiln guest: 64-bit mode, paging on, CPL 3 from the first instruction. Everything that
//! depends on what the host's KVM can do lives in this folder (see `host.rs`).

pub mod exception;
pub mod gdt;
pub mod host;
pub mod trap_page;
pub mod xsave;

pub use host::HostKind;
pub use xsave::Xsave;

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
/// CR3's page-level write-through bit: it only sets the caching type of the PML4 fetch.
const CR3_PWT: u64 = 1 << 3;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: bit 1 is always set. IOPL stays 0: the TSS I/O bitmap opens exactly the hypercall ports to CPL 3.
const RFLAGS_INITIAL: u64 = 0x2;

pub const MSR_IA32_TSC: u32 = 0x10;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Special registers: long mode with our page tables and GDT, user segments loaded (CPL 3), this vCPU's TSS, XSAVE
/// where the host has it (`xsave`: XCR0 is set apart, [`Xsave::enable`]), and what `host` needs besides (the IDT,
/// the TR type).
pub fn sregs(
    host: HostKind,
    mut s: kvm_sregs,
    pml4: u64,
    (gdt_vaddr, tss_vaddr): (u64, u64),
    xsave: Xsave,
) -> kvm_sregs {
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = pml4;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_FSGSBASE;
    if xsave.features != 0 {
        s.cr4 |= CR4_OSXSAVE;
    }
    s.efer = EFER_LME | EFER_LMA | EFER_SCE;
    s.gdt.base = gdt_vaddr;
    s.gdt.limit = (gdt::ENTRIES * 8 - 1) as u16;
    s = user_mode(s);
    let data = segment(gdt::USER_DATA, false);
    (s.ds, s.es, s.fs, s.gs) = (data, data, data, data);
    s.tr = kvm_segment {
        base: tss_vaddr,
        limit: (gdt::TSS_SIZE - 1) as u32,
        selector: gdt::TSS,
        present: 1,
        ..Default::default()
    };
    host.fix(&mut s);
    s
}

/// `s` with CS and SS back at CPL 3, as they are when the program runs (an exception stub left them at CPL 0).
pub fn user_mode(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = segment(gdt::USER_CODE, true);
    s.ss = segment(gdt::USER_DATA, false);
    s
}

pub fn regs(entry: u64, stack_pointer: u64, first_arg: u64, second_arg: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_pointer,
        rdi: first_arg,
        rsi: second_arg,
        rflags: RFLAGS_INITIAL,
        ..Default::default()
    }
}

/// `syscall` jumps to the trap page with the kernel selectors; nothing is masked.
pub fn msrs(lstar: u64) -> Msrs {
    let entry = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    Msrs::from_entries(&[
        // sysret derives the user selectors from STAR[63:48]: +8 for SS, +16 for the 64-bit CS.
        entry(MSR_STAR, u64::from(gdt::KERNEL_CODE) << 32 | u64::from(gdt::KERNEL_DATA) << 48),
        entry(MSR_LSTAR, lstar),
        entry(MSR_SFMASK, 0),
    ])
    .expect("three MSR entries fit")
}

/// Drops every translation `vcpu` has cached. When KVM_SET_SREGS changes CR3, KVM resets the vCPU's MMU and requests
/// a flush of its guest TLB (`__set_sregs` in Linux's arch/x86/kvm/x86.c); flipping CR3's write-through bit changes
/// CR3 while the page tables stay the same.
pub fn flush_tlb(vcpu: &VcpuFd, host: HostKind) -> Result<(), kvm_ioctls::Error> {
    let mut s = vcpu.get_sregs()?;
    s.cr3 ^= CR3_PWT;
    host.fix(&mut s);
    vcpu.set_sregs(&s)
}
