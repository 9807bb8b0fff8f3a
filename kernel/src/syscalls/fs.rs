//! File descriptor syscalls over `crate::file`: read/write and their vector and positional forms, open of the device
//! files, close, dup, fcntl, ioctl, fstat, pipes, eventfds, poll. No filesystem yet: only `/dev/*` paths open.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file::console::{self, IoVec};
use crate::file::epoll::{Ctl, Epoll, EPOLLEXCLUSIVE};
use crate::file::eventfd::EventFd;
use crate::file::pipe::{self, Pipe};
use crate::file::wait::PollSet;
use crate::file::{
    self, File, Object, O_ACCMODE, O_APPEND, O_CLOEXEC, O_DSYNC, O_NONBLOCK, O_PATH, O_RDONLY, O_RDWR, O_SYNC_ONLY,
    O_WRONLY,
};
use crate::sync::SpinLock;
use crate::vfs::{self, Inode};
use crate::{time, user};
use alloc::vec;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::BootInfo;

const F_DUPFD: u64 = 0;
const F_GETFD: u64 = 1;
const F_SETFD: u64 = 2;
const F_GETFL: u64 = 3;
const F_SETFL: u64 = 4;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FD_CLOEXEC: u64 = 1;
const FIONREAD: u64 = 0x541b;
const FIONBIO: u64 = 0x5421;
const POLLNVAL: u16 = 0x20;
const MAX_IOV: u64 = 1024;
pub const AT_FDCWD: i64 = -100;
/// Bytes moved through a kernel buffer per step (pipes, /dev/zero, /dev/urandom).
const CHUNK: usize = 16 << 10;

static EXE_PATH_ADDR: AtomicU64 = AtomicU64::new(0);
static EXE_PATH_LEN: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    EXE_PATH_ADDR.store(boot.exe_path_addr, Ordering::Relaxed);
    EXE_PATH_LEN.store(boot.exe_path_len, Ordering::Relaxed);
    file::init();
}

fn readable(f: &File) -> bool {
    f.flags.load(Ordering::Relaxed) & O_ACCMODE != O_WRONLY
}

fn writable(f: &File) -> bool {
    f.flags.load(Ordering::Relaxed) & O_ACCMODE != O_RDONLY
}

/// Reads into one program buffer.
fn read_into(f: &File, buf: u64, len: u64) -> SysResult {
    if !readable(f) {
        return Err(Errno::EBADF);
    }
    user::check(buf, len, true)?;
    match &f.object {
        Object::Stdin => file::stdin::read(IoVec { base: buf, len }, f.nonblocking()),
        Object::Null => Ok(0),
        Object::Zero | Object::Random => {
            let mut chunk = vec![0u8; CHUNK];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                if matches!(f.object, Object::Random) {
                    super::random::fill(&mut chunk[..n]);
                }
                user::write_bytes(buf + done, &chunk[..n])?;
                done += n as u64;
            }
            Ok(len)
        }
        Object::PipeReader(pipe::Reader(p)) | Object::FifoBoth(pipe::Reader(p), _) => {
            let asked = (len as usize).min(pipe::CAPACITY);
            let mut chunk = vec![0u8; super::read_buffer::stream_read_len(asked, p.available(), 1)];
            let n = p.read(&mut chunk, f.nonblocking())?;
            user::write_bytes(buf, &chunk[..n])?;
            Ok(n as u64)
        }
        Object::EventFd(e) => {
            if len < 8 {
                return Err(Errno::EINVAL);
            }
            user::write(buf, e.read(f.nonblocking())?)?;
            Ok(8)
        }
        Object::Regular { inode, offset, .. } => {
            let mut at = offset.lock();
            let n = read_file_at(inode, *at, buf, len)?;
            *at += n;
            Ok(n)
        }
        Object::Socket(_) | Object::Unix(_) | Object::Netlink(_) => super::net::read(f, buf, len),
        Object::Directory { .. } => Err(Errno::EISDIR),
        Object::Console(_) | Object::PipeWriter(_) | Object::Named { .. } => Err(Errno::EBADF),
        Object::Epoll(_) => Err(Errno::EINVAL),
    }
}

/// Copies file bytes from `at` straight into the program's buffer.
fn read_file_at(inode: &Inode, at: u64, buf: u64, len: u64) -> SysResult {
    // A file in pages (shared-mapped) hands its bytes over in pieces: ask until the end or enough.
    let mut done = 0;
    while done < len {
        let n = inode.read_with(at + done, len - done, |bytes| {
            user::write_bytes(buf + done, bytes).map(|()| bytes.len() as u64)
        })??;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Copies the program's buffers into the file from `at` (or its end); returns the bytes written and the new offset.
fn write_file_at(
    inode: &Inode,
    mut at: u64,
    append: bool,
    buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>,
) -> Result<(u64, u64), Errno> {
    let total = copy_in(buffers, |chunk| {
        at = inode.write_at(at, chunk, append)?;
        Ok(chunk.len())
    })?;
    Ok((total, at))
}

/// Feeds the program's buffers to `sink` in chunks of up to [`CHUNK`] bytes, gathered across buffer boundaries (so a
/// `writev` of a header and a body reaches a socket as one send, one TCP segment, as on Linux: sent apart, Nagle's
/// algorithm would hold the body back until the peer's delayed ACK). Stops at a short write; returns the bytes taken.
pub(super) fn copy_in(
    buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>,
    mut sink: impl FnMut(&[u8]) -> Result<usize, Errno>,
) -> SysResult {
    let mut chunk = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut filled = 0usize;
    // Hands the gathered bytes over: whether all were taken.
    let mut flush = |chunk: &[u8], total: &mut u64| -> Result<bool, Errno> {
        let taken = match sink(chunk) {
            Ok(taken) => taken,
            Err(Errno::EAGAIN) if *total > 0 => return Ok(false),
            Err(e) => return Err(e),
        };
        *total += taken as u64;
        Ok(taken == chunk.len())
    };
    for iov in buffers {
        let iov = match iov {
            Ok(iov) => iov,
            Err(e) if filled == 0 && total == 0 => return Err(e),
            Err(_) => break,
        };
        let mut done = 0;
        while done < iov.len {
            let n = (iov.len - done).min((CHUNK - filled) as u64) as usize;
            if let Err(e) = user::read_bytes(iov.base + done, &mut chunk[filled..filled + n]) {
                if filled == 0 && total == 0 {
                    return Err(e);
                }
                if filled > 0 {
                    flush(&chunk[..filled], &mut total)?;
                }
                return Ok(total);
            }
            filled += n;
            done += n as u64;
            if filled == CHUNK {
                let all = flush(&chunk[..filled], &mut total)?;
                filled = 0;
                if !all {
                    return Ok(total);
                }
            }
        }
    }
    if filled > 0 {
        flush(&chunk[..filled], &mut total)?;
    }
    Ok(total)
}

/// Writes the program's buffers to `f`.
fn write_from(f: &File, buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>) -> SysResult {
    if !writable(f) {
        return Err(Errno::EBADF);
    }
    let result = match &f.object {
        Object::Console(fd) => console::write(*fd, buffers),
        Object::Null | Object::Zero | Object::Random => {
            let mut total = 0;
            for iov in buffers {
                let iov = iov?;
                user::check(iov.base, iov.len, false)?;
                total += iov.len;
            }
            Ok(total)
        }
        Object::PipeWriter(pipe::Writer(p)) | Object::FifoBoth(_, pipe::Writer(p)) => {
            copy_in(buffers, |chunk| p.write(chunk, f.nonblocking()))
        }
        Object::Socket(_) => super::net::write_inet(f, buffers),
        // One message for datagram and seqpacket sockets, however many buffers; SIGPIPE is its own (a stream's only).
        Object::Unix(u) => return super::net::write_unix(f, &u.0, buffers),
        Object::Netlink(_) => super::net::write_netlink(f, buffers),
        Object::EventFd(e) => {
            let iov = buffers.next().ok_or(Errno::EINVAL)??;
            if iov.len < 8 {
                return Err(Errno::EINVAL);
            }
            e.write(user::read(iov.base)?, f.nonblocking())?;
            Ok(8)
        }
        Object::Regular { inode, offset, .. } => {
            let append = f.flags.load(Ordering::Relaxed) & O_APPEND != 0;
            let mut at = offset.lock();
            let (written, end) = write_file_at(inode, *at, append, buffers)?;
            *at = end;
            drop(at);
            sync_if(dsync(f), inode)?;
            Ok(written)
        }
        Object::Directory { .. } => Err(Errno::EISDIR),
        Object::Stdin | Object::PipeReader(_) | Object::Named { .. } => Err(Errno::EBADF),
        Object::Epoll(_) => Err(Errno::EINVAL),
    };
    if result == Err(Errno::EPIPE) {
        // The reader went away: Linux sends SIGPIPE, which ends the program unless it ignores or handles it; if the
        // program survives it, the write fails with EPIPE.
        let _ = super::signal::send_to_self(super::signal::SIGPIPE);
    }
    result
}

fn iovecs(addr: u64, count: u64) -> Result<impl Iterator<Item = Result<IoVec, Errno>>, Errno> {
    if count > MAX_IOV {
        return Err(Errno::EINVAL);
    }
    let size = core::mem::size_of::<IoVec>() as u64;
    Ok((0..count).map(move |i| user::read::<IoVec>(addr + i * size)))
}

pub fn read(a: &Args) -> SysResult {
    read_into(&*file::get(a[0])?, a[1], a[2])
}

/// Fills the program's buffers in order with `read(buffer, len)`, stopping after the first short read.
fn read_vectored(addr: u64, count: u64, mut read: impl FnMut(u64, u64) -> SysResult) -> SysResult {
    let mut total = 0;
    for iov in iovecs(addr, count)? {
        let iov = iov?;
        let n = read(iov.base, iov.len)?;
        total += n;
        if n < iov.len {
            break;
        }
    }
    Ok(total)
}

pub fn readv(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    if matches!(f.object, Object::Socket(_) | Object::Unix(_) | Object::Netlink(_)) {
        // One receive over all the buffers: a datagram is scattered over them, not one read per buffer (which took
        // a datagram for each, and waited for another once one filled its buffer).
        return super::net::readv(&f, &iovecs(a[1], a[2])?.collect::<Result<alloc::vec::Vec<IoVec>, Errno>>()?);
    }
    if let Object::PipeReader(pipe::Reader(p)) = &f.object {
        // One read over all the buffers: a read per buffer waited for more once the first was filled exactly.
        let buffers = iovecs(a[1], a[2])?.collect::<Result<alloc::vec::Vec<IoVec>, Errno>>()?;
        let total = buffers.iter().fold(0u64, |sum, b| sum.saturating_add(b.len)).min(pipe::CAPACITY as u64);
        let mut chunk = vec![0u8; super::read_buffer::stream_read_len(total as usize, p.available(), 1)];
        let n = p.read(&mut chunk, f.nonblocking())?;
        let mut done = 0;
        for iov in &buffers {
            let take = (n - done).min(iov.len as usize);
            user::write_bytes(iov.base, &chunk[done..done + take])?;
            done += take;
        }
        return Ok(n as u64);
    }
    read_vectored(a[1], a[2], |buf, len| read_into(&f, buf, len))
}

pub fn write(a: &Args) -> SysResult {
    write_from(&*file::get(a[0])?, &mut core::iter::once(Ok(IoVec { base: a[1], len: a[2] })))
}

pub fn writev(a: &Args) -> SysResult {
    write_from(&*file::get(a[0])?, &mut iovecs(a[1], a[2])?)
}

/// The file behind a positional read or write (`pread64`, `preadv`, ...): EBADF without the access `allowed`,
/// ESPIPE for what has no offsets.
fn positional(f: &File, allowed: bool) -> Result<&Inode, Errno> {
    match &f.object {
        _ if !allowed => Err(Errno::EBADF),
        Object::Regular { inode, .. } => Ok(inode),
        Object::Directory { .. } => Err(Errno::EISDIR),
        _ => Err(Errno::ESPIPE),
    }
}

pub fn pread64(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    let inode = positional(&f, readable(&f))?;
    user::check(a[1], a[2], true)?;
    read_file_at(inode, offset_arg(a[3])?, a[1], a[2])
}

/// Whether writes to `f` must reach the disk before they return (O_DSYNC, or O_SYNC which includes it).
fn dsync(f: &File) -> bool {
    f.flags.load(Ordering::Relaxed) & O_DSYNC != 0
}

/// After a write: writes `inode` back if `wanted` (a volume's file then waits for the host's flush, as fdatasync).
fn sync_if(wanted: bool, inode: &Inode) -> Result<(), Errno> {
    if wanted {
        inode.sync()?;
    }
    Ok(())
}

pub fn pwrite64(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    let inode = positional(&f, writable(&f))?;
    let iov = IoVec { base: a[1], len: a[2] };
    let (written, _) = write_file_at(inode, offset_arg(a[3])?, false, &mut core::iter::once(Ok(iov)))?;
    sync_if(dsync(&f), inode)?;
    Ok(written)
}

/// preadv: readv at an offset (`a[3]`; on x86-64 the high half in `a[4]` is unused), leaving the file's offset alone.
pub fn preadv(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    let inode = positional(&f, readable(&f))?;
    let mut at = offset_arg(a[3])?;
    read_vectored(a[1], a[2], |buf, len| {
        user::check(buf, len, true)?;
        let n = read_file_at(inode, at, buf, len)?;
        at += n;
        Ok(n)
    })
}

pub fn pwritev(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    let inode = positional(&f, writable(&f))?;
    let (written, _) = write_file_at(inode, offset_arg(a[3])?, false, &mut iovecs(a[1], a[2])?)?;
    sync_if(dsync(&f), inode)?;
    Ok(written)
}

/// RWF_HIPRI and RWF_NOWAIT change nothing; RWF_DSYNC and RWF_SYNC make this write as O_DSYNC would (a file on a
/// volume is written back before the call returns); RWF_APPEND makes pwritev2 append. Other flags are EOPNOTSUPP,
/// as Linux says for flags it does not know.
const RWF_KNOWN: u64 = 0x1f;
const RWF_DSYNC: u64 = 0x2;
const RWF_SYNC: u64 = 0x4;
const RWF_APPEND: u64 = 0x10;

pub fn preadv2(a: &Args) -> SysResult {
    match (a[5], a[3] as i64) {
        (flags, _) if flags & !RWF_KNOWN != 0 => Err(Errno::EOPNOTSUPP),
        // Offset -1: the file's own offset, as readv uses.
        (_, -1) => readv(a),
        _ => preadv(a),
    }
}

pub fn pwritev2(a: &Args) -> SysResult {
    let written = match (a[5], a[3] as i64) {
        (flags, _) if flags & !RWF_KNOWN != 0 => Err(Errno::EOPNOTSUPP),
        (flags, _) if flags & RWF_APPEND != 0 => {
            let f = file::get(a[0])?;
            let inode = positional(&f, writable(&f))?;
            write_file_at(inode, 0, true, &mut iovecs(a[1], a[2])?).map(|(n, _)| n)
        }
        (_, -1) => writev(a),
        _ => pwritev(a),
    }?;
    if a[5] & (RWF_DSYNC | RWF_SYNC) != 0 {
        if let Object::Regular { inode, .. } = &file::get(a[0])?.object {
            inode.sync()?;
        }
    }
    Ok(written)
}

fn offset_arg(offset: u64) -> Result<u64, Errno> {
    if (offset as i64) < 0 {
        Err(Errno::EINVAL)
    } else {
        Ok(offset)
    }
}

const SEEK_SET: u64 = 0;
const SEEK_CUR: u64 = 1;
const SEEK_END: u64 = 2;

pub fn lseek(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    let (delta, whence) = (a[1] as i64, a[2]);
    match &f.object {
        // Linux lets these seek and always answers 0.
        Object::Null | Object::Zero | Object::Random => Ok(0),
        Object::Regular { inode, offset, .. } => {
            let mut at = offset.lock();
            let base = match whence {
                SEEK_SET => 0,
                SEEK_CUR => *at as i64,
                SEEK_END => inode.stat().size as i64,
                _ => return Err(Errno::EINVAL),
            };
            let new = base.checked_add(delta).filter(|&n| n >= 0).ok_or(Errno::EINVAL)?;
            *at = new as u64;
            Ok(new as u64)
        }
        Object::Directory { position, .. } if whence == SEEK_SET && delta >= 0 => {
            *position.lock() = delta as usize;
            Ok(delta as u64)
        }
        _ => Err(Errno::ESPIPE),
    }
}

pub fn close(a: &Args) -> SysResult {
    file::close(a[0]).map(|()| 0)
}

pub fn dup(a: &Args) -> SysResult {
    file::install(file::get_including_path(a[0])?, false)
}

pub fn dup2(a: &Args) -> SysResult {
    let f = file::get_including_path(a[0])?;
    if a[0] == a[1] {
        return Ok(a[1]);
    }
    file::install_at(a[1], f, false)
}

pub fn dup3(a: &Args) -> SysResult {
    if a[0] == a[1] || a[2] & !u64::from(O_CLOEXEC) != 0 {
        return Err(Errno::EINVAL);
    }
    file::install_at(a[1], file::get_including_path(a[0])?, a[2] & u64::from(O_CLOEXEC) != 0)
}

pub fn fcntl(a: &Args) -> SysResult {
    let (fd, cmd, arg) = (a[0], a[1], a[2]);
    let f = file::get_including_path(fd)?;
    // An O_PATH descriptor answers only what concerns the descriptor itself, as on Linux.
    if f.is_path() && !matches!(cmd, F_DUPFD | F_DUPFD_CLOEXEC | F_GETFD | F_SETFD | F_GETFL) {
        return Err(Errno::EBADF);
    }
    match cmd {
        F_DUPFD | F_DUPFD_CLOEXEC => {
            // Linux takes the argument as an int, then as unsigned: a negative one is above every limit.
            let from = usize::try_from(arg as i32 as u32).map_err(|_| Errno::EINVAL)?;
            file::install_from(f, cmd == F_DUPFD_CLOEXEC, from)
        }
        F_GETFD => Ok(if file::cloexec(fd)? { FD_CLOEXEC } else { 0 }),
        F_SETFD => file::set_cloexec(fd, arg & FD_CLOEXEC != 0).map(|()| 0),
        F_GETFL => Ok(u64::from(f.flags.load(Ordering::Relaxed))),
        F_SETFL => {
            // Only the status flags change; the access mode stays.
            let settable = O_NONBLOCK | O_APPEND;
            let old = f.flags.load(Ordering::Relaxed);
            f.flags.store((old & !settable) | (arg as u32 & settable), Ordering::Relaxed);
            Ok(0)
        }
        super::lock::F_GETLK
        | super::lock::F_SETLK
        | super::lock::F_SETLKW
        | super::lock::F_OFD_GETLK
        | super::lock::F_OFD_SETLK
        | super::lock::F_OFD_SETLKW => super::lock::record_lock(&f, cmd, arg),
        _ => Err(Errno::EINVAL),
    }
}

pub fn ioctl(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    match a[1] {
        FIONBIO => {
            let on: i32 = user::read(a[2])?;
            let flags = f.flags.load(Ordering::Relaxed);
            f.flags.store(if on != 0 { flags | O_NONBLOCK } else { flags & !O_NONBLOCK }, Ordering::Relaxed);
            Ok(0)
        }
        FIONREAD => {
            let n = match &f.object {
                Object::PipeReader(pipe::Reader(p)) | Object::FifoBoth(pipe::Reader(p), _) => p.available(),
                Object::Unix(u) => u.0.available(),
                Object::Netlink(n) => n.available(),
                Object::Socket(s) => s.available(),
                _ => 0,
            };
            user::write(a[2], n as i32).map(|()| 0)
        }
        request
            if super::ifreq::is_interface_request(request)
                && matches!(f.object, Object::Socket(_) | Object::Unix(_) | Object::Netlink(_)) =>
        {
            super::ifreq::ioctl(request, a[2])
        }
        // The standard streams are a terminal where the VMM's console is one (a container's `-t`).
        request
            if kiln_abi::hypercall::terminal_arg_bytes(request).is_some()
                && matches!(f.object, Object::Stdin | Object::Console(_)) =>
        {
            console::terminal(request, a[2])
        }
        // No other descriptor is a terminal, nor is another terminal ioctl answered.
        _ => Err(Errno::ENOTTY),
    }
}

pub fn pipe2(a: &Args) -> SysResult {
    let flags = a[1] as u32;
    if flags & !(O_CLOEXEC | O_NONBLOCK) != 0 {
        return Err(Errno::EINVAL);
    }
    user::check(a[0], 8, true)?;
    let pipe = Pipe::new();
    let cloexec = flags & O_CLOEXEC != 0;
    let status = flags & O_NONBLOCK;
    let r = file::install(File::new(Object::PipeReader(pipe::Reader(pipe.clone())), O_RDONLY | status), cloexec)?;
    let w = match file::install(File::new(Object::PipeWriter(pipe::Writer(pipe)), O_WRONLY | status), cloexec) {
        Ok(w) => w,
        Err(e) => {
            let _ = file::close(r);
            return Err(e);
        }
    };
    user::write(a[0], [r as i32, w as i32]).map(|()| 0)
}

pub fn pipe(a: &Args) -> SysResult {
    pipe2(&[a[0], 0, 0, 0, 0, 0])
}

const EFD_SEMAPHORE: u64 = 1;

pub fn eventfd2(a: &Args) -> SysResult {
    let (initial, flags) = (a[0] as u32, a[1]);
    let known = EFD_SEMAPHORE | u64::from(O_NONBLOCK | O_CLOEXEC);
    if flags & !known != 0 {
        return Err(Errno::EINVAL);
    }
    let event = EventFd::new(u64::from(initial), flags & EFD_SEMAPHORE != 0);
    let status = flags as u32 & O_NONBLOCK;
    file::install(File::new(Object::EventFd(event), O_RDWR | status), flags & u64::from(O_CLOEXEC) != 0)
}

pub fn eventfd(a: &Args) -> SysResult {
    eventfd2(&[a[0], 0, 0, 0, 0, 0])
}

const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;
const O_TRUNC: u32 = 0o1000;
const O_DIRECTORY: u32 = 0o200000;
const O_NOFOLLOW: u32 = 0o400000;

/// Opens `path` (absolute, as `super::path::resolve` makes it): a device file, or one of the filesystem.
fn open_path(path: &str, flags: u32, mode: u32) -> SysResult {
    let cloexec = flags & O_CLOEXEC != 0;
    if flags & O_PATH != 0 {
        return open_naming(path, flags, cloexec);
    }
    let status = flags & (O_ACCMODE | O_NONBLOCK | O_APPEND | O_DSYNC | O_SYNC_ONLY);
    let device = match path {
        "/proc/self/stat" if flags & O_ACCMODE != O_RDONLY => return Err(Errno::EACCES),
        "/proc/self/stat" => {
            let inode = vfs::Inode::detached(vfs::process_stat());
            Some(Object::Regular { inode, path: path.into(), offset: SpinLock::new(0) })
        }
        "/proc/self/maps" if flags & O_ACCMODE != O_RDONLY => return Err(Errno::EACCES),
        "/proc/self/maps" => {
            let inode = vfs::Inode::detached(crate::mm::maps::render());
            Some(Object::Regular { inode, path: path.into(), offset: SpinLock::new(0) })
        }
        "/proc/net/igmp" | "/proc/net/igmp6" if flags & O_ACCMODE != O_RDONLY => return Err(Errno::EACCES),
        "/proc/net/igmp" | "/proc/net/igmp6" => {
            let text = if path.ends_with('6') {
                crate::net::groups::render_igmp6()
            } else {
                crate::net::groups::render_igmp()
            };
            Some(Object::Regular { inode: vfs::Inode::detached(text), path: path.into(), offset: SpinLock::new(0) })
        }
        "/dev/stdin" => return reopen(0, flags, mode),
        "/dev/stdout" => return reopen(1, flags, mode),
        "/dev/stderr" => return reopen(2, flags, mode),
        _ => None,
    };
    if let Some(object) = device {
        return file::install(File::new(object, status), cloexec);
    }
    let create = (flags & O_CREAT != 0).then_some(mode);
    let inode = vfs::open(path, create, flags & O_EXCL != 0)?;
    if inode.is_socket() {
        // A socket's name is for connect, as on Linux.
        return Err(Errno::ENXIO);
    }
    if inode.link_target().is_some() {
        // Only O_NOFOLLOW leaves a link here.
        return Err(Errno::ELOOP);
    }
    if inode.is_fifo() {
        if flags & O_DIRECTORY != 0 {
            return Err(Errno::ENOTDIR);
        }
        let object = file::fifo::open(inode.ino, flags, flags & O_NONBLOCK != 0)?;
        return file::install(File::new(object, status), cloexec);
    }
    let object = if let Some(rdev) = inode.device() {
        if flags & O_DIRECTORY != 0 {
            return Err(Errno::ENOTDIR);
        }
        match rdev {
            vfs::DEV_NULL => Object::Null,
            vfs::DEV_ZERO => Object::Zero,
            _ => Object::Random,
        }
    } else if inode.is_dir() {
        if flags & O_ACCMODE != O_RDONLY || flags & O_CREAT != 0 {
            return Err(Errno::EISDIR);
        }
        Object::Directory { inode, path: path.into(), position: SpinLock::new(0) }
    } else {
        if flags & O_DIRECTORY != 0 {
            return Err(Errno::ENOTDIR);
        }
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY {
            inode.truncate(0)?;
        }
        Object::Regular { inode, path: path.into(), offset: SpinLock::new(0) }
    };
    file::install(File::new(object, status), cloexec)
}

/// O_PATH: a descriptor that names the file, made without opening it (a FIFO is not joined, nothing is created or
/// truncated); of the other flags only O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW count, as on Linux.
fn open_naming(path: &str, flags: u32, cloexec: bool) -> SysResult {
    let inode = vfs::open(path, None, false)?;
    let object = if inode.is_dir() {
        Object::Directory { inode, path: path.into(), position: SpinLock::new(0) }
    } else if flags & O_DIRECTORY != 0 {
        return Err(Errno::ENOTDIR);
    } else {
        Object::Regular { inode, path: path.into(), offset: SpinLock::new(0) }
    };
    file::install(File::new(object, O_PATH), cloexec)
}

/// Opening `/proc/self/fd/N` (or `/dev/stdin` and its kin): a file of the tree is opened again by its path, with
/// the flags given and an offset of its own; a socket cannot be opened (ENXIO, as on Linux); anything else (a pipe,
/// the console) is the same open file, as a dup. O_PATH names a file of no path (`Object::Named`).
fn reopen(fd: u64, flags: u32, mode: u32) -> SysResult {
    let f = file::get_including_path(fd).map_err(|_| Errno::ENOENT)?;
    if flags & O_PATH != 0 {
        // Only a file of no path comes here: it is named, not opened (not made one more reader of a pipe).
        let named = Object::Named { mode: stat_of(&f).mode, ino: f.anonymous_ino(), link: f.proc_link() };
        return file::install(File::new(named, O_PATH), flags & O_CLOEXEC != 0);
    }
    match &f.object {
        Object::Socket(_) | Object::Unix(_) | Object::Netlink(_) => Err(Errno::ENXIO),
        Object::Regular { path, .. } | Object::Directory { path, .. } if path.starts_with('/') => {
            let path = path.clone();
            drop(f);
            open_path(&path, flags & !(O_CREAT | O_EXCL), mode)
        }
        _ => file::install(f, flags & O_CLOEXEC != 0),
    }
}

/// The descriptor `/proc/self/fd/N` names, if `path` is one: opened by [`reopen`] rather than by following the
/// link, whose target may be no path at all (`pipe:[N]`).
pub(super) fn proc_fd(path: &str) -> Option<u64> {
    let n = path.strip_prefix("/proc/self/fd/")?;
    n.parse().ok().filter(|fd: &u64| alloc::format!("{fd}") == n)
}

pub fn open(a: &Args) -> SysResult {
    openat(&[AT_FDCWD as u64, a[0], a[1], a[2], 0, 0])
}

/// A trailing slash names a directory: ENOTDIR for another existing file, EISDIR with O_CREAT (a regular file cannot
/// be made by that name).
pub fn openat(a: &Args) -> SysResult {
    let flags = a[2] as u32;
    let flags = if flags & O_PATH != 0 { flags & (O_PATH | O_CLOEXEC | O_DIRECTORY | O_NOFOLLOW) } else { flags };

    // O_NOFOLLOW leaves a link in the last name for `open_path` to refuse; O_CREAT|O_EXCL never follows one (a
    // link there, even dangling, is a name that exists).
    let follow = flags & O_NOFOLLOW == 0 && flags & (O_CREAT | O_EXCL) != O_CREAT | O_EXCL;
    let (path, slash) = super::path::resolve_slashed(a[0], a[1], follow)?;
    // A descriptor's link that the walk could not follow to a file of the tree (`pipe:[N]`), or did not (but
    // O_PATH|O_NOFOLLOW names the link itself).
    if path.starts_with("/proc/self/fd/") && (flags & O_PATH == 0 || follow) {
        if let Some(fd) = super::path::resolve_slashed(a[0], a[1], false).ok().and_then(|(p, _)| proc_fd(&p)) {
            return reopen(fd, flags, a[3] as u32);
        }
    }
    if slash {
        if flags & O_CREAT == 0 {
            vfs::must_be_dir(&path)?;
        } else {
            let parent = path.rsplit_once('/').map_or("/", |(dir, _)| if dir.is_empty() { "/" } else { dir });
            return Err(match vfs::lookup(parent) {
                Ok(dir) if !dir.is_dir() => Errno::ENOTDIR,
                Ok(_) => Errno::EISDIR,
                Err(e) => e,
            });
        }
    }
    open_path(&path, flags, a[3] as u32)
}

pub fn creat(a: &Args) -> SysResult {
    open(&[a[0], u64::from(O_CREAT | O_WRONLY | O_TRUNC), a[1], 0, 0, 0])
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub rdev: u64,
    pub size: i64,
    pub blksize: i64,
    pub blocks: i64,
    /// atime, mtime, ctime: seconds and nanoseconds each.
    pub times: [i64; 6],
    pub _unused: [i64; 3],
}

const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;
use vfs::S_IFCHR;

/// The `struct stat` of an open file.
pub fn stat_of(f: &File) -> Stat {
    if let Object::Regular { inode, .. } | Object::Directory { inode, .. } = &f.object {
        return stat_of_inode(inode);
    }
    let (mode, rdev) = match &f.object {
        Object::Stdin | Object::Console(_) => (S_IFIFO | 0o600, 0),
        Object::Null => (S_IFCHR | 0o666, vfs::DEV_NULL),
        Object::Zero => (S_IFCHR | 0o666, vfs::DEV_ZERO),
        Object::Random => (S_IFCHR | 0o666, vfs::DEV_URANDOM),
        Object::PipeReader(_) | Object::PipeWriter(_) | Object::FifoBoth(..) => (S_IFIFO | 0o600, 0),
        Object::Socket(_) | Object::Unix(_) | Object::Netlink(_) => (S_IFSOCK | 0o777, 0),
        Object::Named { mode, .. } => (*mode, 0),
        Object::EventFd(_) | Object::Epoll(_) | Object::Regular { .. } | Object::Directory { .. } => (0o600, 0),
    };
    Stat { nlink: 1, mode, rdev, blksize: 4096, ino: f.anonymous_ino(), ..Default::default() }
}

pub fn stat_of_inode(inode: &Inode) -> Stat {
    let vfs::Attrs { mode, size, links, atime_ns, mtime_ns } = inode.stat();
    let split = |ns: u64| [(ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64];
    let ([asec, ansec], [sec, nsec]) = (split(atime_ns), split(mtime_ns));
    Stat {
        dev: 1,
        ino: inode.ino,
        nlink: u64::from(links),
        mode,
        rdev: inode.device().unwrap_or(0),
        size: size as i64,
        blksize: 4096,
        blocks: size.div_ceil(512) as i64,
        times: [asec, ansec, sec, nsec, sec, nsec],
        ..Default::default()
    }
}

pub fn fstat(a: &Args) -> SysResult {
    let f = file::get_including_path(a[0])?;
    user::write(a[1], stat_of(&f)).map(|()| 0)
}

pub fn ftruncate(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    match &f.object {
        Object::Regular { inode, .. } if writable(&f) => inode.truncate(offset_arg(a[1])?).map(|()| 0),
        Object::Directory { .. } => Err(Errno::EISDIR),
        _ => Err(Errno::EINVAL),
    }
}

/// fsync, fdatasync, sync_file_range: a file on a volume is written back (its volume's changes, flushed on the
/// host); the in-memory tree has nothing to write.
pub fn fsync(a: &Args) -> SysResult {
    match &file::get(a[0])?.object {
        Object::Regular { inode, .. } | Object::Directory { inode, .. } => inode.sync().map(|()| 0),
        _ => Ok(0),
    }
}

/// sync, syncfs: every volume is written back.
pub fn sync(_: &Args) -> SysResult {
    crate::volume::sync_all().map(|()| 0)
}

/// fadvise64: every file is in memory already, so each advice (0..=5) is accepted and changes nothing.
pub fn fadvise64(a: &Args) -> SysResult {
    let f = file::get(a[0])?;
    match (&f.object, a[3]) {
        (
            Object::PipeReader(_) | Object::PipeWriter(_) | Object::FifoBoth(..) | Object::Socket(_) | Object::Unix(_),
            _,
        ) => Err(Errno::ESPIPE),
        (_, 0..=5) if (a[2] as i64) >= 0 => Ok(0),
        _ => Err(Errno::EINVAL),
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DirentHeader {
    ino: u64,
    off: i64,
    reclen: u16,
    kind: u8,
}

const DT_UNKNOWN: u8 = 0;
const DT_FIFO: u8 = 1;
const DT_CHR: u8 = 2;
const DT_LNK: u8 = 10;
const DT_SOCK: u8 = 12;
const DT_DIR: u8 = 4;
const DT_REG: u8 = 8;

pub fn getdents64(a: &Args) -> SysResult {
    let (fd, buf, size) = (a[0], a[1], a[2]);
    let f = file::get(fd)?;
    let Object::Directory { inode, position, .. } = &f.object else { return Err(Errno::ENOTDIR) };
    let mut pos = position.lock();
    // "." and ".." come first, as positions 0 and 1.
    let mut listing: alloc::vec::Vec<(alloc::string::String, u64, vfs::EntryType)> = alloc::vec![
        (".".into(), inode.ino, vfs::EntryType::Directory),
        ("..".into(), inode.ino, vfs::EntryType::Directory)
    ];
    listing.extend(inode.entries_from(0)?);
    let mut written = 0u64;
    for (name, ino, kind) in listing.iter().skip(*pos) {
        let reclen = (19 + name.len() + 1).next_multiple_of(8) as u64;
        if written + reclen > size {
            if written == 0 {
                return Err(Errno::EINVAL);
            }
            break;
        }
        let at = buf + written;
        let header = DirentHeader {
            ino: *ino,
            off: (*pos + 1) as i64,
            reclen: reclen as u16,
            kind: match kind {
                vfs::EntryType::Directory => DT_DIR,
                vfs::EntryType::Regular => DT_REG,
                vfs::EntryType::CharDevice => DT_CHR,
                vfs::EntryType::Socket => DT_SOCK,
                vfs::EntryType::Symlink => DT_LNK,
                vfs::EntryType::Fifo => DT_FIFO,
                vfs::EntryType::Other => DT_UNKNOWN,
            },
        };
        user::write_bytes(at, &header_bytes(&header))?;
        let mut name_bytes = alloc::vec![0u8; reclen as usize - 19];
        name_bytes[..name.len()].copy_from_slice(name.as_bytes());
        user::write_bytes(at + 19, &name_bytes)?;
        written += reclen;
        *pos += 1;
    }
    Ok(written)
}

/// The 19 bytes of a `linux_dirent64` before its name.
fn header_bytes(h: &DirentHeader) -> [u8; 19] {
    let mut b = [0u8; 19];
    b[..8].copy_from_slice(&h.ino.to_le_bytes());
    b[8..16].copy_from_slice(&h.off.to_le_bytes());
    b[16..18].copy_from_slice(&h.reclen.to_le_bytes());
    b[18] = h.kind;
    b
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PollFd {
    fd: i32,
    events: u16,
    revents: u16,
}

/// Fills in `revents`; returns how many descriptors have some.
fn poll_once(fds: u64, count: u64) -> SysResult {
    let size = core::mem::size_of::<PollFd>() as u64;
    let mut ready = 0;
    for i in 0..count {
        let addr = fds + i * size;
        let mut p: PollFd = user::read(addr)?;
        p.revents = match p.fd {
            fd if fd < 0 => 0,
            fd => file::get(fd as u64).map_or(POLLNVAL, |f| f.ready(p.events)),
        };
        if p.revents != 0 {
            ready += 1;
        }
        user::write(addr, p)?;
    }
    Ok(ready)
}

/// Polls until something is ready or `deadline` (ns since boot; `u64::MAX` for never) passes.
fn poll_until(fds: u64, count: u64, deadline: u64) -> SysResult {
    if count > file::MAX_FDS as u64 {
        return Err(Errno::EINVAL);
    }
    // Watched before the first look, so that no change after it goes unseen.
    let mut watching = PollSet::new();
    if deadline > time::since_boot_ns() {
        let size = core::mem::size_of::<PollFd>() as u64;
        for i in 0..count {
            let p: PollFd = user::read(fds + i * size)?;
            if let Ok(f) = u64::try_from(p.fd).map_err(|_| Errno::EBADF).and_then(file::get) {
                watching.watch(f);
            }
        }
    }
    loop {
        let seen = watching.waitable.count();
        let ready = poll_once(fds, count)?;
        if ready > 0 || time::since_boot_ns() >= deadline {
            return Ok(ready);
        }
        watching.waitable.wait(seen, deadline)?;
    }
}

pub fn poll(a: &Args) -> SysResult {
    poll_until(a[0], a[1], deadline_ms(a[2] as i32))
}

pub fn ppoll(a: &Args) -> SysResult {
    let deadline = match a[2] {
        0 => u64::MAX,
        t => time::since_boot_ns().saturating_add(user::read_timespec(t)?),
    };
    poll_until(a[0], a[1], deadline)
}

/// readlinkat: a symbolic link's target, truncated to `size` bytes, no NUL added; `/proc/self/exe` is the program's
/// path. Anything else that exists is not a link (EINVAL, which realpath() and `readlink -f` rely on), and a path
/// that does not resolve gives the walk's error.
fn readlink_path(dirfd: u64, path: u64, buf: u64, size: u64) -> SysResult {
    if size as i32 <= 0 {
        return Err(Errno::EINVAL);
    }
    let path = super::path::resolve_nofollow(dirfd, path)?;
    if path != "/proc/self/exe" {
        let target = vfs::readlink(&path)?;
        let n = target.len().min(size as usize);
        user::write_bytes(buf, &target.as_bytes()[..n])?;
        return Ok(n as u64);
    }
    let (exe, exe_len) = (EXE_PATH_ADDR.load(Ordering::Relaxed), EXE_PATH_LEN.load(Ordering::Relaxed));
    let n = exe_len.min(size);
    // SAFETY: the VMM put the path in the program's initial stack, which stays mapped; `n` is within it.
    let bytes = unsafe { core::slice::from_raw_parts(exe as *const u8, n as usize) };
    user::write_bytes(buf, bytes)?;
    Ok(n)
}

pub fn readlink(a: &Args) -> SysResult {
    readlink_path(AT_FDCWD as u64, a[0], a[1], a[2])
}

pub fn readlinkat(a: &Args) -> SysResult {
    readlink_path(a[0], a[1], a[2], a[3])
}

const EPOLL_CTL_ADD: u64 = 1;
const EPOLL_CTL_DEL: u64 = 2;
const EPOLL_CTL_MOD: u64 = 3;

pub fn epoll_create1(a: &Args) -> SysResult {
    let flags = a[0] as u32;
    if flags & !O_CLOEXEC != 0 {
        return Err(Errno::EINVAL);
    }
    file::install(File::new(Object::Epoll(Epoll::default()), O_RDWR), flags & O_CLOEXEC != 0)
}

pub fn epoll_create(a: &Args) -> SysResult {
    if a[0] as i32 <= 0 {
        return Err(Errno::EINVAL);
    }
    epoll_create1(&[0; 6])
}

/// `struct epoll_event` is packed on x86-64: 4 bytes of events, then 8 of data.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}

pub fn epoll_ctl(a: &Args) -> SysResult {
    let (epfd, op, fd, event) = (a[0], a[1], a[2], a[3]);
    let ep = file::get(epfd)?;
    let Object::Epoll(epoll) = &ep.object else { return Err(Errno::EINVAL) };
    let target = file::get(fd)?;
    // Nesting epoll descriptors (and with it loops) is not supported.
    if matches!(target.object, Object::Epoll(_)) {
        return Err(Errno::EINVAL);
    }
    let op = match op {
        EPOLL_CTL_ADD => Ctl::Add,
        EPOLL_CTL_MOD => Ctl::Mod,
        EPOLL_CTL_DEL => Ctl::Del,
        _ => return Err(Errno::EINVAL),
    };
    let (events, data) = match op {
        Ctl::Del => (0, 0),
        _ => {
            let e: EpollEvent = user::read(event)?;
            (e.events, e.data)
        }
    };
    if events & EPOLLEXCLUSIVE != 0 && !matches!(op, Ctl::Add) {
        return Err(Errno::EINVAL);
    }
    // ADD and MOD wake a thread already in epoll_wait, to look at the new interest (tokio registers a connected
    // socket while another worker waits).
    epoll.ctl(op, fd, &target, events, data)?;
    Ok(0)
}

fn epoll_wait_until(epfd: u64, events: u64, max: u64, deadline: u64) -> SysResult {
    if max == 0 || max > (i32::MAX as u64) / 12 {
        return Err(Errno::EINVAL);
    }
    let ep = file::get(epfd)?;
    let Object::Epoll(epoll) = &ep.object else { return Err(Errno::EINVAL) };
    user::check(events, max * 12, true)?;
    let max = (max as usize).min(file::MAX_FDS);
    let mut ready = alloc::vec::Vec::new();
    loop {
        let seen = epoll.waitable.count();
        epoll.collect(&mut ready, max);
        if !ready.is_empty() || time::since_boot_ns() >= deadline {
            break;
        }
        epoll.waitable.wait(seen, deadline)?;
    }
    for (i, &(events_ready, data)) in ready.iter().enumerate() {
        user::write(events + i as u64 * 12, EpollEvent { events: events_ready, data })?;
    }
    Ok(ready.len() as u64)
}

fn deadline_ms(timeout_ms: i32) -> u64 {
    match timeout_ms {
        t if t < 0 => u64::MAX,
        t => time::since_boot_ns().saturating_add(t as u64 * 1_000_000),
    }
}

pub fn epoll_wait(a: &Args) -> SysResult {
    epoll_wait_until(a[0], a[1], a[2], deadline_ms(a[3] as i32))
}

/// The signal mask is ignored: nothing delivers signals yet.
pub fn epoll_pwait(a: &Args) -> SysResult {
    epoll_wait(a)
}

pub fn epoll_pwait2(a: &Args) -> SysResult {
    let deadline = match a[3] {
        0 => u64::MAX,
        t => time::since_boot_ns().saturating_add(user::read_timespec(t)?),
    };
    epoll_wait_until(a[0], a[1], a[2], deadline)
}

/// Descriptors an `fd_set` holds.
const FD_SETSIZE: u64 = 1024;

/// select and pselect6 over `poll`'s readiness: fd_sets of up to 1024 bits for read, write and exceptions.
fn select_until(nfds: u64, sets: [u64; 3], deadline: u64) -> SysResult {
    if nfds > FD_SETSIZE {
        return Err(Errno::EINVAL);
    }
    let words = nfds.div_ceil(64) as usize;
    let mut wanted = [[0u64; 16]; 3];
    for (set, &addr) in wanted.iter_mut().zip(&sets) {
        if addr != 0 {
            for (w, word) in set[..words].iter_mut().enumerate() {
                *word = user::read(addr + 8 * w as u64)?;
            }
        }
    }
    let mut watching = PollSet::new();
    if deadline > time::since_boot_ns() {
        for fd in 0..nfds {
            let (w, bit) = ((fd / 64) as usize, 1u64 << (fd % 64));
            if wanted.iter().any(|set| set[w] & bit != 0) {
                watching.watch(file::get(fd)?);
            }
        }
    }
    loop {
        let seen = watching.waitable.count();
        let mut result = [[0u64; 16]; 3];
        let mut count = 0;
        for fd in 0..nfds {
            let (w, bit) = ((fd / 64) as usize, 1u64 << (fd % 64));
            let asked = [wanted[0][w] & bit != 0, wanted[1][w] & bit != 0, wanted[2][w] & bit != 0];
            if !asked.iter().any(|&x| x) {
                continue;
            }
            let f = file::get(fd)?;
            let ready = f.ready(POLLIN_OUT);
            let hits = [
                asked[0] && ready & (file::POLLIN | file::POLLHUP | file::POLLERR) != 0,
                asked[1] && ready & (file::POLLOUT | file::POLLERR) != 0,
                false,
            ];
            for (set, hit) in result.iter_mut().zip(hits) {
                if hit {
                    set[w] |= bit;
                    count += 1;
                }
            }
        }
        if count > 0 || time::since_boot_ns() >= deadline {
            for (set, &addr) in result.iter().zip(&sets) {
                if addr != 0 {
                    for (w, &word) in set[..words].iter().enumerate() {
                        user::write(addr + 8 * w as u64, word)?;
                    }
                }
            }
            return Ok(count);
        }
        watching.waitable.wait(seen, deadline)?;
    }
}

const POLLIN_OUT: u16 = file::POLLIN | file::POLLOUT;

pub fn select(a: &Args) -> SysResult {
    let deadline = match a[4] {
        0 => u64::MAX,
        t => {
            let tv: [i64; 2] = user::read(t)?;
            if tv[0] < 0 || !(0..1_000_000).contains(&tv[1]) {
                return Err(Errno::EINVAL);
            }
            // Seconds a program gives can be huge (i64::MAX): a wait that long is a wait without end, not a wrap.
            let ns = (tv[0] as u64).saturating_mul(1_000_000_000).saturating_add(tv[1] as u64 * 1000);
            time::since_boot_ns().saturating_add(ns)
        }
    };
    select_until(a[0], [a[1], a[2], a[3]], deadline)
}

pub fn pselect6(a: &Args) -> SysResult {
    let deadline = match a[4] {
        0 => u64::MAX,
        t => time::since_boot_ns().saturating_add(user::read_timespec(t)?),
    };
    select_until(a[0], [a[1], a[2], a[3]], deadline)
}
