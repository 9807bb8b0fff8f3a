//! What the loader does that needs no firmware, kept apart so that the host's tests run it (`crates/uefi-disk`
//! includes this file): reading the exported PVH ELF into a load plan, and the PVH memory map made from UEFI's.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use goblin::elf::program_header::PT_LOAD;
use goblin::elf::Elf;
use kiln_abi::pvh::{MemmapEntry, XEN_ELFNOTE_PHYS32_ENTRY};

pub const PAGE: u64 = 4096;
/// The PVH entry runs in 32-bit protected mode without paging: everything it needs lies below 4 GiB.
const FOUR_GIB: u64 = 1 << 32;

/// One PT_LOAD: `file` bytes of the ELF copied to guest-physical `phys`, zeroes after them up to `mem_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub phys: u64,
    pub file: Range<usize>,
    pub mem_size: u64,
}

/// The payload's pages: where each segment goes, the page-aligned span they cover, and the 32-bit entry.
#[derive(Debug)]
pub struct Payload {
    pub segments: Vec<Segment>,
    pub span: Range<u64>,
    pub entry32: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    NotElf,
    NoEntryNote,
    NoSegments,
    SegmentOutsideFile { index: usize },
    SegmentAbove4G { index: usize },
    FileLargerThanMemory { index: usize },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf => write!(f, "is not an x86-64 ELF (make it with kiln export --format pvh)"),
            Self::NoEntryNote => write!(f, "has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"),
            Self::NoSegments => write!(f, "has nothing to load"),
            Self::SegmentOutsideFile { index } => write!(f, "segment {index} reaches past the end of the file"),
            Self::SegmentAbove4G { index } => write!(f, "segment {index} lies above 4 GiB"),
            Self::FileLargerThanMemory { index } => write!(f, "segment {index} has more file bytes than memory"),
        }
    }
}

/// The load plan of the PVH ELF `elf`.
pub fn parse(elf: &[u8]) -> Result<Payload, PlanError> {
    let parsed = Elf::parse(elf).map_err(|_| PlanError::NotElf)?;
    if !parsed.is_64 || parsed.header.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(PlanError::NotElf);
    }
    let mut entry32 = None;
    if let Some(notes) = parsed.iter_note_headers(elf) {
        for note in notes.flatten() {
            if note.n_type == XEN_ELFNOTE_PHYS32_ENTRY && note.name == "Xen" && note.desc.len() >= 4 {
                let word = u32::from_le_bytes([note.desc[0], note.desc[1], note.desc[2], note.desc[3]]);
                entry32 = Some(word);
            }
        }
    }
    // A note whose section or segment is not of type PT_NOTE would be missed above; the export writes a PT_NOTE.
    let entry32 = entry32.ok_or(PlanError::NoEntryNote)?;
    let mut segments = Vec::new();
    for (index, ph) in parsed.program_headers.iter().enumerate() {
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let start = usize::try_from(ph.p_offset).map_err(|_| PlanError::SegmentOutsideFile { index })?;
        let len = usize::try_from(ph.p_filesz).map_err(|_| PlanError::SegmentOutsideFile { index })?;
        let end = start.checked_add(len).filter(|&e| e <= elf.len()).ok_or(PlanError::SegmentOutsideFile { index })?;
        if ph.p_filesz > ph.p_memsz {
            return Err(PlanError::FileLargerThanMemory { index });
        }
        let top = ph.p_paddr.checked_add(ph.p_memsz).filter(|&t| t <= FOUR_GIB);
        if top.is_none() {
            return Err(PlanError::SegmentAbove4G { index });
        }
        segments.push(Segment { phys: ph.p_paddr, file: start..end, mem_size: ph.p_memsz });
    }
    let low = segments.iter().map(|s| s.phys).min().ok_or(PlanError::NoSegments)?;
    let high = segments.iter().map(|s| s.phys + s.mem_size).max().ok_or(PlanError::NoSegments)?;
    let span = (low & !(PAGE - 1))..high.next_multiple_of(PAGE);
    Ok(Payload { segments, span, entry32 })
}

/// The PVH (e820) type of a UEFI memory type, as Linux's EFI stub maps them: what is free once boot services have
/// ended is RAM; the firmware's runtime memory, MMIO and the rest are reserved.
pub fn e820_kind(uefi_type: u32) -> u32 {
    match uefi_type {
        // Loader code and data, boot services code and data, conventional memory.
        1..=4 | 7 => 1,
        // ACPI reclaimable memory, ACPI NVS, unusable, persistent memory.
        9 => 3,
        10 => 4,
        8 => 5,
        14 => 7,
        _ => 2,
    }
}

/// Fills `out` with the PVH memory map of UEFI's `(physical start, pages, type)` ranges, sorted by address, with
/// touching ranges of one kind merged; returns how many entries it wrote. When more ranges remain than `out` holds,
/// the lowest addresses are kept (the exported image lives in the first GiB). No allocation: this runs after boot
/// services have ended.
pub fn e820(ranges: impl Iterator<Item = (u64, u64, u32)>, out: &mut [MemmapEntry]) -> usize {
    let mut len = 0;
    for (start, pages, uefi_type) in ranges {
        let Some(size) = pages.checked_mul(PAGE).filter(|&s| s != 0 && start.checked_add(s).is_some()) else {
            continue;
        };
        let entry = MemmapEntry { addr: start, size, kind: e820_kind(uefi_type), reserved: 0 };
        let at = out[..len].iter().position(|e| e.addr > start).unwrap_or(len);
        if at == out.len() {
            continue;
        }
        let keep = len.min(out.len() - 1);
        out.copy_within(at..keep, at + 1);
        out[at] = entry;
        len = keep + 1;
    }
    // Merge neighbours of one kind that touch.
    let mut merged = 0;
    for i in 0..len {
        let e = out[i];
        if merged > 0 {
            let last = &mut out[merged - 1];
            if last.kind == e.kind && last.addr + last.size == e.addr {
                last.size += e.size;
                continue;
            }
        }
        out[merged] = e;
        merged += 1;
    }
    merged
}
