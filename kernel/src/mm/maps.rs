//! `/proc/self/maps`, rendered from the page tables at the moment the program opens it.
//!
//! Every user-accessible run of pages is listed with its write permission; nothing is marked non-executable, since
//! Kiln's page tables set no NX bit. The program's stack and break are named as Linux names them. Reservations
//! without memory behind them (PROT_NONE) are not listed. Of the direct map, through which anonymous `mmap` memory is
//! handed out, only the ranges the program holds (`mm::owned`) are listed, as Linux shows anonymous mappings
//! (`rw-p`, no name): the rest is the library OS's own memory.

use super::{memory, owned, pml4, ram_size, DirectMap};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::layout::{page_align_up, DIRECT_MAP_BASE};
use kiln_abi::paging::{self, Region};
use kiln_abi::BootInfo;

static STACK_BOTTOM: AtomicU64 = AtomicU64::new(0);
static STACK_TOP: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    STACK_BOTTOM.store(boot.app_stack_bottom, Ordering::Relaxed);
    STACK_TOP.store(boot.app_stack_top, Ordering::Relaxed);
}

/// Column at which Linux starts a mapping's name.
const NAME_COLUMN: usize = 73;

pub fn render() -> Vec<u8> {
    let (brk_start, brk_end) = {
        let m = memory();
        (page_align_up(m.brk_start), m.brk_mapped_end)
    };
    let (stack_bottom, stack_top) = (STACK_BOTTOM.load(Ordering::Relaxed), STACK_TOP.load(Ordering::Relaxed));
    let named = [(brk_start, brk_end, "[heap]"), (stack_bottom, stack_top, "[stack]")];
    let mut out = String::new();
    for (region, anonymous) in program_regions() {
        if anonymous {
            line(&mut out, region, false, "");
            continue;
        }
        let mut start = region.start;
        // Split where a named range begins or ends, so that the program's data and its break are separate lines.
        let mut cuts: Vec<u64> =
            named.iter().flat_map(|&(s, e, _)| [s, e]).filter(|&c| c > region.start && c < region.end).collect();
        cuts.sort_unstable();
        cuts.push(region.end);
        for end in cuts {
            let name = named.iter().find(|&&(s, e, _)| s <= start && end <= e && s < e).map_or("", |n| n.2);
            line(&mut out, Region { start, end, writable: region.writable }, true, name);
            start = end;
        }
    }
    out.into_bytes()
}

/// The bytes the program has mapped (all backed by guest memory: `/proc`'s vsize, and its rss in pages), and where
/// its break and its stack begin.
pub fn usage() -> (u64, u64, u64) {
    let brk_start = page_align_up(memory().brk_start);
    let mapped = program_regions().iter().map(|(r, _)| r.end - r.start).sum();
    (mapped, brk_start, STACK_TOP.load(Ordering::Relaxed))
}

/// The program's runs of user pages in address order, each with whether it is anonymous memory of the direct map:
/// there, only the parts the program holds.
fn program_regions() -> Vec<(Region, bool)> {
    // Collected first: the walk must not allocate while it reads tables another vCPU may be extending.
    let mut regions = Vec::with_capacity(64);
    paging::user_regions(&DirectMap, pml4(), |r| regions.push(r));
    let held = owned::all();
    let direct = (DIRECT_MAP_BASE, DIRECT_MAP_BASE + ram_size());
    let mut out = Vec::with_capacity(regions.len() + held.len());
    for r in regions {
        let (start, end) = (r.start.max(direct.0), r.end.min(direct.1));
        if start >= end {
            out.push((r, false));
            continue;
        }
        if r.start < start {
            out.push((Region { end: start, ..r }, false));
        }
        let first = held.partition_point(|&(_, e)| e <= start);
        for &(s, e) in held[first..].iter().take_while(|&&(s, _)| s < end) {
            out.push((Region { start: s.max(start), end: e.min(end), writable: r.writable }, true));
        }
        if end < r.end {
            out.push((Region { start: end, ..r }, false));
        }
    }
    out
}

fn line(out: &mut String, r: Region, executable: bool, name: &str) {
    let before = out.len();
    let w = if r.writable { 'w' } else { '-' };
    let x = if executable { 'x' } else { '-' };
    let _ = write!(out, "{:08x}-{:08x} r{w}{x}p 00000000 00:00 0", r.start, r.end);
    if !name.is_empty() {
        let width = out.len() - before;
        let _ = write!(out, "{:pad$}{name}", "", pad = NAME_COLUMN.saturating_sub(width).max(1));
    }
    out.push('\n');
}
