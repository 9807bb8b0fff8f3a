//! File descriptors. For now a program has its three standard streams: stdin reads as end-of-file, stdout and
//! stderr go to the VMM's stdout and stderr, one VM exit per `write`/`writev`.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::{hypercall, user};
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::hypercall::{Hypercall, IoSegment, MAX_IO_SEGMENTS, MAX_WRITE_BYTES};
use kiln_abi::BootInfo;

const O_RDONLY: u64 = 0;
const O_WRONLY: u64 = 1;
const F_GETFD: u64 = 1;
const F_SETFD: u64 = 2;
const F_GETFL: u64 = 3;
const F_SETFL: u64 = 4;
const POLLIN: u16 = 0x1;
const POLLOUT: u16 = 0x4;
const POLLNVAL: u16 = 0x20;
const MAX_IOV: u64 = 1024;

static EXE_PATH_ADDR: AtomicU64 = AtomicU64::new(0);
static EXE_PATH_LEN: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    EXE_PATH_ADDR.store(boot.exe_path_addr, Ordering::Relaxed);
    EXE_PATH_LEN.store(boot.exe_path_len, Ordering::Relaxed);
}

fn check_std_fd(fd: u64) -> Result<(), Errno> {
    if fd <= 2 {
        Ok(())
    } else {
        Err(Errno::EBADF)
    }
}

pub fn read(a: &Args) -> SysResult {
    match a[0] {
        0 => {
            user::check(a[1], a[2], true)?;
            Ok(0)
        }
        _ => Err(Errno::EBADF),
    }
}

pub fn readv(a: &Args) -> SysResult {
    match a[0] {
        0 => Ok(0),
        _ => Err(Errno::EBADF),
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Writes the program's buffers to the VMM in one hypercall, up to the segment and byte limits (a short write then,
/// which callers of `write` handle).
fn write_buffers(fd: u64, buffers: impl Iterator<Item = Result<IoVec, Errno>>) -> SysResult {
    if fd != 1 && fd != 2 {
        return Err(Errno::EBADF);
    }
    let mut segments = [IoSegment::default(); MAX_IO_SEGMENTS as usize];
    let mut used = 0;
    let mut total = 0u64;
    for iov in buffers {
        let iov = iov?;
        let room = MAX_WRITE_BYTES - total;
        let want = iov.len.min(room);
        let described = user::physical_segments(iov.base, want, &mut segments, &mut used)?;
        total += described;
        if described < iov.len || total == MAX_WRITE_BYTES {
            break;
        }
    }
    if total == 0 {
        return Ok(0);
    }
    let segs_phys = crate::mm::virt_to_phys(segments.as_ptr() as u64).ok_or(Errno::EFAULT)?;
    let ret = hypercall::call(Hypercall::Write, &[fd, segs_phys, used as u64]);
    if ret == -Errno::EPIPE.0 {
        // The reader went away: Linux sends SIGPIPE, which ends the program unless it ignores or handles it; if the
        // program survives it, the write fails with EPIPE.
        let _ = super::signal::send_to_self(super::signal::SIGPIPE);
    }
    if ret < 0 {
        Err(Errno(-ret))
    } else {
        Ok(ret as u64)
    }
}

pub fn write(a: &Args) -> SysResult {
    write_buffers(a[0], core::iter::once(Ok(IoVec { base: a[1], len: a[2] })))
}

pub fn writev(a: &Args) -> SysResult {
    let (fd, iov, count) = (a[0], a[1], a[2]);
    if count > MAX_IOV {
        return Err(Errno::EINVAL);
    }
    let size = core::mem::size_of::<IoVec>() as u64;
    write_buffers(fd, (0..count).map(|i| user::read::<IoVec>(iov + i * size)))
}

pub fn ioctl(a: &Args) -> SysResult {
    check_std_fd(a[0])?;
    // The streams are pipes or files as far as the program can tell: no terminal (TCGETS, TIOCGWINSZ), no others.
    let _request = a[1];
    Err(Errno::ENOTTY)
}

pub fn fcntl(a: &Args) -> SysResult {
    check_std_fd(a[0])?;
    match a[1] {
        F_GETFD => Ok(0),
        F_SETFD | F_SETFL => Ok(0),
        F_GETFL => Ok(if a[0] == 0 { O_RDONLY } else { O_WRONLY }),
        // F_DUPFD and the rest need a descriptor table, which arrives with files.
        _ => Err(Errno::EINVAL),
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PollFd {
    fd: i32,
    events: u16,
    revents: u16,
}

/// The standard streams never block: stdin is at end-of-file, stdout and stderr always take data.
fn poll_fds(fds: u64, count: u64) -> SysResult {
    if count > 4096 {
        return Err(Errno::EINVAL);
    }
    let size = core::mem::size_of::<PollFd>() as u64;
    let mut ready = 0;
    for i in 0..count {
        let addr = fds + i * size;
        let mut p: PollFd = user::read(addr)?;
        p.revents = match p.fd {
            fd if fd < 0 => 0,
            0 => p.events & POLLIN,
            1 | 2 => p.events & POLLOUT,
            _ => POLLNVAL,
        };
        if p.revents != 0 {
            ready += 1;
        }
        user::write(addr, p)?;
    }
    Ok(ready)
}

pub fn poll(a: &Args) -> SysResult {
    poll_fds(a[0], a[1])
}

pub fn ppoll(a: &Args) -> SysResult {
    poll_fds(a[0], a[1])
}

fn readlink_path(path: u64, buf: u64, size: u64) -> SysResult {
    let mut name = [0u8; 256];
    let len = user::read_c_string(path, &mut name)?;
    if &name[..len] != b"/proc/self/exe" {
        return Err(Errno::ENOENT);
    }
    if size as i64 <= 0 {
        return Err(Errno::EINVAL);
    }
    let (exe, exe_len) = (EXE_PATH_ADDR.load(Ordering::Relaxed), EXE_PATH_LEN.load(Ordering::Relaxed));
    let n = exe_len.min(size);
    // SAFETY: the VMM put the path in the program's initial stack, which stays mapped; `n` is within it.
    let bytes = unsafe { core::slice::from_raw_parts(exe as *const u8, n as usize) };
    user::write_bytes(buf, bytes)?;
    Ok(n)
}

pub fn readlink(a: &Args) -> SysResult {
    readlink_path(a[0], a[1], a[2])
}

/// Only absolute paths exist so far, for which the directory descriptor does not matter.
pub fn readlinkat(a: &Args) -> SysResult {
    readlink_path(a[1], a[2], a[3])
}
