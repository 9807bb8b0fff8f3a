//! Interval timers: `alarm` and `setitimer`'s three timers, and POSIX timers (`timer_create`). A timer is a deadline
//! and an interval on the boot clock; when it expires it sends its signal, to the process or to one thread.
//!
//! There are no interrupts, so expiries are noticed where the library OS runs: at every syscall exit (a cheap check
//! while no timer is armed), and by idle vCPUs, which wait no longer than the next expiry (arming an earlier one wakes
//! one to look again). An idle vCPU's signal reaches a thread computing on another vCPU through the VMM
//! (`sched::post_signal`); with no vCPU idle, the VMM is asked to interrupt the arming (or firing) vCPU at the next
//! expiry (`sched::timer_due_at`). ITIMER_VIRTUAL and ITIMER_PROF count
//! CPU time, which for a program that has its vCPUs to itself is the time since boot: they run at the real clock's
//! rate.

use crate::sync::SpinLock;
use crate::syscalls::signal::{Origin, TimerInfo};
use crate::time;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// How a timer's expiry is signalled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// No signal (SIGEV_NONE): the timer is only read.
    None,
    /// This signal to the process (to a thread with `Some(tid)`), with this `si_code`; a POSIX timer's carries its
    /// `sigev_value`.
    Signal { signal: u32, thread: Option<u32>, code: i32, value: Option<u64> },
}

#[derive(Clone, Copy)]
pub struct Timer {
    pub notify: Notify,
    /// Expiry on the boot clock, in nanoseconds; 0 while disarmed.
    pub expires: u64,
    pub interval: u64,
    /// Expiries that found the previous signal not yet taken (timer_getoverrun).
    pub overrun: u64,
    /// Whether absolute times given for it are on CLOCK_REALTIME (else on the boot clock).
    pub realtime: bool,
}

/// Slots 0-2 are setitimer's ITIMER_REAL (also `alarm`), ITIMER_VIRTUAL and ITIMER_PROF; POSIX timers follow, their
/// id being the slot minus 3.
static TIMERS: SpinLock<Vec<Option<Timer>>> = SpinLock::new(Vec::new());
pub const ITIMERS: usize = 3;
/// Most POSIX timers a program may have.
const MAX_TIMERS: usize = 1024;
/// The earliest armed expiry, `u64::MAX` for none: what the syscall exit compares the clock with.
static NEXT_EXPIRY: AtomicU64 = AtomicU64::new(u64::MAX);

fn recompute(timers: &[Option<Timer>]) {
    let next = timers.iter().flatten().filter(|t| t.expires != 0).map(|t| t.expires).min().unwrap_or(u64::MAX);
    NEXT_EXPIRY.store(next, Ordering::SeqCst);
}

/// Runs `f` on slot `slot`'s timer (None: the slot is free), creating the interval timers' slots on first use.
pub fn with<R>(slot: usize, f: impl FnOnce(&mut Option<Timer>) -> R) -> R {
    let mut timers = TIMERS.lock();
    if timers.len() < ITIMERS {
        timers.resize(ITIMERS, None);
    }
    if slot >= timers.len() {
        timers.resize(slot + 1, None);
    }
    let before = NEXT_EXPIRY.load(Ordering::SeqCst);
    let result = f(&mut timers[slot]);
    recompute(&timers);
    drop(timers);
    // An idle vCPU waits no longer than the expiry it knew of when it parked: one looks again at an earlier one, since
    // the thread that armed the timer may compute without syscalls until it fires.
    let next = NEXT_EXPIRY.load(Ordering::SeqCst);
    if next < before {
        crate::sched::timer_due_at(next, true);
    }
    result
}

/// A free slot for a new POSIX timer, holding `timer`: its id, or None if the program has too many.
pub fn create(timer: Timer) -> Option<usize> {
    let mut timers = TIMERS.lock();
    if timers.len() < ITIMERS {
        timers.resize(ITIMERS, None);
    }
    let slot = match timers.iter().skip(ITIMERS).position(Option::is_none) {
        Some(i) => i + ITIMERS,
        None if timers.len() < ITIMERS + MAX_TIMERS => {
            timers.push(None);
            timers.len() - 1
        }
        None => return None,
    };
    timers[slot] = Some(timer);
    Some(slot - ITIMERS)
}

/// The earliest armed expiry, for idle vCPUs.
pub fn next_expiry() -> Option<u64> {
    let next = NEXT_EXPIRY.load(Ordering::SeqCst);
    (next != u64::MAX).then_some(next)
}

/// Sends the signals of the timers that expired, and rearms the periodic ones. Cheap when none is due.
pub fn fire_due() {
    // Every syscall exit comes here: with no timer armed, not even the clock is read.
    let next = NEXT_EXPIRY.load(Ordering::Relaxed);
    if next == u64::MAX {
        return;
    }
    let now = time::since_boot_ns();
    if next > now {
        return;
    }
    let mut timers = TIMERS.lock();
    for (slot, t) in timers.iter_mut().enumerate().filter_map(|(slot, t)| Some((slot, t.as_mut()?))) {
        if t.expires == 0 || t.expires > now {
            continue;
        }
        // Sent before the timer stops counting as a deadline (`recompute` below): an idle vCPU that looks in between
        // must not take a thread waiting for this signal for deadlocked.
        if let Notify::Signal { signal, thread, code, value } = t.notify {
            let timer = value.map(|value| TimerInfo { id: (slot - ITIMERS) as i32, overrun: t.overrun as i32, value });
            crate::syscalls::signal::raise(signal, thread, Origin { code, timer });
        }
        match (now - t.expires).checked_div(t.interval) {
            // Periodic: the next expiry after now; those skipped are its overrun.
            Some(missed) => {
                t.overrun = missed;
                t.expires += (missed + 1) * t.interval;
            }
            None => t.expires = 0,
        }
    }
    recompute(&timers);
    drop(timers);
    let next = NEXT_EXPIRY.load(Ordering::SeqCst);
    if next != u64::MAX {
        crate::sched::timer_due_at(next, false);
    }
}
