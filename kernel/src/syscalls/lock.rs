//! flock and fcntl's record locks, kept in `file::locks`: POSIX locks belong to the process and never conflict with
//! one another, OFD locks and flock locks belong to the open file description and conflict with other owners'
//! (flock locks only with flock locks), as on Linux.

use super::{Args, PID};
use crate::errno::{Errno, SysResult};
use crate::file::locks::{self, Kind, Lock, Owner, TO_END};
use crate::file::{self, File, Object, O_ACCMODE, O_RDONLY, O_WRONLY};
use crate::user;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

const LOCK_SH: u64 = 1;
const LOCK_EX: u64 = 2;
const LOCK_NB: u64 = 4;
const LOCK_UN: u64 = 8;
/// Samba's old mandatory flock, which Linux now accepts and ignores.
const LOCK_MAND: u64 = 32;

/// A conflicting lock is EWOULDBLOCK with LOCK_NB, else a wait; converting a lock is not atomic, as on Linux.
pub fn flock(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    if a[1] & LOCK_MAND != 0 {
        return Ok(0);
    }
    let kind = match a[1] & !LOCK_NB {
        LOCK_SH => Some(Kind::Read),
        LOCK_EX => Some(Kind::Write),
        LOCK_UN => None,
        _ => return Err(Errno::EINVAL),
    };
    let owner = Owner::Flock(Arc::as_ptr(&f) as usize);
    let whole = Lock { file: f.lock_key(), owner, start: 0, end: TO_END, kind: kind.unwrap_or(Kind::Read) };
    locks::set(whole, kind.is_some(), a[1] & LOCK_NB == 0).map(|()| 0)
}

pub const F_GETLK: u64 = 5;
pub const F_SETLK: u64 = 6;
pub const F_SETLKW: u64 = 7;
pub const F_OFD_GETLK: u64 = 36;
pub const F_OFD_SETLK: u64 = 37;
pub const F_OFD_SETLKW: u64 = 38;

const F_RDLCK: i16 = 0;
const F_WRLCK: i16 = 1;
const F_UNLCK: i16 = 2;
const SEEK_SET: i16 = 0;
const SEEK_CUR: i16 = 1;
const SEEK_END: i16 = 2;

/// `struct flock` on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Flock {
    kind: i16,
    whence: i16,
    _pad: i32,
    start: i64,
    len: i64,
    pid: i32,
    _pad2: i32,
}

/// The byte range `[start, end)` a `struct flock` names, with Linux's checks: a bad `l_whence` or a range that
/// starts before 0 is EINVAL, one past the largest offset EOVERFLOW; `l_len` 0 runs to the end of the file, a
/// negative one ends at `l_start`.
fn range(f: &File, fl: &Flock) -> Result<(u64, u64), Errno> {
    let base = match (fl.whence, &f.object) {
        (SEEK_SET, _) => 0,
        (SEEK_CUR, Object::Regular { offset, .. }) => *offset.lock() as i64,
        (SEEK_END, Object::Regular { inode, .. }) => inode.stat().size as i64,
        (SEEK_CUR | SEEK_END, _) => 0,
        _ => return Err(Errno::EINVAL),
    };
    let start = base.checked_add(fl.start).ok_or(Errno::EOVERFLOW)?;
    let (start, end) = match fl.len {
        0 => (start, None),
        len if len > 0 => (start, Some(start.checked_add(len).ok_or(Errno::EOVERFLOW)?)),
        len => (start.checked_add(len).ok_or(Errno::EINVAL)?, Some(start)),
    };
    if start < 0 {
        return Err(Errno::EINVAL);
    }
    Ok((start as u64, end.map_or(TO_END, |end| end as u64)))
}

/// F_GETLK, F_SETLK, F_SETLKW and their OFD forms on descriptor `f`, `arg` the program's `struct flock`.
pub fn record_lock(f: &Arc<File>, cmd: u64, arg: u64) -> SysResult {
    let ofd = matches!(cmd, F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW);
    let fl: Flock = user::read(arg)?;
    let kind = match fl.kind {
        F_RDLCK => Some(Kind::Read),
        F_WRLCK => Some(Kind::Write),
        F_UNLCK => None,
        _ => return Err(Errno::EINVAL),
    };
    let (start, end) = range(f, &fl)?;
    if ofd && fl.pid != 0 {
        return Err(Errno::EINVAL);
    }
    let owner = if ofd { Owner::Description(Arc::as_ptr(f) as usize) } else { Owner::Process };
    let wanted = Lock { file: f.lock_key(), owner, start, end, kind: kind.unwrap_or(Kind::Read) };
    if matches!(cmd, F_GETLK | F_OFD_GETLK) {
        if kind.is_none() {
            return Err(Errno::EINVAL);
        }
        let answer = match locks::conflicting(&wanted) {
            None => Flock { kind: F_UNLCK, ..fl },
            Some(held) => Flock {
                kind: if held.kind == Kind::Write { F_WRLCK } else { F_RDLCK },
                whence: SEEK_SET,
                start: held.start as i64,
                len: if held.end == TO_END { 0 } else { (held.end - held.start) as i64 },
                // An OFD lock has no process; a POSIX lock is ours.
                pid: if held.owner == Owner::Process { PID as i32 } else { -1 },
                ..fl
            },
        };
        return user::write(arg, answer).map(|()| 0);
    }
    let mode = f.flags.load(Ordering::Relaxed) & O_ACCMODE;
    match kind {
        Some(Kind::Read) if mode == O_WRONLY => return Err(Errno::EBADF),
        Some(Kind::Write) if mode == O_RDONLY => return Err(Errno::EBADF),
        _ => {}
    }
    locks::set(wanted, kind.is_some(), matches!(cmd, F_SETLKW | F_OFD_SETLKW)).map(|()| 0)
}
