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

pub const CLOCK_REALTIME: u64 = 0;
pub const CLOCK_MONOTONIC: u64 = 1;
const CLOCK_PROCESS_CPUTIME_ID: u64 = 2;
const CLOCK_THREAD_CPUTIME_ID: u64 = 3;
const CLOCK_MONOTONIC_RAW: u64 = 4;
const CLOCK_REALTIME_COARSE: u64 = 5;
const CLOCK_MONOTONIC_COARSE: u64 = 6;
pub const CLOCK_BOOTTIME: u64 = 7;

/// Nanoseconds on `clock` now, or None for a clock Linux does not have. Reads no state but the time base set at boot,
/// so that the vDSO (`crate::vdso`) can call it on the program's stack.
pub fn clock_ns(clock: u64) -> Option<u64> {
    match clock {
        CLOCK_REALTIME | CLOCK_REALTIME_COARSE => Some(realtime_ns()),
        CLOCK_MONOTONIC | CLOCK_MONOTONIC_RAW | CLOCK_MONOTONIC_COARSE | CLOCK_BOOTTIME => Some(since_boot_ns()),
        CLOCK_PROCESS_CPUTIME_ID | CLOCK_THREAD_CPUTIME_ID => Some(cputime_ns()),
        _ => None,
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

impl Timespec {
    pub fn from_ns(ns: u64) -> Self {
        Self { sec: (ns / 1_000_000_000) as i64, nsec: (ns % 1_000_000_000) as i64 }
    }
}

/// Waits in the VMM until `since_boot_ns()` reaches `deadline` (the scheduler's idle: nothing can run before then),
/// or until kicked; `u64::MAX` is no deadline: the vCPU sleeps until something kicks it, costing the host nothing.
pub fn wait_until(deadline: u64) {
    wait_then_look(deadline, 0);
}

/// [`wait_until`], and once the wait ends, the VMM interrupts the vCPU `look_after` ns later (0: never) unless it
/// waits again first, as a `Preempt` asked for then would, without an exit of its own. Returns whether it waited.
pub fn wait_then_look(deadline: u64, look_after: u64) -> bool {
    let now = since_boot_ns();
    if now >= deadline {
        return false;
    }
    let wait = if deadline == u64::MAX { kiln_abi::hypercall::WAIT_FOREVER } else { deadline - now };
    crate::net::before_wait();
    crate::hypercall::call(kiln_abi::Hypercall::Wait, &[wait, look_after]);
    true
}
