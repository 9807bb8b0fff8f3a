//! kiln's memory allocator: dlmalloc for small blocks (musl's allocator is slow for the many small allocations of
//! kiln's start-up, the x86 decoder's tables; dlmalloc, in Rust, is as fast as glibc's), and whole fresh mappings for
//! large ones. dlmalloc carves every block from its own segments, so it must clear a zeroed block by writing, which
//! makes the host pay for every page at once: the user-mode network's 128 KiB of buffers per connection cost 128 KiB
//! of RSS each, however little went through them. A fresh anonymous mapping is zero and costs nothing until touched.

use std::alloc::{GlobalAlloc, Layout};

/// Blocks this big or bigger get a mapping of their own.
const LARGE: usize = 64 << 10;
const PAGE: usize = 4096;

pub struct KilnAllocator;

fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

// SAFETY: large blocks are page-aligned mappings of at least the requested size, unmapped only by `dealloc` with the
// same layout; everything else is dlmalloc's, which upholds GlobalAlloc's contract itself.
unsafe impl GlobalAlloc for KilnAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            return map(layout.size());
        }
        // SAFETY: the caller's contract (a non-zero size) is passed on.
        unsafe { dlmalloc::GlobalDlmalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // A fresh anonymous mapping reads as zero.
            return map(layout.size());
        }
        // SAFETY: as in `alloc`.
        unsafe { dlmalloc::GlobalDlmalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout) {
            // SAFETY: `ptr` is the mapping `alloc` made for this layout's size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from dlmalloc with this layout.
        unsafe { dlmalloc::GlobalDlmalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap_or(layout);
        if !is_large(layout) && !is_large(new_layout) {
            // SAFETY: both sides are dlmalloc's; the caller's contract is passed on.
            return unsafe { dlmalloc::GlobalDlmalloc.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block of the new layout (its size is non-zero, as the caller guarantees).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new one is fresh).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_zeroed_and_survive_reallocation() {
        let layout = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: non-zero sizes; every block is used within its size and freed with its layout.
        unsafe {
            let p = KilnAllocator.alloc_zeroed(layout);
            assert!(!p.is_null() && (0..1 << 20).all(|i| *p.add(i) == 0));
            *p.add(12345) = 7;
            let q = KilnAllocator.realloc(p, layout, 3 << 20);
            assert_eq!(*q.add(12345), 7);
            let r = KilnAllocator.realloc(q, Layout::from_size_align(3 << 20, 8).unwrap(), 16_000);
            assert_eq!(*r.add(12345), 7);
            let s = KilnAllocator.realloc(r, Layout::from_size_align(16_000, 8).unwrap(), 200_000);
            assert_eq!(*s.add(12345), 7);
            KilnAllocator.dealloc(s, Layout::from_size_align(200_000, 8).unwrap());
        }
    }
}
