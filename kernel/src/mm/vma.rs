//! Memory at addresses the program chooses, and address space reserved without memory behind it — what Go's
//! runtime does with its heap arenas: `mmap(hint, PROT_NONE)` reserves, `mmap(MAP_FIXED, PROT_READ|PROT_WRITE)` or
//! `mprotect` commits pages inside.
//!
//! A reservation is only a recorded range: it costs no memory. Committing maps fresh zeroed frames where no page is
//! mapped (new entries only, which no TLB caches) and zeroes pages that are, with full access. Released pages are
//! zeroed but stay mapped: unmapping them would cost a TLB flush (a VM exit) on every munmap, which musl makes for
//! every thread's stack. Released ranges are handed out again, first, to reservations without a hint, so memory that
//! a program maps and unmaps over and over (thread stacks) is reused rather than leaked; pages already committed there
//! read as zero but do not fault until committed. Access to reserved, never-committed pages faults, as PROT_NONE
//! memory does on Linux.

use super::protect::{self, Access};
use super::{memory, pml4, DirectMap};
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::vec::Vec;
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE, PAGE_SIZE, PROGRAM_MIN_ADDR};
use kiln_abi::paging::{self, PTE_USER, PTE_WRITABLE};

/// Reservations without a usable hint are placed from here up (far from the program, its break and the direct map).
const RESERVE_BASE: u64 = 0x2000_0000_0000;
const RESERVE_END: u64 = DIRECT_MAP_BASE;

struct Reservations {
    ranges: Vec<(u64, u64)>,
    /// Ranges given back by munmap, reused before fresh address space.
    released: Vec<(u64, u64)>,
    next: u64,
}

static RESERVED: SpinLock<Reservations> =
    SpinLock::new(Reservations { ranges: Vec::new(), released: Vec::new(), next: RESERVE_BASE });

fn overlaps(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    ranges.iter().any(|&(s, e)| s < end && start < e)
}

/// Whether `[start, end)` is free for the program: in its part of the address space, no page mapped, no reservation.
fn is_free(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let in_bounds = start >= PROGRAM_MIN_ADDR && end <= RESERVE_END && start < end;
    in_bounds
        && !overlaps(ranges, start, end)
        && (start..end).step_by(PAGE_SIZE as usize).all(|p| protect::leaf(p).is_none())
}

pub fn in_reservation(start: u64, end: u64) -> bool {
    RESERVED.lock().ranges.iter().any(|&(s, e)| s <= start && end <= e)
}

/// Reserves `len` bytes at `hint` if that range is free, else wherever there is room. `fixed`: at `hint` or fail.
pub fn reserve(hint: u64, len: u64, fixed: bool) -> Result<u64, Errno> {
    let size = page_align_up(len);
    let mut r = RESERVED.lock();
    let at_hint = hint != 0 && hint.is_multiple_of(PAGE_SIZE) && is_free(&r.ranges, hint, hint.saturating_add(size));
    let reusable = r.released.iter().position(|&(s, e)| e - s >= size);
    let start = if at_hint {
        hint
    } else if fixed {
        return Err(Errno::EEXIST);
    } else if let Some(i) = reusable {
        let (s, e) = r.released[i];
        if e - s == size {
            r.released.swap_remove(i);
        } else {
            r.released[i] = (s + size, e);
        }
        s
    } else {
        let start = r.next;
        let end = start.checked_add(size).filter(|&e| e <= RESERVE_END).ok_or(Errno::ENOMEM)?;
        r.next = end + PAGE_SIZE;
        start
    };
    r.ranges.push((start, start + size));
    Ok(start)
}

/// Backs every page of `[start, start+len)` with zeroed memory, mapped writable.
pub fn commit(start: u64, len: u64) -> Result<(), Errno> {
    back(start, len, false)
}

/// Backs the pages of `[start, start+len)` that have no memory yet with zeroed, writable memory; the others keep
/// their bytes and protection (mprotect of a reservation).
pub fn commit_missing(start: u64, len: u64) -> Result<(), Errno> {
    back(start, len, true)
}

fn back(start: u64, len: u64, keep_existing: bool) -> Result<(), Errno> {
    let end = start.checked_add(page_align_up(len)).ok_or(Errno::ENOMEM)?;
    if start < PROGRAM_MIN_ADDR || end > RESERVE_END || !start.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let reserved = in_reservation(start, end);
    let mut reload = false;
    {
        let mut m = memory();
        let m = &mut *m;
        for page in (start..end).step_by(PAGE_SIZE as usize) {
            match protect::leaf(page) {
                Some(_) if keep_existing => {}
                Some(l) => {
                    // Only the program's memory, and read-only or PROT_NONE pages only where it reserved them: the
                    // program's code is not memory MAP_FIXED may replace here.
                    if !l.user() || (l.access() != Access::ReadWrite && !reserved) {
                        return Err(Errno::EINVAL);
                    }
                    reload |= kiln_abi::paging::protect::protect(
                        &mut DirectMap,
                        &mut m.frames,
                        pml4(),
                        page,
                        Access::ReadWrite,
                    )
                    .map_err(|_| Errno::ENOMEM)?;
                    zero_frame(l.phys());
                }
                None => {
                    let frame = m.frames.alloc(PAGE_SIZE).ok_or(Errno::ENOMEM)?;
                    paging::map_page(&mut DirectMap, &mut m.frames, pml4(), page, frame, PTE_WRITABLE | PTE_USER)
                        .map_err(|_| Errno::ENOMEM)?;
                }
            }
        }
    }
    if reload {
        crate::hypercall::flush_tlb();
    }
    Ok(())
}

fn zero_frame(phys: u64) {
    // SAFETY: a frame of the program's memory, reached through the direct map (whatever the program's protection).
    unsafe { core::ptr::write_bytes(direct_map(phys) as *mut u8, 0, PAGE_SIZE as usize) };
}

/// Zeroes the pages of `[start, start+len)` that have memory behind them, keeping their protection: what
/// MADV_DONTNEED leaves.
pub fn zero_committed(start: u64, len: u64) {
    let end = start.saturating_add(page_align_up(len));
    for page in (start..end).step_by(PAGE_SIZE as usize) {
        if let Some(l) = protect::leaf(page).filter(|l| l.user() && l.size == PAGE_SIZE) {
            zero_frame(l.phys());
        }
    }
}

/// munmap of chosen-address memory: the range stops being reserved; its committed pages are zeroed and stay mapped.
pub fn release(start: u64, len: u64) {
    let end = start.saturating_add(page_align_up(len));
    zero_committed(start, len);
    let mut r = RESERVED.lock();
    let mut kept = Vec::with_capacity(r.ranges.len() + 1);
    let mut freed = Vec::new();
    for &(s, e) in &r.ranges {
        if e <= start || end <= s {
            kept.push((s, e));
        } else {
            freed.push((s.max(start), e.min(end)));
            if s < start {
                kept.push((s, start));
            }
            if end < e {
                kept.push((end, e));
            }
        }
    }
    r.ranges = kept;
    r.released.extend(freed);
}

/// Whether `addr` is chosen-address memory (a reservation) rather than the direct map.
pub fn owns(addr: u64) -> bool {
    addr < DIRECT_MAP_BASE && RESERVED.lock().ranges.iter().any(|&(s, e)| s <= addr && addr < e)
}
