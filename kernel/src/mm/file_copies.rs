//! Read-only private copies of image files in direct-map memory, remembered so that mapping the same bytes of the
//! same file again at the same place only sets the protection. A dynamic loader maps a library whole (a copy of the
//! file: Kiln's file mappings are copies), makes most of it PROT_NONE, then maps each segment over it with
//! `MAP_FIXED`, from the same file offsets: copying again would write every page a second time, and the protection
//! set after the copy would flush TLBs, each write and each touch after it a shadow fault.
//!
//! A copy is remembered only while its bytes cannot have changed: it was mapped without write access, and every
//! path that can change bytes of direct-map memory the program holds (write access given back, the library OS
//! writing or freeing it) forgets the range first ([`forget`]). The file must still read its bytes in place from the
//! image, which never changes (a write to the file copies them first): the same span of the image is the same bytes.

use crate::sync::SpinLock;
use alloc::vec::Vec;
use kiln_abi::layout::PAGE_SIZE;

#[derive(Clone, Copy)]
struct Copy {
    /// The mapping's first page and the end of the bytes copied into it.
    start: u64,
    end: u64,
    /// The file's bytes in the image (address, length), and the file offset copied to `start`.
    source: (u64, u64),
    offset: u64,
}

/// A few libraries' worth; the oldest goes first (the loader maps over a copy right after making it).
const MAX_COPIES: usize = 64;

static COPIES: SpinLock<Vec<Copy>> = SpinLock::new(Vec::new());

/// `[start, start+len)` holds, read-only, the bytes of the file at `source` from `offset` (zeros past its end and
/// up to the end of the last page).
pub fn remember(start: u64, len: u64, source: (u64, u64), offset: u64) {
    let mut copies = COPIES.lock();
    if copies.len() >= MAX_COPIES {
        copies.remove(0);
    }
    copies.push(Copy { start, end: start.saturating_add(len), source, offset });
}

/// Whether `[start, start+len)` (whole pages) already holds what a private mapping of `source` from `offset` would
/// put there: inside one remembered copy of the same bytes at the same offset.
pub fn holds(start: u64, len: u64, source: (u64, u64), offset: u64) -> bool {
    if !len.is_multiple_of(PAGE_SIZE) || !start.is_multiple_of(PAGE_SIZE) {
        return false;
    }
    let end = start.saturating_add(len);
    COPIES.lock().iter().any(|c| {
        c.source == source && c.start <= start && end <= c.end && c.offset.checked_add(start - c.start) == Some(offset)
    })
}

/// The bytes of `[start, end)` may change: no copy there is remembered any more (what lies outside stays).
pub fn forget(start: u64, end: u64) {
    let mut copies = COPIES.lock();
    if !copies.iter().any(|c| c.start < end && start < c.end) {
        return;
    }
    let mut kept = Vec::with_capacity(copies.len() + 1);
    for c in copies.iter().copied() {
        if c.end <= start || end <= c.start {
            kept.push(c);
            continue;
        }
        if c.start < start {
            kept.push(Copy { end: start, ..c });
        }
        if end < c.end {
            kept.push(Copy { start: end, offset: c.offset + (end - c.start), ..c });
        }
    }
    *copies = kept;
}
