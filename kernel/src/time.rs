//! Time from the TSC, scaled by the frequency the VMM measured: reading the clock costs no VM exit.

use crate::cpu;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::BootInfo;

/// Nanoseconds per TSC tick as a 32.32 fixed-point number: one multiplication per clock read instead of a 128-bit
/// division (which cost more than the rest of `clock_gettime`).
static NS_PER_TICK_FP32: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static BOOT_REALTIME_NS: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    NS_PER_TICK_FP32.store(((1_000_000_000u128 << 32) / u128::from(boot.tsc_hz.max(1))) as u64, Ordering::Relaxed);
    BOOT_TSC.store(boot.boot_tsc, Ordering::Relaxed);
    BOOT_REALTIME_NS.store(boot.boot_realtime_ns, Ordering::Relaxed);
}

/// Nanoseconds since the VM booted.
pub fn since_boot_ns() -> u64 {
    let ticks = cpu::rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((u128::from(ticks) * u128::from(NS_PER_TICK_FP32.load(Ordering::Relaxed))) >> 32) as u64
}

pub fn realtime_ns() -> u64 {
    BOOT_REALTIME_NS.load(Ordering::Relaxed) + since_boot_ns()
}

/// CPU time of the program: it has the vCPU to itself, so it is the time since boot.
pub fn cputime_ns() -> u64 {
    since_boot_ns()
}

/// Waits in the VMM until `since_boot_ns()` reaches `deadline` (the scheduler's idle: nothing can run before then),
/// at most `MAX_WAIT_NS` per exit.
pub fn wait_until(deadline: u64) {
    let now = since_boot_ns();
    if now < deadline {
        let wait = (deadline - now).min(kiln_abi::hypercall::MAX_WAIT_NS);
        crate::hypercall::call(kiln_abi::Hypercall::Wait, &[wait]);
    }
}
