//! Which vCPUs run and which one this is. vCPU 0 is the boot vCPU; `smp.rs` starts the others (1..) and records
//! their local APIC IDs here. The platform layer finds its vCPU from its stack: every vCPU runs this layer's code on a
//! stack of its own (the boot vCPU on `entry::STACK`, the others on stacks `smp.rs` takes from free memory), so the
//! stack pointer says which without a register of the library OS's (GS) or an APIC read.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use kiln_abi::layout::{direct_map, PAGE_SIZE};

/// The library OS's limit (`kernel/src/percpu.rs`), and Kiln's VMM's (`--cpus`).
pub const MAX_CPUS: usize = 64;
/// The platform layer's stack on each vCPU but the boot one: traps, hypercalls (a few hundred bytes of frame each).
pub const AP_STACK_SIZE: u64 = 16 << 10;

/// vCPUs started (and told to the library OS): only grows, at boot.
static COUNT: AtomicUsize = AtomicUsize::new(1);
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Direct-map address of vCPU 1's stack; vCPU i's is `(i - 1) * AP_STACK_SIZE` above.
static AP_STACKS: AtomicU64 = AtomicU64::new(0);
/// Guest-physical: vCPU 0's hypercall block; vCPU i's is `i` pages above (the boot layout's array).
static HYPERCALL_BLOCKS: AtomicU64 = AtomicU64::new(0);

pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// A mask of the started vCPUs.
pub fn all() -> u64 {
    u64::MAX >> (64 - count())
}

pub fn set_count(n: usize) {
    COUNT.store(n.clamp(1, MAX_CPUS), Ordering::Release);
}

pub fn apic_id(cpu: usize) -> u32 {
    APIC_IDS[cpu].load(Ordering::Acquire)
}

pub fn set_apic_id(cpu: usize, id: u32) {
    APIC_IDS[cpu].store(id, Ordering::Release);
}

pub fn set_ap_stacks(base: u64) {
    AP_STACKS.store(base, Ordering::Release);
}

/// The top of vCPU `cpu`'s (1..) stack.
pub fn ap_stack_top(cpu: usize) -> u64 {
    AP_STACKS.load(Ordering::Acquire) + cpu as u64 * AP_STACK_SIZE
}

pub fn set_hypercall_blocks(phys: u64) {
    HYPERCALL_BLOCKS.store(phys, Ordering::Release);
}

/// Direct-map address of vCPU `cpu`'s hypercall block (its page also holds its fault record).
pub fn hypercall_block(cpu: usize) -> u64 {
    direct_map(HYPERCALL_BLOCKS.load(Ordering::Acquire) + cpu as u64 * PAGE_SIZE)
}

/// The vCPU running this code, from the stack it runs on.
pub fn current() -> usize {
    let sp: u64;
    // SAFETY: reads the stack pointer.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    let aps = AP_STACKS.load(Ordering::Relaxed);
    if aps == 0 || sp < aps {
        return 0;
    }
    let cpu = ((sp - aps) / AP_STACK_SIZE) as usize + 1;
    if cpu < MAX_CPUS {
        cpu
    } else {
        0
    }
}
