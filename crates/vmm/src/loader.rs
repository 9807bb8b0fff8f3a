//! Puts an ELF image into guest memory: one physically contiguous block for its whole span, copied segment by segment.
//! The library OS is relocated into the direct map; the program is mapped at its own addresses with its `syscall`
//! instructions rewritten first. The program is hostile input: its span is checked against guest memory before
//! anything is done for it ([`check_fits`]), and nothing on the host is sized by its claims, only by its file.

use crate::elf::{ElfImage, ElfKind, LoadSegment};
use crate::memory::{BootAllocator, GuestRam, HugePages, MemoryError};
use crate::rewrite::{self, ExecSegment, FunctionSymbol, RewriteInput, RewriteReport};
use kiln_abi::layout::{
    direct_map, page_align_down, page_align_up, HUGE_PAGE_SIZE, PAGE_SIZE, PIE_BASE, PROGRAM_MIN_ADDR,
};
use kiln_abi::paging::{self, MapError, PTE_ACCESSED, PTE_USER, PTE_WRITABLE};

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
    #[error("the syscall stub area at {0:#x} is too short for the entry's address")]
    StubArea(u64),
}

impl From<MemoryError> for LoaderError {
    fn from(e: MemoryError) -> Self {
        LoaderError::Memory(e)
    }
}

/// The image's bytes as they must appear in memory from `span_start` (page-aligned) on: for the library OS only (built
/// in, so trusted; a program's span is never materialised on the host).
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
    /// Where the CPL 0 code at LSTAR sends an unrewritten `syscall` on hardware KVM
    /// (`kiln_unrewritten_syscall_entry`), 0 if the image has none.
    pub unrewritten_syscall_entry: u64,
    /// The library OS's own addresses: a fault there is the library OS's, not the program's, except in `vdso`.
    pub span: std::ops::Range<u64>,
    /// The vDSO's functions (`vdso::FUNCTIONS` order), which run as the program's code.
    pub vdso: Vec<std::ops::Range<u64>>,
    /// Guest-physical address of the syscall counters (`KILN_SYSCALL_STATS`), 0 if the image has none.
    pub stats_phys: u64,
    /// Guest-physical address of the thread table's description (`KILN_THREAD_TABLE`, `kiln_abi::threads`), 0 if the
    /// image has none.
    pub threads_phys: u64,
}

/// Writes `bytes` to the page-aligned guest block at `phys`, leaving out the pages that are all zero: the block is
/// fresh RAM, which reads as zero already, and a page written with zeros would cost the host a page of its own for
/// the VM's life (the library OS's zero-initialised data is 160 KiB, most of which an idle guest never touches).
fn write_nonzero_pages(ram: &GuestRam, phys: u64, bytes: &[u8]) -> Result<(), MemoryError> {
    for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
        if page.iter().any(|&b| b != 0) {
            ram.write(phys + i as u64 * PAGE_SIZE, page)?;
        }
    }
    Ok(())
}

/// Loads the library OS at a free physical block of fresh (zero) RAM and relocates it to run from the direct map.
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
    write_nonzero_pages(ram, phys, &bytes)?;
    let syscall_entry = elf.symbol("kiln_syscall_entry").unwrap_or(0);
    let stats_phys =
        elf.symbol("KILN_SYSCALL_STATS").and_then(|s| s.checked_sub(span_start)).map_or(0, |off| phys + off);
    let threads_phys =
        elf.symbol("KILN_THREAD_TABLE").and_then(|s| s.checked_sub(span_start)).map_or(0, |off| phys + off);
    let secondary_entry = elf.symbol("kiln_secondary_start").unwrap_or(0);
    let fault_entry = elf.symbol("kiln_fault_entry").map_or(0, |at| bias.wrapping_add(at));
    let unrewritten_syscall_entry = elf.symbol("kiln_unrewritten_syscall_entry").map_or(0, |at| bias.wrapping_add(at));
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
        unrewritten_syscall_entry,
        span: direct_map(phys)..direct_map(phys) + bytes.len() as u64,
        vdso,
        stats_phys,
        threads_phys,
    })
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LoadedProgram {
    /// Added to every address in the ELF (0 for `ET_EXEC`).
    pub base: u64,
    pub entry: u64,
    pub phdr: u64,
    /// First page after everything mapped for the program: where the break starts.
    pub end: u64,
    /// End of the pages mapped from `end` on for the break to grow into (`end` itself for none).
    pub break_mapped_end: u64,
    /// Where the relocated sites' stubs are mapped (empty if there are none).
    pub stubs: std::ops::Range<u64>,
    pub report: RewriteReport,
    /// Where its dynamic section is, if it has one (see [`ElfImage::dynamic_vaddr`]).
    pub dynamic: Option<u64>,
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

/// The program's executable code with its syscalls rewritten: host work that needs no guest memory, so it can run
/// while KVM builds the VM. Only bytes the file holds are kept: the rest of the span (bss, gaps) is zero in guest
/// memory and costs nothing until touched, and the other segments are copied from the file when loading.
#[derive(Debug)]
pub struct PreparedProgram {
    /// Added to every address in the ELF (0 for `ET_EXEC`).
    pub(crate) base: u64,
    pub(crate) span_start: u64,
    /// Bytes from `span_start` to the page after the segments' end.
    pub(crate) span_len: u64,
    /// What the rewrite changed in the file-backed bytes of the executable segments: runs of rewritten bytes, in
    /// address order, each within one segment's file bytes (vaddr before the base, bytes). Loading copies every
    /// segment from the file and these over it, so that an image or a cache entry holds the program's code once
    /// (the file) and the rewrite as a patch (a few bytes per syscall site), not the code a second time.
    pub(crate) code: Vec<(u64, Vec<u8>)>,
    pub(crate) stubs: Vec<u8>,
    pub(crate) report: RewriteReport,
}

impl PreparedProgram {
    /// Whether this could be `elf`'s preparation: same load base and span, each run of rewritten bytes within the
    /// file bytes of one of its code segments (a check on cached entries and images' preparations, which are then
    /// loaded by `elf`'s layout).
    pub(crate) fn fits(&self, elf: &ElfImage) -> bool {
        let within = |&(at, ref bytes): &(u64, Vec<u8>)| {
            let end = at.checked_add(bytes.len() as u64);
            code_segments(elf).any(|s| s.vaddr <= at && end.is_some_and(|end| end <= s.vaddr + s.file_size))
        };
        self.base == load_base(elf) && (self.span_start, self.span_len) == span(elf) && self.code.iter().all(within)
    }
}

fn load_base(elf: &ElfImage) -> u64 {
    match elf.kind {
        ElfKind::Exec => 0,
        ElfKind::StaticPie | ElfKind::Library => PIE_BASE,
    }
}

/// Where the program's segments lie, page-aligned, before adding the load base: (start, length).
fn span(elf: &ElfImage) -> (u64, u64) {
    let (start, end) = elf.span();
    let start = page_align_down(start);
    (start, page_align_up(end) - start)
}

/// The executable segments that have bytes in the file: all the rewriter needs to see.
fn code_segments(elf: &ElfImage) -> impl Iterator<Item = &LoadSegment> {
    elf.segments.iter().filter(|s| is_code(s))
}

fn is_code(segment: &LoadSegment) -> bool {
    segment.executable && segment.file_size != 0
}

/// The file's bytes of `segment` (`ElfImage::parse` checked that they lie in the file).
fn file_bytes<'f>(file: &'f [u8], segment: &LoadSegment) -> &'f [u8] {
    &file[segment.file_offset as usize..][..segment.file_size as usize]
}

/// Refuses a program whose segments span more than `memory` bytes, before anything is allocated or rewritten for
/// it: what the ELF claims is checked against what the user gave, never allocated first.
pub fn check_fits(elf: &ElfImage, memory: u64) -> Result<(), LoaderError> {
    let (_, len) = span(elf);
    if len > memory {
        return Err(LoaderError::Memory(MemoryError::Full { needed: len, available: memory }));
    }
    Ok(())
}

/// Rewrites the syscalls in the program's code. Costs host memory and time in proportion to the executable bytes
/// in the file (`ElfImage::parse` refuses executable segments that share file bytes), whatever the ELF claims.
pub fn prepare_program(elf: &ElfImage, file: &[u8]) -> Result<PreparedProgram, LoaderError> {
    let base = load_base(elf);
    let (span_start, span_len) = span(elf);
    if base + span_start < PROGRAM_MIN_ADDR {
        return Err(LoaderError::Overlap(base + span_start));
    }
    let stub_base = base + span_start + span_len;
    let mut code: Vec<(u64, Vec<u8>)> = code_segments(elf).map(|s| (s.vaddr, file_bytes(file, s).to_vec())).collect();
    let pieces: Vec<(u64, u64)> = code.iter().map(|(at, bytes)| (base + at, base + at + bytes.len() as u64)).collect();
    // The executable sections' parts that lie in the code the file holds (bss has no syscalls to rewrite).
    let code_ranges: Vec<(u64, u64)> = if elf.code_ranges.is_empty() {
        pieces
    } else {
        elf.code_ranges
            .iter()
            .flat_map(|&(start, end)| {
                let (start, end) = (base.saturating_add(start), base.saturating_add(end));
                pieces.iter().map(move |&(lo, hi)| (start.max(lo), end.min(hi))).filter(|(lo, hi)| lo < hi)
            })
            .collect()
    };
    let functions = elf.functions.iter().map(|&(v, size)| FunctionSymbol { vaddr: base + v, size }).collect();
    let segments = code.iter_mut().map(|(at, bytes)| ExecSegment { vaddr: base + *at, bytes }).collect();
    let rewritten = rewrite::rewrite_syscalls(RewriteInput { segments, code_ranges, functions, stub_base })
        .map_err(LoaderError::Rewrite)?;
    let code = code_segments(elf)
        .zip(&code)
        .flat_map(|(s, (at, bytes))| changed_runs(*at, file_bytes(file, s), bytes))
        .collect();
    Ok(PreparedProgram { base, span_start, span_len, code, stubs: rewritten.stubs, report: rewritten.report })
}

/// Equal bytes between two changes up to which one run holds both: a run costs 16 bytes of metadata where it is
/// stored (`rewrite_cache`), so shorter gaps are cheaper kept.
const RUN_GAP: usize = 16;

/// The runs of `rewritten` (the bytes at `at`) that differ from `original`, of the same length.
fn changed_runs(at: u64, original: &[u8], rewritten: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in (0..rewritten.len()).filter(|&i| original[i] != rewritten[i]) {
        match runs.last_mut() {
            Some((_, end)) if i - *end < RUN_GAP => *end = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    runs.into_iter().map(|(start, end)| (at + start as u64, rewritten[start..end].to_vec())).collect()
}

/// Copies the program (its segments from `file`, the prepared code over them) into guest memory and maps it (and its
/// relocation stubs, which call `syscall_entry`) at its addresses. Only the file's bytes are written: the rest of the
/// span stays untouched zero pages.
pub fn load_program(
    ram: &mut GuestRam,
    alloc: &mut BootAllocator,
    pml4: u64,
    (elf, file): (&ElfImage, &[u8]),
    program: PreparedProgram,
    syscall_entry: u64,
) -> Result<LoadedProgram, LoaderError> {
    let PreparedProgram { base, span_start, span_len, code, mut stubs, report } = program;
    // The break's window only where nothing else follows the span (the stubs are mapped right after it).
    let break_window = break_window(ram, elf, base, (span_start, span_len)).filter(|_| stubs.is_empty());
    let phys = place_image(ram, alloc, elf, base, (span_start, span_len), break_window)?;
    // The file's segments, then the rewritten runs over them (`fits` checked they lie in its code segments).
    for segment in &elf.segments {
        ram.write(phys + (segment.vaddr - span_start), file_bytes(file, segment))?;
    }
    for (at, bytes) in &code {
        ram.write(phys + (at - span_start), bytes)?;
    }
    map_image(ram, alloc, pml4, elf, base, (span_start, span_len), phys, break_window)?;

    let stub_base = base + span_start + span_len;
    let mut end = stub_base;
    if !stubs.is_empty() {
        let slot = stubs.get_mut(rewrite::ENTRY_SLOT).ok_or(LoaderError::StubArea(stub_base))?;
        slot.copy_from_slice(&syscall_entry.to_le_bytes());
        let stub_phys = alloc.alloc(stubs.len() as u64)?;
        ram.write(stub_phys, &stubs)?;
        map_range(ram, alloc, pml4, stub_base, stub_phys, stubs.len() as u64, |_| PTE_USER | PTE_ACCESSED)?;
        end = stub_base + page_align_up(stubs.len() as u64);
    }
    let stubs = stub_base..stub_base + stubs.len() as u64;
    let break_mapped_end = break_window.map_or(end, |w| w + HUGE_PAGE_SIZE);
    Ok(LoadedProgram {
        base,
        entry: base + elf.entry,
        phdr: base + elf.phdr_vaddr,
        end,
        break_mapped_end,
        stubs,
        report,
        dynamic: elf.dynamic_vaddr.map(|d| base + d),
    })
}

/// The flags of the page at `vaddr` in an ELF image loaded at `base`: user pages, writable where a writable segment
/// lies. Accessed already, as the program touches them soon anyway: on shadow paging the hypervisor fills in shadow
/// entries for a faulting page's neighbours (whose host pages this load wrote) only where the accessed bit is set.
fn image_flags(elf: &ElfImage, base: u64) -> impl Fn(u64) -> u64 + '_ {
    move |vaddr| {
        let writable = elf.segments.iter().any(|s| {
            s.writable && page_align_down(base + s.vaddr) <= vaddr && vaddr < page_align_up(base + s.vaddr + s.mem_size)
        });
        PTE_USER | PTE_ACCESSED | if writable { PTE_WRITABLE } else { 0 }
    }
}

/// The 2 MiB-aligned windows of `[vaddr, vaddr+len)` whose pages all have the same flags: what one 2 MiB page can
/// map when the memory behind it is congruent.
fn huge_windows(vaddr: u64, len: u64, flags: &impl Fn(u64) -> u64) -> impl Iterator<Item = u64> + '_ {
    let end = vaddr.saturating_add(page_align_up(len));
    let first = vaddr.next_multiple_of(HUGE_PAGE_SIZE);
    (first..end).step_by(HUGE_PAGE_SIZE as usize).filter(move |&w| {
        let f = flags(w);
        w + HUGE_PAGE_SIZE <= end && (w..w + HUGE_PAGE_SIZE).step_by(PAGE_SIZE as usize).all(|page| flags(page) == f)
    })
}

/// The 2 MiB window holding the end of a program's span, where the break starts, if one 2 MiB page can map it
/// whole: guest RAM is in huge pages, the window starts inside the span, and all of the span in it is writable
/// (data and bss, as in most programs' last window). The break then grows in that page (its first part lies in the
/// window), which costs one shadow fault instead of one per 4 KiB page of data, bss and early heap touched: python3
/// -c pass writes about 320 of them.
fn break_window(ram: &GuestRam, elf: &ElfImage, base: u64, (span_start, span_len): (u64, u64)) -> Option<u64> {
    let (vaddr, end) = (base + span_start, base + span_start + page_align_up(span_len));
    let window = page_align_down_huge(end - 1);
    let flags = image_flags(elf, base);
    let writable = PTE_USER | PTE_ACCESSED | PTE_WRITABLE;
    let whole = (window..end).step_by(PAGE_SIZE as usize).all(|page| flags(page) == writable);
    (ram.huge_pages() == HugePages::Yes && !end.is_multiple_of(HUGE_PAGE_SIZE) && window >= vaddr && whole)
        .then_some(window)
}

fn page_align_down_huge(addr: u64) -> u64 {
    addr & !(HUGE_PAGE_SIZE - 1)
}

/// Guest-physical memory for an image's span (and the rest of its break window, if it has one). Where guest RAM is
/// in the host's huge pages and the span has a 2 MiB window of uniform protection, the memory is congruent to the
/// span's address modulo 2 MiB, so that [`map_image`] maps those windows with 2 MiB pages: each then costs one
/// shadow fault instead of one per 4 KiB page touched (or per 8, with KVM's prefetch), for less than 2 MiB of guest
/// memory skipped once.
fn place_image(
    ram: &GuestRam,
    alloc: &mut BootAllocator,
    elf: &ElfImage,
    base: u64,
    (span_start, span_len): (u64, u64),
    break_window: Option<u64>,
) -> Result<u64, LoaderError> {
    let vaddr = base + span_start;
    let flags = image_flags(elf, base);
    if let Some(window) = break_window {
        Ok(alloc.alloc_congruent(window + HUGE_PAGE_SIZE - vaddr, vaddr)?)
    } else if ram.huge_pages() == HugePages::Yes && huge_windows(vaddr, span_len, &flags).next().is_some() {
        Ok(alloc.alloc_congruent(span_len, vaddr)?)
    } else {
        Ok(alloc.alloc(span_len)?)
    }
}

/// Maps an ELF image's span (`span_start`, `span_len`, loaded at `base`) to the frames at `phys` with
/// [`image_flags`]: in 2 MiB pages where [`place_image`] made that possible (the break window too, if any), in
/// 4 KiB pages elsewhere. The library OS splits a 2 MiB page when the program changes the protection of part of it
/// (`paging::protect`).
#[allow(clippy::too_many_arguments)]
fn map_image(
    ram: &mut GuestRam,
    alloc: &mut BootAllocator,
    pml4: u64,
    elf: &ElfImage,
    base: u64,
    (span_start, span_len): (u64, u64),
    phys: u64,
    break_window: Option<u64>,
) -> Result<(), LoaderError> {
    let (vaddr, flags) = (base + span_start, image_flags(elf, base));
    let mut huge: Vec<u64> = if ram.huge_pages() == HugePages::Yes && (phys ^ vaddr).is_multiple_of(HUGE_PAGE_SIZE) {
        huge_windows(vaddr, span_len, &flags).collect()
    } else {
        Vec::new()
    };
    huge.extend(break_window);
    let end = vaddr + page_align_up(span_len);
    let mut at = vaddr;
    for &window in &huge {
        map_range(ram, alloc, pml4, at, phys + (at - vaddr), window - at, &flags)?;
        paging::map_huge_page(ram, alloc, pml4, window, phys + (window - vaddr), flags(window))
            .map_err(|e| LoaderError::Map(window, e))?;
        at = window + HUGE_PAGE_SIZE;
    }
    if at < end {
        map_range(ram, alloc, pml4, at, phys + (at - vaddr), end - at, &flags)?;
    }
    Ok(())
}

/// A dynamic loader, already rewritten (`shared_object`), as the VMM maps it.
#[derive(Debug)]
pub struct LoadedInterpreter {
    pub base: u64,
    pub entry: u64,
    pub end: u64,
}

/// Maps a rewritten shared object (a program's dynamic loader, which Linux too maps itself) at `base`: every
/// segment's file bytes, zeros for the rest. Its stubs are a segment of the file and call through the gateway page,
/// so nothing is filled in. Costs what the file holds: `elf` is checked against `memory` first.
pub fn load_interpreter(
    ram: &mut GuestRam,
    alloc: &mut BootAllocator,
    pml4: u64,
    (elf, file): (&ElfImage, &[u8]),
    base: u64,
) -> Result<LoadedInterpreter, LoaderError> {
    let (span_start, span_len) = span(elf);
    let phys = place_image(ram, alloc, elf, base, (span_start, span_len), None)?;
    for segment in &elf.segments {
        ram.write(phys + (segment.vaddr - span_start), file_bytes(file, segment))?;
    }
    map_image(ram, alloc, pml4, elf, base, (span_start, span_len), phys, None)?;
    Ok(LoadedInterpreter { base, entry: base + elf.entry, end: base + span_start + span_len })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::elf::ElfError;

    #[test]
    fn zero_pages_of_the_library_os_are_left_as_fresh_ram_has_them() {
        let ram = GuestRam::new(1 << 20).unwrap();
        // Marks where nothing must be written: a zero page of the image leaves what the RAM held.
        ram.write(0x2000, &[0xaa; PAGE_SIZE as usize]).unwrap();
        let mut image = vec![0u8; 3 * PAGE_SIZE as usize + 100];
        image[5] = 1;
        image[3 * PAGE_SIZE as usize + 99] = 2;
        write_nonzero_pages(&ram, 0x1000, &image).unwrap();
        assert_eq!(ram.read_vec(0x1000, PAGE_SIZE).unwrap(), image[..PAGE_SIZE as usize]);
        assert_eq!(ram.read_vec(0x2000, PAGE_SIZE).unwrap(), vec![0xaa; PAGE_SIZE as usize], "a zero page skipped");
        assert_eq!(ram.read_vec(0x4000, 100).unwrap(), image[3 * PAGE_SIZE as usize..], "the last, short page");
        assert!(write_nonzero_pages(&ram, (1 << 20) - PAGE_SIZE, &image).is_err(), "beyond the RAM");
    }

    pub(crate) const TEXT: u64 = 0x40_0000;
    /// Where the tests say the library OS's syscall entry is.
    const ENTRY: u64 = 0x4000_0001_0000;
    /// `mov $60, %eax; mov $7, %edi; syscall`: exit(7).
    const EXIT_7: [u8; 12] = [0xb8, 60, 0, 0, 0, 0xbf, 7, 0, 0, 0, 0x0f, 0x05];

    /// A small static executable built by hand: a read+execute segment (headers and code, `text_mem` bytes in memory),
    /// a writable one with bss, and section headers naming the code.
    pub(crate) fn program(text_mem: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x2000];
        let mut put = |at: usize, bytes: &[u8]| f[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, b"\x7fELF\x02\x01\x01");
        put(16, &2u16.to_le_bytes()); // ET_EXEC
        put(18, &62u16.to_le_bytes()); // EM_X86_64
        put(20, &1u32.to_le_bytes());
        put(24, &(TEXT + 0x100).to_le_bytes()); // entry
        put(32, &64u64.to_le_bytes()); // phoff
        put(40, &0x1800u64.to_le_bytes()); // shoff
        put(52, &[64, 0, 56, 0, 2, 0, 64, 0, 3, 0, 2, 0]); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
                                                           // (flags, offset, vaddr, filesz, memsz)
        for (i, (flags, offset, vaddr, filesz, memsz)) in [
            (5u32, 0u64, TEXT, 0x1000u64, text_mem),
            (6, 0x1000, TEXT + text_mem.next_multiple_of(0x1000), 0x100, 0x3000),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 64 + 56 * i;
            put(at, &1u32.to_le_bytes());
            put(at + 4, &flags.to_le_bytes());
            for (j, v) in [offset, vaddr, vaddr, filesz, memsz, 0x1000].into_iter().enumerate() {
                put(at + 8 + 8 * j, &v.to_le_bytes());
            }
        }
        for i in 0..8 {
            put(0x100 + 16 * i, &EXIT_7);
        }
        put(0x1700, b"\0.text\0.shstrtab\0");
        // Section 1: .text (PROGBITS, ALLOC|EXECINSTR); section 2: .shstrtab.
        let section = |name: u32, kind: u32, flags: u64, addr: u64, offset: u64, size: u64| {
            let mut s = [0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[8..16].copy_from_slice(&flags.to_le_bytes());
            s[16..24].copy_from_slice(&addr.to_le_bytes());
            s[24..32].copy_from_slice(&offset.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            s
        };
        put(0x1840, &section(1, 1, 6, TEXT + 0x100, 0x100, 0x80));
        put(0x1880, &section(7, 3, 0, 0, 0x1700, 17));
        f
    }

    /// Parses, checks against `memory`, prepares and loads `file` as a boot does, up to the first refusal.
    fn load(file: &[u8], memory: u64) -> Result<LoadedProgram, String> {
        load_into(file, &mut GuestRam::new(memory).map_err(|e| e.to_string())?).map(|(loaded, _)| loaded)
    }

    /// As [`load`], into `ram`; also returns the page tables' root.
    fn load_into(file: &[u8], ram: &mut GuestRam) -> Result<(LoadedProgram, u64), String> {
        let elf = ElfImage::parse(file).map_err(|e| e.to_string())?;
        check_fits(&elf, ram.size()).map_err(|e| e.to_string())?;
        let prepared = prepare_program(&elf, file).map_err(|e| e.to_string())?;
        let mut alloc = BootAllocator::new(PAGE_SIZE, ram.size());
        let pml4 = alloc.alloc(PAGE_SIZE).map_err(|e| e.to_string())?;
        let loaded = load_program(ram, &mut alloc, pml4, (&elf, file), prepared, ENTRY).map_err(|e| e.to_string())?;
        Ok((loaded, pml4))
    }

    #[test]
    fn aligned_parts_of_uniform_protection_get_2_mib_pages_where_ram_is_in_huge_pages() {
        use kiln_abi::paging::protect::leaf;
        // Text from 4 MiB to 9 MiB + 4 KiB, then the writable data: two whole 2 MiB windows of code.
        let file = program((5 << 20) + 0x1000);
        let mut ram = GuestRam::with_huge_pages(64 << 20, HugePages::Yes).unwrap();
        let (loaded, pml4) = load_into(&file, &mut ram).unwrap();
        let size = |vaddr: u64| leaf(&ram, pml4, vaddr).map(|l| l.size);
        assert_eq!(size(TEXT), Some(HUGE_PAGE_SIZE));
        assert_eq!(size(TEXT + (2 << 20)), Some(HUGE_PAGE_SIZE));
        assert_eq!(
            size(TEXT + (4 << 20)),
            Some(PAGE_SIZE),
            "the last window, which the span does not fill, stays in 4 KiB pages"
        );
        let text = paging::translate(&ram, pml4, TEXT + 0x100).unwrap();
        assert!(!text.writable && text.phys % HUGE_PAGE_SIZE == 0x100);
        // The code is there, rewritten, through the 2 MiB page.
        let mut code = [0u8; 12];
        ram.read(text.phys, &mut code).unwrap();
        assert_ne!(code, [0; 12]);
        assert_eq!(loaded.stubs.start, TEXT + (5 << 20) + 0x1000 + 0x3000);
        let data = paging::translate(&ram, pml4, TEXT + (5 << 20) + 0x1000).unwrap();
        assert!(data.writable && data.bytes_left_in_page == PAGE_SIZE);
        // Without huge pages behind guest RAM, 4 KiB pages only.
        let mut ram = GuestRam::new(64 << 20).unwrap();
        let (_, pml4) = load_into(&file, &mut ram).unwrap();
        assert_eq!(leaf(&ram, pml4, TEXT).map(|l| l.size), Some(PAGE_SIZE));
    }

    #[test]
    fn the_window_of_data_and_bss_is_one_2_mib_page_the_break_grows_into() {
        use kiln_abi::paging::protect::leaf;
        // Text from 4 MiB to 6 MiB; data and bss from 6 MiB, alone in their window. No syscalls, so no stubs.
        let mut file = program(2 << 20);
        file[0x100..0x180].fill(0x90);
        file[0x1000..0x1100].fill(0xab);
        let data = TEXT + (2 << 20);
        let mut ram = GuestRam::with_huge_pages(64 << 20, HugePages::Yes).unwrap();
        let (loaded, pml4) = load_into(&file, &mut ram).unwrap();
        assert!(loaded.stubs.is_empty());
        assert_eq!((loaded.end, loaded.break_mapped_end), (data + 0x3000, data + HUGE_PAGE_SIZE));
        let l = leaf(&ram, pml4, data).unwrap();
        assert_eq!(l.size, HUGE_PAGE_SIZE);
        let page = paging::translate(&ram, pml4, data + 0x3000).unwrap();
        assert!(page.writable);
        let read = |at: u64, len: u64| ram.read_vec(paging::translate(&ram, pml4, at).unwrap().phys, len).unwrap();
        assert_eq!(read(data, 0x100), [0xab; 0x100], "the data");
        assert_eq!(read(data + 0x100, 0x100), [0; 0x100], "the bss");
        assert_eq!(read(data + HUGE_PAGE_SIZE - 8, 8), [0; 8], "the break's first pages");
        // Not where the window holds more than the writable segment, nor without huge pages behind guest RAM.
        let huge_ram = || GuestRam::with_huge_pages(64 << 20, HugePages::Yes).unwrap();
        let loaded = load_into(&program(2 << 20), &mut huge_ram()).unwrap().0;
        assert_eq!(loaded.break_mapped_end, loaded.end, "stubs follow the span");
        let mut ram = GuestRam::new(64 << 20).unwrap();
        let (loaded, pml4) = load_into(&file, &mut ram).unwrap();
        assert_eq!(loaded.break_mapped_end, loaded.end);
        assert_eq!(leaf(&ram, pml4, data).map(|l| l.size), Some(PAGE_SIZE));
        let mut file = program((2 << 20) + 0x1000);
        file[0x100..0x180].fill(0x90);
        let loaded = load_into(&file, &mut huge_ram()).unwrap().0;
        assert_eq!(loaded.break_mapped_end, loaded.end, "the window holds text too");
    }

    #[test]
    fn a_program_loads_with_its_syscalls_rewritten() {
        let loaded = load(&program(0x1000), 16 << 20).unwrap();
        assert_eq!(loaded.entry, TEXT + 0x100);
        assert_eq!(loaded.report.relocated.len(), 8);
        assert_eq!(loaded.stubs.start, TEXT + 0x4000, "text, then data and bss, then the syscall stubs");
        assert_eq!(loaded.end, TEXT + 0x5000);
    }

    #[test]
    fn a_span_larger_than_memory_is_refused_before_anything_is_prepared() {
        let elf = ElfImage::parse(&program(32 << 30)).unwrap();
        let err = check_fits(&elf, 64 << 20).unwrap_err();
        assert!(matches!(err, LoaderError::Memory(MemoryError::Full { available, .. }) if available == 64 << 20));
        check_fits(&elf, 33 << 30).unwrap();
    }

    #[test]
    fn a_preparation_holds_only_the_runs_the_rewrite_changed() {
        let file = program(0x1000);
        let elf = ElfImage::parse(&file).unwrap();
        let mut prepared = prepare_program(&elf, &file).unwrap();
        assert_eq!(prepared.report.relocated.len(), 8);
        let kept: usize = prepared.code.iter().map(|(_, bytes)| bytes.len()).sum();
        assert!(0 < kept && kept <= 8 * 16, "{kept} bytes of 4 KiB of code");
        // Applied to the file's text, the runs leave no syscall instruction at the sites.
        let mut text = file[..0x1000].to_vec();
        for (at, bytes) in &prepared.code {
            let at = (at - TEXT) as usize;
            text[at..at + bytes.len()].copy_from_slice(bytes);
        }
        for site in (0..8).map(|i| 0x100 + 16 * i + 10) {
            assert_ne!(&text[site..site + 2], [0x0f, 0x05], "the site at {site:#x} was not rewritten");
        }
        assert!(prepared.fits(&elf));
        // A run past the code segment's file bytes, or in the data segment, is not this program's.
        prepared.code.push((TEXT + 0xfff, vec![0x90; 2]));
        assert!(!prepared.fits(&elf));
        prepared.code.pop();
        prepared.code.push((TEXT + 0x1000, vec![0x90]));
        assert!(!prepared.fits(&elf));
        prepared.code.pop();
        prepared.code.push((u64::MAX - 1, vec![0x90; 4]));
        assert!(!prepared.fits(&elf));
    }

    #[test]
    fn only_the_code_the_file_holds_is_rewritten_and_kept() {
        // 32 GiB of executable bss: the rewriter and the prepared program see the file's 4 KiB of code, no more.
        let elf = ElfImage::parse(&program(32 << 30)).unwrap();
        let prepared = prepare_program(&elf, &program(32 << 30)).unwrap();
        assert!(prepared.code.iter().all(|(at, b)| TEXT <= *at && *at + b.len() as u64 <= TEXT + 0x1000));
        assert_eq!(prepared.span_len, (32 << 30) + 0x3000);
        // Stubs after a 32 GiB span would be out of the code's reach: the sites stay in place.
        assert_eq!(prepared.report.in_place.len(), 8);
        assert!(prepared.fits(&elf));
        // And it loads where memory allows, touching only what the file holds.
        let loaded = load(&program(64 << 20), 128 << 20).unwrap();
        assert_eq!(loaded.report.relocated.len(), 8);
    }

    #[test]
    fn mutated_programs_are_refused_or_loaded_never_a_panic() {
        let original = program(0x1000);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..200 {
            let mut file = original.clone();
            for _ in 0..1 + next() % 8 {
                // Mostly the headers (ELF, program and section headers), where a bad value does the most harm.
                let at = match next() % 4 {
                    0 => (next() % 0x100) as usize,
                    1 => 0x1800 + (next() % 0xc0) as usize,
                    _ => (next() % file.len() as u64) as usize,
                };
                if next() % 3 == 0 && at + 8 <= file.len() {
                    let huge = [u64::MAX, 1 << 40, 1 << 47, 0x8000_0000, next()][(next() % 5) as usize];
                    file[at..at + 8].copy_from_slice(&huge.to_le_bytes());
                } else {
                    file[at] = next() as u8;
                }
            }
            match load(&file, 16 << 20) {
                Ok(_) => loaded += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(loaded > 0 && refused > 0, "{loaded} loaded, {refused} refused: the mutations should do both");
    }

    #[test]
    fn what_parse_refuses_does_not_reach_the_loader() {
        // Segments whose memory overlaps would make the span's bytes two segments'.
        let mut file = program(0x1000);
        file[64 + 56 + 16..64 + 56 + 24].copy_from_slice(&(TEXT + 0x800).to_le_bytes());
        assert!(matches!(ElfImage::parse(&file), Err(ElfError::Malformed(m)) if m.contains("overlap")));
    }
}
