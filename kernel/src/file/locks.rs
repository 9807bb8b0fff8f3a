//! File locks: byte ranges of a file held by an owner. The program is one process, so its classic POSIX record locks
//! (fcntl F_SETLK) never conflict with one another; open file description (OFD) locks belong to the description and
//! conflict with other descriptions' locks and with the process's POSIX locks, as on Linux. `flock` locks belong to
//! the description too, cover the whole file, and meet only other `flock` locks. A wait for a lock sleeps until some
//! lock is released, so that another thread can end it.

use super::wait::Waitable;
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Owner {
    /// The program's classic POSIX locks.
    Process,
    /// The record locks of one open file description (its `File`'s address while it lives).
    Description(usize),
    /// The `flock` lock of one open file description.
    Flock(usize),
}

impl Owner {
    /// `flock` locks and record locks are apart: neither kind conflicts with the other.
    fn is_flock(self) -> bool {
        matches!(self, Owner::Flock(_))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Read,
    Write,
}

/// `end` is exclusive; [`TO_END`] is "to the end of the file, however far it grows".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Lock {
    pub file: u64,
    pub owner: Owner,
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
}

pub const TO_END: u64 = u64::MAX;

/// Every lock held. A program holds few; a linear scan is the simplest correct thing.
static LOCKS: SpinLock<Vec<Lock>> = SpinLock::new(Vec::new());
/// Set by the first lock: until then, closing a descriptor does not look for locks to release.
static EVER_LOCKED: AtomicBool = AtomicBool::new(false);
/// Changes whenever a lock is released or shrinks: what waiting lockers wait on.
static RELEASED: Waitable = Waitable::new_static();

impl Lock {
    fn blocks(&self, wanted: &Lock) -> bool {
        self.file == wanted.file
            && self.owner != wanted.owner
            && self.owner.is_flock() == wanted.owner.is_flock()
            && self.start < wanted.end
            && wanted.start < self.end
            && (self.kind == Kind::Write || wanted.kind == Kind::Write)
    }
}

/// The first lock held that keeps `wanted` from being taken (F_GETLK).
pub fn conflicting(wanted: &Lock) -> Option<Lock> {
    LOCKS.lock().iter().find(|held| held.blocks(wanted)).copied()
}

/// With `take`, takes `wanted` (replacing what its owner held in its range); without, releases the range. A
/// conflict is EAGAIN, or with `wait` a sleep until it is gone (EINTR if a signal comes first).
pub fn set(wanted: Lock, take: bool, wait: bool) -> Result<(), Errno> {
    EVER_LOCKED.store(true, Ordering::Relaxed);
    loop {
        let seen = RELEASED.count();
        let released = {
            let mut locks = LOCKS.lock();
            if take && locks.iter().any(|held| held.blocks(&wanted)) {
                drop(locks);
                if !wait {
                    return Err(Errno::EAGAIN);
                }
                RELEASED.wait(seen, u64::MAX)?;
                continue;
            }
            let released = carve(&mut locks, &wanted);
            if take {
                locks.push(wanted);
            }
            released
        };
        if released {
            RELEASED.changed();
        }
        return Ok(());
    }
}

/// Removes `range.owner`'s hold on `range` of `range.file`, keeping the parts outside it; whether any was removed.
fn carve(locks: &mut Vec<Lock>, range: &Lock) -> bool {
    let mut kept = Vec::new();
    let before = locks.len();
    locks.retain(|held| {
        let overlaps =
            held.file == range.file && held.owner == range.owner && held.start < range.end && range.start < held.end;
        if overlaps {
            if held.start < range.start {
                kept.push(Lock { end: range.start, ..*held });
            }
            if range.end < held.end {
                kept.push(Lock { start: range.end, ..*held });
            }
        }
        !overlaps
    });
    let released = locks.len() != before;
    locks.extend(kept);
    released
}

/// Releases every lock `owner` holds, of `file` or (None) of any file: the process's locks of a file go when any of
/// its descriptors is closed, a description's when it ends.
pub fn release(owner: Owner, file: Option<u64>) {
    if !EVER_LOCKED.load(Ordering::Relaxed) {
        return;
    }
    let released = {
        let mut locks = LOCKS.lock();
        let before = locks.len();
        locks.retain(|held| held.owner != owner || file.is_some_and(|f| f != held.file));
        locks.len() != before
    };
    if released {
        RELEASED.changed();
    }
}
