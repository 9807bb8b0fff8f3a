//! Scheduling priority and policy: the nice value is recorded and reported; the library OS's scheduler runs every
//! thread alike (SCHED_OTHER), so real-time policies are refused.

use super::{this_process, Args};
use crate::errno::{Errno, SysResult};
use crate::user;
use core::sync::atomic::{AtomicI64, Ordering};

const PRIO_PROCESS: u64 = 0;
const PRIO_PGRP: u64 = 1;
const PRIO_USER: u64 = 2;
const SCHED_OTHER: u64 = 0;
const SCHED_FIFO: u64 = 1;
const SCHED_RR: u64 = 2;
const SCHED_BATCH: u64 = 3;
const SCHED_IDLE: u64 = 5;

/// The process's nice value (-20..=19); per process rather than per thread.
static NICE: AtomicI64 = AtomicI64::new(0);

/// The process's nice value.
pub fn nice() -> i64 {
    NICE.load(Ordering::Relaxed)
}

/// `who` 0 means the caller; otherwise only our own process, group or user (all are 1 or root's 0) exist.
fn check_target(which: u64, who: u64) -> Result<(), Errno> {
    match which {
        PRIO_PROCESS | PRIO_PGRP => check_pid(who),
        PRIO_USER if who == 0 => Ok(()),
        PRIO_USER => Err(Errno::ESRCH),
        _ => Err(Errno::EINVAL),
    }
}

/// getpriority: the raw syscall returns 20 - nice (1..=40), which libc turns back into the nice value.
pub fn getpriority(a: &Args) -> SysResult {
    check_target(a[0], a[1])?;
    Ok((20 - NICE.load(Ordering::Relaxed)) as u64)
}

pub fn setpriority(a: &Args) -> SysResult {
    check_target(a[0], a[1])?;
    NICE.store((a[2] as i32 as i64).clamp(-20, 19), Ordering::Relaxed);
    Ok(0)
}

/// This process, or the calling thread by its id; a negative pid is EINVAL.
fn check_pid(pid: u64) -> Result<(), Errno> {
    match pid as i64 {
        p if p < 0 => Err(Errno::EINVAL),
        _ if pid == u64::from(crate::sched::current_tid()) => Ok(()),
        _ => this_process(pid),
    }
}

pub fn sched_getscheduler(a: &Args) -> SysResult {
    check_pid(a[0])?;
    Ok(SCHED_OTHER)
}

/// sched_setscheduler: SCHED_OTHER, SCHED_BATCH and SCHED_IDLE (priority 0) are what every thread gets anyway;
/// real-time policies would promise what a scheduler without preemption cannot keep.
pub fn sched_setscheduler(a: &Args) -> SysResult {
    check_pid(a[0])?;
    let priority: i32 = user::read(a[2])?;
    match a[1] {
        SCHED_OTHER | SCHED_BATCH | SCHED_IDLE if priority == 0 => Ok(0),
        SCHED_FIFO | SCHED_RR => Err(Errno::EPERM),
        _ => Err(Errno::EINVAL),
    }
}

pub fn sched_getparam(a: &Args) -> SysResult {
    check_pid(a[0])?;
    user::write(a[1], 0i32).map(|()| 0)
}

pub fn sched_setparam(a: &Args) -> SysResult {
    check_pid(a[0])?;
    match user::read::<i32>(a[1])? {
        0 => Ok(0),
        _ => Err(Errno::EINVAL),
    }
}

pub fn sched_get_priority_max(a: &Args) -> SysResult {
    match a[0] {
        SCHED_FIFO | SCHED_RR => Ok(99),
        SCHED_OTHER | SCHED_BATCH | SCHED_IDLE => Ok(0),
        _ => Err(Errno::EINVAL),
    }
}

pub fn sched_get_priority_min(a: &Args) -> SysResult {
    match a[0] {
        SCHED_FIFO | SCHED_RR => Ok(1),
        SCHED_OTHER | SCHED_BATCH | SCHED_IDLE => Ok(0),
        _ => Err(Errno::EINVAL),
    }
}
