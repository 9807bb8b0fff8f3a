//! What the UEFI loader reads from the EFI system partition (`\kiln\app.elf`, which anyone with the disk can replace)
//! and from the firmware (its memory map), through the loader's firmware-free logic (crates/uefi-loader/src/plan.rs):
//! a plan must keep every segment inside the file and the span, below 4 GiB; the memory map must come out sorted,
//! within its array, without overflow.
#![no_main]

extern crate alloc;

#[path = "../../crates/uefi-loader/src/plan.rs"]
#[allow(dead_code)]
mod plan;

use kiln_abi::pvh::MemmapEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| {
    if let Ok(payload) = plan::parse(file) {
        assert!(payload.span.end <= 1 << 32);
        for s in &payload.segments {
            assert!(s.file.end <= file.len() && s.file.len() as u64 <= s.mem_size);
            assert!(s.phys >= payload.span.start && s.phys + s.mem_size <= payload.span.end);
        }
    }
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    let ranges = file
        .chunks_exact(20)
        .map(|c| (word(&c[..8]), word(&c[8..16]), u32::from_le_bytes([c[16], c[17], c[18], c[19]])));
    let mut out = [MemmapEntry::default(); 16];
    let n = plan::e820(ranges, &mut out);
    assert!(n <= out.len());
    assert!(out[..n].windows(2).all(|w| w[0].addr <= w[1].addr));
});
