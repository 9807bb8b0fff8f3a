//! The few privileged-looking instructions the library OS uses; all of them work at CPL 3 on every host Kiln runs on
//! (CR4.FSGSBASE is set by the VMM, `rdtsc` is not restricted, the TSS I/O bitmap opens the hypercall ports).

use core::arch::asm;

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn write_fs_base(base: u64) {
    // SAFETY: FS is the program's TLS register; the library OS itself never uses it.
    unsafe { asm!("wrfsbase {}", in(reg) base, options(nostack, preserves_flags)) };
}

pub fn read_fs_base() -> u64 {
    let base: u64;
    // SAFETY: reads a register.
    unsafe { asm!("rdfsbase {}", out(reg) base, options(nomem, nostack, preserves_flags)) };
    base
}

pub fn read_gs_base() -> u64 {
    let base: u64;
    // SAFETY: reads a register.
    unsafe { asm!("rdgsbase {}", out(reg) base, options(nomem, nostack, preserves_flags)) };
    base
}

pub fn write_gs_base(base: u64) {
    // SAFETY: GS belongs to the library OS (per-vCPU data); the program is not given it (arch_prctl refuses SET_GS).
    unsafe { asm!("wrgsbase {}", in(reg) base, options(nostack, preserves_flags)) };
}

/// `out %eax, %dx`: a VM exit to the VMM.
pub fn port_out(port: u16, value: u32) {
    // SAFETY: the VMM handles the port; the instruction touches no memory.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) };
}
