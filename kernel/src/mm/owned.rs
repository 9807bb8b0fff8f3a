//! The direct-map memory the program holds: the ranges `mmap` and `mremap` handed out (merged where they touch, as
//! Linux merges anonymous mappings), taken off when unmapped. The direct map also holds the library OS's own heap,
//! thread stacks and buffers, from the same frame allocator and at the same privilege, so the page tables cannot tell
//! them apart: mprotect, munmap, madvise, mremap, msync and mincore act on direct-map memory only where this says it
//! is the program's, and treat the rest as unmapped. Each call costs what the program has mapped around the range.

use crate::sync::SpinLock;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Start -> end of each range, none touching another.
static OWNED: SpinLock<BTreeMap<u64, u64>> = SpinLock::new(BTreeMap::new());

/// `[start, end)` is the program's from now on (it was free).
pub fn add(start: u64, end: u64) {
    if start >= end {
        return;
    }
    let mut owned = OWNED.lock();
    let (mut start, mut end) = (start, end);
    if let Some((&s, &e)) = owned.range(..=start).next_back() {
        if e >= start {
            start = s;
            end = end.max(e);
            owned.remove(&s);
        }
    }
    if let Some(&e) = owned.get(&end) {
        owned.remove(&end);
        end = e;
    }
    owned.insert(start, end);
}

/// Every range the program holds, in order (`/proc/self/maps` lists them).
pub fn all() -> Vec<(u64, u64)> {
    OWNED.lock().iter().map(|(&s, &e)| (s, e)).collect()
}

/// The parts of `[start, end)` that are the program's, in order (clipped to the range).
pub fn parts(start: u64, end: u64) -> Vec<(u64, u64)> {
    clipped(&OWNED.lock(), start, end)
}

fn clipped(owned: &BTreeMap<u64, u64>, start: u64, end: u64) -> Vec<(u64, u64)> {
    let first = owned.range(..=start).next_back().filter(|&(_, &e)| e > start).map(|(&s, _)| s).unwrap_or(start);
    owned.range(first..end).map(|(&s, &e)| (s.max(start), e.min(end))).collect()
}

/// Whether all of `[start, end)` is the program's (a non-empty range inside one of the ranges).
pub fn covers(start: u64, end: u64) -> bool {
    start < end && OWNED.lock().range(..=start).next_back().is_some_and(|(_, &e)| end <= e)
}

/// Takes the parts of `[start, end)` that are the program's off the set and returns them: they are the caller's to
/// free. Two threads unmapping the same memory free it once.
pub fn take(start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut owned = OWNED.lock();
    let taken = clipped(&owned, start, end);
    for &(s, e) in &taken {
        if let Some(whole) = owned.range(..=s).next_back().map(|(&ws, &we)| (ws, we)) {
            cut(&mut owned, whole, s, e);
        }
    }
    taken
}

/// Takes all of `[start, end)` off the set if it is all the program's; false (and nothing taken) if not.
pub fn take_all(start: u64, end: u64) -> bool {
    let mut owned = OWNED.lock();
    let Some((ws, we)) = owned.range(..=start).next_back().map(|(&s, &e)| (s, e)) else { return false };
    if start >= end || end > we {
        return false;
    }
    cut(&mut owned, (ws, we), start, end);
    true
}

/// Replaces the range `whole` of the set by what is left of it without `[start, end)`, which lies inside it.
fn cut(owned: &mut BTreeMap<u64, u64>, whole: (u64, u64), start: u64, end: u64) {
    let (ws, we) = whole;
    owned.remove(&ws);
    if ws < start {
        owned.insert(ws, start);
    }
    if end < we {
        owned.insert(end, we);
    }
}
