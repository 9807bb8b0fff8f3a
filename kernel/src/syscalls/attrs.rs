//! Owners and times of files: the chown family and the utime family. There is one user (root) and no permission
//! checks, so owners are accepted and not kept (stat reports root); files keep their access and modification times
//! (the change time reads as the modification time).

use super::fs::AT_FDCWD;
use super::path::resolve_following;
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
/// with AT_EMPTY_PATH (or a null path, as utimensat allows). None for a descriptor of a pipe, socket or device, which
/// has no inode of ours: the call succeeds, as on Linux, with nothing to record.
fn target(dirfd: u64, path: u64, flags: u64) -> Result<Option<Arc<Inode>>, Errno> {
    let empty = path == 0 || (flags & AT_EMPTY_PATH != 0 && user::read::<u8>(path)? == 0);
    if !empty {
        let follow = flags & AT_SYMLINK_NOFOLLOW == 0;
        return vfs::lookup(&resolve_following(dirfd, path, follow)?).map(Some);
    }
    match &file::get_including_path(dirfd)?.object {
        Object::Regular { inode, .. } | Object::Directory { inode, .. } => Ok(Some(inode.clone())),
        _ => Ok(None),
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
    target(a[0], a[1], a[4] & AT_SYMLINK_NOFOLLOW).map(|_| 0)
}

/// lchown: a symbolic link itself.
pub fn lchown(a: &Args) -> SysResult {
    ids_valid(a[1], a[2])?;
    target(AT_FDCWD as u64, a[0], AT_SYMLINK_NOFOLLOW).map(|_| 0)
}

/// One time of a `[atime, mtime]` pair of timespecs: None to leave it (UTIME_OMIT).
fn requested(sec: i64, nsec: i64) -> Result<Option<u64>, Errno> {
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
    let (atime, mtime) = if a[2] == 0 {
        let now = time::realtime_ns();
        (Some(now), Some(now))
    } else {
        let [asec, ansec, msec, mnsec]: [i64; 4] = user::read(a[2])?;
        (requested(asec, ansec)?, requested(msec, mnsec)?)
    };
    if let Some(inode) = target(a[0], a[1], a[3])? {
        inode.set_times(atime, mtime);
    }
    Ok(0)
}

/// utimes and futimesat: `struct timeval[2]` (access, modification), or now for a null pointer.
fn set_from_timevals(inode: Option<Arc<Inode>>, times: u64) -> SysResult {
    let Some(inode) = inode else { return Ok(0) };
    if times == 0 {
        let now = time::realtime_ns();
        inode.set_times(Some(now), Some(now));
        return Ok(0);
    }
    let pair: [i64; 4] = user::read(times)?;
    let mut ns = [0u64; 2];
    for (ns, [sec, usec]) in ns.iter_mut().zip([[pair[0], pair[1]], [pair[2], pair[3]]]) {
        if sec < 0 || !(0..1_000_000).contains(&usec) {
            return Err(Errno::EINVAL);
        }
        *ns = sec as u64 * 1_000_000_000 + usec as u64 * 1000;
    }
    inode.set_times(Some(ns[0]), Some(ns[1]));
    Ok(0)
}

pub fn utimes(a: &Args) -> SysResult {
    set_from_timevals(target(AT_FDCWD as u64, a[0], 0)?, a[1])
}

pub fn futimesat(a: &Args) -> SysResult {
    set_from_timevals(target(a[0], a[1], 0)?, a[2])
}

/// utime: `struct utimbuf` (access and modification seconds), or now for a null pointer.
pub fn utime(a: &Args) -> SysResult {
    let Some(inode) = target(AT_FDCWD as u64, a[0], 0)? else { return Ok(0) };
    let [atime, mtime] = if a[1] == 0 {
        [time::realtime_ns(); 2]
    } else {
        let secs: [i64; 2] = user::read(a[1])?;
        secs.map(|s| (s.max(0) as u64).saturating_mul(1_000_000_000))
    };
    inode.set_times(Some(atime), Some(mtime));
    Ok(0)
}
