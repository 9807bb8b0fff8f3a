//! Owners and times of files: the chown family and the utime family. There is one user (root) and no permission
//! checks, so owners are accepted and not kept (stat reports root); times set the file's modification time, which
//! is the one time the in-memory filesystem keeps.

use super::fs::AT_FDCWD;
use super::path::resolve;
use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file::{self, Object};
use crate::vfs::{self, Inode};
use crate::{time, user};
use alloc::sync::Arc;

const AT_EMPTY_PATH: u64 = 0x1000;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const UTIME_NOW: i64 = (1 << 30) - 1;
const UTIME_OMIT: i64 = (1 << 30) - 2;

/// The file a path or descriptor argument names: `path` relative to `dirfd`, or `dirfd` itself for an empty path
/// with AT_EMPTY_PATH (or a null path, as utimensat allows).
fn target(dirfd: u64, path: u64, flags: u64) -> Result<Arc<Inode>, Errno> {
    let empty = path == 0 || (flags & AT_EMPTY_PATH != 0 && user::read::<u8>(path)? == 0);
    if !empty {
        return vfs::lookup(&resolve(dirfd, path)?);
    }
    match &file::get(dirfd)?.object {
        Object::Regular { inode, .. } | Object::Directory { inode, .. } => Ok(inode.clone()),
        // Pipes, sockets and devices have no inode of ours: nothing to record.
        _ => Err(Errno::EPERM),
    }
}

fn ids_valid(uid: u64, gid: u64) -> Result<(), Errno> {
    let valid = |id: u64| id as u32 as u64 == id || id == u64::MAX;
    if valid(uid) && valid(gid) {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

pub fn chown(a: &Args) -> SysResult {
    ids_valid(a[1], a[2])?;
    target(AT_FDCWD as u64, a[0], 0).map(|_| 0)
}

pub fn fchown(a: &Args) -> SysResult {
    ids_valid(a[1], a[2])?;
    file::get(a[0]).map(|_| 0)
}

pub fn fchownat(a: &Args) -> SysResult {
    if a[4] & !(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0 {
        return Err(Errno::EINVAL);
    }
    ids_valid(a[2], a[3])?;
    if a[4] & AT_EMPTY_PATH != 0 && user::read::<u8>(a[1])? == 0 {
        return file::get(a[0]).map(|_| 0);
    }
    target(a[0], a[1], 0).map(|_| 0)
}

/// The modification time a `[atime, mtime]` pair of timespecs asks for: None to leave it (UTIME_OMIT).
fn requested(times: u64) -> Result<Option<u64>, Errno> {
    if times == 0 {
        return Ok(Some(time::realtime_ns()));
    }
    let [_, _, sec, nsec]: [i64; 4] = user::read(times)?;
    match nsec {
        UTIME_NOW => Ok(Some(time::realtime_ns())),
        UTIME_OMIT => Ok(None),
        n if (0..1_000_000_000).contains(&n) && sec >= 0 => Ok(Some(sec as u64 * 1_000_000_000 + n as u64)),
        _ => Err(Errno::EINVAL),
    }
}

pub fn utimensat(a: &Args) -> SysResult {
    if a[3] & !(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0 {
        return Err(Errno::EINVAL);
    }
    let mtime = requested(a[2])?;
    let inode = target(a[0], a[1], a[3])?;
    if let Some(ns) = mtime {
        inode.set_mtime(ns);
    }
    Ok(0)
}

/// utimes and futimesat: `struct timeval[2]`, or now for a null pointer.
fn set_from_timevals(inode: &Arc<Inode>, times: u64) -> SysResult {
    let ns = if times == 0 {
        time::realtime_ns()
    } else {
        let [_, _, sec, usec]: [i64; 4] = user::read(times)?;
        if sec < 0 || !(0..1_000_000).contains(&usec) {
            return Err(Errno::EINVAL);
        }
        sec as u64 * 1_000_000_000 + usec as u64 * 1000
    };
    inode.set_mtime(ns);
    Ok(0)
}

pub fn utimes(a: &Args) -> SysResult {
    set_from_timevals(&target(AT_FDCWD as u64, a[0], 0)?, a[1])
}

pub fn futimesat(a: &Args) -> SysResult {
    set_from_timevals(&target(a[0], a[1], 0)?, a[2])
}

/// utime: `struct utimbuf` (seconds), or now for a null pointer.
pub fn utime(a: &Args) -> SysResult {
    let inode = target(AT_FDCWD as u64, a[0], 0)?;
    let ns = if a[1] == 0 {
        time::realtime_ns()
    } else {
        let [_, mtime]: [i64; 2] = user::read(a[1])?;
        (mtime.max(0) as u64).saturating_mul(1_000_000_000)
    };
    inode.set_mtime(ns);
    Ok(0)
}
