//! The library OS's own heap (for file tables, pipes and the like), carved out of guest RAM at boot: a sixteenth of
//! it, between 1 and 16 MiB. The program's memory never comes from here.

use crate::mm;
use crate::sync::SpinLock;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use kiln_abi::layout::{direct_map, page_align_up};
use linked_list_allocator::Heap;

struct KernelHeap(SpinLock<Heap>);

// SAFETY: `Heap` hands out each block once and takes it back once; the lock serialises vCPUs.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned, with its layout.
            unsafe { self.0.lock().deallocate(ptr, layout) };
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(SpinLock::new(Heap::empty()));

pub fn init(ram_size: u64) {
    let size = page_align_up((ram_size / 16).clamp(1 << 20, 16 << 20));
    let Some(phys) = mm::memory().frames.alloc(size) else {
        crate::hypercall::panic_message("no memory for the library OS heap");
    };
    // SAFETY: the range was just taken from the frame allocator, is zeroed, and is used by nothing else.
    unsafe { HEAP.0.lock().init(direct_map(phys) as *mut u8, size as usize) };
}
