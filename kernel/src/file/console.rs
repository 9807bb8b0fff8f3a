//! The VMM's stdout and stderr: a write hands the VMM the guest-physical pieces of the program's buffers in one
//! hypercall (one VM exit per `write`/`writev`, never one per byte), up to the segment and byte limits of kiln-abi
//! (a short write beyond them, which callers of `write` handle). Where the console is a terminal (a container's `-t`),
//! the terminal ioctls of the standard streams go to it.

use crate::errno::{Errno, SysResult};
use crate::{hypercall, user};
use kiln_abi::hypercall::{Hypercall, IoSegment, MAX_IO_SEGMENTS, MAX_WRITE_BYTES, TERMINAL_ARG_BYTES};

/// A buffer in the program's memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}

pub fn write(fd: u64, buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>) -> SysResult {
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
    if ret < 0 {
        Err(Errno(-ret))
    } else {
        Ok(ret as u64)
    }
}

/// The argument of a terminal ioctl on its way to the VMM: aligned to its size, so that it never crosses a page.
#[repr(C, align(64))]
struct TerminalArg([u8; TERMINAL_ARG_BYTES as usize]);

/// Terminal ioctl `request` (one `terminal_arg_bytes` knows) of a standard stream, its argument at `arg`: ENOTTY
/// unless the VMM's console is a terminal.
pub fn terminal(request: u64, arg: u64) -> SysResult {
    let is_terminal = crate::syscalls::signal::host_page_word(kiln_abi::boot::HOST_TERMINAL)
        .is_some_and(|w| w.load(core::sync::atomic::Ordering::Relaxed) == 1);
    let len = kiln_abi::hypercall::terminal_arg_bytes(request).ok_or(Errno::ENOTTY)?;
    if !is_terminal {
        return Err(Errno::ENOTTY);
    }
    let reads = kiln_abi::hypercall::terminal_request_reads(request);
    user::check(arg, len, reads)?;
    let mut buf = TerminalArg([0; TERMINAL_ARG_BYTES as usize]);
    if !reads {
        // SAFETY: `len` bytes at `arg` are mapped for the program (checked above), and `buf` holds at least `len`.
        unsafe { core::ptr::copy_nonoverlapping(arg as *const u8, buf.0.as_mut_ptr(), len as usize) };
    }
    let phys = crate::mm::virt_to_phys(buf.0.as_ptr() as u64).ok_or(Errno::EFAULT)?;
    let ret = hypercall::call(Hypercall::Terminal, &[request, phys]);
    if ret < 0 {
        return Err(Errno(-ret));
    }
    if reads {
        user::write_bytes(arg, &buf.0[..len as usize])?;
    }
    Ok(0)
}
