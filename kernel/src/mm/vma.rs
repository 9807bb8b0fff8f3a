//! Memory at addresses the program chooses, and address space reserved without memory behind it — what Go's
//! runtime does with its heap arenas: `mmap(hint, PROT_NONE)` reserves, `mmap(MAP_FIXED, PROT_READ|PROT_WRITE)` or
//! `mprotect` commits pages inside.
//!
//! A reservation is only a recorded range: it costs no memory. Committing maps fresh zeroed frames where no page is
//! mapped (new entries only, which no TLB caches) and zeroes pages that are, with full access. munmap unmaps the
//! committed pages and frees their frames, finding them by a walk of the page tables that skips absent tables whole,
//! so releasing a terabyte reservation costs what was committed in it, not its size. In a VM whose RAM is in the
//! host's huge pages (`layout::huge_pages_for`), `mmap` commits every whole 2 MiB-aligned window of a range with one
//! 2 MiB page (a 2 MiB-aligned frame, so that the host's huge page lies behind it): Go's heap arenas take one shadow
//! fault per 2 MiB instead of 512. A reservation made accessible by `mprotect` keeps 4 KiB pages unless the range is
//! larger than a thread's stack (`STACK_MAX`), and so does the part of any range outside whole windows. The TLB flush that freeing a
//! present page needs is batched (see `UNFLUSHED`). Released ranges are handed out again, first, to reservations
//! without a hint. Access to reserved, never-committed pages faults, as PROT_NONE memory does on Linux.

use super::protect::{self, Access};
use super::{memory, pml4, DirectMap};
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE, HUGE_PAGE_SIZE, PAGE_SIZE, PROGRAM_MIN_ADDR};
use kiln_abi::paging::protect::{leaves_in, may_be_cached, split_huge};
use kiln_abi::paging::{self, PhysMemory, PTE_USER, PTE_WRITABLE};

/// Reservations without a usable hint are placed from here up (far from the program, its break and the direct map).
const RESERVE_BASE: u64 = 0x2000_0000_0000;
const RESERVE_END: u64 = DIRECT_MAP_BASE;
/// The end of the canonical lower half, the only part Kiln maps.
const LOWER_HALF_END: u64 = 1 << 47;

struct Reservations {
    ranges: Vec<(u64, u64)>,
    /// Ranges mapping frames that something else owns (System V shared memory, a file's pages), with what keeps
    /// the frames alive, if anything: munmap unmaps them, drops that and does not free or zero the frames.
    borrowed: Vec<Borrowed>,
    /// Ranges given back by munmap, reused before fresh address space.
    released: Vec<(u64, u64)>,
    next: u64,
}

#[derive(Clone)]
struct Borrowed {
    start: u64,
    end: u64,
    _owner: Option<Arc<dyn Any + Send + Sync>>,
}

fn ranges_of(borrowed: &[Borrowed]) -> Vec<(u64, u64)> {
    borrowed.iter().map(|b| (b.start, b.end)).collect()
}

/// Whether any of `borrowed` overlaps `[start, end)` (without copying the ranges out, as `mmap` asks every time).
fn overlaps_borrowed(borrowed: &[Borrowed], start: u64, end: u64) -> bool {
    borrowed.iter().any(|b| b.start < end && start < b.end)
}

static RESERVED: SpinLock<Reservations> =
    SpinLock::new(Reservations { ranges: Vec::new(), borrowed: Vec::new(), released: Vec::new(), next: RESERVE_BASE });

fn overlaps(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    ranges.iter().any(|&(s, e)| s < end && start < e)
}

/// Whether `[start, end)` lies in the program's part of the address space: below the direct map (from
/// `PROGRAM_MIN_ADDR`) or above it (a PIE, its loader and the stack live there), never in it.
pub fn choosable(start: u64, end: u64) -> bool {
    let below = start >= PROGRAM_MIN_ADDR && end <= RESERVE_END;
    let above = start >= DIRECT_MAP_BASE + super::ram_size() && end <= LOWER_HALF_END;
    start < end && (below || above)
}

/// Whether `[start, end)` is free for the program: in its part of the address space, no page mapped, no reservation.
fn is_free(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    choosable(start, end) && !overlaps(ranges, start, end) && protect::leaves(start, end).is_empty()
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

/// The largest thread stack a program commonly makes by `mprotect` of a reservation (glibc's default, 8 MiB; musl's
/// is 128 KiB, Rust's 2 MiB): such a range keeps 4 KiB pages, since a stack is mostly never touched and a 2 MiB page
/// costs the host 2 MiB from its first touch. A larger one is a heap opened piece by piece.
const STACK_MAX: u64 = 8 << 20;

/// Whether fresh memory goes in 2 MiB pages where whole windows allow: only where host huge pages lie behind them.
pub fn huge_pages() -> bool {
    kiln_abi::layout::huge_pages_for(super::ram_size())
}

/// The first 2 MiB-aligned window wholly inside `[start, end)`, if any.
fn first_window(start: u64, end: u64) -> Option<u64> {
    let w = start.checked_next_multiple_of(HUGE_PAGE_SIZE)?;
    (w.checked_add(HUGE_PAGE_SIZE)? <= end).then_some(w)
}

/// Maps a fresh 2 MiB page at the window `w` if nothing at all is mapped in it (no page, no table of PROT_NONE or
/// released 4 KiB entries in the way) and a 2 MiB-aligned frame is free; false, changing nothing, if not.
fn map_fresh_window(m: &mut super::Memory, w: u64) -> bool {
    let mut used = false;
    leaves_in(&DirectMap, pml4(), w, w + HUGE_PAGE_SIZE, &mut |_, _| used = true);
    if used {
        return false;
    }
    let Some(frame) = m.frames.alloc_aligned(HUGE_PAGE_SIZE, HUGE_PAGE_SIZE) else { return false };
    if paging::map_huge_page(&mut DirectMap, &mut m.frames, pml4(), w, frame, PTE_WRITABLE | PTE_USER).is_err() {
        m.frames.free_zeroed(frame, HUGE_PAGE_SIZE);
        return false;
    }
    true
}

fn back(start: u64, len: u64, keep_existing: bool) -> Result<(), Errno> {
    let end = start.checked_add(page_align_up(len)).ok_or(Errno::ENOMEM)?;
    if !choosable(start, end) || !start.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let reserved = in_reservation(start, end);
    // 2 MiB pages for what `mmap` commits; a reservation opened by `mprotect` only if it is larger than a thread's stack.
    let huge = (!keep_existing || end - start > STACK_MAX) && huge_pages() && first_window(start, end).is_some();
    if huge {
        // A 4 KiB page released in a window and still in some TLB must be flushed before a 2 MiB page maps it anew.
        settle_released(start, end);
    }
    if !keep_existing && is_borrowed(start, end) {
        // MAP_FIXED over shared memory replaces the mapping; the memory itself stays as it is.
        drop_borrowed(start, end);
    }
    let mut reload = false;
    {
        let mut m = memory();
        let m = &mut *m;
        let mut page = start;
        while page < end {
            if huge && page.is_multiple_of(HUGE_PAGE_SIZE) && end - page >= HUGE_PAGE_SIZE && map_fresh_window(m, page)
            {
                page += HUGE_PAGE_SIZE;
                continue;
            }
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
                    // The page's own frame, also where a 2 MiB page (the program's, from the VMM) mapped it.
                    zero_frame(l.phys() + (page & (l.size - 1)));
                }
                None => {
                    // A page released here and not yet flushed gets its frame back (see `UNFLUSHED`).
                    let reused = UNFLUSHED.lock().remove(&page);
                    let frame = reused.or_else(|| m.frames.alloc(PAGE_SIZE)).ok_or(Errno::ENOMEM)?;
                    paging::map_page(&mut DirectMap, &mut m.frames, pml4(), page, frame, PTE_WRITABLE | PTE_USER)
                        .map_err(|_| Errno::ENOMEM)?;
                }
            }
            page += PAGE_SIZE;
        }
    }
    if reload {
        crate::hypercall::flush_tlb();
    }
    Ok(())
}

fn zero_frame(phys: u64) {
    zero_phys(phys, PAGE_SIZE);
}

fn zero_phys(phys: u64, len: u64) {
    // SAFETY: frames of the program's memory, reached through the direct map (whatever the program's protection).
    unsafe { core::ptr::write_bytes(direct_map(phys) as *mut u8, 0, len as usize) };
}

/// Zeroes the pages of `[start, start+len)` that have memory behind them, keeping their protection: what
/// MADV_DONTNEED leaves. Only committed pages are looked at.
pub fn zero_committed(start: u64, len: u64) {
    let end = start.saturating_add(page_align_up(len));
    let borrowed = ranges_of(&RESERVED.lock().borrowed);
    for (at, l) in protect::leaves(start, end) {
        // Shared memory keeps its bytes (on Linux, MADV_DONTNEED of it maps the same memory again).
        if !l.user() || overlaps(&borrowed, at, at + l.size) {
            continue;
        }
        // The part of a 2 MiB page inside the range (it stays one page).
        let (from, to) = (at.max(start), (at + l.size).min(end));
        zero_phys(l.phys() + (from - at), to - from);
    }
}

/// Released pages whose entries were present, by address, with their frames: a vCPU's TLB may still map the address
/// to the frame, so the frame goes back to the allocator only after the next TLB flush, made once [`FLUSH_BATCH`]
/// pages wait rather than on every munmap (musl unmaps every thread's stack). Until then nobody else uses the frame,
/// and a page committed again at the same address gets the same (zeroed) frame back, which keeps a stale TLB entry
/// right.
static UNFLUSHED: SpinLock<BTreeMap<u64, u64>> = SpinLock::new(BTreeMap::new());
const FLUSH_BATCH: usize = 512;

/// munmap of chosen-address memory: the range stops being reserved and its committed pages are unmapped and freed
/// (their frames zeroed). The cost follows the committed pages, not the span: the walk skips absent tables whole.
pub fn release(start: u64, len: u64) {
    let end = start.saturating_add(page_align_up(len));
    let mut read_only = false;
    split_partial_huge(start, end);
    // Allocated before the memory lock is taken, and freed after: the heap takes it to grow and to give back.
    let found = protect::leaves(start, end);
    let mut huge_cached = Vec::new();
    // Dropped last, after the flush: what they hold may free the frames.
    let borrowed = take_borrowed(start, end);
    let mut cached = Vec::with_capacity(found.len());
    {
        let mut m = memory();
        for &(at, l) in &found {
            if l.user() && l.size == HUGE_PAGE_SIZE && start <= at && at + l.size <= end {
                // A 2 MiB page `commit` mapped (a partly released one was split above).
                zero_phys(l.phys(), l.size);
                let old = DirectMap.swap_u64(l.entry_addr, 0);
                if may_be_cached(old) {
                    huge_cached.push(l.phys());
                } else {
                    m.frames.free_zeroed(l.phys(), l.size);
                }
                continue;
            }
            // Anything else but 4 KiB pages here is not the program's to free.
            if !l.user() || l.size != PAGE_SIZE || at < start {
                continue;
            }
            if overlaps_borrowed(&borrowed, at, at + PAGE_SIZE) {
                // Not ours to free: unmapped, then flushed at once (its owner may free it any time after).
                read_only |= may_be_cached(DirectMap.swap_u64(l.entry_addr, 0));
                continue;
            }
            zero_frame(l.phys());
            // Exchanged, so that a walk cannot load it between the look and the write.
            let old = DirectMap.swap_u64(l.entry_addr, 0);
            if may_be_cached(old) {
                read_only |= old & PTE_WRITABLE == 0;
                cached.push((at, l.phys()));
            } else {
                // Not present, or never loaded (the zeroing above went through the direct map): no TLB holds it.
                m.frames.free_zeroed(l.phys(), PAGE_SIZE);
            }
        }
    }
    forget_range(start, end);
    if !huge_cached.is_empty() {
        // Few and large: flushed at once rather than kept aside until a batch gathers.
        flush_released();
        let mut m = memory();
        for phys in huge_cached {
            m.frames.free_zeroed(phys, HUGE_PAGE_SIZE);
        }
    }
    if cached.is_empty() && !read_only {
        return;
    }
    let mut unflushed = UNFLUSHED.lock();
    unflushed.extend(cached);
    // A stale read-only entry would make a write to the page committed again there fault, and a borrowed frame may be
    // freed by its owner: flush those at once.
    if read_only || unflushed.len() >= FLUSH_BATCH {
        drop(unflushed);
        flush_released();
    }
    drop(borrowed);
}

/// Splits the 2 MiB pages that lie only partly inside `[start, end)` into 4 KiB pages, so that the part inside can be
/// released alone (the same frames stay mapped: no TLB needs reloading).
fn split_partial_huge(start: u64, end: u64) {
    let mut partial = [0u64; 2];
    let mut count = 0;
    leaves_in(&DirectMap, pml4(), start, end, &mut |at, l| {
        if l.user() && l.size == HUGE_PAGE_SIZE && (at < start || at + l.size > end) && count < 2 {
            partial[count] = at;
            count += 1;
        }
    });
    let mut m = memory();
    for &at in &partial[..count] {
        // A table frame may be lacking: then the page stays whole, and is not released.
        let _ = split_huge(&mut DirectMap, &mut m.frames, pml4(), at);
    }
}

/// Flushes every TLB and hands the frames of released pages back to the allocator.
fn flush_released() {
    let batch = core::mem::take(&mut *UNFLUSHED.lock());
    crate::hypercall::flush_tlb();
    // The map is gone before the memory lock is taken: the heap may take it to free.
    let frames: Vec<u64> = batch.into_values().collect();
    let mut m = memory();
    for phys in frames.iter().copied() {
        m.frames.free_zeroed(phys, PAGE_SIZE);
    }
    drop(m);
}

/// Before fresh pages are mapped in `[start, end)` other than by `commit` (the break): no TLB may still hold a
/// released page there.
pub fn settle_released(start: u64, end: u64) {
    if UNFLUSHED.lock().range(start..end).next().is_some() {
        flush_released();
    }
}

/// Reserves `len` bytes at `hint` if that range is free (only there if `fixed`), else wherever there is room, and
/// maps `frames` (owned by something else: a System V shared memory segment, a file's pages) at its start, writable
/// or read-only; the rest stays reserved. `owner`, if any, is kept until the pages are unmapped. munmap or
/// [`unmap_borrowed`] unmaps the frames without freeing them. Returns the address.
pub fn map_borrowed(
    hint: u64,
    fixed: bool,
    len: u64,
    frames: &[u64],
    writable: bool,
    owner: Option<Arc<dyn Any + Send + Sync>>,
) -> Result<u64, Errno> {
    let len = page_align_up(len).max(frames.len() as u64 * PAGE_SIZE);
    let start = reserve(hint, len, fixed)?;
    RESERVED.lock().borrowed.push(Borrowed { start, end: start + len, _owner: owner });
    settle_released(start, start + len);
    let flags = PTE_USER | if writable { PTE_WRITABLE } else { 0 };
    let mapped = {
        let mut m = memory();
        let m = &mut *m;
        frames.iter().enumerate().try_for_each(|(i, &frame)| {
            paging::map_page(&mut DirectMap, &mut m.frames, pml4(), start + i as u64 * PAGE_SIZE, frame, flags)
        })
    };
    if mapped.is_err() {
        unmap_borrowed(start, len);
        return Err(Errno::ENOMEM);
    }
    Ok(start)
}

/// Unmaps borrowed frames mapped by [`map_borrowed`] (and whatever else is in the range, as munmap does).
pub fn unmap_borrowed(start: u64, len: u64) {
    release(start, len);
}

/// Takes the borrowed ranges overlapping `[start, end)` off the list (clipped to it; what lies outside stays, holding
/// the owner too).
fn take_borrowed(start: u64, end: u64) -> Vec<Borrowed> {
    let mut r = RESERVED.lock();
    if !overlaps_borrowed(&r.borrowed, start, end) {
        return Vec::new();
    }
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for b in core::mem::take(&mut r.borrowed) {
        if b.end <= start || end <= b.start {
            kept.push(b);
            continue;
        }
        if b.start < start {
            kept.push(Borrowed { end: start, ..b.clone() });
        }
        if end < b.end {
            kept.push(Borrowed { start: end, ..b.clone() });
        }
        taken.push(Borrowed { start: b.start.max(start), end: b.end.min(end), ..b });
    }
    r.borrowed = kept;
    taken
}

/// Unmaps the borrowed pages of `[start, end)`, keeping the range reserved.
fn drop_borrowed(start: u64, end: u64) {
    let borrowed = take_borrowed(start, end);
    let found: Vec<_> = borrowed.iter().flat_map(|b| protect::leaves(b.start, b.end)).collect();
    let mut present = false;
    {
        let _m = memory();
        for (_, l) in found.iter().filter(|(_, l)| l.user() && l.size == PAGE_SIZE) {
            present |= may_be_cached(DirectMap.swap_u64(l.entry_addr, 0));
        }
    }
    if present {
        crate::hypercall::flush_tlb();
    }
    drop(borrowed);
}

/// Whether any page of `[start, end)` maps borrowed frames.
pub fn is_borrowed(start: u64, end: u64) -> bool {
    overlaps_borrowed(&RESERVED.lock().borrowed, start, end)
}

/// `[start, end)` stops being reserved; its address space is handed out again first.
fn forget_range(start: u64, end: u64) {
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
    choosable(addr, addr + 1) && RESERVED.lock().ranges.iter().any(|&(s, e)| s <= addr && addr < e)
}
