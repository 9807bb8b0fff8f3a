//! alarm, getitimer, setitimer, and the POSIX timers (timer_create, timer_settime, timer_gettime,
//! timer_getoverrun, timer_delete) over `crate::timers`.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::timers::{self, Notify, Timer, ITIMERS};
use crate::{sched, time, user};

const SIGALRM: u32 = 14;
const SIGVTALRM: u32 = 26;
const SIGPROF: u32 = 27;
/// `si_code` of an interval timer's signal, and of a POSIX timer's.
const SI_KERNEL: i32 = 0x80;
const SI_TIMER: i32 = -2;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;
const CLOCK_REALTIME: u64 = 0;
const CLOCK_MONOTONIC: u64 = 1;
const CLOCK_BOOTTIME: u64 = 7;
const TIMER_ABSTIME: u64 = 1;
const NSEC: u64 = 1_000_000_000;

/// The interval timer's signal.
fn itimer_signal(which: usize) -> u32 {
    [SIGALRM, SIGVTALRM, SIGPROF][which]
}

/// What is left of a timer and its interval, in nanoseconds.
fn remaining(t: &Option<Timer>) -> (u64, u64) {
    match t {
        Some(t) if t.expires != 0 => (t.expires.saturating_sub(time::since_boot_ns()).max(1), t.interval),
        Some(t) => (0, t.interval),
        None => (0, 0),
    }
}

/// Arms (or with `value` 0 disarms) slot `slot`: the first expiry `value` ns from now, then every `interval` ns.
fn arm(slot: usize, notify: Notify, value: u64, interval: u64) -> (u64, u64) {
    timers::with(slot, |t| {
        let old = remaining(t);
        let expires = if value == 0 { 0 } else { time::since_boot_ns().saturating_add(value) };
        *t = Some(Timer { notify, expires, interval, overrun: 0, realtime: false });
        old
    })
}

fn read_timeval(addr: u64) -> Result<u64, Errno> {
    let [sec, usec]: [i64; 2] = user::read(addr)?;
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return Err(Errno::EINVAL);
    }
    Ok((sec as u64).saturating_mul(NSEC).saturating_add(usec as u64 * 1000))
}

fn timeval(ns: u64) -> [i64; 2] {
    [(ns / NSEC) as i64, ((ns % NSEC) / 1000) as i64]
}

fn timespec(ns: u64) -> [i64; 2] {
    [(ns / NSEC) as i64, (ns % NSEC) as i64]
}

pub fn alarm(a: &Args) -> SysResult {
    let signal = Notify::Signal { signal: SIGALRM, thread: None, code: SI_KERNEL, value: None };
    let (left, _) = arm(0, signal, (a[0] & 0xffff_ffff).saturating_mul(NSEC), 0);
    // Seconds left of the previous alarm, rounded to the nearest (at least 1 if one was pending).
    Ok(if left == 0 { 0 } else { (left.div_ceil(NSEC / 2) / 2).max(1) })
}

pub fn setitimer(a: &Args) -> SysResult {
    let which = usize::try_from(a[0]).ok().filter(|&w| w < ITIMERS).ok_or(Errno::EINVAL)?;
    let (interval, value) = if a[1] == 0 { (0, 0) } else { (read_timeval(a[1])?, read_timeval(a[1] + 16)?) };
    let signal = Notify::Signal { signal: itimer_signal(which), thread: None, code: SI_KERNEL, value: None };
    let (left, old_interval) = arm(which, signal, value, interval);
    if a[2] != 0 {
        user::write(a[2], [timeval(old_interval), timeval(left)])?;
    }
    Ok(0)
}

pub fn getitimer(a: &Args) -> SysResult {
    let which = usize::try_from(a[0]).ok().filter(|&w| w < ITIMERS).ok_or(Errno::EINVAL)?;
    let (left, interval) = timers::with(which, |t| remaining(t));
    user::write(a[1], [timeval(interval), timeval(left)]).map(|()| 0)
}

/// `struct sigevent`: value, signal, notify, thread id.
#[repr(C)]
#[derive(Clone, Copy)]
struct SigEvent {
    value: u64,
    signo: i32,
    notify: i32,
    thread: i32,
    _pad: [i32; 11],
}

pub fn timer_create(a: &Args) -> SysResult {
    if !matches!(a[0], CLOCK_REALTIME | CLOCK_MONOTONIC | CLOCK_BOOTTIME | 2 | 3) {
        return Err(Errno::EINVAL);
    }
    let notify = if a[1] == 0 {
        // Without a sigevent, the value is the timer's id (set below, once it has one).
        Notify::Signal { signal: SIGALRM, thread: None, code: SI_TIMER, value: None }
    } else {
        let ev: SigEvent = user::read(a[1])?;
        let signal = u32::try_from(ev.signo).ok().filter(|s| (1..=64).contains(s));
        match ev.notify {
            SIGEV_NONE => Notify::None,
            SIGEV_SIGNAL => Notify::Signal {
                signal: signal.ok_or(Errno::EINVAL)?,
                thread: None,
                code: SI_TIMER,
                value: Some(ev.value),
            },
            SIGEV_THREAD_ID => {
                let thread = u32::try_from(ev.thread).map_err(|_| Errno::EINVAL)?;
                if !sched::thread_exists(thread) {
                    return Err(Errno::EINVAL);
                }
                let signal = signal.ok_or(Errno::EINVAL)?;
                Notify::Signal { signal, thread: Some(thread), code: SI_TIMER, value: Some(ev.value) }
            }
            _ => return Err(Errno::EINVAL),
        }
    };
    let realtime = a[0] == CLOCK_REALTIME;
    let id = timers::create(Timer { notify, expires: 0, interval: 0, overrun: 0, realtime }).ok_or(Errno::EAGAIN)?;
    timers::with(id + ITIMERS, |t| {
        if let Some(Timer { notify: Notify::Signal { value: value @ None, .. }, .. }) = t {
            *value = Some(id as u64);
        }
    });
    user::write(a[2], id as i32)?;
    Ok(0)
}

/// The slot of POSIX timer `id`, if it exists.
fn slot(id: u64) -> Result<usize, Errno> {
    let slot = usize::try_from(id as i32).map_err(|_| Errno::EINVAL)? + ITIMERS;
    timers::with(slot, |t| t.is_some()).then_some(slot).ok_or(Errno::EINVAL)
}

pub fn timer_settime(a: &Args) -> SysResult {
    let slot = slot(a[0])?;
    let interval = user::read_timespec(a[2])?;
    let mut value = user::read_timespec(a[2] + 16)?;
    if a[1] & TIMER_ABSTIME != 0 && value != 0 {
        // An absolute time on the timer's clock: made relative (at least 1 ns, so that a past time fires at once).
        let realtime = timers::with(slot, |t| t.is_some_and(|t| t.realtime));
        let now = if realtime { time::realtime_ns() } else { time::since_boot_ns() };
        value = value.saturating_sub(now).max(1);
    }
    let (left, old_interval) = timers::with(slot, |t| {
        let old = remaining(t);
        if let Some(t) = t {
            t.expires = if value == 0 { 0 } else { time::since_boot_ns().saturating_add(value) };
            t.interval = interval;
            t.overrun = 0;
        }
        old
    });
    if a[3] != 0 {
        user::write(a[3], [timespec(old_interval), timespec(left)])?;
    }
    Ok(0)
}

pub fn timer_gettime(a: &Args) -> SysResult {
    let slot = slot(a[0])?;
    let (left, interval) = timers::with(slot, |t| remaining(t));
    user::write(a[1], [timespec(interval), timespec(left)]).map(|()| 0)
}

pub fn timer_getoverrun(a: &Args) -> SysResult {
    let slot = slot(a[0])?;
    Ok(timers::with(slot, |t| t.map_or(0, |t| t.overrun)).min(i32::MAX as u64))
}

pub fn timer_delete(a: &Args) -> SysResult {
    let slot = slot(a[0])?;
    timers::with(slot, |t| *t = None);
    Ok(0)
}
