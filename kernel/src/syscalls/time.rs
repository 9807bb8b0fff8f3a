//! Clocks, read from the TSC without a VM exit.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::{time, user};

use crate::time::{Timespec, CLOCK_BOOTTIME, CLOCK_MONOTONIC, CLOCK_REALTIME};

fn clock_ns(clock: u64) -> Result<u64, Errno> {
    time::clock_ns(clock).ok_or(Errno::EINVAL)
}

pub fn clock_gettime(a: &Args) -> SysResult {
    let ns = clock_ns(a[0])?;
    user::write(a[1], Timespec::from_ns(ns)).map(|()| 0)
}

pub fn clock_getres(a: &Args) -> SysResult {
    clock_ns(a[0])?;
    if a[1] != 0 {
        user::write(a[1], Timespec { sec: 0, nsec: 1 })?;
    }
    Ok(0)
}

pub fn gettimeofday(a: &Args) -> SysResult {
    if a[0] != 0 {
        let ns = time::realtime_ns();
        user::write(a[0], [(ns / 1_000_000_000) as i64, ((ns % 1_000_000_000) / 1000) as i64])?;
    }
    if a[1] != 0 {
        user::write(a[1], [0i32; 2])?;
    }
    Ok(0)
}

pub fn time(a: &Args) -> SysResult {
    let secs = time::realtime_ns() / 1_000_000_000;
    if a[0] != 0 {
        user::write(a[0], secs)?;
    }
    Ok(secs)
}

const TIMER_ABSTIME: u64 = 1;

pub fn nanosleep(a: &Args) -> SysResult {
    let duration = user::read_timespec(a[0])?;
    if let Err(left) = sleep(duration) {
        return interrupted(a[1], left);
    }
    Ok(0)
}

pub fn clock_nanosleep(a: &Args) -> SysResult {
    let (clock, flags, request, remain) = (a[0], a[1], a[2], a[3]);
    let now = match clock {
        CLOCK_REALTIME | CLOCK_MONOTONIC | CLOCK_BOOTTIME => clock_ns(clock)?,
        // Sleeping on CPU time, or on a clock that does not exist, is not something Linux does either.
        _ => return Err(Errno::EINVAL),
    };
    let value = user::read_timespec(request)?;
    let duration = if flags & TIMER_ABSTIME != 0 { value.saturating_sub(now) } else { value };
    if let Err(left) = sleep(duration) {
        return interrupted(if flags & TIMER_ABSTIME == 0 { remain } else { 0 }, left);
    }
    Ok(0)
}

/// Other threads run meanwhile; with none, the vCPU waits in the VMM. A signal cuts it short: the time left.
fn sleep(duration: u64) -> Result<(), u64> {
    let deadline = time::since_boot_ns().saturating_add(duration);
    match crate::sched::block(crate::sched::Wait::Sleep, deadline, || true) {
        Some(crate::sched::Woken::Signal) => Err(deadline.saturating_sub(time::since_boot_ns())),
        _ => Ok(()),
    }
}

/// What a sleep interrupted by a signal answers: EINTR, with the time left in `remain` if given.
fn interrupted(remain: u64, left: u64) -> SysResult {
    if remain != 0 {
        user::write(remain, Timespec::from_ns(left))?;
    }
    Err(Errno::EINTR)
}
