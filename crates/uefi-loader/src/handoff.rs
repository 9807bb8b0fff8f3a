//! The way into the PVH image: a page below 1 MiB (which the image's platform layer never uses) holding the start
//! info, its memory map and command line, a GDT with flat 32-bit segments and the code that leaves long mode; and
//! the jump there from the loader's 64-bit code.

use crate::plan;
use core::arch::{asm, global_asm};
use kiln_abi::pvh::{MemmapEntry, StartInfo, START_INFO_MAGIC};
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::{MemoryMap, MemoryMapOwned};

/// Where things sit in the low pages.
const TRAMPOLINE: usize = 0x000;
const GDTR: usize = 0x100;
const GDT: usize = 0x110;
const START_INFO: usize = 0x140;
/// What the trampoline copies and where it goes: the staged image, its destination, its length, the start info and
/// the entry, each a 32-bit word.
const COPY: usize = 0x180;
const COPY_FROM: usize = COPY;
const COPY_TO: usize = COPY + 4;
const COPY_LEN: usize = COPY + 8;
const COPY_START_INFO: usize = COPY + 12;
const COPY_ENTRY: usize = COPY + 16;
const CMDLINE: usize = 0x200;
const CMDLINE_MAX: usize = 0x600 - 1;
const MEMMAP: usize = 0x800;
const MEMMAP_MAX: usize = 128;
const LOW_PAGES: usize = 2;

const CODE32: u16 = 0x08;
const DATA32: u16 = 0x10;

// Leaves long mode, copies the staged image into place and jumps to the PVH entry. Copied to the low page and reached
// in compatibility mode (32-bit code segment `CODE32`, paging still on, identity-mapped) with the low page's address
// in %esi. The copy runs with paging off, so the firmware's page tables (boot services memory, which the image may
// overwrite) are no longer needed. Position-independent: it refers to nothing by address.
global_asm!(
    ".globl kiln_trampoline_start",
    ".globl kiln_trampoline_end",
    ".code32",
    "kiln_trampoline_start:",
    "    movl %esi, %ebp",
    "    movl ${data32}, %eax",
    "    movl %eax, %ds",
    "    movl %eax, %es",
    "    movl %eax, %fs",
    "    movl %eax, %gs",
    "    movl %eax, %ss",
    // Paging off leaves long mode (the code runs from an identity-mapped page below 4 GiB).
    "    movl %cr0, %eax",
    "    andl $0x7fffffff, %eax",
    "    movl %eax, %cr0",
    "    movl $0xc0000080, %ecx",
    "    rdmsr",
    "    andl $0xfffffeff, %eax",
    "    wrmsr",
    // The PVH entry state: CR4 clear, CR0 protection enabled and nothing else that can be cleared.
    "    xorl %eax, %eax",
    "    movl %eax, %cr4",
    "    movl $0x11, %eax",
    "    movl %eax, %cr0",
    "    cld",
    "    movl {from}(%ebp), %esi",
    "    movl {to}(%ebp), %edi",
    "    movl {len}(%ebp), %ecx",
    "    rep movsb",
    "    movl {start_info}(%ebp), %ebx",
    "    movl {entry}(%ebp), %eax",
    "    jmpl *%eax",
    "kiln_trampoline_end:",
    ".code64",
    data32 = const DATA32,
    from = const COPY_FROM,
    to = const COPY_TO,
    len = const COPY_LEN,
    start_info = const COPY_START_INFO,
    entry = const COPY_ENTRY,
    options(att_syntax),
);

extern "C" {
    static kiln_trampoline_start: u8;
    static kiln_trampoline_end: u8;
}

/// The low pages, allocated as loader data so that the firmware leaves them alone until the jump.
pub struct LowPage {
    base: *mut u8,
}

impl LowPage {
    pub fn allocate() -> uefi::Result<Self> {
        let at = boot::allocate_pages(AllocateType::MaxAddress(0x9_ffff), MemoryType::LOADER_DATA, LOW_PAGES)?;
        let page = Self { base: at.as_ptr() };
        // SAFETY: LOW_PAGES pages were just allocated there.
        unsafe { core::ptr::write_bytes(page.base, 0, LOW_PAGES * plan::PAGE as usize) };
        Ok(page)
    }

    fn phys(&self, offset: usize) -> u64 {
        self.base as u64 + offset as u64
    }

    fn write<T: Copy>(&mut self, offset: usize, value: T) {
        assert!(offset + core::mem::size_of::<T>() <= LOW_PAGES * plan::PAGE as usize);
        // SAFETY: inside the low pages (checked above), which only this value writes.
        unsafe { core::ptr::write_unaligned(self.base.add(offset).cast::<T>(), value) };
    }

    /// The command line, cut at its first line break or NUL (a file written by an editor ends with one) and at the
    /// space kept for it.
    pub fn set_cmdline(&mut self, cmdline: &[u8]) {
        let len = cmdline.iter().position(|&b| b == b'\n' || b == b'\r' || b == 0).unwrap_or(cmdline.len());
        for (i, &b) in cmdline[..len.min(CMDLINE_MAX)].iter().enumerate() {
            self.write(CMDLINE + i, b);
        }
    }

    /// The start info, with the PVH memory map made from UEFI's final one.
    pub fn set_memory_map(&mut self, map: &MemoryMapOwned, rsdp: u64) {
        let mut entries = [MemmapEntry::default(); MEMMAP_MAX];
        let ranges = map.entries().map(|d| (d.phys_start, d.page_count, d.ty.0));
        let count = plan::e820(ranges, &mut entries);
        for (i, e) in entries[..count].iter().enumerate() {
            self.write(MEMMAP + i * core::mem::size_of::<MemmapEntry>(), *e);
        }
        let info = StartInfo {
            magic: START_INFO_MAGIC,
            version: 1,
            cmdline_paddr: self.phys(CMDLINE),
            rsdp_paddr: rsdp,
            memmap_paddr: self.phys(MEMMAP),
            memmap_entries: count as u32,
            ..StartInfo::default()
        };
        self.write(START_INFO, info);
    }

    /// Puts the trampoline and the GDT in place and jumps to the trampoline, which copies the `len` bytes staged at
    /// `from` to `to` and enters the PVH image at `entry32`. All of them lie below 4 GiB (the loader's plan checks).
    ///
    /// # Safety
    /// Boot services have ended and the image is staged: nothing of the firmware's or the loader's is needed again,
    /// and `to..to + len` is memory the image may have.
    pub unsafe fn enter(mut self, from: u64, to: u64, len: u64, entry32: u32) -> ! {
        for (at, value) in [(COPY_FROM, from), (COPY_TO, to), (COPY_LEN, len), (COPY_START_INFO, self.phys(START_INFO))]
        {
            self.write(at, u32::try_from(value).expect("below 4 GiB"));
        }
        self.write(COPY_ENTRY, entry32);
        // SAFETY: both symbols are labels in the same section, start before end.
        let code = unsafe {
            let start = &raw const kiln_trampoline_start;
            let end = &raw const kiln_trampoline_end;
            core::slice::from_raw_parts(start, end.offset_from(start) as usize)
        };
        assert!(code.len() <= GDTR - TRAMPOLINE);
        for (i, &b) in code.iter().enumerate() {
            self.write(TRAMPOLINE + i, b);
        }
        self.write(GDT, 0u64);
        self.write(GDT + usize::from(CODE32), 0x00cf_9a00_0000_ffffu64);
        self.write(GDT + usize::from(DATA32), 0x00cf_9200_0000_ffffu64);
        self.write(GDTR, 23u16);
        self.write(GDTR + 2, self.phys(GDT));
        let gdtr = self.phys(GDTR);
        let target = self.phys(TRAMPOLINE);
        let low = self.phys(0);
        // SAFETY: the GDT describes flat segments and stays in place; the trampoline at `target` (identity-mapped,
        // below 1 MiB) leaves long mode, copies the image and jumps to the PVH entry, which needs nothing from this
        // stack.
        unsafe {
            asm!(
                "cli",
                "lgdt ({gdtr})",
                "pushq ${code32}",
                "pushq {target}",
                "lretq",
                gdtr = in(reg) gdtr,
                target = in(reg) target,
                code32 = const CODE32,
                in("esi") low as u32,
                options(att_syntax, noreturn),
            )
        }
    }
}
