//! Puts an ELF image into guest memory: one physically contiguous block for its whole span, copied segment by segment.
//! The library OS is relocated into the direct map; the program is mapped at its own addresses with its `syscall`
//! instructions rewritten first.

use crate::elf::{ElfImage, ElfKind};
use crate::memory::{BootAllocator, GuestRam, MemoryError};
use crate::rewrite::{self, ExecSegment, FunctionSymbol, RewriteInput, RewriteReport};
use kiln_abi::layout::{direct_map, page_align_down, page_align_up, PAGE_SIZE, PIE_BASE, PROGRAM_MIN_ADDR};
use kiln_abi::paging::{self, MapError, PTE_USER, PTE_WRITABLE};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("guest memory is too small for the program")]
    Memory(#[source] MemoryError),
    #[error("cannot map the program at {0:#x}: {1:?}")]
    Map(u64, MapError),
    #[error("rewriting syscall instructions failed")]
    Rewrite(#[source] rewrite::RewriteError),
    #[error("the program's segments at {0:#x} overlap memory Kiln reserves")]
    Overlap(u64),
}

impl From<MemoryError> for LoaderError {
    fn from(e: MemoryError) -> Self {
        LoaderError::Memory(e)
    }
}

/// The image's bytes as they must appear in memory from `span_start` (page-aligned) on.
fn memory_image(elf: &ElfImage, file: &[u8]) -> (u64, Vec<u8>) {
    let (start, end) = elf.span();
    let span_start = page_align_down(start);
    let mut bytes = vec![0u8; (page_align_up(end) - span_start) as usize];
    for s in &elf.segments {
        let at = (s.vaddr - span_start) as usize;
        let from = s.file_offset as usize;
        bytes[at..at + s.file_size as usize].copy_from_slice(&file[from..from + s.file_size as usize]);
    }
    (span_start, bytes)
}

pub struct LoadedKernel {
    pub entry: u64,
    /// Where secondary vCPUs start (`kiln_secondary_start`).
    pub secondary_entry: u64,
    pub syscall_entry: u64,
    /// Where the VMM resumes a vCPU after the program faulted (`kiln_fault_entry`), 0 if the image has none.
    pub fault_entry: u64,
    /// The library OS's own addresses: a fault there is the library OS's, not the program's, except in `vdso`.
    pub span: std::ops::Range<u64>,
    /// The vDSO's functions (`vdso::FUNCTIONS` order), which run as the program's code.
    pub vdso: Vec<std::ops::Range<u64>>,
    /// Guest-physical address of the syscall counters (`KILN_SYSCALL_STATS`), 0 if the image has none.
    pub stats_phys: u64,
}

/// Loads the library OS at a free physical block and relocates it to run from the direct map.
pub fn load_kernel(
    ram: &GuestRam,
    alloc: &mut BootAllocator,
    elf: &ElfImage,
    file: &[u8],
) -> Result<LoadedKernel, LoaderError> {
    let (span_start, mut bytes) = memory_image(elf, file);
    let phys = alloc.alloc(bytes.len() as u64)?;
    let bias = direct_map(phys).wrapping_sub(span_start);
    for &(offset, addend) in &elf.relative_relocations {
        let at = offset.wrapping_sub(span_start) as usize;
        if let Some(slot) = bytes.get_mut(at..at + 8) {
            slot.copy_from_slice(&bias.wrapping_add(addend).to_le_bytes());
        }
    }
    ram.write(phys, &bytes)?;
    let syscall_entry = elf.symbol("kiln_syscall_entry").unwrap_or(0);
    let stats_phys =
        elf.symbol("KILN_SYSCALL_STATS").and_then(|s| s.checked_sub(span_start)).map_or(0, |off| phys + off);
    let secondary_entry = elf.symbol("kiln_secondary_start").unwrap_or(0);
    let fault_entry = elf.symbol("kiln_fault_entry").map_or(0, |at| bias.wrapping_add(at));
    let vdso = crate::vdso::FUNCTIONS
        .iter()
        .map(|(_, symbol)| {
            let (at, size) = elf.symbol_extent(symbol).unwrap_or((0, 0));
            bias.wrapping_add(at)..bias.wrapping_add(at) + size
        })
        .collect();
    Ok(LoadedKernel {
        entry: bias.wrapping_add(elf.entry),
        secondary_entry: bias.wrapping_add(secondary_entry),
        syscall_entry: bias.wrapping_add(syscall_entry),
        fault_entry,
        span: direct_map(phys)..direct_map(phys) + bytes.len() as u64,
        vdso,
        stats_phys,
    })
}

#[derive(Debug)]
pub struct LoadedProgram {
    /// Added to every address in the ELF (0 for `ET_EXEC`).
    pub base: u64,
    pub entry: u64,
    pub phdr: u64,
    /// First page after everything mapped for the program: where the break starts.
    pub end: u64,
    pub report: RewriteReport,
}

/// Maps `[vaddr, vaddr+len)` to the physical block at `phys` with `flags`.
pub fn map_range(
    ram: &mut GuestRam,
    alloc: &mut BootAllocator,
    pml4: u64,
    vaddr: u64,
    phys: u64,
    len: u64,
    flags: impl Fn(u64) -> u64,
) -> Result<(), LoaderError> {
    for off in (0..page_align_up(len)).step_by(PAGE_SIZE as usize) {
        paging::map_page(ram, alloc, pml4, vaddr + off, phys + off, flags(vaddr + off))
            .map_err(|e| LoaderError::Map(vaddr + off, e))?;
    }
    Ok(())
}

/// The program's memory image with its syscalls rewritten: host work that needs no guest memory, so it can run while
/// KVM builds the VM.
#[derive(Debug)]
pub struct PreparedProgram {
    /// Added to every address in the ELF (0 for `ET_EXEC`).
    pub(crate) base: u64,
    pub(crate) span_start: u64,
    pub(crate) bytes: Vec<u8>,
    pub(crate) stubs: Vec<u8>,
    pub(crate) report: RewriteReport,
}

impl PreparedProgram {
    /// Whether this could be `elf`'s preparation: same load base and same span (a check on cached entries).
    pub(crate) fn fits(&self, elf: &ElfImage) -> bool {
        let (start, end) = elf.span();
        let span_start = page_align_down(start);
        self.base == load_base(elf)
            && self.span_start == span_start
            && self.bytes.len() as u64 == page_align_up(end) - span_start
    }
}

fn load_base(elf: &ElfImage) -> u64 {
    match elf.kind {
        ElfKind::Exec => 0,
        ElfKind::StaticPie => PIE_BASE,
    }
}

pub fn prepare_program(elf: &ElfImage, file: &[u8]) -> Result<PreparedProgram, LoaderError> {
    let base = load_base(elf);
    let (span_start, mut bytes) = memory_image(elf, file);
    if base + span_start < PROGRAM_MIN_ADDR {
        return Err(LoaderError::Overlap(base + span_start));
    }
    let stub_base = base + span_start + bytes.len() as u64;
    let code_ranges: Vec<(u64, u64)> = if elf.code_ranges.is_empty() {
        elf.segments.iter().filter(|s| s.executable).map(|s| (base + s.vaddr, base + s.vaddr + s.mem_size)).collect()
    } else {
        elf.code_ranges.iter().map(|&(s, e)| (base + s, base + e)).collect()
    };
    let functions = elf.functions.iter().map(|&(v, size)| FunctionSymbol { vaddr: base + v, size }).collect();
    let rewritten = rewrite::rewrite_syscalls(RewriteInput {
        segments: vec![ExecSegment { vaddr: base + span_start, bytes: &mut bytes }],
        code_ranges,
        functions,
        stub_base,
    })
    .map_err(LoaderError::Rewrite)?;
    Ok(PreparedProgram { base, span_start, bytes, stubs: rewritten.stubs, report: rewritten.report })
}

/// Copies the prepared program into guest memory and maps it (and its relocation stubs) at its addresses.
pub fn load_program(
    ram: &mut GuestRam,
    alloc: &mut BootAllocator,
    pml4: u64,
    elf: &ElfImage,
    program: PreparedProgram,
) -> Result<LoadedProgram, LoaderError> {
    let PreparedProgram { base, span_start, bytes, stubs, report } = program;
    let phys = alloc.alloc(bytes.len() as u64)?;
    ram.write(phys, &bytes)?;
    let writable = |vaddr: u64| {
        elf.segments.iter().any(|s| {
            s.writable && page_align_down(base + s.vaddr) <= vaddr && vaddr < page_align_up(base + s.vaddr + s.mem_size)
        })
    };
    map_range(ram, alloc, pml4, base + span_start, phys, bytes.len() as u64, |v| {
        PTE_USER | if writable(v) { PTE_WRITABLE } else { 0 }
    })?;

    let stub_base = base + span_start + bytes.len() as u64;
    let mut end = stub_base;
    if !stubs.is_empty() {
        let stub_phys = alloc.alloc(stubs.len() as u64)?;
        ram.write(stub_phys, &stubs)?;
        map_range(ram, alloc, pml4, stub_base, stub_phys, stubs.len() as u64, |_| PTE_USER)?;
        end = stub_base + page_align_up(stubs.len() as u64);
    }
    Ok(LoadedProgram { base, entry: base + elf.entry, phdr: base + elf.phdr_vaddr, end, report })
}
