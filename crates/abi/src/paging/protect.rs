//! Changing what the program may do with pages that are already mapped (mprotect).
//!
//! Permissions live in 4 KiB entries: a 2 MiB page is split first. A PROT_NONE page is a not-present entry marked
//! [`PTE_PROT_NONE`] that keeps its frame, so that giving access back finds the same bytes, as Linux keeps them.
//! A change to an entry that was present may be cached in any vCPU's TLB, unless its accessed bit is clear: the CPU
//! (with shadow paging, the hypervisor, which also prefetches only accessed entries) sets that bit before it caches
//! an entry. [`protect`] exchanges the entry atomically and says when the caller must have every TLB reloaded before
//! the change is certain to apply.

use super::{
    leaf_flags, table_index, FrameSource, MapError, PhysMemory, PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_HUGE,
    PTE_PRESENT, PTE_PROT_NONE, PTE_USER, PTE_WRITABLE,
};
use crate::layout::{HUGE_PAGE_SIZE, PAGE_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    ReadWrite,
}

/// The entry that maps an address: a present 4 KiB or 2 MiB page, or a PROT_NONE 4 KiB page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Guest-physical address of the entry itself.
    pub entry_addr: u64,
    pub entry: u64,
    pub size: u64,
}

impl Leaf {
    /// The frame behind the page, also while it is PROT_NONE.
    pub fn phys(&self) -> u64 {
        self.entry & PTE_ADDR_MASK & !(self.size - 1)
    }

    pub fn access(&self) -> Access {
        match (self.entry & PTE_PRESENT != 0, self.entry & PTE_WRITABLE != 0) {
            (false, _) => Access::None,
            (true, false) => Access::Read,
            (true, true) => Access::ReadWrite,
        }
    }

    pub fn user(&self) -> bool {
        self.entry & PTE_USER != 0
    }
}

/// Finds the entry mapping `vaddr`, present or PROT_NONE, without changing anything.
pub fn leaf<M: PhysMemory>(mem: &M, pml4: u64, vaddr: u64) -> Option<Leaf> {
    if !super::is_lower_canonical(vaddr) {
        return None;
    }
    let mut table = pml4;
    for level in (1..=4).rev() {
        let entry_addr = table + table_index(vaddr, level) * 8;
        let entry = mem.read_u64(entry_addr);
        let size = 1u64 << (12 + 9 * (level - 1));
        if level == 1 {
            return (entry & (PTE_PRESENT | PTE_PROT_NONE) != 0).then_some(Leaf { entry_addr, entry, size });
        }
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        if entry & PTE_HUGE != 0 {
            return Some(Leaf { entry_addr, entry, size });
        }
        table = entry & PTE_ADDR_MASK;
    }
    None
}

/// Calls `visit(vaddr, leaf)` for every entry (present, or PROT_NONE at 4 KiB) that maps part of `[start, end)`, in
/// address order; `vaddr` is where the leaf's page starts (before `start` for a 2 MiB page that straddles it). Tables
/// that are not present are skipped whole, so the cost follows the tables that exist, not the span: releasing a
/// terabyte-sized reservation with a few pages committed in it looks at a few entries per level.
pub fn leaves_in<M: PhysMemory>(mem: &M, pml4: u64, start: u64, end: u64, visit: &mut impl FnMut(u64, Leaf)) {
    let end = end.min(1 << 47);
    if start < end {
        leaves_under(mem, pml4, 4, 0, start, end, visit);
    }
}

/// `leaves_in` below the table at `level` that maps from `base`.
fn leaves_under<M: PhysMemory>(
    mem: &M,
    table: u64,
    level: u32,
    base: u64,
    start: u64,
    end: u64,
    visit: &mut impl FnMut(u64, Leaf),
) {
    let size = 1u64 << (12 + 9 * (level - 1));
    let first = start.saturating_sub(base) / size;
    for index in first..512 {
        let at = base + index * size;
        if at >= end {
            break;
        }
        let entry_addr = table + index * 8;
        let entry = mem.read_u64(entry_addr);
        if level == 1 {
            if entry & (PTE_PRESENT | PTE_PROT_NONE) != 0 {
                visit(at, Leaf { entry_addr, entry, size });
            }
        } else if entry & PTE_PRESENT == 0 {
            continue;
        } else if entry & PTE_HUGE != 0 {
            visit(at, Leaf { entry_addr, entry, size });
        } else {
            leaves_under(mem, entry & PTE_ADDR_MASK, level - 1, at, start, end, visit);
        }
    }
}

/// Turns the 2 MiB page mapping `vaddr`, if that is what maps it, into 512 4 KiB entries for the same frames with the
/// same permissions: every translation stays what it was, so no TLB needs reloading.
pub fn split_huge<M: PhysMemory, F: FrameSource>(
    mem: &mut M,
    frames: &mut F,
    pml4: u64,
    vaddr: u64,
) -> Result<(), MapError> {
    let Some(l) = leaf(mem, pml4, vaddr) else { return Err(MapError::NotMapped(vaddr)) };
    match l.size {
        PAGE_SIZE => return Ok(()),
        HUGE_PAGE_SIZE => {}
        // 1 GiB pages: Kiln never maps any.
        _ => return Err(MapError::BadAddress(vaddr)),
    }
    let table = frames.alloc_zeroed_frame().ok_or(MapError::OutOfFrames)?;
    // Accessed and dirty carry over: a TLB may hold the huge page, which is as good as holding each small one.
    let flags = l.entry & (PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED | PTE_DIRTY);
    for i in 0..512 {
        mem.write_u64(table + i * 8, (l.phys() + i * PAGE_SIZE) | flags);
    }
    // The entries first, then the pointer to them: a walk on another vCPU sees the old page or the whole table.
    let old = mem.swap_u64(l.entry_addr, table | PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED);
    if old & PTE_ACCESSED != 0 && flags & PTE_ACCESSED == 0 {
        // A walk loaded the huge page after it was read: every small entry may be cached now. (A walk through the
        // new table can only set bits, accessed among them, so nothing it does is lost here.)
        for i in 0..512 {
            let entry = mem.read_u64(table + i * 8);
            mem.write_u64(table + i * 8, entry | PTE_ACCESSED);
        }
    }
    Ok(())
}

/// Gives the 4 KiB page at `vaddr` `access` (splitting a 2 MiB page first). Returns whether an entry that may be in a
/// TLB (present and accessed) changed, in which case the TLBs must be reloaded before the change is certain to apply.
/// The new entry's accessed bit is clear: after that reload, or with no TLB holding the old one, none holds it.
pub fn protect<M: PhysMemory, F: FrameSource>(
    mem: &mut M,
    frames: &mut F,
    pml4: u64,
    vaddr: u64,
    access: Access,
) -> Result<bool, MapError> {
    if !vaddr.is_multiple_of(PAGE_SIZE) {
        return Err(MapError::BadAddress(vaddr));
    }
    let l = leaf(mem, pml4, vaddr).ok_or(MapError::NotMapped(vaddr))?;
    if l.access() == access {
        return Ok(false);
    }
    split_huge(mem, frames, pml4, vaddr)?;
    let l = leaf(mem, pml4, vaddr).ok_or(MapError::NotMapped(vaddr))?;
    let kept = l.phys() | (l.entry & PTE_USER);
    let entry = match access {
        Access::None => kept | PTE_PROT_NONE,
        Access::Read => kept | PTE_PRESENT,
        Access::ReadWrite => kept | leaf_flags(PTE_PRESENT | PTE_WRITABLE),
    };
    if entry == l.entry {
        return Ok(false);
    }
    Ok(may_be_cached(mem.swap_u64(l.entry_addr, entry)))
}

/// Gives the whole 2 MiB page at `vaddr` `access`, keeping it one page: read-only or read-write (PROT_NONE takes 4 KiB
/// entries). Returns whether a TLB may hold the old entry, as [`protect`] does; `NotMapped` if no 2 MiB page maps
/// `vaddr` (any more).
pub fn protect_huge<M: PhysMemory>(mem: &mut M, pml4: u64, vaddr: u64, access: Access) -> Result<bool, MapError> {
    let l = leaf(mem, pml4, vaddr).filter(|l| l.size == HUGE_PAGE_SIZE).ok_or(MapError::NotMapped(vaddr))?;
    let flags = match access {
        Access::None => return Err(MapError::BadAddress(vaddr)),
        _ if l.access() == access => return Ok(false),
        Access::Read => PTE_PRESENT,
        Access::ReadWrite => leaf_flags(PTE_PRESENT | PTE_WRITABLE),
    };
    let entry = l.phys() | (l.entry & PTE_USER) | PTE_HUGE | flags;
    Ok(may_be_cached(mem.swap_u64(l.entry_addr, entry)))
}

/// Whether a TLB may hold `entry`: present, and loaded at least once (see the module's opening).
pub fn may_be_cached(entry: u64) -> bool {
    entry & (PTE_PRESENT | PTE_ACCESSED) == PTE_PRESENT | PTE_ACCESSED
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Bump, Ram};
    use super::super::{map_huge_page, map_page, translate};
    use super::*;

    const PML4: u64 = 0x1000;

    extern crate std;
    fn alloc_vec() -> std::vec::Vec<(u64, u64, u64)> {
        std::vec::Vec::new()
    }

    #[test]
    fn leaves_in_visits_only_what_is_mapped_in_the_range() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x40000);
        let far = 1u64 << 44;
        map_page(&mut ram, &mut frames, PML4, 0x40_0000, 0x9000, PTE_USER).unwrap();
        map_page(&mut ram, &mut frames, PML4, far + 0x5000, 0xa000, PTE_USER | PTE_WRITABLE).unwrap();
        map_page(&mut ram, &mut frames, PML4, far + 0x6000, 0xb000, PTE_USER | PTE_WRITABLE).unwrap();
        protect(&mut ram, &mut frames, PML4, far + 0x6000, Access::None).unwrap();
        map_huge_page(&mut ram, &mut frames, PML4, far + (4 << 20), 0x20_0000, PTE_USER).unwrap();
        let seen = |start, end| {
            let mut seen = alloc_vec();
            leaves_in(&ram, PML4, start, end, &mut |at, l: Leaf| seen.push((at, l.phys(), l.size)));
            seen
        };
        // A PROT_NONE page counts; a huge page straddling the start is reported from where it starts.
        assert_eq!(
            seen(far, far + (1 << 40)),
            [
                (far + 0x5000, 0xa000, PAGE_SIZE),
                (far + 0x6000, 0xb000, PAGE_SIZE),
                (far + (4 << 20), 0x20_0000, HUGE_PAGE_SIZE)
            ]
        );
        assert_eq!(seen(far + 0x6000, far + (4 << 20) + 0x1000).len(), 2);
        assert_eq!(seen(far + (4 << 20) + 0x3000, far + (5 << 20))[0].0, far + (4 << 20));
        assert_eq!(seen(0, 1 << 47).len(), 4);
        assert!(seen(far + 0x7000, far + (4 << 20)).is_empty());
        assert!(seen(1 << 47, u64::MAX).is_empty());
    }

    #[test]
    fn prot_none_keeps_the_frame_and_read_write_brings_it_back() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x20000);
        map_page(&mut ram, &mut frames, PML4, 0x40_0000, 0x9000, PTE_USER | PTE_WRITABLE).unwrap();
        touch(&mut ram, 0x40_0000);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::None), Ok(true));
        assert_eq!(translate(&ram, PML4, 0x40_0000), None);
        let l = leaf(&ram, PML4, 0x40_0000).unwrap();
        assert_eq!((l.phys(), l.access(), l.user()), (0x9000, Access::None, true));
        // A PROT_NONE page is still mapped: nothing may map over it.
        assert_eq!(
            map_page(&mut ram, &mut frames, PML4, 0x40_0000, 0xa000, 0),
            Err(MapError::AlreadyMapped(0x40_0000))
        );
        // Giving access back to a not-present entry needs no TLB reload; changing a present one does.
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::Read), Ok(false));
        let t = translate(&ram, PML4, 0x40_0123).unwrap();
        assert_eq!((t.phys, t.writable), (0x9123, false));
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::Read), Ok(false));
        // Present but never loaded into a TLB (accessed clear): no reload either.
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::ReadWrite), Ok(false));
        assert!(translate(&ram, PML4, 0x40_0000).unwrap().writable);
        touch(&mut ram, 0x40_0000);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::Read), Ok(true));
        // The new entry was never loaded: taking write access back needs no reload.
        assert_eq!(leaf(&ram, PML4, 0x40_0000).unwrap().entry & PTE_ACCESSED, 0);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::ReadWrite), Ok(false));
    }

    /// What a walk of the tables for `vaddr` does to its leaf: sets the accessed bit.
    fn touch(ram: &mut Ram, vaddr: u64) {
        let l = leaf(ram, PML4, vaddr).unwrap();
        ram.write_u64(l.entry_addr, l.entry | PTE_ACCESSED);
    }

    #[test]
    fn a_huge_page_is_split_into_the_same_translations() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x20000);
        map_huge_page(&mut ram, &mut frames, PML4, 0x20_0000, 0x40_0000, PTE_USER | PTE_WRITABLE).unwrap();
        // Asking for what a huge page has already changes nothing.
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x20_5000, Access::ReadWrite), Ok(false));
        assert_eq!(leaf(&ram, PML4, 0x20_5000).unwrap().size, HUGE_PAGE_SIZE);
        // A huge page that was loaded: each of its small pages may be in a TLB.
        touch(&mut ram, 0x20_0000);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x20_5000, Access::Read), Ok(true));
        assert_eq!(leaf(&ram, PML4, 0x20_5000).unwrap().size, PAGE_SIZE);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x20_6000, Access::Read), Ok(true));
        for (vaddr, writable) in [(0x20_0000, true), (0x20_4fff, true), (0x20_5000, false), (0x3f_f000, true)] {
            let t = translate(&ram, PML4, vaddr).unwrap();
            assert_eq!((t.phys, t.writable, t.user), (vaddr + 0x20_0000, writable, true), "{vaddr:#x}");
        }
    }

    #[test]
    fn writable_leaves_are_dirty_and_a_split_keeps_accessed_and_dirty() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x20000);
        map_page(&mut ram, &mut frames, PML4, 0x40_0000, 0x9000, PTE_USER | PTE_WRITABLE).unwrap();
        map_page(&mut ram, &mut frames, PML4, 0x40_1000, 0xa000, PTE_USER).unwrap();
        let entry = |ram: &Ram, vaddr| leaf(ram, PML4, vaddr).unwrap().entry;
        assert_ne!(entry(&ram, 0x40_0000) & PTE_DIRTY, 0);
        assert_eq!(entry(&ram, 0x40_1000) & PTE_DIRTY, 0);
        protect(&mut ram, &mut frames, PML4, 0x40_1000, Access::ReadWrite).unwrap();
        assert_ne!(entry(&ram, 0x40_1000) & PTE_DIRTY, 0);
        map_huge_page(&mut ram, &mut frames, PML4, 0x20_0000, 0x40_0000, PTE_USER | PTE_WRITABLE | PTE_ACCESSED)
            .unwrap();
        protect(&mut ram, &mut frames, PML4, 0x20_5000, Access::Read).unwrap();
        let split = entry(&ram, 0x20_6000);
        assert_eq!(split & (PTE_ACCESSED | PTE_DIRTY | PTE_HUGE), PTE_ACCESSED | PTE_DIRTY);
    }

    /// Guest RAM where a walk on another vCPU loads the huge page at 2 MiB between the split's look at it and its
    /// exchange: the exchange returns the entry with the accessed bit set.
    struct LoadedMeanwhile(Ram);
    impl PhysMemory for LoadedMeanwhile {
        fn read_u64(&self, phys: u64) -> u64 {
            self.0.read_u64(phys)
        }
        fn write_u64(&mut self, phys: u64, value: u64) {
            self.0.write_u64(phys, value)
        }
        fn swap_u64(&mut self, phys: u64, value: u64) -> u64 {
            let old = self.0.read_u64(phys);
            self.0.write_u64(phys, value);
            if old & PTE_HUGE != 0 {
                old | PTE_ACCESSED
            } else {
                old
            }
        }
    }

    #[test]
    fn a_huge_page_loaded_while_it_is_split_makes_every_small_entry_cached() {
        let mut ram = LoadedMeanwhile(Ram::new(1 << 20));
        let mut frames = Bump(0x2000, 0x20000);
        map_huge_page(&mut ram.0, &mut frames, PML4, 0x20_0000, 0x40_0000, PTE_USER | PTE_WRITABLE).unwrap();
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x20_5000, Access::Read), Ok(true));
        let entry = leaf(&ram.0, PML4, 0x20_6000).unwrap().entry;
        assert_ne!(entry & PTE_ACCESSED, 0);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x20_6000, Access::Read), Ok(true));
    }

    #[test]
    fn a_whole_huge_page_changes_protection_without_a_split() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x20000);
        map_huge_page(&mut ram, &mut frames, PML4, 0x20_0000, 0x40_0000, PTE_USER | PTE_WRITABLE).unwrap();
        touch(&mut ram, 0x20_0000);
        assert_eq!(protect_huge(&mut ram, PML4, 0x20_1000, Access::Read), Ok(true));
        let l = leaf(&ram, PML4, 0x20_5000).unwrap();
        assert_eq!((l.size, l.access(), l.phys()), (HUGE_PAGE_SIZE, Access::Read, 0x40_0000));
        assert_eq!(protect_huge(&mut ram, PML4, 0x20_0000, Access::Read), Ok(false));
        assert_eq!(protect_huge(&mut ram, PML4, 0x20_0000, Access::ReadWrite), Ok(false));
        assert!(translate(&ram, PML4, 0x3f_ffff).unwrap().writable);
        assert_eq!(protect_huge(&mut ram, PML4, 0x20_0000, Access::None), Err(MapError::BadAddress(0x20_0000)));
        protect(&mut ram, &mut frames, PML4, 0x20_0000, Access::Read).unwrap();
        assert_eq!(protect_huge(&mut ram, PML4, 0x20_0000, Access::Read), Err(MapError::NotMapped(0x20_0000)));
    }

    #[test]
    fn unmapped_and_misaligned_pages_are_refused() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x20000);
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0000, Access::Read), Err(MapError::NotMapped(0x40_0000)));
        assert_eq!(protect(&mut ram, &mut frames, PML4, 0x40_0010, Access::Read), Err(MapError::BadAddress(0x40_0010)));
        map_huge_page(&mut ram, &mut frames, PML4, 0x20_0000, 0x40_0000, PTE_USER).unwrap();
        let mut empty = Bump(0, 0);
        assert_eq!(protect(&mut ram, &mut empty, PML4, 0x20_0000, Access::None), Err(MapError::OutOfFrames));
    }
}
