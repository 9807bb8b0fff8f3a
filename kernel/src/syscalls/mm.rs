//! mmap, munmap, mprotect, mremap, madvise, brk.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::mm::mapping;

const MAP_SHARED: u64 = 0x01;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
const MREMAP_MAYMOVE: u64 = 1;
const MADV_DONTNEED: u64 = 4;

pub fn mmap(a: &Args) -> SysResult {
    let (addr, len, flags) = (a[0], a[1], a[3]);
    if flags & MAP_ANONYMOUS == 0 {
        // File mappings arrive with files.
        return Err(Errno::ENODEV);
    }
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
        // Placing memory at a chosen address needs page-table changes we do not make yet.
        let _ = addr;
        return Err(Errno::ENOMEM);
    }
    // MAP_SHARED and MAP_PRIVATE are the same thing without fork.
    let _ = flags & MAP_SHARED;
    mapping::map_anonymous(len)
}

pub fn munmap(a: &Args) -> SysResult {
    mapping::unmap(a[0], a[1]).map(|()| 0)
}

/// Accepted but not enforced yet: every mapping stays readable, writable and executable.
pub fn mprotect(a: &Args) -> SysResult {
    if !a[0].is_multiple_of(kiln_abi::layout::PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

pub fn mremap(a: &Args) -> SysResult {
    let (old, old_len, new_len, flags) = (a[0], a[1], a[2], a[3]);
    if flags & !MREMAP_MAYMOVE != 0 {
        return Err(Errno::EINVAL);
    }
    mapping::remap(old, old_len, new_len, flags & MREMAP_MAYMOVE != 0)
}

pub fn madvise(a: &Args) -> SysResult {
    match a[2] {
        MADV_DONTNEED => mapping::discard(a[0], a[1]).map(|()| 0),
        _ => Ok(0),
    }
}

pub fn brk(a: &Args) -> SysResult {
    Ok(mapping::set_break(a[0]))
}
