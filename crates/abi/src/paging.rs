//! x86-64 4-level page tables, shared by the VMM (which builds the boot tables) and the library OS (which maps more
//! memory later, e.g. for `brk`). The memory holding the tables is reached through [`PhysMemory`], so the same code runs
//! on the host against guest RAM and in the guest against the direct map.

pub mod protect;

use crate::layout::{HUGE_PAGE_SIZE, PAGE_SIZE};

pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
pub const PTE_USER: u64 = 1 << 2;
/// Set by the CPU (or, with shadow paging, the hypervisor) when it loads the entry into a TLB. Clear means no TLB
/// holds the entry, so changing it needs no flush ([`protect::protect`]).
pub const PTE_ACCESSED: u64 = 1 << 5;
/// Set by the CPU on the first write through the entry. Preset on every writable leaf: on shadow paging a read
/// through a clean writable entry gets a read-only shadow entry, so the first write after it is a second fault.
/// Nothing in Kiln reads it (no page is ever written back).
pub const PTE_DIRTY: u64 = 1 << 6;
pub const PTE_HUGE: u64 = 1 << 7;
/// Software-defined (the CPU ignores it): a not-present entry that keeps its frame, i.e. PROT_NONE memory.
pub const PTE_PROT_NONE: u64 = 1 << 9;
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Guest-physical memory as the page-table code needs it.
pub trait PhysMemory {
    fn read_u64(&self, phys: u64) -> u64;
    fn write_u64(&mut self, phys: u64, value: u64);
    /// Writes `value` and returns what was there, atomically where vCPUs may be walking the tables meanwhile (the
    /// library OS), so that an accessed bit set by a walk cannot slip in between the read and the write.
    fn swap_u64(&mut self, phys: u64, value: u64) -> u64 {
        let old = self.read_u64(phys);
        self.write_u64(phys, value);
        old
    }
}

/// Hands out zeroed 4 KiB frames for new page tables.
pub trait FrameSource {
    fn alloc_zeroed_frame(&mut self) -> Option<u64>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No frame was left for a page table.
    OutOfFrames,
    /// The address is already mapped (by a 4 KiB or a 2 MiB page).
    AlreadyMapped(u64),
    /// The address is not canonical or not aligned as the page size requires.
    BadAddress(u64),
    /// Nothing maps the address.
    NotMapped(u64),
}

/// Index into the table at `level` (4 = PML4 .. 1 = PT) for `vaddr`.
pub const fn table_index(vaddr: u64, level: u32) -> u64 {
    (vaddr >> (12 + 9 * (level - 1))) & 0x1ff
}

/// Whether `vaddr` is a canonical lower-half address, the only kind Kiln maps.
pub const fn is_lower_canonical(vaddr: u64) -> bool {
    vaddr < (1 << 47)
}

/// The flags a leaf entry gets for `flags`: writable leaves are made dirty already (see [`PTE_DIRTY`]).
pub const fn leaf_flags(flags: u64) -> u64 {
    if flags & PTE_WRITABLE != 0 {
        flags | PTE_DIRTY
    } else {
        flags
    }
}

/// Walks from the PML4 down to the table at `stop_level`, creating missing tables.
fn walk_create<M: PhysMemory, F: FrameSource>(
    mem: &mut M,
    frames: &mut F,
    pml4: u64,
    vaddr: u64,
    stop_level: u32,
) -> Result<u64, MapError> {
    let mut table = pml4;
    let mut level = 4;
    while level > stop_level {
        let entry_addr = table + table_index(vaddr, level) * 8;
        let entry = mem.read_u64(entry_addr);
        if entry & PTE_PRESENT == 0 {
            let frame = frames.alloc_zeroed_frame().ok_or(MapError::OutOfFrames)?;
            // Accessed already: the hypervisor or CPU would set it on the first walk anyway (a write to the table).
            mem.write_u64(entry_addr, frame | PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED);
            table = frame;
        } else if entry & PTE_HUGE != 0 {
            return Err(MapError::AlreadyMapped(vaddr));
        } else {
            table = entry & PTE_ADDR_MASK;
        }
        level -= 1;
    }
    Ok(table)
}

/// Maps the 4 KiB page at `vaddr` to the frame at `phys` with `flags` (PTE_PRESENT is implied; a writable page is
/// made dirty, see [`leaf_flags`]).
pub fn map_page<M: PhysMemory, F: FrameSource>(
    mem: &mut M,
    frames: &mut F,
    pml4: u64,
    vaddr: u64,
    phys: u64,
    flags: u64,
) -> Result<(), MapError> {
    if !vaddr.is_multiple_of(PAGE_SIZE) || !phys.is_multiple_of(PAGE_SIZE) || !is_lower_canonical(vaddr) {
        return Err(MapError::BadAddress(vaddr));
    }
    let table = walk_create(mem, frames, pml4, vaddr, 1)?;
    let entry_addr = table + table_index(vaddr, 1) * 8;
    if mem.read_u64(entry_addr) & (PTE_PRESENT | PTE_PROT_NONE) != 0 {
        return Err(MapError::AlreadyMapped(vaddr));
    }
    mem.write_u64(entry_addr, phys | leaf_flags(flags) | PTE_PRESENT);
    Ok(())
}

/// Maps the 2 MiB page at `vaddr` to `phys` with `flags` (as [`map_page`]).
pub fn map_huge_page<M: PhysMemory, F: FrameSource>(
    mem: &mut M,
    frames: &mut F,
    pml4: u64,
    vaddr: u64,
    phys: u64,
    flags: u64,
) -> Result<(), MapError> {
    if !vaddr.is_multiple_of(HUGE_PAGE_SIZE) || !phys.is_multiple_of(HUGE_PAGE_SIZE) || !is_lower_canonical(vaddr) {
        return Err(MapError::BadAddress(vaddr));
    }
    let table = walk_create(mem, frames, pml4, vaddr, 2)?;
    let entry_addr = table + table_index(vaddr, 2) * 8;
    if mem.read_u64(entry_addr) & PTE_PRESENT != 0 {
        return Err(MapError::AlreadyMapped(vaddr));
    }
    mem.write_u64(entry_addr, phys | leaf_flags(flags) | PTE_PRESENT | PTE_HUGE);
    Ok(())
}

/// A present translation: the physical address `vaddr` maps to and the flags that apply (the AND of writable/user
/// along the walk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub phys: u64,
    pub writable: bool,
    pub user: bool,
    /// Bytes from `vaddr` to the end of the page that maps it.
    pub bytes_left_in_page: u64,
}

/// Looks `vaddr` up without changing anything.
pub fn translate<M: PhysMemory>(mem: &M, pml4: u64, vaddr: u64) -> Option<Translation> {
    if !is_lower_canonical(vaddr) {
        return None;
    }
    let mut table = pml4;
    let (mut writable, mut user) = (true, true);
    for level in (1..=4).rev() {
        let entry = mem.read_u64(table + table_index(vaddr, level) * 8);
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        writable &= entry & PTE_WRITABLE != 0;
        user &= entry & PTE_USER != 0;
        let leaf = level == 1 || (entry & PTE_HUGE != 0 && level <= 3);
        if leaf {
            let page_size = 1u64 << (12 + 9 * (level - 1));
            let offset = vaddr & (page_size - 1);
            let base = entry & PTE_ADDR_MASK & !(page_size - 1);
            return Some(Translation { phys: base + offset, writable, user, bytes_left_in_page: page_size - offset });
        }
        table = entry & PTE_ADDR_MASK;
    }
    None
}

/// A run of consecutive mapped user pages with the same write permission, as `/proc/self/maps` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub writable: bool,
}

/// Calls `f` for every region of user-accessible pages in the lower half, in address order, merging neighbours
/// with the same permission.
pub fn user_regions<M: PhysMemory>(mem: &M, pml4: u64, mut f: impl FnMut(Region)) {
    let mut current: Option<Region> = None;
    walk_leaves(mem, pml4, 4, 0, true, &mut |start, size, writable| match &mut current {
        Some(r) if r.end == start && r.writable == writable => r.end += size,
        _ => {
            if let Some(done) = current.replace(Region { start, end: start + size, writable }) {
                f(done);
            }
        }
    });
    if let Some(done) = current {
        f(done);
    }
}

/// Visits the present user leaves under the table at `level` that maps from `base`.
fn walk_leaves<M: PhysMemory>(
    mem: &M,
    table: u64,
    level: u32,
    base: u64,
    writable: bool,
    visit: &mut impl FnMut(u64, u64, bool),
) {
    let span = 1u64 << (12 + 9 * (level - 1));
    // Only the lower half (the first 256 PML4 entries) is ever mapped.
    let entries = if level == 4 { 256 } else { 512 };
    for index in 0..entries {
        let entry = mem.read_u64(table + index * 8);
        if entry & PTE_PRESENT == 0 || entry & PTE_USER == 0 {
            continue;
        }
        let start = base + index * span;
        let writable = writable && entry & PTE_WRITABLE != 0;
        if level == 1 || (entry & PTE_HUGE != 0 && level <= 3) {
            visit(start, span, writable);
        } else {
            walk_leaves(mem, entry & PTE_ADDR_MASK, level - 1, start, writable, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    pub(crate) struct Ram {
        bytes: Vec<u8>,
        pub(crate) next_frame: u64,
    }

    impl Ram {
        pub(crate) fn new(size: usize) -> Self {
            Self { bytes: std::vec![0; size], next_frame: 0x1000 }
        }
    }

    impl PhysMemory for Ram {
        fn read_u64(&self, phys: u64) -> u64 {
            let p = phys as usize;
            u64::from_le_bytes(self.bytes[p..p + 8].try_into().unwrap())
        }
        fn write_u64(&mut self, phys: u64, value: u64) {
            let p = phys as usize;
            self.bytes[p..p + 8].copy_from_slice(&value.to_le_bytes());
        }
    }

    pub(crate) struct Bump(pub(crate) u64, pub(crate) u64);
    impl FrameSource for Bump {
        fn alloc_zeroed_frame(&mut self) -> Option<u64> {
            (self.0 < self.1).then(|| {
                self.0 += PAGE_SIZE;
                self.0 - PAGE_SIZE
            })
        }
    }

    #[test]
    fn indices_split_the_address() {
        let v = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!([4, 3, 2, 1].map(|l| table_index(v, l)), [3, 5, 7, 9]);
    }

    #[test]
    fn maps_and_translates_small_and_huge_pages() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x20000);
        let pml4 = ram.next_frame;
        ram.next_frame += 0x1000;
        map_page(&mut ram, &mut frames, pml4, 0x40_1000, 0x7000, PTE_USER).unwrap();
        map_huge_page(&mut ram, &mut frames, pml4, 0x4000_0000_0000, 0, PTE_USER | PTE_WRITABLE).unwrap();
        let t = translate(&ram, pml4, 0x40_1abc).unwrap();
        assert_eq!(t, Translation { phys: 0x7abc, writable: false, user: true, bytes_left_in_page: 0x1000 - 0xabc });
        let h = translate(&ram, pml4, 0x4000_0012_3456).unwrap();
        assert_eq!((h.phys, h.writable, h.bytes_left_in_page), (0x12_3456, true, HUGE_PAGE_SIZE - 0x12_3456));
        assert_eq!(translate(&ram, pml4, 0x40_2000), None);
        assert_eq!(translate(&ram, pml4, 1 << 47), None);
    }

    #[test]
    fn refuses_double_maps_bad_addresses_and_running_out() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x5000);
        let pml4 = 0x1000;
        map_page(&mut ram, &mut frames, pml4, 0x1000, 0x9000, 0).unwrap();
        assert_eq!(map_page(&mut ram, &mut frames, pml4, 0x1000, 0xa000, 0), Err(MapError::AlreadyMapped(0x1000)));
        assert_eq!(map_page(&mut ram, &mut frames, pml4, 0x1001, 0xa000, 0), Err(MapError::BadAddress(0x1001)));
        assert_eq!(map_page(&mut ram, &mut frames, pml4, 1 << 40, 0xa000, 0), Err(MapError::OutOfFrames));
    }

    #[test]
    fn user_regions_merge_neighbours_and_split_on_permission() {
        let mut ram = Ram::new(1 << 20);
        let mut frames = Bump(0x2000, 0x40000);
        let pml4 = ram.next_frame;
        for (i, vaddr) in [0x40_0000u64, 0x40_1000, 0x40_2000].into_iter().enumerate() {
            let flags = if i == 2 { PTE_USER | PTE_WRITABLE } else { PTE_USER };
            map_page(&mut ram, &mut frames, pml4, vaddr, 0x8_0000 + i as u64 * PAGE_SIZE, flags).unwrap();
        }
        map_page(&mut ram, &mut frames, pml4, 0x50_0000, 0x9_0000, PTE_USER | PTE_WRITABLE).unwrap();
        map_page(&mut ram, &mut frames, pml4, 0x60_0000, 0xa_0000, PTE_WRITABLE).unwrap();
        map_huge_page(&mut ram, &mut frames, pml4, 1 << 39, 0, PTE_USER | PTE_WRITABLE).unwrap();
        let mut seen = Vec::new();
        user_regions(&ram, pml4, |r| seen.push(r));
        let region = |start, end, writable| Region { start, end, writable };
        assert_eq!(
            seen,
            [
                region(0x40_0000, 0x40_2000, false),
                region(0x40_2000, 0x40_3000, true),
                region(0x50_0000, 0x50_1000, true),
                region(1 << 39, (1 << 39) + (2 << 20), true),
            ]
        );
    }
}
