//! The syscall rewriter on any code: segments of the fuzzer's bytes at its addresses, its executable-section ranges
//! and function symbols, and stubs placed right after the code, or out of a `jmp rel32`'s reach (the span-size case:
//! a program whose span is larger than 2 GiB, whose sites must all stay in place), or where adding to the address
//! would wrap.
#![no_main]

use kiln_vmm::rewrite::{rewrite_syscalls, ExecSegment, FunctionSymbol, RewriteInput};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Segment {
    /// In pages above 4 MiB, or anywhere.
    page: u16,
    anywhere: Option<u64>,
    bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Stubs {
    AfterTheCode,
    /// This many GiB after the code's end.
    FarAway(u8),
    At(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    segments: Vec<Segment>,
    /// Offsets from the first segment's address.
    code_ranges: Vec<(u32, u32)>,
    functions: Vec<(u32, u32)>,
    stubs: Stubs,
}

fuzz_target!(|input: Input| {
    let segments: Vec<(u64, Vec<u8>)> = input
        .segments
        .into_iter()
        .take(4)
        .map(|s| (s.anywhere.unwrap_or(0x40_0000 + u64::from(s.page) * 0x1000), s.bytes))
        .collect();
    // Segments that overlap are two mappings of one address (the ELF loader refuses them): left out, since the
    // checks below read each address in one place.
    let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
    for (at, bytes) in segments {
        let end = at.saturating_add(bytes.len() as u64);
        if kept.iter().all(|(a, b)| end <= *a || a.saturating_add(b.len() as u64) <= at) {
            kept.push((at, bytes));
        }
    }
    let mut segments = kept;
    let Some(&(first, _)) = segments.first() else { return };
    let end = segments.iter().map(|(at, b)| at.saturating_add(b.len() as u64)).max().unwrap_or(first);
    let stub_base = match input.stubs {
        Stubs::AfterTheCode => end.saturating_add(0xfff) & !0xfff,
        Stubs::FarAway(gib) => end.saturating_add(u64::from(gib) << 30),
        Stubs::At(at) => at,
    };
    let originals: Vec<(u64, Vec<u8>)> = segments.clone();
    let code_ranges = input
        .code_ranges
        .iter()
        .take(8)
        .map(|&(s, e)| (first.saturating_add(u64::from(s)), first.saturating_add(u64::from(e))))
        .collect();
    let functions = input
        .functions
        .iter()
        .take(64)
        .map(|&(at, size)| FunctionSymbol { vaddr: first.saturating_add(u64::from(at)), size: u64::from(size) })
        .collect();
    let exec = segments.iter_mut().map(|(vaddr, bytes)| ExecSegment { vaddr: *vaddr, bytes }).collect();
    let Ok(out) = rewrite_syscalls(RewriteInput { segments: exec, code_ranges, functions, stub_base }) else { return };
    // Every site left in place now calls through %rax; none lies outside the code it was given.
    let byte_at = |segs: &[(u64, Vec<u8>)], addr: u64| {
        segs.iter().find_map(|(at, b)| addr.checked_sub(*at).and_then(|off| b.get(off as usize).copied()))
    };
    // A site is a `syscall` instruction, prefixes (which mean nothing to it) included: `0f 05` ends it.
    let opcode_at = |site: u64| {
        (0..15)
            .find(|&k| (byte_at(&originals, site + k), byte_at(&originals, site + k + 1)) == (Some(0x0f), Some(0x05)))
    };
    for &site in &out.report.in_place {
        let k = opcode_at(site).unwrap_or_else(|| panic!("no syscall at {site:#x}"));
        // Left in place, it calls through %rax, behind NOPs where its prefixes were.
        assert!((0..k).all(|i| byte_at(&segments, site + i) == Some(0x90)), "{site:#x}");
        assert_eq!((byte_at(&segments, site + k), byte_at(&segments, site + k + 1)), (Some(0xff), Some(0xd0)));
    }
    for &site in &out.report.relocated {
        assert!(opcode_at(site).is_some(), "no syscall at {site:#x}");
    }
    // Far stubs cannot be reached: nothing is relocated to them.
    // (A `jmp rel32` wraps around the address space as the CPU's address arithmetic does.)
    let far = |at: u64| stub_base.wrapping_sub(at).min(at.wrapping_sub(stub_base)) > 3 << 30;
    if originals.iter().all(|(at, b)| far(*at) && far(at.saturating_add(b.len() as u64))) {
        assert!(out.report.relocated.is_empty() && out.stubs.is_empty(), "{stub_base:#x} {:x?}", out.report.relocated);
    }
});
