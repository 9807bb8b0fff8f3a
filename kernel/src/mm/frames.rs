//! Guest-physical memory not used by the boot layout, as a sorted list of free page ranges. Anonymous mappings are
//! physically contiguous (they are handed out through the direct map), so allocation is first-fit over ranges. Free
//! memory is kept zeroed: a range is cleared when it comes back, so fresh allocations need no work.

use kiln_abi::layout::PAGE_SIZE;

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
