//! Memory: the frame allocator over free guest-physical RAM, the page tables (through the direct map), and the
//! program break.

pub mod file_copies;
pub mod mapping;
pub mod maps;
pub mod owned;
pub mod protect;
pub mod vma;

use crate::sync::{SpinGuard, SpinLock};
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::frames::FrameAllocator;
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE, HUGE_PAGE_SIZE, PAGE_SIZE};
use kiln_abi::paging::{self, PhysMemory};
use kiln_abi::BootInfo;

pub struct Memory {
    pub frames: FrameAllocator,
    /// Lowest physical address the allocator manages; below it is the boot layout, never freed.
    pub managed_start: u64,
    pub brk_start: u64,
    pub brk: u64,
    /// End of the pages currently mapped for the break.
    pub brk_mapped_end: u64,
}

static MEMORY: SpinLock<Memory> = SpinLock::new(Memory {
    frames: FrameAllocator::empty(),
    managed_start: 0,
    brk_start: 0,
    brk: 0,
    brk_mapped_end: 0,
});

/// Set once at boot, read by every address check: kept apart from `Memory` so a check never aliases it.
static PML4: AtomicU64 = AtomicU64::new(0);
static RAM_SIZE: AtomicU64 = AtomicU64::new(0);

pub fn pml4() -> u64 {
    PML4.load(Ordering::Relaxed)
}

pub fn ram_size() -> u64 {
    RAM_SIZE.load(Ordering::Relaxed)
}

pub fn init(boot: &BootInfo) {
    PML4.store(boot.pml4_phys, Ordering::Relaxed);
    RAM_SIZE.store(boot.mem_size, Ordering::Relaxed);
    let mut m = memory();
    m.managed_start = page_align_up(boot.free_phys_start);
    let end = boot.mem_size & !(PAGE_SIZE - 1);
    let start = m.managed_start;
    if start < end {
        m.frames.add(start, end);
    }
    // Where guest RAM is in huge pages the break starts on a 2 MiB boundary, so that it grows by 2 MiB pages from the
    // start (`mapping::set_break`); Linux too starts it at a random distance past the program. Unless the VMM mapped
    // the rest of the program's last 2 MiB page for it (`loader::break_window`): then it starts right after the bss.
    let brk_start = if boot.brk_mapped_end > page_align_up(boot.brk_start) {
        boot.brk_start
    } else if kiln_abi::layout::huge_pages_for(boot.mem_size) {
        boot.brk_start.next_multiple_of(HUGE_PAGE_SIZE)
    } else {
        boot.brk_start
    };
    m.brk_start = brk_start;
    m.brk = brk_start;
    m.brk_mapped_end = page_align_up(brk_start).max(boot.brk_mapped_end);
    drop(m);
    maps::init(boot);
}

/// The library OS's memory state, locked: hold it only for the operation at hand (never across a context switch).
pub fn memory() -> SpinGuard<'static, Memory> {
    MEMORY.lock()
}

/// Page tables are reached through the direct map.
pub struct DirectMap;

impl PhysMemory for DirectMap {
    fn read_u64(&self, phys: u64) -> u64 {
        // SAFETY: page-table frames are guest RAM, all of which the direct map covers.
        unsafe { core::ptr::read_volatile(direct_map(phys) as *const u64) }
    }
    fn write_u64(&mut self, phys: u64, value: u64) {
        // SAFETY: as above; the page-table code only writes entries of tables it walked or just allocated.
        unsafe { core::ptr::write_volatile(direct_map(phys) as *mut u64, value) }
    }
    fn swap_u64(&mut self, phys: u64, value: u64) -> u64 {
        // SAFETY: as for `write_u64`; an entry is 8-aligned, and other vCPUs' walks only ever set bits in it
        // atomically, as the exchange is.
        let entry = unsafe { &*(direct_map(phys) as *const AtomicU64) };
        entry.swap(value, Ordering::SeqCst)
    }
}

pub fn translate(vaddr: u64) -> Option<paging::Translation> {
    paging::translate(&DirectMap, pml4(), vaddr)
}

pub fn virt_to_phys(vaddr: u64) -> Option<u64> {
    if vaddr >= DIRECT_MAP_BASE && vaddr - DIRECT_MAP_BASE < ram_size() {
        return Some(vaddr - DIRECT_MAP_BASE);
    }
    translate(vaddr).map(|t| t.phys)
}
