//! mmap, munmap, mprotect, mremap, madvise, brk.
//!
//! Anonymous memory the program lets us place comes physically contiguous from the direct map (`mm::mapping`);
//! memory at an address the program chooses, and PROT_NONE reservations, go through `mm::vma`. A file mapping is
//! anonymous memory holding a copy of the file's bytes: the files live in memory already and there is no fork, so a
//! private mapping behaves as on Linux; a shared one does not see later writes to the file, and shared *writable*
//! file mappings are refused.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file::{self, Object, O_ACCMODE, O_RDWR, O_WRONLY};
use crate::mm::protect::{self, Access};
use crate::mm::{file_copies, mapping, owned, vma};
use crate::user;
use crate::vfs::pages::Pages;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use kiln_abi::layout::{page_align_up, PAGE_SIZE};

const MAP_SHARED: u64 = 0x01;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
const MREMAP_MAYMOVE: u64 = 1;
const MADV_DONTNEED: u64 = 4;

const PROT_NONE: u64 = 0;
const PROT_READ: u64 = 1;
const PROT_WRITE: u64 = 2;
const PROT_EXEC: u64 = 4;
const PROT_GROWSDOWN: u64 = 0x0100_0000;
const PROT_GROWSUP: u64 = 0x0200_0000;

pub fn mmap(a: &Args) -> SysResult {
    let (len, prot, flags) = (a[1], a[2], a[3]);
    if flags & MAP_ANONYMOUS == 0 {
        return mmap_file(a);
    }
    let at = map_writable(a)?;
    apply_protection(at, len, prot, flags & MAP_FIXED != 0)?;
    Ok(at)
}

/// Anonymous memory for `mmap` with arguments `a`: writable, unless it is a PROT_NONE reservation.
fn map_writable(a: &Args) -> SysResult {
    let (addr, len, prot, flags) = (a[0], a[1], a[2], a[3]);
    if len == 0 {
        return Err(Errno::EINVAL);
    }
    // MAP_SHARED and MAP_PRIVATE are the same thing without fork.
    let _ = flags & MAP_SHARED;
    let fixed = flags & MAP_FIXED != 0;
    if fixed && !addr.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    if fixed && in_direct_map(addr, len) {
        // Over memory we handed out from the direct map: it reads as fresh zeros, with the new mapping's protection
        // (given by the caller afterwards), not what the program had set there (a dynamic loader maps its
        // reservation PROT_NONE, then each segment over it). The rest of the direct map is the library OS's: nothing
        // can be mapped there.
        let end = addr.checked_add(page_align_up(len)).ok_or(Errno::ENOMEM)?;
        if !owned::covers(addr, end) {
            return Err(Errno::ENOMEM);
        }
        protect::unprotect(addr, end);
        mapping::discard(addr, len)?;
        return Ok(addr);
    }
    if fixed {
        // Over whatever is there, below the direct map or above it (a PIE's range, its loader's, the stack's): a
        // reservation stays one; memory reads as fresh zeros. Where part of the range is mapped already, there is
        // nothing to reserve, only pages to commit.
        if !vma::in_reservation(addr, addr.saturating_add(len)) {
            let _ = vma::reserve(addr, len, true);
        }
        if prot != PROT_NONE {
            vma::commit(addr, len)?;
        } else {
            vma::zero_committed(addr, len);
        }
        return Ok(addr);
    }
    let chosen = addr != 0 || flags & MAP_FIXED_NOREPLACE != 0;
    if prot == PROT_NONE || chosen {
        let at = vma::reserve(addr, len, flags & MAP_FIXED_NOREPLACE != 0)?;
        if prot != PROT_NONE {
            vma::commit(at, len)?;
        }
        return Ok(at);
    }
    mapping::map_anonymous(len)
}

/// Whether any of `[addr, addr+len)` is in the direct map, where anonymous memory the library OS placed lies.
fn in_direct_map(addr: u64, len: u64) -> bool {
    mapping::touches_direct_map(addr, len)
}

/// `mmap` of descriptor `a[4]` from offset `a[5]`: the file's bytes copied into fresh anonymous memory (zeros past
/// the end of the file); `/dev/zero` gives plain anonymous memory.
fn mmap_file(a: &Args) -> SysResult {
    let (len, prot, flags, offset) = (a[1], a[2], a[3], a[5]);
    let anonymous = [a[0], len, prot, flags | MAP_ANONYMOUS, u64::MAX, 0];
    let f = file::get(a[4])?;
    let inode = match &f.object {
        Object::Regular { inode, .. } => inode.clone(),
        Object::Zero => return mmap(&anonymous),
        // Pipes, eventfds, directories, the console: as on Linux.
        _ => return Err(Errno::ENODEV),
    };
    if !offset.is_multiple_of(PAGE_SIZE) || len == 0 {
        return Err(Errno::EINVAL);
    }
    let mode = f.flags.load(Ordering::Relaxed) & O_ACCMODE;
    let shared_writable = flags & MAP_SHARED != 0 && prot & PROT_WRITE != 0;
    match mode {
        O_WRONLY => return Err(Errno::EACCES),
        m if shared_writable && m != O_RDWR => return Err(Errno::EACCES),
        _ => {}
    }
    let fixed = flags & MAP_FIXED != 0;
    let source = inode.image_span().filter(|_| flags & MAP_SHARED == 0 && access(prot) == Access::Read);
    if let Some(source) = source.filter(|_| fixed && in_direct_map(a[0], len)) {
        // Over a copy of the same bytes that nobody could write (a dynamic loader's segment over its reservation):
        // only the protection changes, and giving access back to PROT_NONE pages needs no TLB flush.
        if file_copies::holds(a[0], len, source, offset) {
            apply_protection(a[0], len, prot, true)?;
            // Checked again: a thread giving write access meanwhile forgets the copy before it can write.
            if file_copies::holds(a[0], len, source, offset) {
                return Ok(a[0]);
            }
        }
    }
    if flags & MAP_SHARED != 0 {
        match inode.shared_pages() {
            Ok((pages, size)) => return map_shared(a, pages, size),
            // A file on a volume: a read-only shared mapping is a copy (it does not see later writes); writes
            // through a writable one would never reach the file.
            Err(Errno::ENODEV) if !shared_writable => {}
            Err(e) => return Err(e),
        }
    }
    let at = map_writable(&anonymous)?;
    if prot != PROT_NONE {
        let mut done = 0;
        while done < len {
            let copied = inode.read_with(offset + done, len - done, |bytes| {
                crate::user::write_bytes(at + done, bytes).map(|()| bytes.len() as u64)
            });
            match copied.and_then(|r| r) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    let _ = munmap(&[at, len, 0, 0, 0, 0]);
                    return Err(e);
                }
            }
        }
    }
    apply_protection(at, len, prot, fixed)?;
    if let Some(source) = source.filter(|_| in_direct_map(at, len)) {
        file_copies::remember(at, len, source, offset);
    }
    Ok(at)
}

/// MAP_SHARED of an in-memory file: its pages mapped where the program asked (over whatever is there with
/// MAP_FIXED), so that every shared mapping, read and write see the same bytes. Pages past the end of the file stay
/// unmapped (Linux raises SIGBUS there; here it is SIGSEGV).
fn map_shared(a: &Args, pages: Arc<Pages>, size: u64) -> SysResult {
    let (addr, len, prot, flags, offset) = (a[0], a[1], a[2], a[3], a[5]);
    let fixed = flags & MAP_FIXED != 0;
    if fixed {
        if !addr.is_multiple_of(PAGE_SIZE) || !vma::choosable(addr, addr.saturating_add(page_align_up(len))) {
            return Err(Errno::EINVAL);
        }
        if vma::owns(addr) {
            super::sysv::shm::unmapped(addr, len);
            vma::release(addr, len);
        }
    }
    let in_file = page_align_up(size).saturating_sub(offset).min(page_align_up(len)) / PAGE_SIZE;
    let frames = pages.frames(offset / PAGE_SIZE, in_file);
    let exact = fixed || flags & MAP_FIXED_NOREPLACE != 0;
    let at = vma::map_borrowed(addr, exact, len, &frames, prot & PROT_WRITE != 0, Some(pages)).map_err(|e| {
        if e == Errno::EEXIST && fixed {
            Errno::ENOMEM
        } else {
            e
        }
    })?;
    if access(prot) == Access::None {
        protect::protect(at, at.saturating_add(page_align_up(len)), Access::None, true)?;
    }
    Ok(at)
}

/// Gives a new mapping the protection `prot` asks for, if that is less than read-write. A PROT_NONE mapping that is
/// not MAP_FIXED is a fresh reservation, inaccessible already.
fn apply_protection(at: u64, len: u64, prot: u64, fixed: bool) -> Result<(), Errno> {
    let access = access(prot);
    if access == Access::ReadWrite || (access == Access::None && !fixed) {
        return Ok(());
    }
    protect::protect(at, at.saturating_add(page_align_up(len)), access, true)
}

pub fn munmap(a: &Args) -> SysResult {
    if vma::owns(a[0]) {
        if !a[0].is_multiple_of(PAGE_SIZE) || a[1] == 0 {
            return Err(Errno::EINVAL);
        }
        super::sysv::shm::unmapped(a[0], a[1]);
        // As for direct-map memory: a thread unmapping its own stack keeps it until it exits.
        let user_rsp = crate::percpu::syscall_frame().user_rsp;
        if (a[0]..a[0].saturating_add(a[1])).contains(&user_rsp) {
            crate::sched::free_at_exit(crate::sched::Unmapped::Chosen(a[0], a[1]));
        } else {
            vma::release(a[0], a[1]);
        }
        return Ok(0);
    }
    mapping::unmap(a[0], a[1]).map(|()| 0)
}

/// Protection changes apply to every vCPU before the call returns (`mm::protect`). PROT_EXEC alone reads as
/// PROT_READ, as on x86 without protection keys; nothing is made non-executable (Kiln's page tables set no NX bit).
/// Making reserved memory accessible commits it.
pub fn mprotect(a: &Args) -> SysResult {
    let (addr, len, prot) = (a[0], a[1], a[2]);
    if !addr.is_multiple_of(PAGE_SIZE)
        || prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_GROWSDOWN | PROT_GROWSUP) != 0
    {
        return Err(Errno::EINVAL);
    }
    let end = addr.checked_add(page_align_up(len)).ok_or(Errno::ENOMEM)?;
    let access = access(prot);
    let reserved = vma::in_reservation(addr, end);
    if reserved && access != Access::None {
        vma::commit_missing(addr, end - addr)?;
    }
    protect::protect(addr, end, access, reserved).map(|()| 0)
}

fn access(prot: u64) -> Access {
    if prot & PROT_WRITE != 0 {
        Access::ReadWrite
    } else if prot & (PROT_READ | PROT_EXEC) != 0 {
        Access::Read
    } else {
        Access::None
    }
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
        MADV_DONTNEED if vma::owns(a[0]) => {
            // Zero what is committed; what is not stays uncommitted.
            vma::zero_committed(a[0], a[1]);
            Ok(0)
        }
        MADV_DONTNEED if in_direct_map(a[0], a[1]) => mapping::discard(a[0], a[1]).map(|()| 0),
        _ => Ok(0),
    }
}

const MS_ASYNC: u64 = 1;
const MS_INVALIDATE: u64 = 2;
const MS_SYNC: u64 = 4;

/// Whether every page of `[addr, addr+len)` is mapped (PROT_NONE and reserved pages count, as on Linux).
fn mapped(addr: u64, len: u64) -> Result<(), Errno> {
    let end = addr.checked_add(page_align_up(len)).ok_or(Errno::ENOMEM)?;
    // In the direct map, only what the program holds is mapped to it (the rest is the library OS's).
    let programs = if in_direct_map(addr, end - addr) { owned::covers(addr, end) } else { protect::covered(addr, end) };
    if vma::in_reservation(addr, end) || programs {
        Ok(())
    } else {
        Err(Errno::ENOMEM)
    }
}

/// msync: a file mapping is a private copy (see mmap), so there is nothing to write back.
pub fn msync(a: &Args) -> SysResult {
    let (addr, len, flags) = (a[0], a[1], a[2]);
    let both = MS_ASYNC | MS_SYNC;
    if !addr.is_multiple_of(PAGE_SIZE) || flags & !(both | MS_INVALIDATE) != 0 || flags & both == both {
        return Err(Errno::EINVAL);
    }
    mapped(addr, len).map(|()| 0)
}

/// mincore: guest memory is never paged out, so every mapped page is resident.
pub fn mincore(a: &Args) -> SysResult {
    let (addr, len, vec) = (a[0], a[1], a[2]);
    if !addr.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    mapped(addr, len)?;
    let pages = page_align_up(len) / PAGE_SIZE;
    user::check(vec, pages, true)?;
    for i in 0..pages {
        user::write(vec + i, 1u8)?;
    }
    Ok(0)
}

/// mlock, munlock, munlockall: guest memory is never paged out by the library OS, so everything is locked already.
pub fn mlock(a: &Args) -> SysResult {
    crate::user::check(kiln_abi::layout::page_align_down(a[0]), a[1], false).map(|()| 0).map_err(|_| Errno::ENOMEM)
}

pub fn munlockall(_: &Args) -> SysResult {
    Ok(0)
}

const MCL_CURRENT: u64 = 1;
const MCL_FUTURE: u64 = 2;
const MCL_ONFAULT: u64 = 4;

pub fn mlockall(a: &Args) -> SysResult {
    if a[0] & (MCL_CURRENT | MCL_FUTURE) == 0 || a[0] & !(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

pub fn brk(a: &Args) -> SysResult {
    Ok(mapping::set_break(a[0]))
}
