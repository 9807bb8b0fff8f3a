//! Threads: clone, exit, futex, and the thread-id calls.

use super::{futex_pi, Args};
use crate::errno::{Errno, SysResult};
use crate::sched::{self, Wait, Woken};
use crate::{percpu, time, user};

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SYSVSEM: u64 = 0x40000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x100000;
const CLONE_CHILD_CLEARTID: u64 = 0x200000;
const CLONE_DETACHED: u64 = 0x400000;
const CLONE_CHILD_SETTID: u64 = 0x1000000;
/// What a thread (as opposed to a process) needs.
const THREAD_FLAGS: u64 = CLONE_VM | CLONE_THREAD | CLONE_SIGHAND;
/// Everything else we accept; a thread shares all of it anyway.
const ACCEPTED: u64 = THREAD_FLAGS
    | CLONE_FS
    | CLONE_FILES
    | CLONE_SYSVSEM
    | CLONE_SETTLS
    | CLONE_PARENT_SETTID
    | CLONE_CHILD_CLEARTID
    | CLONE_DETACHED
    | CLONE_CHILD_SETTID
    | 0xff; // the exit signal, meaningless for threads

/// clone(flags, stack, parent_tid, child_tid, tls): threads only. A new process (fork, vfork, no CLONE_VM) is not
/// something a one-program VM has.
pub fn clone(a: &Args) -> SysResult {
    let (flags, stack, parent_tid, child_tid, tls) = (a[0], a[1], a[2], a[3], a[4]);
    if flags & THREAD_FLAGS != THREAD_FLAGS || flags & CLONE_VFORK != 0 {
        return Err(Errno::ENOSYS);
    }
    if flags & !ACCEPTED != 0 || stack == 0 {
        return Err(Errno::EINVAL);
    }
    let clear = if flags & CLONE_CHILD_CLEARTID != 0 { child_tid } else { 0 };
    let tls = (flags & CLONE_SETTLS != 0).then_some(tls);
    if tls.is_some_and(|t| t >= 1 << 47) {
        return Err(Errno::EPERM);
    }
    // Both are written before the child can run: musl's thread-list lock takes the child's tid from
    // CLONE_PARENT_SETTID's word, and a child that read 0 there would think it held the lock already.
    let set_tid = [(CLONE_PARENT_SETTID, parent_tid), (CLONE_CHILD_SETTID, child_tid)]
        .map(|(f, at)| (flags & f != 0).then_some(at));
    let tid = sched::spawn(percpu::syscall_frame(), stack, tls, clear, set_tid)?;
    Ok(u64::from(tid))
}

/// The absolute `struct timespec` at `at`, on CLOCK_REALTIME if `realtime` else CLOCK_MONOTONIC, as a deadline in
/// ns since boot (the monotonic clock's own scale).
fn absolute_deadline(at: u64, realtime: bool) -> Result<u64, Errno> {
    let at = user::read_timespec(at)?;
    Ok(if realtime { time::since_boot_ns().saturating_add(at.saturating_sub(time::realtime_ns())) } else { at })
}

/// exit: ends this thread only (exit_group ends the program), leaving the robust and PI futexes it holds to others.
pub fn exit(a: &Args) -> SysResult {
    futex_pi::exiting(sched::current_tid());
    sched::exit_current(a[0] & 0xff)
}

pub fn gettid(_: &Args) -> SysResult {
    Ok(u64::from(sched::current_tid()))
}

pub fn set_tid_address(a: &Args) -> SysResult {
    sched::set_clear_child_tid(a[0]);
    Ok(u64::from(sched::current_tid()))
}

pub fn sched_yield(_: &Args) -> SysResult {
    sched::yield_now();
    Ok(0)
}

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_REQUEUE: u64 = 3;
const FUTEX_CMP_REQUEUE: u64 = 4;
const FUTEX_WAKE_OP: u64 = 5;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_UNLOCK_PI: u64 = 7;
const FUTEX_TRYLOCK_PI: u64 = 8;
const FUTEX_LOCK_PI2: u64 = 13;
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;
const FUTEX_BITSET_MATCH_ANY: u32 = u32::MAX;

/// futex(uaddr, op, val, timeout|val2, uaddr2, val3). One address space, so PRIVATE changes nothing.
pub fn futex(a: &Args) -> SysResult {
    let (uaddr, op, val, timeout, uaddr2, val3) = (a[0], a[1], a[2] as u32, a[3], a[4], a[5] as u32);
    let cmd = op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    if uaddr % 4 != 0 {
        return Err(Errno::EINVAL);
    }
    match cmd {
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            let bitset = if cmd == FUTEX_WAIT { FUTEX_BITSET_MATCH_ANY } else { val3 };
            if bitset == 0 {
                return Err(Errno::EINVAL);
            }
            // FUTEX_WAIT takes a relative timeout; FUTEX_WAIT_BITSET an absolute one on the chosen clock.
            let deadline = match timeout {
                0 => u64::MAX,
                t if cmd == FUTEX_WAIT => time::since_boot_ns().saturating_add(user::read_timespec(t)?),
                t => absolute_deadline(t, op & FUTEX_CLOCK_REALTIME != 0)?,
            };
            // The value is compared under the scheduler lock, which a waker on another vCPU takes too: no wake can
            // fall between the check and the wait.
            user::check(uaddr, 4, false)?;
            let unchanged = || user::read::<u32>(uaddr).is_ok_and(|v| v == val);
            match sched::block(Wait::Futex { addr: uaddr, bitset }, deadline, unchanged) {
                None => Err(Errno::EAGAIN),
                Some(Woken::Wake) => Ok(0),
                Some(Woken::Deadline) => Err(Errno::ETIMEDOUT),
                Some(Woken::Signal) => Err(Errno::EINTR),
            }
        }
        FUTEX_WAKE | FUTEX_WAKE_BITSET => {
            let bitset = if cmd == FUTEX_WAKE { FUTEX_BITSET_MATCH_ANY } else { val3 };
            if bitset == 0 {
                return Err(Errno::EINVAL);
            }
            Ok(sched::wake(uaddr, bitset, val as usize) as u64)
        }
        FUTEX_REQUEUE | FUTEX_CMP_REQUEUE => {
            if cmd == FUTEX_CMP_REQUEUE && user::read::<u32>(uaddr)? != val3 {
                return Err(Errno::EAGAIN);
            }
            let woken = sched::wake(uaddr, FUTEX_BITSET_MATCH_ANY, val as usize);
            // For the requeue operations the fourth argument is a count, not a timeout.
            let moved = sched::requeue(uaddr, uaddr2, timeout as u32 as usize);
            Ok((woken + moved) as u64)
        }
        FUTEX_WAKE_OP => wake_op(uaddr, val as usize, uaddr2, timeout as u32 as usize, val3),
        FUTEX_LOCK_PI | FUTEX_LOCK_PI2 => {
            // As Linux: FUTEX_LOCK_PI's timeout is absolute on CLOCK_REALTIME (the flag is refused), FUTEX_LOCK_PI2's
            // on CLOCK_MONOTONIC unless the flag says CLOCK_REALTIME.
            let realtime = op & FUTEX_CLOCK_REALTIME != 0;
            if cmd == FUTEX_LOCK_PI && realtime {
                return Err(Errno::ENOSYS);
            }
            let deadline = match timeout {
                0 => u64::MAX,
                t => absolute_deadline(t, cmd == FUTEX_LOCK_PI || realtime)?,
            };
            futex_pi::lock(uaddr, deadline, false)
        }
        FUTEX_TRYLOCK_PI => futex_pi::lock(uaddr, 0, true),
        FUTEX_UNLOCK_PI => futex_pi::unlock(uaddr),
        _ => Err(Errno::ENOSYS),
    }
}

/// FUTEX_WAKE_OP: `old = *uaddr2; *uaddr2 = old OP arg; wake(uaddr, n); if old CMP cmparg { wake(uaddr2, n2) }`.
fn wake_op(uaddr: u64, n: usize, uaddr2: u64, n2: usize, encoded: u32) -> SysResult {
    let op = (encoded >> 28) & 0xf;
    let cmp = (encoded >> 24) & 0xf;
    let mut oparg = (encoded >> 12) & 0xfff;
    let cmparg = encoded & 0xfff;
    if op & 8 != 0 {
        // FUTEX_OP_OPARG_SHIFT: the argument is a shift count.
        oparg = 1u32.checked_shl(oparg).unwrap_or(0);
    }
    let old: u32 = user::read(uaddr2)?;
    let new = match op & 7 {
        0 => oparg,
        1 => old.wrapping_add(oparg),
        2 => old | oparg,
        3 => old & !oparg,
        4 => old ^ oparg,
        _ => return Err(Errno::ENOSYS),
    };
    user::write(uaddr2, new)?;
    let mut woken = sched::wake(uaddr, FUTEX_BITSET_MATCH_ANY, n);
    let hit = match cmp {
        0 => old == cmparg,
        1 => old != cmparg,
        2 => old < cmparg,
        3 => old <= cmparg,
        4 => old > cmparg,
        5 => old >= cmparg,
        _ => return Err(Errno::ENOSYS),
    };
    if hit {
        woken += sched::wake(uaddr2, FUTEX_BITSET_MATCH_ANY, n2);
    }
    Ok(woken as u64)
}
