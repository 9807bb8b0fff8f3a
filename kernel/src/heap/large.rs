//! Large blocks of the library OS heap: whole pages straight from the frame allocator (see the heap's notes).

use crate::mm;
use crate::sync::SpinLock;
use core::alloc::Layout;
use kiln_abi::hypercall::{Hypercall, IoSegment};
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE, PAGE_SIZE};

/// Blocks this big or bigger come from the frame allocator in whole pages.
const LARGE: usize = 32 << 10;

pub fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE_SIZE as usize
}

/// Freed large blocks waiting to go back to the frame allocator. They are not zeroed by writing (which would make
/// the host commit every page of a buffer that data went through only a little of): once [`PENDING_BYTES`] have
/// gathered, one `Discard` hypercall has the host drop their pages, which then read as zero as the frame allocator
/// keeps its memory.
struct Pending {
    blocks: [(u64, u64); PENDING_BLOCKS],
    count: usize,
    bytes: u64,
}

const PENDING_BLOCKS: usize = 256;
const PENDING_BYTES: u64 = 8 << 20;
static PENDING: SpinLock<Pending> = SpinLock::new(Pending { blocks: [(0, 0); PENDING_BLOCKS], count: 0, bytes: 0 });

/// A large block of whole zeroed pages, from the frame allocator: untouched, so free for the host until written.
pub fn alloc_large(layout: Layout) -> *mut u8 {
    let size = page_align_up(layout.size() as u64);
    if let Some(phys) = mm::memory().frames.alloc(size) {
        return direct_map(phys) as *mut u8;
    }
    // Out of frames: what waits to be discarded may be enough.
    flush_pending();
    mm::memory().frames.alloc(size).map_or(core::ptr::null_mut(), |phys| direct_map(phys) as *mut u8)
}

/// Takes a large block back; every [`PENDING_BYTES`], discards what gathered.
pub fn free_large(ptr: *mut u8, layout: Layout) {
    let size = page_align_up(layout.size() as u64);
    let full = {
        let mut p = PENDING.lock();
        let at = p.count;
        p.blocks[at] = (ptr as u64 - DIRECT_MAP_BASE, size);
        p.count += 1;
        p.bytes += size;
        p.count == PENDING_BLOCKS || p.bytes >= PENDING_BYTES
    };
    if full {
        flush_pending();
    }
}

/// Has the host drop the pending blocks' pages, then gives them to the frame allocator (zero, as it keeps them).
fn flush_pending() {
    let (batch, used) = {
        let mut p = PENDING.lock();
        let mut batch = [IoSegment::default(); PENDING_BLOCKS];
        for (segment, &(phys, len)) in batch.iter_mut().zip(&p.blocks[..p.count]) {
            *segment = IoSegment { phys, len };
        }
        let used = p.count;
        (p.count, p.bytes) = (0, 0);
        (batch, used)
    };
    if used == 0 {
        return;
    }
    let at = mm::virt_to_phys(batch.as_ptr() as u64).unwrap_or(0);
    if crate::hypercall::call(Hypercall::Discard, &[at, used as u64]) != 0 {
        // The host kept the pages: zero them here instead.
        for s in &batch[..used] {
            // SAFETY: a freed block of ours, `len` bytes, which nothing uses.
            unsafe { core::ptr::write_bytes(direct_map(s.phys) as *mut u8, 0, s.len as usize) };
        }
    }
    let mut m = mm::memory();
    for s in &batch[..used] {
        m.frames.free_zeroed(s.phys, s.len);
    }
}
