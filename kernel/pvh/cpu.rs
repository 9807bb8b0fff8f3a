//! The vCPU as Kiln's VMM sets it up (`kiln_vmm::arch`): long mode with the image's page tables, its GDT and TSS,
//! FSGSBASE, `syscall` to the supervisor page; and what only this layer adds: an IDT whose gates lead to `trap.rs`,
//! its stack as the TSS's RSP0, and the hypercall ports closed in the TSS I/O bitmap, so that the library OS's
//! hypercalls trap here. Then CPL 3 at the library OS's `_start`.

use crate::cpus::MAX_CPUS;
use crate::io::{cpuid, rdmsr, wrmsr};
use crate::{power, trap};
use core::arch::asm;
use core::cell::UnsafeCell;
use kiln_abi::hypercall::HYPERCALL_PORT;
use kiln_abi::layout::{direct_map, PAGE_SIZE};
use kiln_abi::pvh::Handoff;

const KERNEL_CODE: u64 = 0x08;
const KERNEL_DATA: u64 = 0x10;
const USER_DATA: u64 = 0x18 | 3;
const USER_CODE: u64 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;
const GDT_ENTRIES: u64 = 7;
/// A TSS descriptor's access byte: present, type 9 (an available 64-bit TSS).
const TSS_AVAILABLE: u64 = 0x89;
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

/// A GDT of each vCPU but the boot one: the export's, with the TSS descriptor naming that vCPU's TSS (a descriptor is
/// marked busy when loaded, so each vCPU needs its own).
#[repr(C, align(16))]
struct ApGdts(UnsafeCell<[[u64; GDT_ENTRIES as usize]; MAX_CPUS]>);
// SAFETY: vCPU i writes and loads entry i only, once, as it starts.
unsafe impl Sync for ApGdts {}

static AP_GDTS: ApGdts = ApGdts(UnsafeCell::new([[0; GDT_ENTRIES as usize]; MAX_CPUS]));

/// vCPU `cpu`'s GDT (direct-map address): the export's for the boot vCPU; for the others, a copy whose TSS descriptor
/// names their TSS, which the export laid out a page apart from vCPU 0's.
fn gdt_for(handoff: &Handoff, cpu: usize) -> u64 {
    let image = direct_map(handoff.gdt_phys);
    if cpu == 0 {
        return image;
    }
    // SAFETY: only vCPU `cpu` touches its entry, once; the export's GDT has GDT_ENTRIES entries.
    let gdt = unsafe { &mut (*AP_GDTS.0.get())[cpu] };
    for (i, entry) in gdt.iter_mut().enumerate() {
        // SAFETY: inside the export's GDT page, in the direct map.
        *entry = unsafe { core::ptr::read_volatile((image as *const u64).add(i)) };
    }
    let tss = direct_map(handoff.tss_phys + cpu as u64 * PAGE_SIZE);
    let low = usize::from(TSS_SELECTOR / 8);
    let limit = gdt[low] & 0xffff;
    gdt[low] = limit | ((tss & 0xff_ffff) << 16) | (TSS_AVAILABLE << 40) | (((tss >> 24) & 0xff) << 56);
    gdt[low + 1] = tss >> 32;
    gdt.as_ptr() as u64
}

/// The GDT, TSS (RSP0 = `stack_top`, the platform layer's stack on this vCPU), IDT and MSRs of vCPU `cpu`.
pub fn init(handoff: &Handoff, cpu: usize, stack_top: u64) {
    let gdt = gdt_for(handoff, cpu);
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
    let tss = direct_map(handoff.tss_phys + cpu as u64 * PAGE_SIZE) as *mut u8;
    // SAFETY: the export put vCPU `cpu`'s TSS there (`kiln_vmm::arch::gdt::tss`, a page per vCPU it laid out for,
    // which `smp.rs` does not exceed); RSP0 is at offset 4 and the I/O bitmap's offset at 102, both inside it.
    unsafe {
        core::ptr::write_unaligned(tss.add(4).cast::<u64>(), stack_top);
        let bitmap = tss.add(usize::from(core::ptr::read_unaligned(tss.add(102).cast::<u16>())));
        for port in HYPERCALL_PORT..HYPERCALL_PORT + 4 {
            *bitmap.add(usize::from(port / 8)) |= 1 << (port % 8);
        }
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
    if cpu == 0 {
        trap::load_idt();
    } else {
        trap::load_filled_idt();
    }
    wrmsr(EFER, rdmsr(EFER) | EFER_SCE);
    wrmsr(STAR, (KERNEL_CODE << 32) | (KERNEL_DATA << 48));
    wrmsr(LSTAR, handoff.lstar);
    wrmsr(SFMASK, 0);
    wrmsr(FS_BASE, 0);
    wrmsr(GS_BASE, 0);
}

/// CPL 3 at the library OS's `_start` (vCPU 0) or `kiln_secondary_start` (the others), %rdi = the boot info, %rsi =
/// the vCPU's index, on its first stack, as Kiln's VMM starts its vCPUs.
pub fn enter_library_os(handoff: &Handoff, cpu: usize) -> ! {
    let boot = direct_map(handoff.boot_info_phys);
    let (rip, rsp) = match cpu {
        0 => (handoff.entry, handoff.stack_pointer),
        _ => {
            let info = crate::boot_info();
            let stack = info.kernel_stack_phys + (cpu as u64 + 1) * info.kernel_stack_size;
            (handoff.secondary_entry, direct_map(stack))
        }
    };
    // SAFETY: the export built the library OS, its stacks and the boot info; iretq switches to CPL 3 with the user
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
            rsp = in(reg) rsp,
            code = in(reg) USER_CODE,
            rip = in(reg) rip,
            rflags = in(reg) USER_RFLAGS,
            in("rdi") boot,
            in("rsi") cpu as u64,
            options(noreturn),
        );
    }
}
