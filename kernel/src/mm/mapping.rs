//! Anonymous mappings and the program break.
//!
//! Anonymous memory is handed out physically contiguous through the direct map, which the VMM mapped at boot: an
//! `mmap` changes no page table and needs no TLB work on any host. The break grows by mapping fresh pages after the
//! program's data (new entries only, which no TLB has cached), by 2 MiB pages where guest RAM is in huge pages.
//! Memory the program protected (`mm::protect`) gets full access back before the library OS frees or writes it. What this does not do: fault on access after `munmap` (the
//! library OS reaches free memory through the same addresses), or map at a caller-chosen address (`mm::vma` does).

use super::protect::{unprotect, with_write_access};
use super::{memory, owned, pml4, ram_size, DirectMap};
use crate::errno::Errno;
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE, HUGE_PAGE_SIZE, PAGE_SIZE};
use kiln_abi::paging::{self, PTE_USER, PTE_WRITABLE};

/// Whether any of `[addr, addr+len)` is in the direct map, where the library OS's own memory lies beside the
/// program's (`mm::owned` tells them apart).
pub fn touches_direct_map(addr: u64, len: u64) -> bool {
    addr < DIRECT_MAP_BASE + ram_size() && addr.saturating_add(len) > DIRECT_MAP_BASE
}

fn zero(phys: u64, len: u64) {
    // SAFETY: [phys, phys+len) is guest RAM (checked by the callers) and reached through the direct map.
    unsafe { core::ptr::write_bytes(direct_map(phys) as *mut u8, 0, len as usize) };
}

pub fn map_anonymous(len: u64) -> Result<u64, Errno> {
    if len == 0 {
        return Err(Errno::EINVAL);
    }
    let size = page_align_up(len);
    let phys = memory().frames.alloc(size).ok_or(Errno::ENOMEM)?;
    owned::add(direct_map(phys), direct_map(phys + size));
    Ok(direct_map(phys))
}

pub fn unmap(addr: u64, len: u64) -> Result<(), Errno> {
    if !addr.is_multiple_of(PAGE_SIZE) || len == 0 {
        return Err(Errno::EINVAL);
    }
    let end = addr.checked_add(page_align_up(len)).ok_or(Errno::EINVAL)?;
    // Linux lets a program unmap what it never mapped; only the parts it holds go back to the allocator.
    let user_rsp = crate::percpu::syscall_frame().user_rsp;
    for (start, end) in owned::take(addr, end) {
        let (phys, size) = (start - DIRECT_MAP_BASE, end - start);
        // A thread that unmaps the stack it runs on (musl's detached threads do, right before `exit`) still needs
        // the return address our `call` left there: free that memory when the thread is gone.
        if (start..end).contains(&user_rsp) {
            crate::sched::free_at_exit(crate::sched::Unmapped::Direct(phys, size));
        } else {
            release(phys, size);
        }
    }
    Ok(())
}

/// Hands `[phys, phys+size)` back, zeroed.
pub fn release(phys: u64, size: u64) {
    unprotect(direct_map(phys), direct_map(phys + size));
    zero(phys, size);
    memory().frames.free_zeroed(phys, size);
}

/// `madvise(MADV_DONTNEED)` in the direct map: the program's parts of the range read as zero afterwards; ENOMEM
/// if any of it is not the program's (after those parts are zeroed, as on Linux).
pub fn discard(addr: u64, len: u64) -> Result<(), Errno> {
    let end = addr.checked_add(page_align_up(len)).ok_or(Errno::ENOMEM)?;
    let parts = owned::parts(addr, end);
    let mut next = addr;
    for &(start, end) in &parts {
        with_write_access(start, end, || zero(start - DIRECT_MAP_BASE, end - start));
    }
    for (start, end) in parts {
        if start > next {
            break;
        }
        next = end;
    }
    if next < end {
        return Err(Errno::ENOMEM);
    }
    Ok(())
}

pub fn remap(old: u64, old_len: u64, new_len: u64, may_move: bool) -> Result<u64, Errno> {
    if !old.is_multiple_of(PAGE_SIZE) || new_len == 0 || old_len == 0 {
        return Err(Errno::EINVAL);
    }
    let (old_size, new_size) = (page_align_up(old_len), page_align_up(new_len));
    let old_end = old.checked_add(old_size).ok_or(Errno::EFAULT)?;
    if touches_direct_map(old, old_size) {
        // Only memory the program holds, all of one mapping, moves; taken off the set while it does, so that no other
        // thread frees it meanwhile.
        if !owned::take_all(old, old_end) {
            return Err(Errno::EFAULT);
        }
        let result = resize(old, old_size, new_size, may_move);
        let (start, size) = match result {
            Ok(at) => (at, new_size),
            Err(_) => (old, old_size),
        };
        owned::add(start, start + size);
        return result;
    }
    // Memory we did not hand out (the stack, the program's segments) cannot move; tell "mapped" from "not mapped" as
    // Linux does, which musl relies on to find the main thread's stack size.
    Err(if super::translate(old).is_some() { Errno::ENOMEM } else { Errno::EFAULT })
}

/// Resizes `[old, old+old_size)` of the program's direct-map memory, in place if it can, else (`may_move`) by a
/// copy; returns where it is now.
fn resize(old: u64, old_size: u64, new_size: u64, may_move: bool) -> Result<u64, Errno> {
    let phys = old - DIRECT_MAP_BASE;
    // Moved or resized memory keeps no protection the program had set (Linux would carry it along).
    unprotect(old, old + old_size);
    let mut m = memory();
    if new_size <= old_size {
        if new_size < old_size {
            zero(phys + new_size, old_size - new_size);
            m.frames.free_zeroed(phys + new_size, old_size - new_size);
        }
        return Ok(old);
    }
    if m.frames.alloc_at(phys + old_size, new_size - old_size) {
        return Ok(old);
    }
    if !may_move {
        return Err(Errno::ENOMEM);
    }
    let new_phys = m.frames.alloc(new_size).ok_or(Errno::ENOMEM)?;
    drop(m);
    // SAFETY: both ranges are ours, in the direct map, and do not overlap (the new one was free).
    unsafe { core::ptr::copy_nonoverlapping(old as *const u8, direct_map(new_phys) as *mut u8, old_size as usize) };
    release(phys, old_size);
    Ok(direct_map(new_phys))
}

/// Maps a fresh 2 MiB page at the end of the break's pages, if a 2 MiB-aligned frame is free and nothing is mapped
/// there yet.
fn map_huge_break(m: &mut super::Memory) -> bool {
    let at = m.brk_mapped_end;
    let Some(frame) = m.frames.alloc_aligned(HUGE_PAGE_SIZE, HUGE_PAGE_SIZE) else { return false };
    if paging::map_huge_page(&mut DirectMap, &mut m.frames, pml4(), at, frame, PTE_WRITABLE | PTE_USER).is_err() {
        m.frames.free_zeroed(frame, HUGE_PAGE_SIZE);
        return false;
    }
    m.brk_mapped_end += HUGE_PAGE_SIZE;
    true
}

/// `brk(addr)`: moves the break if it can and returns the break in force, as Linux does.
pub fn set_break(addr: u64) -> u64 {
    // In a VM with huge pages the break (which starts on a 2 MiB boundary there, `mm::init`) grows by whole 2 MiB
    // pages, mapped past the break: a program growing it in small steps takes one shadow fault per 2 MiB, not 512.
    let huge = super::vma::huge_pages();
    // Before the memory lock is taken (a flush takes it to free what waited for it): no TLB may still hold a page
    // released where the break grows.
    let mapped_end = memory().brk_mapped_end;
    let wanted_end = page_align_up(addr);
    if mapped_end < wanted_end {
        let settle_end = if huge { wanted_end.next_multiple_of(HUGE_PAGE_SIZE) } else { wanted_end };
        super::vma::settle_released(mapped_end, settle_end);
    }
    let mut guard = memory();
    let m = &mut *guard;
    if addr < m.brk_start {
        return m.brk;
    }
    // A break that cannot be had fails up front, rather than after taking all free memory page by page.
    if wanted_end.saturating_sub(m.brk_mapped_end) > m.frames.free_bytes() {
        return m.brk;
    }
    while m.brk_mapped_end < wanted_end {
        if huge && m.brk_mapped_end.is_multiple_of(HUGE_PAGE_SIZE) && map_huge_break(m) {
            continue;
        }
        let Some(frame) = m.frames.alloc(PAGE_SIZE) else { return m.brk };
        let mapped =
            paging::map_page(&mut DirectMap, &mut m.frames, pml4(), m.brk_mapped_end, frame, PTE_WRITABLE | PTE_USER);
        if mapped.is_err() {
            m.frames.free_zeroed(frame, PAGE_SIZE);
            return m.brk;
        }
        m.brk_mapped_end += PAGE_SIZE;
    }
    // Shrinking keeps the pages mapped: a later growth reuses them. Linux would unmap them, so zero what lies above
    // the new break to keep "memory from growing the break reads as zero".
    if addr < m.brk {
        // SAFETY: [addr, old brk) is mapped writable break memory.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, (m.brk - addr) as usize) };
    }
    m.brk = addr;
    addr
}
