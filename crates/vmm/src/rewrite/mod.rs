//! Syscall-site rewriter: before boot, decode the application's executable code with a real x86 decoder and route
//! each `syscall` (`0f 05`) into the library OS. A site is *relocated* where it can be: a window of whole instructions
//! around it becomes a `jmp` to a stub that calls the library OS's syscall entry through the address in
//! [`ENTRY_SLOT`], so that page 0 need not be mapped and NULL reads fault. A site that cannot be relocated becomes
//! `call *%rax` (`ff d0`) in place, which lands in the page-0 NOP slide. Stubs of sites whose function keeps data in
//! the red zone below `%rsp` step over it around the call.

mod analysis;
mod relocate;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

/// `call *%rax`: same length as `syscall`, so a plain site is patched without moving anything.
const CALL_RAX: [u8; 2] = [0xff, 0xd0];
/// Stubs start on this boundary; the gaps are `int3`.
const STUB_ALIGN: usize = 16;
/// The first bytes of the stub area: the 64-bit address of the library OS's syscall entry, which the stubs call
/// through. The loader fills it (the rewrite, which is cached, does not know where the library OS will be).
pub const ENTRY_SLOT: std::ops::Range<usize> = 0..8;
/// Then the offset in the stub area of its restart table, which runs to the area's end: (return address of a stub's
/// call, where a restarted syscall resumes) pairs of little-endian u64, sorted. A stub's call that is not in it
/// restarts at the call itself (see `kiln_abi::boot::BootInfo::syscall_stubs_start`).
pub const RESTART_TABLE_OFFSET: std::ops::Range<usize> = 8..16;
const INT3: u8 = 0xcc;
const NOP: u8 = 0x90;

/// An executable `PT_LOAD`'s in-memory bytes, patched in place.
pub struct ExecSegment<'a> {
    pub vaddr: u64,
    pub bytes: &'a mut [u8],
}

/// An `STT_FUNC` symbol from `.symtab`; gives exact function bounds for the red-zone check.
pub struct FunctionSymbol {
    pub vaddr: u64,
    pub size: u64,
}

pub struct RewriteInput<'a> {
    pub segments: Vec<ExecSegment<'a>>,
    /// vaddr ranges [start,end) of executable sections (SHF_EXECINSTR) to decode; empty = decode whole segments.
    pub code_ranges: Vec<(u64, u64)>,
    pub functions: Vec<FunctionSymbol>,
    /// Virtual address where `RewriteOutput::stubs` will be mapped (read+execute), within +-2 GiB of the code.
    pub stub_base: u64,
}

pub struct RewriteOutput {
    pub report: RewriteReport,
    /// The stub area, to be mapped read+execute at `RewriteInput::stub_base` once the loader has written the syscall
    /// entry's address into [`ENTRY_SLOT`]; empty if nothing was relocated.
    pub stubs: Vec<u8>,
}

/// Addresses of the `syscall` instructions found, by how they were handled.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RewriteReport {
    /// Sites moved to a stub behind a `jmp rel32`: they do not use page 0.
    pub relocated: Vec<u64>,
    /// The relocated sites whose stub steps over the red zone (a subset of `relocated`).
    pub red_zone: Vec<u64>,
    /// Sites that could not be relocated, turned into `call *%rax` in place: they need the page-0 trampoline.
    pub in_place: Vec<u64>,
    /// Red-zone sites that could not be relocated (a subset of `in_place`): the pushed return address may clobber
    /// live data there, so the caller should warn.
    pub unsafe_sites: Vec<u64>,
}

impl RewriteReport {
    pub fn counts(&self) -> SiteCounts {
        SiteCounts {
            relocated: self.relocated.len(),
            red_zone: self.red_zone.len(),
            in_place: self.in_place.len(),
            unsafe_sites: self.unsafe_sites.len(),
        }
    }
}

/// How many syscall sites were handled which way (see [`RewriteReport`]); displays as one line for logs and
/// `kiln run --stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SiteCounts {
    pub relocated: usize,
    pub red_zone: usize,
    pub in_place: usize,
    pub unsafe_sites: usize,
}

impl std::ops::Add for SiteCounts {
    type Output = SiteCounts;
    fn add(self, other: SiteCounts) -> SiteCounts {
        SiteCounts {
            relocated: self.relocated + other.relocated,
            red_zone: self.red_zone + other.red_zone,
            in_place: self.in_place + other.in_place,
            unsafe_sites: self.unsafe_sites + other.unsafe_sites,
        }
    }
}

impl std::fmt::Display for SiteCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.relocated + self.in_place;
        write!(
            f,
            "syscall sites: {total}, {} moved to stubs ({} stepping over the red zone), {} in place through page 0",
            self.relocated, self.red_zone, self.in_place
        )?;
        if self.in_place > 0 {
            f.write_str(" (NULL reads do not fault)")?;
        }
        if self.unsafe_sites > 0 {
            write!(f, ", {} of them in red-zone functions", self.unsafe_sites)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("code range {start:#x}..{end:#x} is empty or inverted")]
    EmptyCodeRange { start: u64, end: u64 },
    #[error("code range {start:#x}..{end:#x} does not lie inside one executable segment")]
    CodeRangeOutsideSegments { start: u64, end: u64 },
    #[error("segment at {vaddr:#x} with {len:#x} bytes wraps the address space")]
    SegmentOverflow { vaddr: u64, len: usize },
    #[error("code at {first:#x} and {second:#x} overlaps")]
    OverlappingCode { first: u64, second: u64 },
}

/// A stretch of decoded code inside one segment: instructions in address order, invalid bytes left out.
struct Region {
    segment: usize,
    instrs: Vec<Instruction>,
}

/// Bytes to write over the original code at `addr`.
struct Patch {
    segment: usize,
    addr: u64,
    bytes: Vec<u8>,
}

/// Rewrites every `syscall` in the given code; see the module doc. All sites are analysed on the original bytes
/// before any byte is patched.
pub fn rewrite_syscalls(input: RewriteInput<'_>) -> Result<RewriteOutput, RewriteError> {
    let RewriteInput { mut segments, code_ranges, functions, stub_base } = input;
    let regions = decode_regions(&segments, &code_ranges)?;
    let targets = branch_targets(&regions);

    let mut report = RewriteReport::default();
    let mut stubs = Vec::new();
    let mut patches = Vec::new();
    let mut restarts = Vec::new();
    for region in &regions {
        // A relocated window must not overlap an earlier one in the same region.
        let mut floor = 0;
        for (site, ins) in region.instrs.iter().enumerate() {
            if ins.mnemonic() != Mnemonic::Syscall {
                continue;
            }
            let addr = ins.ip();
            let span = analysis::function_span(&region.instrs, site, &functions);
            let red_zone = analysis::uses_red_zone(&region.instrs[span.clone()]);
            let lo = span.start.max(floor);
            // Where the stub would go, and it, and the `jmp` to it; none if the site has no window or the stub would
            // be out of a rel32's reach (a span of over 2 GiB puts the stub area there) or cannot be encoded.
            let next =
                if stubs.is_empty() { RESTART_TABLE_OFFSET.end } else { stubs.len() }.next_multiple_of(STUB_ALIGN);
            let moved = relocate::find_window(&region.instrs, lo..span.end, site, &targets, red_zone).and_then(|w| {
                let stub_addr = stub_base.checked_add(next as u64)?;
                let slot_addr = stub_base + ENTRY_SLOT.start as u64;
                let (stub, ret) =
                    relocate::build_stub(&region.instrs, &w, site, stub_addr, slot_addr, red_zone).ok()?;
                // A stub that would run past the end of the address space is no stub (the caller's stub_base
                // decides that, not the program: the loader keeps programs below 2^47).
                let ret_addr = stub_addr.checked_add(u64::try_from(ret).ok()?)?;
                stub_addr.checked_add(u64::try_from(stub.len()).ok()?)?;
                let jump = relocate::jump_patch(&region.instrs, &w, stub_addr)?;
                Some((w, stub, ret_addr, jump))
            });
            let Some((window, stub, ret_addr, jump)) = moved else {
                patches.push(Patch { segment: region.segment, addr, bytes: in_place(ins) });
                report.in_place.push(addr);
                if red_zone {
                    report.unsafe_sites.push(addr);
                }
                continue;
            };
            if stubs.is_empty() {
                stubs.resize(RESTART_TABLE_OFFSET.end, 0);
            }
            stubs.resize(next, INT3);
            stubs.extend_from_slice(&stub);
            // A red-zone stub has moved %rsp by the time it calls: only its call can be run again.
            if !red_zone && relocate::can_run_again(&region.instrs[window.first..site]) {
                restarts.push((ret_addr, region.instrs[window.first].ip()));
            }
            patches.push(Patch { segment: region.segment, addr: region.instrs[window.first].ip(), bytes: jump });
            report.relocated.push(addr);
            if red_zone {
                report.red_zone.push(addr);
            }
            floor = window.last + 1;
        }
    }

    if !stubs.is_empty() {
        stubs.resize(stubs.len().next_multiple_of(8), INT3);
        let offset = stubs.len() as u64;
        stubs[RESTART_TABLE_OFFSET].copy_from_slice(&offset.to_le_bytes());
        // Sorted by return address, for the library OS's binary search.
        restarts.sort_unstable();
        for (ret, resume) in restarts {
            stubs.extend(ret.to_le_bytes());
            stubs.extend(resume.to_le_bytes());
        }
    }

    for patch in patches {
        let segment = &mut segments[patch.segment];
        // In bounds: the decoder read these instructions from this very segment.
        let off = (patch.addr - segment.vaddr) as usize;
        segment.bytes[off..off + patch.bytes.len()].copy_from_slice(&patch.bytes);
    }
    Ok(RewriteOutput { report, stubs })
}

/// `call *%rax` over the site. A `syscall` with (meaningless) prefixes is longer than 2 bytes: `nop`s fill the front,
/// because a prefix in front of `ff d0` could change the call (`66` makes it a 16-bit call).
fn in_place(site: &Instruction) -> Vec<u8> {
    let mut bytes = vec![NOP; site.len() - CALL_RAX.len()];
    bytes.extend_from_slice(&CALL_RAX);
    bytes
}

/// Resolves the code ranges (or whole segments) to slices and decodes them linearly.
fn decode_regions(segments: &[ExecSegment<'_>], code_ranges: &[(u64, u64)]) -> Result<Vec<Region>, RewriteError> {
    // (segment index, start, end)
    let mut spans = Vec::new();
    let seg_end = |seg: &ExecSegment<'_>| {
        u64::try_from(seg.bytes.len())
            .ok()
            .and_then(|len| seg.vaddr.checked_add(len))
            .ok_or(RewriteError::SegmentOverflow { vaddr: seg.vaddr, len: seg.bytes.len() })
    };
    if code_ranges.is_empty() {
        for (i, seg) in segments.iter().enumerate() {
            spans.push((i, seg.vaddr, seg_end(seg)?));
        }
    } else {
        for &(start, end) in code_ranges {
            if start >= end {
                return Err(RewriteError::EmptyCodeRange { start, end });
            }
            let mut found = None;
            for (i, seg) in segments.iter().enumerate() {
                if seg.vaddr <= start && end <= seg_end(seg)? {
                    found = Some(i);
                }
            }
            let i = found.ok_or(RewriteError::CodeRangeOutsideSegments { start, end })?;
            spans.push((i, start, end));
        }
    }
    // Overlapping spans would find (and patch) the same sites twice.
    spans.sort_by_key(|&(_, start, _)| start);
    for pair in spans.windows(2) {
        if pair[0].2 > pair[1].1 {
            return Err(RewriteError::OverlappingCode { first: pair[0].1, second: pair[1].1 });
        }
    }

    Ok(spans
        .into_iter()
        .map(|(segment, start, end)| {
            let seg = &segments[segment];
            let off = (start - seg.vaddr) as usize;
            let bytes = &seg.bytes[off..off + (end - start) as usize];
            Region { segment, instrs: decode_linear(bytes, start) }
        })
        .collect())
}

/// Decodes `bytes` front to back. An invalid or truncated instruction is taken for padding or data: skip one byte
/// and resynchronise.
fn decode_linear(bytes: &[u8], ip: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut instrs = Vec::new();
    let mut ins = Instruction::default();
    while decoder.can_decode() {
        let pos = decoder.position();
        decoder.decode_out(&mut ins);
        if ins.code() == Code::INVALID {
            // `pos + 1 <= bytes.len()` since the decoder had a byte to read, so this cannot fail.
            if decoder.set_position(pos + 1).is_err() {
                break;
            }
            decoder.set_ip(ip + pos as u64 + 1);
        } else {
            instrs.push(ins);
        }
    }
    instrs
}

/// Targets of every direct branch or call in the decoded code: a relocation window must not swallow one.
fn branch_targets(regions: &[Region]) -> BTreeSet<u64> {
    regions
        .iter()
        .flat_map(|r| &r.instrs)
        .filter(|ins| ins.op0_kind() == OpKind::NearBranch64)
        .map(Instruction::near_branch_target)
        .collect()
}
