//! Priority-inheritance futexes (FUTEX_LOCK_PI, FUTEX_LOCK_PI2, FUTEX_TRYLOCK_PI, FUTEX_UNLOCK_PI) and robust lists
//! (`set_robust_list`, `get_robust_list`, and their walk when a thread exits), with Linux's futex word protocol: the
//! owner's thread id in the low 30 bits, [`FUTEX_WAITERS`] while threads wait in the library OS, [`FUTEX_OWNER_DIED`]
//! once an owner exited holding it.
//!
//! An unlock with waiters hands the futex to the first of them (its id written into the word under the scheduler lock)
//! and wakes it; a thread that exits holding a robust or PI futex leaves it free with FUTEX_OWNER_DIED and wakes one
//! waiter. There are no priorities in Kiln's scheduler, so there is nothing to inherit: PI futexes are ownership-
//! tracked locks with FIFO hand-over. FUTEX_WAIT_REQUEUE_PI and FUTEX_CMP_REQUEUE_PI (PI condition variables) stay
//! ENOSYS.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::sched::{self, Attempt, Peek, Wait, Woken};
use crate::user;
use core::sync::atomic::{AtomicU32, Ordering};

pub const FUTEX_WAITERS: u32 = 0x8000_0000;
pub const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// Linux's bound on a robust list's length, which keeps a looping list from holding an exiting thread forever.
const ROBUST_LIST_LIMIT: usize = 2048;
/// `struct robust_list_head`: the list's first entry, the futex word's offset from an entry, the pending entry.
const ROBUST_LIST_HEAD_SIZE: u64 = 24;
/// Compare-and-swap rounds on a futex word that the program keeps changing under us before giving up (EAGAIN): the
/// scheduler lock is held meanwhile.
const CAS_ROUNDS: usize = 1000;

/// The futex word at `addr`, checked to be aligned and the program's writable memory.
fn word(addr: u64) -> Result<&'static AtomicU32, Errno> {
    if !addr.is_multiple_of(4) {
        return Err(Errno::EINVAL);
    }
    user::check(addr, 4, true)?;
    // SAFETY: checked above to be aligned, mapped and writable program memory; the program may change it at any time,
    // which atomics allow. Memory it unmaps later stays addressable (the library OS keeps or zeroes its frames).
    Ok(unsafe { AtomicU32::from_ptr(addr as *mut u32) })
}

/// FUTEX_LOCK_PI (`try_only`: FUTEX_TRYLOCK_PI): takes the futex at `addr` for the current thread, waiting until
/// `deadline` (ns since boot) for its owner to hand it over.
pub fn lock(addr: u64, deadline: u64, try_only: bool) -> SysResult {
    let me = sched::current_tid();
    let mut handed_over = false;
    loop {
        let w = word(addr)?;
        let attempt = |peek: &Peek| -> Attempt<SysResult> {
            for _ in 0..CAS_ROUNDS {
                let v = w.load(Ordering::SeqCst);
                let owner = v & FUTEX_TID_MASK;
                if owner == 0 {
                    // Free (maybe after its owner died): take it, keeping OWNER_DIED for the program to see and
                    // WAITERS while others wait.
                    let waiters = if peek.pi_waiters(addr) { FUTEX_WAITERS } else { 0 };
                    let new = me | (v & FUTEX_OWNER_DIED) | waiters;
                    if w.compare_exchange(v, new, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        return Attempt::Done(Ok(0));
                    }
                    continue;
                }
                if owner == me {
                    // Handed over by the owner's unlock; otherwise we lock what we hold.
                    return Attempt::Done(if handed_over { Ok(0) } else { Err(Errno::EDEADLK) });
                }
                if try_only {
                    return Attempt::Done(Err(Errno::EAGAIN));
                }
                if !peek.thread_exists(owner) {
                    // As Linux: an owner that is gone without the futex being marked is ESRCH.
                    return Attempt::Done(Err(Errno::ESRCH));
                }
                if v & FUTEX_WAITERS != 0
                    || w.compare_exchange(v, v | FUTEX_WAITERS, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
                    return Attempt::Block;
                }
            }
            Attempt::Done(Err(Errno::EAGAIN))
        };
        match sched::block_unless(Wait::PiFutex(addr), deadline, attempt) {
            Ok(answer) => return answer,
            Err(Woken::Wake) => handed_over = true,
            Err(Woken::Deadline) => return Err(Errno::ETIMEDOUT),
            Err(Woken::Signal) => return Err(Errno::EINTR),
        }
    }
}

/// FUTEX_UNLOCK_PI: the current thread gives up the futex at `addr`, to the first waiter if any.
pub fn unlock(addr: u64) -> SysResult {
    let me = sched::current_tid();
    let w = word(addr)?;
    sched::wake_pi_waiter(addr, |next, more| {
        for _ in 0..CAS_ROUNDS {
            let v = w.load(Ordering::SeqCst);
            if v & FUTEX_TID_MASK != me {
                return (false, Err(Errno::EPERM));
            }
            let new = next.map_or(0, |tid| tid | if more { FUTEX_WAITERS } else { 0 });
            if w.compare_exchange(v, new, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return (true, Ok(0));
            }
        }
        (false, Err(Errno::EAGAIN))
    })
}

/// Marks the futex at `addr` as left by `tid`, which is exiting, if `tid` owns it: free, FUTEX_OWNER_DIED, waiters
/// kept; one waiter is woken (a PI one, which takes it, or a plain FUTEX_WAIT one). `pending`: the entry the thread
/// was in the middle of locking or unlocking, whose waiter must be woken even if the owner is already gone.
fn owner_died(addr: u64, tid: u32, pi: bool, pending: bool) {
    let Ok(w) = word(addr) else { return };
    for _ in 0..CAS_ROUNDS {
        let v = w.load(Ordering::SeqCst);
        if pending && !pi && v & FUTEX_TID_MASK == 0 {
            // Unlocked in user space, dead before its wake: wake for it.
            sched::wake(addr, u32::MAX, 1);
            return;
        }
        if v & FUTEX_TID_MASK != tid {
            return;
        }
        let new = (v & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
        if w.compare_exchange(v, new, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            if v & FUTEX_WAITERS != 0 {
                sched::wake(addr, u32::MAX, 1);
                sched::wake_pi_waiter(addr, |next, _| (next.is_some(), ()));
            }
            return;
        }
    }
}

/// What Linux does for a thread that exits: every futex on its robust list that it still owns is marked
/// FUTEX_OWNER_DIED and a waiter woken; so is every PI futex it owns that others wait for. The list is the program's
/// memory: each pointer is checked and the walk stops at [`ROBUST_LIST_LIMIT`] entries, a bad list ends the walk.
pub fn exiting(tid: u32) {
    if let Some(head) = sched::robust_list(None).filter(|&h| h != 0) {
        walk_robust_list(head, tid);
    }
    for addr in sched::pi_futexes_waited() {
        owner_died(addr, tid, true, false);
    }
}

fn walk_robust_list(head: u64, tid: u32) {
    let Ok([first, offset, pending]) = user::read::<[u64; 3]>(head) else { return };
    // Bit 0 of an entry marks a PI futex.
    let futex_of = |entry: u64| (entry & !1).wrapping_add(offset);
    let mut entry = first;
    for _ in 0..ROBUST_LIST_LIMIT {
        if entry == head {
            break;
        }
        // The next entry is read first: once the futex is marked, another thread may free the entry.
        let Ok(next) = user::read::<u64>(entry & !1) else { break };
        if entry != pending {
            owner_died(futex_of(entry), tid, entry & 1 != 0, false);
        }
        entry = next;
    }
    if pending != 0 {
        owner_died(futex_of(pending), tid, pending & 1 != 0, true);
    }
}

/// set_robust_list(head, len): recorded as is (Linux checks only the size); walked when the thread exits.
pub fn set_robust_list(a: &Args) -> SysResult {
    if a[1] != ROBUST_LIST_HEAD_SIZE {
        return Err(Errno::EINVAL);
    }
    sched::set_robust_list(a[0]);
    Ok(0)
}

/// get_robust_list(tid, &head, &len): thread `tid`'s (0: the caller's) head as set_robust_list left it.
pub fn get_robust_list(a: &Args) -> SysResult {
    let (tid, head_at, len_at) = (a[0] as u32, a[1], a[2]);
    let head = sched::robust_list((tid != 0).then_some(tid)).ok_or(Errno::ESRCH)?;
    user::write(head_at, head)?;
    user::write(len_at, ROBUST_LIST_HEAD_SIZE)?;
    Ok(0)
}
