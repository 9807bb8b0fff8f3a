//! The library OS's own heap (file tables, pipes, in-memory files, socket buffers), carved out of guest RAM: a first
//! region of a sixteenth of RAM (1 to 16 MiB) at boot, and more regions from the frame allocator when those are full,
//! so that what the program asks of the library OS (many connections, big files in /tmp) is bounded by the VM's
//! memory, not by a fixed heap. The program's memory never comes from here.
//!
//! Blocks of 32 KiB or more (socket buffers, 64 KiB each way per connection) come straight from the frame
//! allocator in whole pages, which it keeps zeroed: a zeroed block is handed out without writing it, so its pages
//! cost the host nothing until data goes through them, and freed ones are given back to the host (`Discard`) rather
//! than zeroed by writing. 10,000 idle connections then cost what they hold, not 1.25 GiB.

mod large;

use crate::mm;
use crate::sync::SpinLock;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use kiln_abi::layout::{direct_map, page_align_up};
use large::{alloc_large, free_large, is_large};
use linked_list_allocator::Heap;

/// Most regions the heap grows to.
const MAX_REGIONS: usize = 64;
/// Smallest region added when the heap grows.
const GROWTH: u64 = 8 << 20;

struct Regions {
    heaps: [Heap; MAX_REGIONS],
    used: usize,
}

struct KernelHeap(SpinLock<Regions>);

impl Regions {
    /// Adds a region of at least `size` bytes from the frame allocator; false if there is no memory for one.
    fn grow(&mut self, size: u64) -> bool {
        if self.used == MAX_REGIONS {
            return false;
        }
        let size = page_align_up(size);
        let Some(phys) = mm::memory().frames.alloc(size) else { return false };
        // SAFETY: the range was just taken from the frame allocator, is zeroed, and is used by nothing else.
        unsafe { self.heaps[self.used].init(direct_map(phys) as *mut u8, size as usize) };
        self.used += 1;
        true
    }
}

// SAFETY: each `Heap` hands out each block once and takes it back once; a block goes back to the region that holds
// it; the lock serialises vCPUs.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            return alloc_large(layout);
        }
        let mut r = self.0.lock();
        let used = r.used;
        for heap in &mut r.heaps[..used] {
            if let Ok(block) = heap.allocate_first_fit(layout) {
                return block.as_ptr();
            }
        }
        // Room for the block and the allocator's bookkeeping, whatever the alignment.
        let need = (layout.size() + layout.align() + 4096) as u64;
        if !r.grow(need.max(GROWTH)) && !r.grow(need) {
            return core::ptr::null_mut();
        }
        let last = r.used - 1;
        r.heaps[last].allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // Fresh frames are zero already, and stay untouched.
            return alloc_large(layout);
        }
        // SAFETY: the caller's layout has a non-zero size, as `alloc_zeroed` requires of it.
        let block = unsafe { self.alloc(layout) };
        if !block.is_null() {
            // SAFETY: a fresh block of `layout.size()` bytes.
            unsafe { core::ptr::write_bytes(block, 0, layout.size()) };
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout) {
            // Large blocks come from `alloc_large` (see `alloc`), and the caller is done with this one.
            free_large(ptr, layout);
            return;
        }
        let Some(block) = NonNull::new(ptr) else { return };
        let mut r = self.0.lock();
        let used = r.used;
        let at = ptr as usize;
        if let Some(heap) = r.heaps[..used].iter_mut().find(|h| (h.bottom() as usize..h.top() as usize).contains(&at)) {
            // SAFETY: the caller passes a block this allocator returned, with its layout; it lies in this region.
            unsafe { heap.deallocate(block, layout) };
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(SpinLock::new(Regions { heaps: [const { Heap::empty() }; MAX_REGIONS], used: 0 }));

pub fn init(ram_size: u64) {
    if !HEAP.0.lock().grow((ram_size / 16).clamp(1 << 20, 16 << 20)) {
        crate::hypercall::panic_message("no memory for the library OS heap");
    }
}
