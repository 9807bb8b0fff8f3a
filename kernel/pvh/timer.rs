//! Waits and time slices on each vCPU's local APIC timer, as Kiln's VMM gives them to the library OS
//! (`kiln_vmm::preempt`): a `Wait` halts the vCPU until its deadline (the timer), a `Kick` or frames from the network,
//! or, with none of those, for good; a `Preempt` sets when a vCPU is interrupted in the program's code (now: a
//! request, tried again a little later while the vCPU is in the library OS; later: a deadline), which its timer's or
//! the kick's interrupt then does by resuming the library OS at `kiln_fault_entry` with an `INTERRUPTED` record.
//! A deadline that finds the vCPU in the library OS moves a slice on; one spent in the program is renewed a slice on
//! (`RENEWED`), until the library OS replaces it or waits. Only a vCPU can set its own timer, so another vCPU's
//! `Kick` or `Preempt` writes the request here and sends it the kick interrupt (`apic::KICK_VECTOR`), whose handler
//! looks (`interrupt`). All times here are TSC values.

use crate::cpus::{self, MAX_CPUS};
use crate::io::rdtsc;
use crate::trap::TrapFrame;
use crate::{apic, boot_info, power, trap, virtio};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use kiln_abi::hypercall::{TIME_SLICE_NS, WAIT_FOREVER};

const NONE: u64 = u64::MAX;
/// Longest wait with a network card: the time a frame that came meanwhile may wait to be seen.
const NET_POLL_NS: u64 = 1_000_000;
/// How long before a vCPU a request found in the library OS is interrupted again (the VMM's `preempt::RETRY`).
const RETRY_NS: u64 = 200_000;
/// How long a TLB flush waits for another vCPU to answer before the VM ends, saying so (a vCPU answers within
/// microseconds, whatever it runs: the kick interrupts it, or ends its `hlt`).
const FLUSH_TIMEOUT_NS: u64 = 5_000_000_000;

/// Per vCPU: when the program is to be interrupted (the end of its thread's slice, a sleeper's or a timer's deadline).
/// The deadlines start as zeroes (bss, not bytes of the image) and `init` makes them NONE.
static PREEMPT_AT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per vCPU: to be interrupted in the program's code as soon as it is there (signals are pending for its thread).
static REQUESTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per vCPU, its own: when a request found in the library OS is tried again.
static RETRY_AT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per vCPU, its own: when the `Wait` in progress ends.
static WAKE_AT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per vCPU: kicked, so its `Wait` ends (or its next one returns at once).
static KICKED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The vCPUs halted in a `Wait`, which a frame from the network wakes.
static WAITING: AtomicU64 = AtomicU64::new(0);
/// Per vCPU: TLB flushes asked of it, and the number it has done (`flush_all`).
static FLUSH_ASKED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FLUSH_DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// No deadlines: on the boot vCPU, before any timer is armed.
pub fn init() {
    for deadlines in [&PREEMPT_AT, &RETRY_AT, &WAKE_AT] {
        deadlines.iter().for_each(|d| d.store(NONE, SeqCst));
    }
}

/// TSC ticks in `ns` nanoseconds.
fn ticks(ns: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(boot_info().tsc_hz) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The TSC `ns` from now.
fn from_now(ns: u64) -> u64 {
    rdtsc().saturating_add(ticks(ns))
}

/// Sets this vCPU's timer for the soonest of its deadlines.
fn arm(me: usize) {
    let retry = if REQUESTED[me].load(SeqCst) { RETRY_AT[me].load(SeqCst) } else { NONE };
    match PREEMPT_AT[me].load(SeqCst).min(WAKE_AT[me].load(SeqCst)).min(retry) {
        NONE => apic::disarm(),
        at => apic::arm(at),
    }
}

/// Interrupts vCPU `cpu` (not this one) so that it looks at what was asked of it.
fn nudge(cpu: usize) {
    apic::send(cpus::apic_id(cpu), apic::KICK_VECTOR);
}

/// `Wait`: nothing to run until `ns` from now (`WAIT_FOREVER`: until the end) or until frames come, then a look
/// `look_after` ns later (0: none). The vCPU halts meanwhile; its timer, a kick or the card's interrupt wakes it.
pub fn wait(ns: u64, look_after: u64) {
    let me = cpus::current();
    // Idle: no thread's slice runs here, and a request is settled.
    PREEMPT_AT[me].store(NONE, SeqCst);
    settle(me);
    let mut wake = if ns == WAIT_FOREVER { NONE } else { from_now(ns) };
    virtio::send_queued();
    // A card whose interrupt does not reach us: the library OS looks for frames every NET_POLL_NS (a wait may always
    // end early; it waits again if nothing came).
    if virtio::net_interrupts() == Some(false) {
        wake = wake.min(from_now(NET_POLL_NS));
    }
    WAKE_AT[me].store(wake, SeqCst);
    WAITING.fetch_or(1 << me, SeqCst);
    while !KICKED[me].swap(false, SeqCst) && !virtio::take_net_interrupt(me) && rdtsc() < wake {
        // Again each round: a one-shot count may end a little early, or a long wait in several steps. Only the wait's
        // own deadline: another vCPU's `Preempt` meanwhile is for after it.
        if wake == NONE {
            apic::disarm();
        } else {
            apic::arm(wake);
        }
        // SAFETY: `sti` takes effect after the next instruction, so an interrupt due now wakes the `hlt` instead of
        // coming before it; at CPL 0 its handler only acknowledges it (and does a TLB flush another vCPU asked for),
        // and interrupts are off again after.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    WAITING.fetch_and(!(1 << me), SeqCst);
    WAKE_AT[me].store(NONE, SeqCst);
    if look_after != 0 {
        PREEMPT_AT[me].fetch_min(from_now(look_after), SeqCst);
    }
    arm(me);
}

/// The vCPUs halted in a `Wait` now.
pub fn waiting() -> u64 {
    WAITING.load(SeqCst)
}

/// Wakes the waiting vCPUs in `mask` but this one (frames came).
pub fn wake(mask: u64) {
    let me = cpus::current();
    for cpu in (0..cpus::count()).filter(|&c| c != me && mask & (1 << c) != 0) {
        nudge(cpu);
    }
}

/// `Kick` of vCPU `cpu` (started: checked by the caller): its `Wait` ends, or its next one returns at once.
pub fn kick(cpu: usize) {
    KICKED[cpu].store(true, SeqCst);
    if cpu != cpus::current() {
        nudge(cpu);
    }
}

/// `Preempt` of vCPU `cpu`: `after` ns from now, the sooner of that and the deadline it has, or (`replace`) that
/// whatever it was (`WAIT_FOREVER`: none). Now (0) is a request: it is interrupted as soon as it runs the program's
/// code; this vCPU asks nothing of itself then, since it is in the library OS, which looks at its signals before it
/// returns to the program.
pub fn preempt(cpu: usize, after: u64, replace: bool) {
    let me = cpus::current();
    let changed = if replace {
        PREEMPT_AT[cpu].store(if after == WAIT_FOREVER { NONE } else { from_now(after) }, SeqCst);
        true
    } else if after == 0 {
        cpu != me && !REQUESTED[cpu].swap(true, SeqCst)
    } else {
        let at = from_now(after);
        PREEMPT_AT[cpu].fetch_min(at, SeqCst) > at
    };
    match (changed, cpu == me) {
        (false, _) => {}
        (true, true) => arm(me),
        (true, false) => nudge(cpu),
    }
}

/// A hypercall from this vCPU: the library OS runs here and looks after its thread's signals, which settles a request.
pub fn settle(me: usize) {
    REQUESTED[me].store(false, SeqCst);
    RETRY_AT[me].store(NONE, SeqCst);
}

/// The timer's interrupt, and another vCPU's kick. Any TLB flush asked for is done. At CPL 0 (a `Wait`'s `hlt`) that
/// is all: the wait looks at what ended it. At CPL 3, with a request or a deadline passed: in the program's code, the
/// program is interrupted (a passed deadline renewed a slice on); in the library OS, a request is tried again a little
/// later and a deadline moves a slice on (it runs syscalls, so it is not computing without them).
pub fn interrupt(frame: &mut TrapFrame) {
    apic::eoi();
    let me = cpus::current();
    flush_if_asked(me);
    if frame.cs & 3 != 3 {
        return;
    }
    let now = rdtsc();
    let requested = REQUESTED[me].swap(false, SeqCst);
    let deadline = PREEMPT_AT[me].load(SeqCst);
    let due = deadline <= now;
    if requested || due {
        let renew = |at| PREEMPT_AT[me].compare_exchange(at, now.saturating_add(ticks(TIME_SLICE_NS)), SeqCst, SeqCst);
        if trap::in_program(frame) {
            let renewed = due && renew(deadline).is_ok();
            RETRY_AT[me].store(NONE, SeqCst);
            trap::interrupt_program(frame, renewed);
        } else {
            if requested {
                REQUESTED[me].store(true, SeqCst);
                RETRY_AT[me].store(now.saturating_add(ticks(RETRY_NS)), SeqCst);
            }
            if due {
                let _ = renew(deadline);
            }
        }
    }
    arm(me);
}

/// Does the TLB flush another vCPU asked of this one, if any.
pub fn flush_if_asked(me: usize) {
    let asked = FLUSH_ASKED[me].load(SeqCst);
    if FLUSH_DONE[me].load(SeqCst) != asked {
        crate::io::flush_tlb();
        FLUSH_DONE[me].store(asked, SeqCst);
    }
}

/// `FlushTlb`: every vCPU drops its cached translations before this returns. The others are asked through their
/// kick interrupt; while this one waits for them it does what they ask of it (two vCPUs may flush at once).
pub fn flush_all() {
    let me = cpus::current();
    crate::io::flush_tlb();
    let mut wanted = [0u64; MAX_CPUS];
    let count = cpus::count();
    for cpu in (0..count).filter(|&c| c != me) {
        wanted[cpu] = FLUSH_ASKED[cpu].fetch_add(1, SeqCst) + 1;
        nudge(cpu);
    }
    let give_up = from_now(FLUSH_TIMEOUT_NS);
    for cpu in (0..count).filter(|&c| c != me) {
        while FLUSH_DONE[cpu].load(SeqCst) < wanted[cpu] {
            flush_if_asked(me);
            if rdtsc() > give_up {
                power::fail("a vCPU did not answer a TLB flush within 5 s");
            }
            core::hint::spin_loop();
        }
    }
}
