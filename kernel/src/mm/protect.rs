//! mprotect: the permissions of pages the program has mapped, in 4 KiB steps (`kiln_abi::paging::protect`).
//!
//! Changing an entry a TLB may hold (present and accessed: taking access away, or giving write access back to a
//! read-only page) is followed by the `FlushTlb` hypercall, after which no vCPU uses the old permission: one VM exit on
//! the calling vCPU, plus a kick out of the guest for each other vCPU running the program. Other entries need none.
//!
//! Anonymous memory from the direct map is split into 4 KiB pages where the program protects part of a 2 MiB page
//! or makes it PROT_NONE; a 2 MiB page made read-only or read-write as a whole stays one. The library OS
//! reaches that memory through the same addresses, so it gives it full access back before freeing it (munmap) and
//! around its own writes to it (MADV_DONTNEED, mremap).

use super::{memory, pml4, ram_size, DirectMap};
use crate::errno::Errno;
use crate::hypercall;
use alloc::vec::Vec;
use kiln_abi::layout::{DIRECT_MAP_BASE, HUGE_PAGE_SIZE, PAGE_SIZE, PROGRAM_MIN_ADDR};
use kiln_abi::paging::protect::{self as paging, Leaf};

pub use kiln_abi::paging::protect::Access;

pub fn leaf(page: u64) -> Option<Leaf> {
    paging::leaf(&DirectMap, pml4(), page)
}

/// The guest-physical address `page` reaches through the direct map, if it is in it.
fn in_direct_map(page: u64) -> Option<u64> {
    page.checked_sub(DIRECT_MAP_BASE).filter(|&phys| phys < ram_size())
}

/// The entries mapping `[start, end)` (present or PROT_NONE), with where each page starts: a walk of the tables
/// that exist, so its cost follows what is mapped there, not the span.
pub fn leaves(start: u64, end: u64) -> Vec<(u64, Leaf)> {
    let mut found = Vec::new();
    paging::leaves_in(&DirectMap, pml4(), start, end, &mut |at, l| found.push((at, l)));
    found
}

/// Whether the program's pages cover all of `[start, end)` (page-aligned): no hole, nothing of Kiln's.
pub fn covered(start: u64, end: u64) -> bool {
    let mut next = start;
    for (at, l) in leaves(start, end) {
        if at > next || !l.user() {
            return false;
        }
        next = at + l.size;
    }
    next >= end
}

/// Whether the program may change the protection of all of `[start, end)`: its own part of the address space
/// (below the direct map from `PROGRAM_MIN_ADDR`, or above it: a PIE at `PIE_BASE`, its dynamic loader, its stack), or
/// anonymous memory handed out from the direct map and still held (`mm::owned`); never the library OS's memory
/// beside it, Kiln's pages or the boot layout.
fn all_programs(start: u64, end: u64) -> bool {
    match in_direct_map(start) {
        Some(_) => super::owned::covers(start, end),
        None => start >= PROGRAM_MIN_ADDR && (end <= DIRECT_MAP_BASE || start >= DIRECT_MAP_BASE) && start < end,
    }
}

/// Gives every page of `[start, end)` `access`, all or nothing: a page that is not mapped fails the call with ENOMEM
/// (as on Linux) unless `reserved` says the range is a PROT_NONE reservation, whose uncommitted pages stay as they are.
/// The cost follows the pages mapped in the range, not its size.
pub fn protect(start: u64, end: u64, access: Access, reserved: bool) -> Result<(), Errno> {
    if start >= end {
        return Ok(());
    }
    if !all_programs(start, end) || !(reserved || covered(start, end)) {
        return Err(Errno::ENOMEM);
    }
    if access == Access::ReadWrite {
        super::file_copies::forget(start, end);
    }
    let mut reload = false;
    // Collected before the memory lock is taken, and freed after: the heap takes it to grow and to give back.
    let found = leaves(start, end);
    {
        let mut m = memory();
        for &(at, l) in found.iter().filter(|(_, l)| l.user()) {
            let (from, to) = (at.max(start), (at + l.size).min(end));
            // A 2 MiB page the change covers stays one (one shadow entry instead of 512), unless it goes PROT_NONE.
            if l.size == HUGE_PAGE_SIZE && (from, to) == (at, at + l.size) && access != Access::None {
                if let Ok(changed) = paging::protect_huge(&mut DirectMap, pml4(), at, access) {
                    reload |= changed;
                    continue;
                }
            }
            for page in (from..to).step_by(PAGE_SIZE as usize) {
                reload |=
                    paging::protect(&mut DirectMap, &mut m.frames, pml4(), page, access).map_err(|_| Errno::ENOMEM)?;
            }
        }
    }
    if reload {
        hypercall::flush_tlb();
    }
    Ok(())
}

/// Sets each of `pages` (where each starts, its access, its size) to its access; flushes the TLBs if that changed an
/// entry a TLB may hold.
fn set_all(pages: &[(u64, Access, u64)]) {
    let mut reload = false;
    {
        let mut m = memory();
        for &(page, access, size) in pages {
            // These pages were just found mapped, so nothing can fail.
            reload |= if size == HUGE_PAGE_SIZE {
                paging::protect_huge(&mut DirectMap, pml4(), page, access).unwrap_or(true)
            } else {
                paging::protect(&mut DirectMap, &mut m.frames, pml4(), page, access).unwrap_or(true)
            };
        }
    }
    if reload {
        hypercall::flush_tlb();
    }
}

/// The pages of `[start, end)` in direct-map memory that the program took some access away from, with that access and
/// their size (a 2 MiB page made read-only as a whole is one; one only partly in the range is split when changed).
fn protected_pages(start: u64, end: u64) -> Vec<(u64, Access, u64)> {
    let mut found = Vec::new();
    let mut at = start;
    while at < end {
        match leaf(at) {
            Some(l) if l.size == PAGE_SIZE => {
                if l.access() != Access::ReadWrite {
                    found.push((at, l.access(), PAGE_SIZE));
                }
                at += PAGE_SIZE;
            }
            Some(l) => {
                let base = at & !(l.size - 1);
                if l.access() != Access::ReadWrite {
                    if base >= start && base + l.size <= end {
                        found.push((base, l.access(), l.size));
                    } else {
                        let within = at..(base + l.size).min(end);
                        found.extend(within.step_by(PAGE_SIZE as usize).map(|p| (p, l.access(), PAGE_SIZE)));
                    }
                }
                at = base + l.size;
            }
            None => at += PAGE_SIZE,
        }
    }
    found
}

/// Gives `[start, end)` full access for good: before it goes back to the frame allocator.
pub fn unprotect(start: u64, end: u64) {
    super::file_copies::forget(start, end);
    let pages: Vec<_> =
        protected_pages(start, end).into_iter().map(|(p, _, size)| (p, Access::ReadWrite, size)).collect();
    if !pages.is_empty() {
        set_all(&pages);
    }
}

/// Runs `write` (the library OS writing to program memory in `[start, end)`) with full access to the range, then puts
/// back the protection the program had set.
pub fn with_write_access<R>(start: u64, end: u64, write: impl FnOnce() -> R) -> R {
    super::file_copies::forget(start, end);
    let protected = protected_pages(start, end);
    if protected.is_empty() {
        return write();
    }
    let open: Vec<_> = protected.iter().map(|&(p, _, size)| (p, Access::ReadWrite, size)).collect();
    set_all(&open);
    let result = write();
    set_all(&protected);
    result
}
