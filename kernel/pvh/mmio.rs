//! Device register windows in the image's page tables. The export maps RAM only (it cannot know where a host puts
//! its devices); the platform layer maps what it finds at boot (the local APIC) at the window's direct-map address,
//! uncached, with page tables from a small pool of its own (memory the library OS never hands out).

use crate::Shared;
use core::cell::UnsafeCell;
use kiln_abi::layout::{direct_map, DIRECT_MAP_BASE, PAGE_SIZE};
use kiln_abi::paging::{self, FrameSource, MapError, PhysMemory, PTE_USER, PTE_WRITABLE};

/// Page tables for windows: each window below 4 GiB needs at most a PD and a PT (a PDPT more above), and windows
/// share them.
const POOL_PAGES: usize = 16;
/// Page-level cache disable and write-through: device registers are not memory.
const PTE_UNCACHED: u64 = (1 << 4) | (1 << 3);
/// Most pages one window may have.
const MAX_WINDOW_PAGES: u64 = 16;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u8; PAGE_SIZE as usize]; POOL_PAGES]>);
// SAFETY: only the boot vCPU uses it, at boot, through `Frames`.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([[0; PAGE_SIZE as usize]; POOL_PAGES]));
static POOL_USED: Shared<usize> = Shared(UnsafeCell::new(0));
static PML4: Shared<u64> = Shared(UnsafeCell::new(0));

/// The page tables, reached through the direct map (where the image's RAM and this layer's pool are).
struct Tables;

impl PhysMemory for Tables {
    fn read_u64(&self, phys: u64) -> u64 {
        // SAFETY: `phys` is a page-table entry the walk reached from the PML4: in RAM or in the pool, both in the
        // direct map.
        unsafe { core::ptr::read_volatile(direct_map(phys) as *const u64) }
    }

    fn write_u64(&mut self, phys: u64, value: u64) {
        // SAFETY: as in `read_u64`; the library OS does not run yet.
        unsafe { core::ptr::write_volatile(direct_map(phys) as *mut u64, value) }
    }
}

struct Frames;

impl FrameSource for Frames {
    fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        let used = POOL_USED.get();
        if used == POOL_PAGES {
            return None;
        }
        POOL_USED.set(used + 1);
        // SAFETY: page `used` of the pool is handed out once, here, and nothing else refers to it.
        let page = unsafe { &mut (*POOL.0.get())[used] };
        page.fill(0);
        Some(page.as_ptr() as u64 - DIRECT_MAP_BASE)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum WindowError {
    TooLarge,
    Map(MapError),
}

/// Which page tables windows go into: the image's, once the platform layer runs on them.
pub fn init(pml4_phys: u64) {
    PML4.set(pml4_phys);
}

/// Maps `len` bytes of device registers at guest-physical `phys` at their direct-map address, for the platform layer
/// only or (`user`) for the library OS's drivers too. Returns that address. A page mapped already (the same window
/// twice, or two windows in one page) is kept.
pub fn map(phys: u64, len: u64, user: bool) -> Result<u64, WindowError> {
    let first = phys & !(PAGE_SIZE - 1);
    let pages = (phys - first).saturating_add(len).div_ceil(PAGE_SIZE);
    if pages > MAX_WINDOW_PAGES {
        return Err(WindowError::TooLarge);
    }
    let flags = PTE_WRITABLE | PTE_UNCACHED | if user { PTE_USER } else { 0 };
    for page in 0..pages {
        let at = first + page * PAGE_SIZE;
        match paging::map_page(&mut Tables, &mut Frames, PML4.get(), direct_map(at), at, flags) {
            Ok(()) => {}
            Err(MapError::AlreadyMapped(_)) if mapped_here(at) => {}
            Err(e) => return Err(WindowError::Map(e)),
        }
    }
    crate::io::flush_tlb();
    Ok(direct_map(phys))
}

/// Whether the direct map's page for `phys` leads to `phys` already (a window mapped before).
fn mapped_here(phys: u64) -> bool {
    paging::translate(&Tables, PML4.get(), direct_map(phys)).is_some_and(|t| t.phys == phys)
}

/// Says what went wrong with a window and ends the VM.
pub fn fail(what: &str, phys: u64, error: WindowError) -> ! {
    crate::serial::write_str("kiln: cannot map ");
    crate::serial::write_str(what);
    crate::serial::write_str(" at ");
    crate::serial::write_hex(phys);
    crate::serial::write_str(match error {
        WindowError::TooLarge => ": its window is too large",
        WindowError::Map(MapError::OutOfFrames) => ": the platform layer's page tables are used up",
        WindowError::Map(MapError::AlreadyMapped(_)) => ": something else is there in the image's direct map",
        WindowError::Map(_) => ": not a mappable address",
    });
    crate::serial::write_str("\n");
    crate::power::exit(1)
}
