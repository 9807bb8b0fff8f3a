//! The vCPU as Kiln's VMM sets it up (`kiln_vmm::arch`): long mode with the image's page tables, its GDT and TSS,
//! FSGSBASE, `syscall` to the supervisor page; and what only this layer adds: an IDT whose gates lead to `trap.rs`,
//! its stack as the TSS's RSP0, and the hypercall ports closed in the TSS I/O bitmap, so that the library OS's
//! hypercalls trap here. Then CPL 3 at the library OS's `_start`.

use crate::io::{cpuid, rdmsr, wrmsr};
use crate::{power, trap};
use core::arch::asm;
use kiln_abi::hypercall::HYPERCALL_PORT;
use kiln_abi::layout::direct_map;
use kiln_abi::pvh::Handoff;

const KERNEL_CODE: u64 = 0x08;
const KERNEL_DATA: u64 = 0x10;
const USER_DATA: u64 = 0x18 | 3;
const USER_CODE: u64 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;
const GDT_ENTRIES: u64 = 7;
/// RFLAGS at CPL 3: interrupts on (the APIC timer's, for waits and time slices); with IOPL 0, neither the library OS
/// nor the program can turn them off.
pub const USER_RFLAGS: u64 = 0x202;

const CR0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31); // PE MP ET NE WP PG
const CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10) | (1 << 16); // PAE OSFXSR OSXMMEXCPT FSGSBASE
const EFER: u32 = 0xc000_0080;
const EFER_SCE: u64 = 1;
const STAR: u32 = 0xc000_0081;
const LSTAR: u32 = 0xc000_0082;
const SFMASK: u32 = 0xc000_0084;
const FS_BASE: u32 = 0xc000_0100;
const GS_BASE: u32 = 0xc000_0101;

/// What the library OS relies on from the CPU: FSGSBASE (it sets the program's TLS with `wrfsbase`).
pub fn check_features() {
    let [max, ..] = cpuid(0, 0);
    let fsgsbase = max >= 7 && cpuid(7, 0)[1] & 1 != 0;
    if !fsgsbase {
        power::fail("this CPU lacks FSGSBASE, which Kiln needs (QEMU: -cpu max under TCG, -cpu host with KVM)");
    }
}

/// Switches to the image's page tables: the direct map of its RAM (where this code and its stack run) and the
/// program. Control registers as Kiln's VMM sets them.
pub fn enter_final_tables(handoff: &Handoff) {
    // SAFETY: the image's page tables map the direct map, where this code, its stack and its data are; CR0 and CR4
    // gain only what long mode with SSE and FSGSBASE wants (checked above).
    unsafe {
        asm!(
            "mov cr4, {cr4}",
            "mov cr3, {cr3}",
            "mov cr0, {cr0}",
            cr4 = in(reg) CR4,
            cr3 = in(reg) handoff.pml4_phys,
            cr0 = in(reg) CR0,
            options(nostack),
        );
    }
}

/// The GDT, TSS, IDT and MSRs.
pub fn init(handoff: &Handoff) {
    let gdt = direct_map(handoff.gdt_phys);
    let mut pointer = [0u8; 10];
    pointer[..2].copy_from_slice(&((GDT_ENTRIES * 8 - 1) as u16).to_le_bytes());
    pointer[2..].copy_from_slice(&gdt.to_le_bytes());
    // SAFETY: the export's GDT has the same kernel selectors as the boot GDT; CS is reloaded with a far return.
    unsafe {
        asm!(
            "lgdt [{pointer}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {data:e}",
            "mov es, {data:e}",
            "mov ss, {data:e}",
            pointer = in(reg) pointer.as_ptr(),
            code = in(reg) KERNEL_CODE,
            data = in(reg) KERNEL_DATA,
            tmp = out(reg) _,
        );
    }
    let tss = direct_map(handoff.tss_phys) as *mut u8;
    // SAFETY: the export put vCPU 0's TSS there (`kiln_vmm::arch::gdt::tss`); RSP0 is at offset 4 and the I/O
    // bitmap's offset at 102, both inside it.
    unsafe {
        core::ptr::write_unaligned(tss.add(4).cast::<u64>(), crate::entry::stack_top());
        let bitmap = tss.add(usize::from(core::ptr::read_unaligned(tss.add(102).cast::<u16>())));
        for port in HYPERCALL_PORT..HYPERCALL_PORT + 4 {
            *bitmap.add(usize::from(port / 8)) |= 1 << (port % 8);
        }
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
    trap::load_idt();
    wrmsr(EFER, rdmsr(EFER) | EFER_SCE);
    wrmsr(STAR, (KERNEL_CODE << 32) | (KERNEL_DATA << 48));
    wrmsr(LSTAR, handoff.lstar);
    wrmsr(SFMASK, 0);
    wrmsr(FS_BASE, 0);
    wrmsr(GS_BASE, 0);
}

/// CPL 3 at the library OS's `_start`, %rdi = the boot info, as Kiln's VMM starts vCPU 0.
pub fn enter_library_os(handoff: &Handoff) -> ! {
    let boot = direct_map(handoff.boot_info_phys);
    // SAFETY: the export built the library OS, its stack and the boot info; iretq switches to CPL 3 with the user
    // selectors of the export's GDT and interrupts on (the timer's vector is in the IDT and the APIC is set up).
    unsafe {
        asm!(
            "mov ds, {data:e}",
            "mov es, {data:e}",
            "mov fs, {data:e}",
            "mov gs, {data:e}",
            "push {data}",
            "push {rsp}",
            "push {rflags}",
            "push {code}",
            "push {rip}",
            "xor eax, eax",
            "xor ebx, ebx",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor ebp, ebp",
            "iretq",
            data = in(reg) USER_DATA,
            rsp = in(reg) handoff.stack_pointer,
            code = in(reg) USER_CODE,
            rip = in(reg) handoff.entry,
            rflags = in(reg) USER_RFLAGS,
            in("rdi") boot,
            in("rsi") 0u64,
            options(noreturn),
        );
    }
}
