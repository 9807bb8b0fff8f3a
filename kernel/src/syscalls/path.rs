//! Syscalls that name files by path: stat and friends, access, the working directory, mkdir, unlink, rmdir, rename,
//! truncate, chmod. `*at` forms resolve relative paths against a directory descriptor.

use super::fs::{stat_of_inode, Stat, AT_FDCWD};
use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file::{self, Object};
use crate::{user, vfs};
use alloc::string::String;

const AT_EMPTY_PATH: u64 = 0x1000;
const AT_REMOVEDIR: u64 = 0x200;
pub const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_SYMLINK_FOLLOW: u64 = 0x400;

/// The program's path argument made absolute and canonical, relative to `dirfd` (or the working directory for
/// AT_FDCWD), a symbolic link in its last name followed. A trailing slash asks for a directory (ENOTDIR for
/// something else).
pub fn resolve(dirfd: u64, path: u64) -> Result<String, Errno> {
    resolve_following(dirfd, path, true)
}

/// [`resolve`] leaving a symbolic link in the last name as it is (lstat, unlink, rename, readlink...).
pub fn resolve_nofollow(dirfd: u64, path: u64) -> Result<String, Errno> {
    resolve_following(dirfd, path, false)
}

pub fn resolve_following(dirfd: u64, path: u64, follow: bool) -> Result<String, Errno> {
    let (abs, slash) = resolve_slashed(dirfd, path, follow)?;
    if slash {
        vfs::must_be_dir(&abs)?;
    }
    Ok(abs)
}

/// [`resolve_following`] for calls that give a trailing slash their own meaning: the path and whether it had one.
pub fn resolve_slashed(dirfd: u64, path: u64, follow: bool) -> Result<(String, bool), Errno> {
    let path = read_path(path)?;
    if path.starts_with('/') || dirfd as i64 == AT_FDCWD {
        return vfs::normalise(&path, follow);
    }
    match &file::get_including_path(dirfd)?.object {
        Object::Directory { path: dir, .. } => vfs::normalise(&alloc::format!("{dir}/{path}"), follow),
        _ => Err(Errno::ENOTDIR),
    }
}

/// Whether `flags` (of a `*at` call) ask to follow a symbolic link in the last name.
fn follows(flags: u64) -> bool {
    flags & AT_SYMLINK_NOFOLLOW == 0
}

fn read_path(addr: u64) -> Result<String, Errno> {
    let mut buf = alloc::vec![0u8; vfs::PATH_MAX];
    let mut fixed = [0u8; 256];
    // Most paths are short: read them into the small buffer first.
    let bytes = match user::read_c_string(addr, &mut fixed) {
        Ok(n) => &fixed[..n],
        Err(Errno::ENAMETOOLONG) => {
            let n = read_long(addr, &mut buf)?;
            &buf[..n]
        }
        Err(e) => return Err(e),
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| Errno::EINVAL)
}

fn read_long(addr: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    for (i, slot) in buf.iter_mut().enumerate() {
        let b: u8 = user::read(addr + i as u64)?;
        if b == 0 {
            return Ok(i);
        }
        *slot = b;
    }
    Err(Errno::ENAMETOOLONG)
}

/// What `stat` says about `path`.
pub(super) fn stat_path(path: &str) -> Result<Stat, Errno> {
    Ok(stat_of_inode(&*vfs::lookup(path)?))
}

/// Whether the program's `path` names something (statfs only needs it to exist).
pub(super) fn stat_of(path: u64) -> Result<(), Errno> {
    stat_path(&resolve(AT_FDCWD as u64, path)?).map(|_| ())
}

/// What `stat` says about the program's `path`, relative to `dirfd`. A descriptor's link `/proc/self/fd/N` is
/// followed as Linux follows it, to the open file itself: its target may be no path at all (`pipe:[INO]`), and a
/// file's path may since have gone.
fn stat_at(dirfd: u64, path: u64, follow: bool) -> Result<Stat, Errno> {
    if follow {
        if let Ok((named, false)) = resolve_slashed(dirfd, path, false) {
            if let Some(fd) = super::fs::proc_fd(&named) {
                return Ok(super::fs::stat_of(&*file::get_including_path(fd).map_err(|_| Errno::ENOENT)?));
            }
        }
    }
    stat_path(&resolve_following(dirfd, path, follow)?)
}

pub fn stat(a: &Args) -> SysResult {
    let st = stat_at(AT_FDCWD as u64, a[0], true)?;
    user::write(a[1], st).map(|()| 0)
}

/// lstat: a symbolic link itself.
pub fn lstat(a: &Args) -> SysResult {
    let st = stat_path(&resolve_nofollow(AT_FDCWD as u64, a[0])?)?;
    user::write(a[1], st).map(|()| 0)
}

pub fn newfstatat(a: &Args) -> SysResult {
    let (dirfd, path, buf, flags) = (a[0], a[1], a[2], a[3]);
    if flags & AT_EMPTY_PATH != 0 && user::read::<u8>(path)? == 0 {
        return super::fs::fstat(&[dirfd, buf, 0, 0, 0, 0]);
    }
    let st = stat_at(dirfd, path, follows(flags))?;
    user::write(buf, st).map(|()| 0)
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StatxTime {
    sec: i64,
    nsec: u32,
    _pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Statx {
    mask: u32,
    blksize: u32,
    attributes: u64,
    nlink: u32,
    uid: u32,
    gid: u32,
    mode: u16,
    _pad: u16,
    ino: u64,
    size: u64,
    blocks: u64,
    attributes_mask: u64,
    atime: StatxTime,
    btime: StatxTime,
    ctime: StatxTime,
    mtime: StatxTime,
    rdev_major: u32,
    rdev_minor: u32,
    dev_major: u32,
    dev_minor: u32,
    _rest: [u64; 14],
}

/// STATX_BASIC_STATS: type, mode, nlink, uid, gid, times, ino, size, blocks.
const STATX_BASIC_STATS: u32 = 0x7ff;

pub fn statx(a: &Args) -> SysResult {
    let (dirfd, path, flags, buf) = (a[0], a[1], a[2], a[4]);
    // The descriptor itself, whatever it is (a pipe, a socket, an O_PATH name): what fstat says of it.
    let st = if flags & AT_EMPTY_PATH != 0 && user::read::<u8>(path)? == 0 {
        super::fs::stat_of(&*file::get_including_path(dirfd)?)
    } else {
        stat_at(dirfd, path, follows(flags))?
    };
    let time = |sec: i64, nsec: i64| StatxTime { sec, nsec: nsec as u32, _pad: 0 };
    let sx = Statx {
        mask: STATX_BASIC_STATS,
        blksize: st.blksize as u32,
        nlink: st.nlink as u32,
        mode: st.mode as u16,
        ino: st.ino,
        size: st.size as u64,
        blocks: st.blocks as u64,
        atime: time(st.times[0], st.times[1]),
        mtime: time(st.times[2], st.times[3]),
        ctime: time(st.times[4], st.times[5]),
        rdev_major: (st.rdev >> 8) as u32,
        rdev_minor: (st.rdev & 0xff) as u32,
        ..Default::default()
    };
    user::write(buf, sx).map(|()| 0)
}

/// Everyone is root: a path that exists is accessible in every way.
pub fn access(a: &Args) -> SysResult {
    stat_path(&resolve(AT_FDCWD as u64, a[0])?).map(|_| 0)
}

pub fn faccessat(a: &Args) -> SysResult {
    stat_path(&resolve(a[0], a[1])?).map(|_| 0)
}

pub fn getcwd(a: &Args) -> SysResult {
    let cwd = vfs::cwd();
    let len = cwd.len() as u64 + 1;
    if a[1] < len {
        return Err(Errno::ERANGE);
    }
    user::write_bytes(a[0], cwd.as_bytes())?;
    user::write(a[0] + cwd.len() as u64, 0u8)?;
    Ok(len)
}

pub fn chdir(a: &Args) -> SysResult {
    vfs::chdir(&resolve(AT_FDCWD as u64, a[0])?).map(|()| 0)
}

pub fn fchdir(a: &Args) -> SysResult {
    match &file::get_including_path(a[0])?.object {
        Object::Directory { path, .. } => vfs::chdir(path).map(|()| 0),
        _ => Err(Errno::ENOTDIR),
    }
}

/// A trailing slash is allowed (it names the directory to make); an existing name is EEXIST whatever it is.
pub fn mkdir(a: &Args) -> SysResult {
    mkdirat(&[AT_FDCWD as u64, a[0], a[1], 0, 0, 0])
}

pub fn mkdirat(a: &Args) -> SysResult {
    vfs::mkdir(&resolve_slashed(a[0], a[1], false)?.0, a[2] as u32).map(|()| 0)
}

pub fn unlink(a: &Args) -> SysResult {
    vfs::remove(&resolve_nofollow(AT_FDCWD as u64, a[0])?, false).map(|()| 0)
}

pub fn rmdir(a: &Args) -> SysResult {
    vfs::remove(&resolve_nofollow(AT_FDCWD as u64, a[0])?, true).map(|()| 0)
}

pub fn unlinkat(a: &Args) -> SysResult {
    if a[2] & !AT_REMOVEDIR != 0 {
        return Err(Errno::EINVAL);
    }
    vfs::remove(&resolve_nofollow(a[0], a[1])?, a[2] & AT_REMOVEDIR != 0).map(|()| 0)
}

pub fn rename(a: &Args) -> SysResult {
    renameat(&[AT_FDCWD as u64, a[0], AT_FDCWD as u64, a[1], 0, 0])
}

/// A trailing slash on either name is allowed only for moving a directory (ENOTDIR otherwise).
pub fn renameat(a: &Args) -> SysResult {
    let ((from, from_slash), (to, to_slash)) =
        (resolve_slashed(a[0], a[1], false)?, resolve_slashed(a[2], a[3], false)?);
    if (from_slash || to_slash) && !vfs::lookup(&from)?.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    vfs::rename(&from, &to).map(|()| 0)
}

pub fn link(a: &Args) -> SysResult {
    linkat(&[AT_FDCWD as u64, a[0], AT_FDCWD as u64, a[1], 0, 0])
}

/// linkat: a symbolic link as `from` is linked itself unless AT_SYMLINK_FOLLOW (as link(2) does on Linux);
/// AT_EMPTY_PATH is not supported.
pub fn linkat(a: &Args) -> SysResult {
    if a[4] & !AT_SYMLINK_FOLLOW != 0 {
        return Err(Errno::EINVAL);
    }
    let from = resolve_following(a[0], a[1], a[4] & AT_SYMLINK_FOLLOW != 0)?;
    vfs::link(&from, &resolve_nofollow(a[2], a[3])?).map(|()| 0)
}

pub fn mknod(a: &Args) -> SysResult {
    mknodat(&[AT_FDCWD as u64, a[0], a[1], a[2], 0, 0])
}

/// mknodat: regular files and FIFOs. Device nodes are EPERM (as for a process without CAP_MKNOD: the VM has no
/// devices for them to reach), and so are sockets, which only `bind` makes here.
pub fn mknodat(a: &Args) -> SysResult {
    const S_IFMT: u32 = 0o170000;
    const S_IFSOCK: u32 = 0o140000;
    const S_IFBLK: u32 = 0o060000;
    let (path, mode) = (resolve_nofollow(a[0], a[1])?, a[2] as u32);
    match mode & S_IFMT {
        0 | vfs::S_IFREG => vfs::open(&path, Some(mode & 0o7777), true).map(|_| 0),
        vfs::S_IFIFO => vfs::mkfifo(&path, mode & 0o7777).map(|()| 0),
        vfs::S_IFCHR | S_IFBLK | S_IFSOCK => Err(Errno::EPERM),
        _ => Err(Errno::EINVAL),
    }
}

pub fn symlink(a: &Args) -> SysResult {
    symlinkat(&[a[0], AT_FDCWD as u64, a[1], 0, 0, 0])
}

/// symlinkat(target, dirfd, linkpath): the target is kept as given, not resolved.
pub fn symlinkat(a: &Args) -> SysResult {
    let target = read_path(a[0])?;
    vfs::symlink(&target, &resolve_nofollow(a[1], a[2])?).map(|()| 0)
}

/// renameat2 without flags is renameat; RENAME_NOREPLACE and the rest are not supported yet.
pub fn renameat2(a: &Args) -> SysResult {
    if a[4] != 0 {
        return Err(Errno::EINVAL);
    }
    renameat(a)
}

pub fn truncate(a: &Args) -> SysResult {
    if (a[1] as i64) < 0 {
        return Err(Errno::EINVAL);
    }
    vfs::lookup(&resolve(AT_FDCWD as u64, a[0])?)?.truncate(a[1]).map(|()| 0)
}

/// Permission bits are recorded for `stat`; nothing enforces them (everyone is root).
pub fn chmod(a: &Args) -> SysResult {
    vfs::lookup(&resolve(AT_FDCWD as u64, a[0])?)?.set_perm(a[1] as u32);
    Ok(0)
}

pub fn fchmodat(a: &Args) -> SysResult {
    vfs::lookup(&resolve(a[0], a[1])?)?.set_perm(a[2] as u32);
    Ok(0)
}

pub fn fchmod(a: &Args) -> SysResult {
    match &file::get(a[0])?.object {
        Object::Regular { inode, .. } | Object::Directory { inode, .. } => inode.set_perm(a[1] as u32),
        _ => {}
    }
    Ok(0)
}
