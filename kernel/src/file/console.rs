//! The VMM's stdout and stderr: a write hands the VMM the guest-physical pieces of the program's buffers in one
//! hypercall (one VM exit per `write`/`writev`, never one per byte), up to the segment and byte limits of kiln-abi
//! (a short write beyond them, which callers of `write` handle).

use crate::errno::{Errno, SysResult};
use crate::{hypercall, user};
use kiln_abi::hypercall::{Hypercall, IoSegment, MAX_IO_SEGMENTS, MAX_WRITE_BYTES};

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
