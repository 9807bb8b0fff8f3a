//! The library OS's allocator of guest-physical memory: what the boot layout left free, as a sorted list of free page
//! ranges. It lives here, beside the page tables, so that its logic is unit-tested on the host. Anonymous mappings are
//! physically contiguous (they are handed out through the direct map), so allocation is first-fit over ranges. Free
//! memory is kept zeroed: a range is cleared when it comes back, so fresh allocations need no work.

use crate::layout::PAGE_SIZE;
use crate::paging::FrameSource;

const MAX_RANGES: usize = 1024;

#[derive(Clone, Copy)]
struct Range {
    start: u64,
    end: u64,
}

pub struct FrameAllocator {
    ranges: [Range; MAX_RANGES],
    count: usize,
    /// Bytes lost because the range list was full when they were freed.
    pub leaked: u64,
}

impl FrameAllocator {
    pub const fn empty() -> Self {
        Self { ranges: [Range { start: 0, end: 0 }; MAX_RANGES], count: 0, leaked: 0 }
    }

    pub fn add(&mut self, start: u64, end: u64) {
        self.insert(start, end);
    }

    /// `size` bytes (a multiple of the page size), zeroed.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let i = (0..self.count).find(|&i| self.ranges[i].end - self.ranges[i].start >= size)?;
        let start = self.ranges[i].start;
        self.ranges[i].start += size;
        if self.ranges[i].start == self.ranges[i].end {
            self.remove(i);
        }
        Some(start)
    }

    /// `size` bytes (a multiple of `align`, a power of two) starting on a multiple of `align`, zeroed: the lowest such
    /// block that is free. For 2 MiB pages, whose frame must be 2 MiB-aligned.
    pub fn alloc_aligned(&mut self, size: u64, align: u64) -> Option<u64> {
        let start = self.ranges[..self.count].iter().find_map(|r| {
            let start = r.start.checked_next_multiple_of(align)?;
            (start.checked_add(size)? <= r.end).then_some(start)
        })?;
        self.alloc_at(start, size).then_some(start)
    }

    /// Takes exactly [start, start+size) if all of it is free (for growing a mapping in place).
    pub fn alloc_at(&mut self, start: u64, size: u64) -> bool {
        let end = start + size;
        let Some(i) = (0..self.count).find(|&i| self.ranges[i].start <= start && end <= self.ranges[i].end) else {
            return false;
        };
        let r = self.ranges[i];
        match (r.start == start, r.end == end) {
            (true, true) => self.remove(i),
            (true, false) => self.ranges[i].start = end,
            (false, true) => self.ranges[i].end = start,
            (false, false) => {
                self.ranges[i].end = start;
                self.insert(end, r.end);
            }
        }
        true
    }

    /// Returns memory whose contents the caller has already cleared.
    pub fn free_zeroed(&mut self, start: u64, size: u64) {
        self.insert(start, start + size);
    }

    pub fn free_bytes(&self) -> u64 {
        self.ranges[..self.count].iter().map(|r| r.end - r.start).sum()
    }

    fn remove(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.count, i);
        self.count -= 1;
    }

    fn insert(&mut self, start: u64, end: u64) {
        debug_assert!(start.is_multiple_of(PAGE_SIZE) && end.is_multiple_of(PAGE_SIZE) && start < end);
        let i = self.ranges[..self.count].partition_point(|r| r.start < start);
        let joins_prev = i > 0 && self.ranges[i - 1].end == start;
        let joins_next = i < self.count && self.ranges[i].start == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].end = self.ranges[i].end;
                self.remove(i);
            }
            (true, false) => self.ranges[i - 1].end = end,
            (false, true) => self.ranges[i].start = start,
            (false, false) => {
                if self.count == MAX_RANGES {
                    self.leaked += end - start;
                    return;
                }
                self.ranges.copy_within(i..self.count, i + 1);
                self.ranges[i] = Range { start, end };
                self.count += 1;
            }
        }
    }
}

/// New page tables come from the same free memory (it is kept zeroed).
impl FrameSource for FrameAllocator {
    fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        self.alloc(PAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn first_fit_then_coalescing_frees() {
        let mut f = FrameAllocator::empty();
        f.add(0x10 * P, 0x20 * P);
        let a = f.alloc(4 * P).unwrap();
        let b = f.alloc(4 * P).unwrap();
        let c = f.alloc(8 * P).unwrap();
        assert_eq!((a, b, c), (0x10 * P, 0x14 * P, 0x18 * P));
        assert_eq!(f.alloc(P), None, "all taken");
        f.free_zeroed(b, 4 * P);
        f.free_zeroed(a, 4 * P);
        assert_eq!(f.alloc(8 * P), Some(a), "the two freed neighbours merged");
        f.free_zeroed(a, 8 * P);
        f.free_zeroed(c, 8 * P);
        assert_eq!(f.free_bytes(), 16 * P);
        assert_eq!(f.alloc(16 * P), Some(0x10 * P), "everything merged back into one range");
        assert_eq!(f.free_bytes(), 0);
    }

    #[test]
    fn alloc_at_takes_exactly_the_range_if_free() {
        let mut f = FrameAllocator::empty();
        f.add(0, 16 * P);
        assert!(f.alloc_at(4 * P, 4 * P), "from the middle");
        assert!(!f.alloc_at(6 * P, P), "already taken");
        assert!(!f.alloc_at(15 * P, 2 * P), "runs past the end");
        assert!(f.alloc_at(0, 4 * P) && f.alloc_at(12 * P, 4 * P), "the ends");
        assert_eq!(f.alloc(4 * P), Some(8 * P));
        assert_eq!(f.alloc(P), None);
    }

    #[test]
    fn aligned_blocks_come_from_the_first_range_that_holds_one() {
        let mut f = FrameAllocator::empty();
        f.add(P, 6 * P);
        f.add(9 * P, 20 * P);
        assert_eq!(f.alloc_aligned(4 * P, 4 * P), Some(12 * P), "the first range holds no aligned block of 4");
        assert_eq!(f.alloc_aligned(2 * P, 2 * P), Some(2 * P));
        assert_eq!(f.alloc_aligned(8 * P, 8 * P), None, "16..24 runs past the end");
        assert_eq!(f.free_bytes(), 10 * P, "what is left around the blocks stays free");
        assert_eq!(f.alloc(P), Some(P));
        assert_eq!(f.alloc(3 * P), Some(9 * P), "the gap before the aligned block");
    }

    #[test]
    fn a_full_range_list_leaks_instead_of_corrupting() {
        let mut f = FrameAllocator::empty();
        f.add(0, (4 * MAX_RANGES as u64 + 2) * P);
        let blocks: Vec<u64> = (0..=2 * MAX_RANGES).map(|_| f.alloc(2 * P).unwrap()).collect();
        // Freeing every other block makes separate ranges: MAX_RANGES fit, the one after them cannot be recorded.
        for b in blocks.iter().step_by(2) {
            f.free_zeroed(*b, 2 * P);
        }
        assert_eq!(f.leaked, 2 * P);
        assert!(f.alloc(2 * P).is_some());
    }
}
