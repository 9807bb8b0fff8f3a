//! The UEFI loader's firmware-free logic (crates/uefi-loader/src/plan.rs), run on the host.

use crate::loader_plan::{e820, parse, PlanError, Segment};
use kiln_abi::pvh::{MemmapEntry, XEN_ELFNOTE_PHYS32_ENTRY};

/// A minimal ELF64 with the given PT_LOADs `(offset, paddr, filesz, memsz)` and, if `entry` is given, a PVH note.
fn elf(loads: &[(u64, u64, u64, u64)], entry: Option<u32>, len: usize) -> Vec<u8> {
    let phnum = loads.len() + usize::from(entry.is_some());
    let mut out = vec![0u8; len.max(64 + phnum * 56 + 20)];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let note_at = 64 + phnum * 56;
    let mut ph = |i: usize, kind: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        let at = 64 + i * 56;
        out[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        for (k, v) in [off, addr, addr, filesz, memsz, 4].iter().enumerate() {
            out[at + 8 + k * 8..at + 16 + k * 8].copy_from_slice(&v.to_le_bytes());
        }
    };
    for (i, &(off, addr, filesz, memsz)) in loads.iter().enumerate() {
        ph(i, 1, off, addr, filesz, memsz);
    }
    if let Some(entry) = entry {
        ph(loads.len(), 4, note_at as u64, 0, 20, 20);
        let mut note = Vec::new();
        for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
        out[note_at..note_at + 20].copy_from_slice(&note);
    }
    out
}

#[test]
fn segments_and_entry_of_a_pvh_elf() {
    let image = elf(&[(0x1000, 0x10_0000, 0x800, 0x3000), (0x2000, 0x10_3000, 0x10, 0x10)], Some(0x10_0040), 0x3000);
    let payload = parse(&image).expect("parse");
    assert_eq!(payload.entry32, 0x10_0040);
    assert_eq!(payload.span, 0x10_0000..0x10_4000);
    assert_eq!(
        payload.segments,
        vec![
            Segment { phys: 0x10_0000, file: 0x1000..0x1800, mem_size: 0x3000 },
            Segment { phys: 0x10_3000, file: 0x2000..0x2010, mem_size: 0x10 },
        ]
    );
}

#[test]
fn bad_elves_are_refused() {
    assert_eq!(parse(b"MZ not an elf").unwrap_err(), PlanError::NotElf);
    let no_note = elf(&[(0x1000, 0x10_0000, 0x10, 0x10)], None, 0x2000);
    assert_eq!(parse(&no_note).unwrap_err(), PlanError::NoEntryNote);
    let past_end = elf(&[(0x1000, 0x10_0000, 0x2000, 0x2000)], Some(1), 0x2000);
    assert_eq!(parse(&past_end).unwrap_err(), PlanError::SegmentOutsideFile { index: 0 });
    let high = elf(&[(0x1000, 0xffff_f000, 0x10, 0x2000)], Some(1), 0x2000);
    assert_eq!(parse(&high).unwrap_err(), PlanError::SegmentAbove4G { index: 0 });
    let wrapping = elf(&[(u64::MAX - 4, 0x10_0000, 0x10, 0x10)], Some(1), 0x2000);
    assert_eq!(parse(&wrapping).unwrap_err(), PlanError::SegmentOutsideFile { index: 0 });
    let nothing = elf(&[], Some(1), 0x100);
    assert_eq!(parse(&nothing).unwrap_err(), PlanError::NoSegments);
}

#[test]
fn memory_map_is_sorted_merged_and_typed() {
    // (start, pages, UEFI type): boot services data and conventional memory are RAM once boot services end; runtime
    // data and MMIO are not.
    let uefi = [
        (0x10_0000, 0x100, 7),
        (0, 0xa0, 7),
        (0x20_0000, 0x10, 4),
        (0x21_0000, 0x10, 6),
        (0x22_0000, 0x10, 2),
        (0xfec0_0000, 1, 11),
        (0x30_0000, 0, 7),
    ];
    let mut out = [MemmapEntry::default(); 8];
    let n = e820(uefi.into_iter(), &mut out);
    let got: Vec<(u64, u64, u32)> = out[..n].iter().map(|e| (e.addr, e.size, e.kind)).collect();
    assert_eq!(
        got,
        vec![
            (0, 0xa_0000, 1),
            (0x10_0000, 0x11_0000, 1),
            (0x21_0000, 0x1_0000, 2),
            (0x22_0000, 0x1_0000, 1),
            (0xfec0_0000, 0x1000, 2),
        ]
    );
}

#[test]
fn a_memory_map_too_long_keeps_its_lowest_ranges() {
    let uefi = (0..10u64).rev().map(|i| (i * 0x10_0000, 1, if i % 2 == 0 { 7 } else { 0 }));
    let mut out = [MemmapEntry::default(); 4];
    let n = e820(uefi, &mut out);
    let starts: Vec<u64> = out[..n].iter().map(|e| e.addr).collect();
    assert_eq!(starts, vec![0, 0x10_0000, 0x20_0000, 0x30_0000]);
}
