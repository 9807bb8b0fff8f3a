//! Waits and time slices on the local APIC's timer, as Kiln's VMM gives them to the library OS (`kiln_vmm::preempt`,
//! for one vCPU): a `Wait` halts the vCPU until its deadline (the timer) or, with none, for good; a `Preempt` sets the
//! time at which the program is interrupted (in its own code: the library OS looks after its signals itself), which
//! the timer's interrupt then does by resuming the library OS at `kiln_fault_entry` with an `INTERRUPTED` record.
//! A deadline that finds the vCPU in the library OS moves a slice on; one spent in the program is renewed a slice on
//! (`RENEWED`), until the library OS replaces it or waits. All times here are TSC values.

use crate::io::rdtsc;
use crate::trap::TrapFrame;
use crate::{apic, boot_info, trap, virtio, Shared};
use core::cell::UnsafeCell;
use kiln_abi::hypercall::{TIME_SLICE_NS, WAIT_FOREVER};

const NONE: u64 = u64::MAX;
/// Longest wait with a network card: the time a frame that came meanwhile may wait to be seen.
const NET_POLL_NS: u64 = 1_000_000;

/// When the program is to be interrupted (the end of its thread's slice, a sleeper's or a timer's deadline).
static PREEMPT_AT: Shared<u64> = Shared(UnsafeCell::new(NONE));
/// When the `Wait` in progress ends.
static WAKE_AT: Shared<u64> = Shared(UnsafeCell::new(NONE));
/// A `Kick` of this vCPU: its next `Wait` returns at once.
static KICKED: Shared<bool> = Shared(UnsafeCell::new(false));

/// TSC ticks in `ns` nanoseconds.
fn ticks(ns: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(boot_info().tsc_hz) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The TSC `ns` from now.
fn from_now(ns: u64) -> u64 {
    rdtsc().saturating_add(ticks(ns))
}

/// Sets the timer for the sooner of the two deadlines.
fn arm() {
    match PREEMPT_AT.get().min(WAKE_AT.get()) {
        NONE => apic::disarm(),
        at => apic::arm(at),
    }
}

/// `Wait`: nothing to run until `ns` from now (`WAIT_FOREVER`: until the end) or until frames come, then a look
/// `look_after` ns later (0: none). The vCPU halts meanwhile; the timer's or the card's interrupt wakes it.
pub fn wait(ns: u64, look_after: u64) {
    PREEMPT_AT.set(NONE);
    let mut wake = if ns == WAIT_FOREVER { NONE } else { from_now(ns) };
    virtio::send_queued();
    // A card whose interrupt does not reach us: the library OS looks for frames every NET_POLL_NS (a wait may always
    // end early; it waits again if nothing came).
    if virtio::net_interrupts() == Some(false) {
        wake = wake.min(from_now(NET_POLL_NS));
    }
    WAKE_AT.set(wake);
    while !KICKED.get() && !virtio::take_net_interrupt() && rdtsc() < WAKE_AT.get() {
        // Again each round: a one-shot count may end a little early, or a long wait in several steps.
        arm();
        // SAFETY: `sti` takes effect after the next instruction, so an interrupt due now wakes the `hlt` instead of
        // coming before it; its handler only acknowledges it (see `interrupt`), and interrupts are off again after.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    KICKED.set(false);
    WAKE_AT.set(NONE);
    if look_after != 0 {
        PREEMPT_AT.set(from_now(look_after));
    }
    arm();
}

/// `Kick` of this vCPU (the only one): its next `Wait` returns at once.
pub fn kick() {
    KICKED.set(true);
}

/// `Preempt` of this vCPU: `after` ns from now, the sooner of that and the deadline it has, or (`replace`) that
/// whatever it was (`WAIT_FOREVER`: none). Now (0) asks for nothing: the vCPU is in the library OS, which looks at its
/// signals before it returns to the program.
pub fn preempt(after: u64, replace: bool) {
    if replace {
        PREEMPT_AT.set(if after == WAIT_FOREVER { NONE } else { from_now(after) });
    } else if after != 0 {
        PREEMPT_AT.set(PREEMPT_AT.get().min(from_now(after)));
    }
    arm();
}

/// The timer's interrupt. In a `Wait` (at CPL 0) it only wakes the vCPU. At CPL 3 with the deadline passed: in the
/// program's code, the program is interrupted and the deadline renewed a slice on; in the library OS, the deadline
/// moves a slice on (it runs syscalls, so it is not computing without them).
pub fn interrupt(frame: &mut TrapFrame) {
    apic::eoi();
    if frame.cs & 3 != 3 {
        return;
    }
    let now = rdtsc();
    if PREEMPT_AT.get() <= now {
        PREEMPT_AT.set(now.saturating_add(ticks(TIME_SLICE_NS)));
        if trap::in_program(frame) {
            trap::interrupt_program(frame, true);
        }
    }
    arm();
}
