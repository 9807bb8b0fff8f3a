//! Reads an x86-64 ELF executable or shared object (the user's program, its dynamic loader and libraries, or the library
//! OS) into the pieces a boot needs: its loadable segments, entry, program headers, code ranges, function symbols and
//! what it needs from a dynamic loader. Refuses, with the reason, anything Kiln cannot run.

use goblin::elf::{header, program_header, section_header, sym, Elf};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not an x86-64 program (ELF machine {0})")]
    WrongMachine(String),
    #[error("a 32-bit ELF; Kiln runs 64-bit x86-64 programs")]
    Not64Bit,
    #[error("not an executable (ELF type {0}); Kiln runs programs, not object files or libraries")]
    NotExecutable(String),
    #[error(
        "dynamically linked (needs {0}), and no dynamic loader was given to run it with; link statically, e.g. --target x86_64-unknown-linux-musl"
    )]
    Dynamic(String),
    #[error("a position-independent executable that needs a dynamic loader; link statically (static-pie is fine)")]
    NeedsLoader,
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("malformed ELF")]
    Parse(#[source] goblin::error::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfKind {
    /// `ET_EXEC`: loads at the addresses it names.
    Exec,
    /// `ET_DYN` with an entry (static-pie, or a PIE that names its dynamic loader): loads at any base.
    StaticPie,
    /// `ET_DYN` without an entry: a shared library, which only a dynamic loader loads.
    Library,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub writable: bool,
    pub executable: bool,
}

#[derive(Clone, Debug)]
pub struct ElfImage {
    pub kind: ElfKind,
    pub entry: u64,
    pub segments: Vec<LoadSegment>,
    /// Where the program headers are once loaded (before adding the load base), for AT_PHDR.
    pub phdr_vaddr: u64,
    pub phnum: u64,
    pub phent: u64,
    /// [start, end) of executable sections, for the syscall rewriter (empty if the ELF has no section headers).
    pub code_ranges: Vec<(u64, u64)>,
    /// (address, size) of every sized function symbol.
    pub functions: Vec<(u64, u64)>,
    /// `R_X86_64_RELATIVE` relocations as (offset, addend); other kinds are refused.
    pub relative_relocations: Vec<(u64, u64)>,
    /// Named symbols the VMM looks up in the library OS (name, address, size).
    pub symbols: Vec<(String, u64, u64)>,
    /// The dynamic loader it names (`PT_INTERP`), if any.
    pub interpreter: Option<String>,
    /// The shared objects it needs (`DT_NEEDED`), in order.
    pub needed: Vec<String>,
    /// Where it says its libraries are (`DT_RUNPATH`, else `DT_RPATH`), `$ORIGIN` not yet expanded.
    pub runpath: Vec<String>,
    /// Where its dynamic section is once loaded (before adding the load base), if it has one (`PT_DYNAMIC`): its
    /// loader's `DT_DEBUG` entry there leads to the list of loaded objects.
    pub dynamic_vaddr: Option<u64>,
}

impl ElfImage {
    /// An executable: static, or dynamic (then [`ElfImage::interpreter`] says which loader must start it).
    pub fn parse(bytes: &[u8]) -> Result<Self, ElfError> {
        let elf = Self::parse_any(bytes)?;
        if elf.kind == ElfKind::Library {
            return Err(ElfError::NotExecutable("DYN (a shared library)".into()));
        }
        if elf.interpreter.is_none() {
            if let Some(lib) = elf.needed.first() {
                return Err(ElfError::Dynamic(lib.to_string()));
            }
        }
        if elf.kind == ElfKind::StaticPie && elf.interpreter.is_none() {
            let parsed = Elf::parse(bytes).map_err(ElfError::Parse)?;
            if parsed.dynrelas.iter().any(|r| r.r_type != R_X86_64_RELATIVE) {
                return Err(ElfError::NeedsLoader);
            }
        }
        Ok(elf)
    }

    /// An executable or a shared object (a library, or a dynamic loader), as a dynamic loader would map it.
    pub fn parse_any(bytes: &[u8]) -> Result<Self, ElfError> {
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if bytes.len() > 4 && bytes[4] == header::ELFCLASS32 {
            let machine = bytes.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]])).unwrap_or(0);
            if machine != header::EM_X86_64 {
                return Err(ElfError::WrongMachine(header::machine_to_str(machine).to_string()));
            }
            return Err(ElfError::Not64Bit);
        }
        let elf = Elf::parse(bytes).map_err(ElfError::Parse)?;
        if elf.header.e_machine != header::EM_X86_64 {
            return Err(ElfError::WrongMachine(header::machine_to_str(elf.header.e_machine).to_string()));
        }
        if !elf.is_64 {
            return Err(ElfError::Not64Bit);
        }
        let interpreter = elf.interpreter.map(|i| i.trim_end_matches('\0').to_string());
        let needed: Vec<String> = elf.libraries.iter().map(|l| l.to_string()).collect();
        let runpath = if elf.runpaths.is_empty() { &elf.rpaths } else { &elf.runpaths };
        let runpath = runpath.iter().flat_map(|p| p.split(':')).filter(|p| !p.is_empty()).map(String::from).collect();
        let kind = match elf.header.e_type {
            header::ET_EXEC => ElfKind::Exec,
            header::ET_DYN if elf.entry != 0 => ElfKind::StaticPie,
            header::ET_DYN => ElfKind::Library,
            other => return Err(ElfError::NotExecutable(header::et_to_str(other).to_string())),
        };

        let segments = load_segments(&elf, bytes.len() as u64)?;
        let phdr_vaddr = phdr_vaddr(&elf, &segments)?;
        let relative_relocations = if interpreter.is_some() || kind == ElfKind::Library {
            Vec::new()
        } else {
            relative_relocations(&elf, kind)
        };
        let code_ranges = elf
            .section_headers
            .iter()
            .filter(|s| s.sh_flags & u64::from(section_header::SHF_EXECINSTR) != 0 && s.sh_addr != 0 && s.sh_size != 0)
            .map(|s| (s.sh_addr, s.sh_addr.saturating_add(s.sh_size)))
            .collect();
        // Stripped libraries keep only their exported functions (`.dynsym`); they bound the red-zone analysis too.
        let mut functions: Vec<(u64, u64)> = elf
            .syms
            .iter()
            .chain(elf.dynsyms.iter())
            .filter(|s| s.st_type() == sym::STT_FUNC && s.st_size != 0 && s.st_value != 0)
            .map(|s| (s.st_value, s.st_size))
            .collect();
        functions.sort_unstable();
        functions.dedup();
        // The library OS's release build keeps the names the VMM looks up in `.dynsym` only (kernel/build.rs).
        let named = |(syms, names): (&goblin::elf::Symtab, &goblin::strtab::Strtab)| {
            syms.iter()
                .filter(|s| s.st_name != 0 && s.st_value != 0)
                .filter_map(|s| names.get_at(s.st_name).map(|n| (n.to_string(), s.st_value, s.st_size)))
                .collect::<Vec<_>>()
        };
        let symbols = [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)].into_iter().flat_map(named).collect();
        Ok(Self {
            kind,
            entry: elf.entry,
            segments,
            phdr_vaddr,
            phnum: elf.program_headers.len() as u64,
            phent: u64::from(elf.header.e_phentsize),
            code_ranges,
            functions,
            relative_relocations,
            symbols,
            interpreter,
            needed,
            runpath,
            dynamic_vaddr: elf
                .program_headers
                .iter()
                .find(|p| p.p_type == goblin::elf::program_header::PT_DYNAMIC)
                .map(|p| p.p_vaddr),
        })
    }

    /// Lowest and highest (exclusive) virtual address the segments occupy, before adding the load base.
    pub fn span(&self) -> (u64, u64) {
        let start = self.segments.iter().map(|s| s.vaddr).min().unwrap_or(0);
        let end = self.segments.iter().map(|s| s.vaddr + s.mem_size).max().unwrap_or(0);
        (start, end)
    }

    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbol_extent(name).map(|(at, _)| at)
    }

    /// A symbol's address and size.
    pub fn symbol_extent(&self, name: &str) -> Option<(u64, u64)> {
        self.symbols.iter().find(|(n, ..)| n == name).map(|&(_, at, size)| (at, size))
    }
}

fn load_segments(elf: &Elf, file_len: u64) -> Result<Vec<LoadSegment>, ElfError> {
    let mut segments = Vec::new();
    for ph in elf.program_headers.iter().filter(|p| p.p_type == program_header::PT_LOAD && p.p_memsz != 0) {
        let in_file = ph.p_offset.checked_add(ph.p_filesz).is_some_and(|end| end <= file_len);
        let in_space = ph.p_vaddr.checked_add(ph.p_memsz).is_some_and(|end| end < (1 << 47));
        if !in_file || !in_space || ph.p_filesz > ph.p_memsz {
            return Err(ElfError::Malformed(format!(
                "segment at {:#x} lies outside the file or address space",
                ph.p_vaddr
            )));
        }
        segments.push(LoadSegment {
            vaddr: ph.p_vaddr,
            mem_size: ph.p_memsz,
            file_offset: ph.p_offset,
            file_size: ph.p_filesz,
            writable: ph.p_flags & program_header::PF_W != 0,
            executable: ph.p_flags & program_header::PF_X != 0,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::Malformed("no loadable segment".into()));
    }
    // Linkers never emit these; refusing them bounds what loading costs by the file and the span: the span's bytes
    // are each one segment's, and the file's bytes each feed the rewriter's decoder at most once.
    if let Some((a, b)) = first_overlap(segments.iter().map(|s| (s.vaddr, s.vaddr + s.mem_size))) {
        return Err(ElfError::Malformed(format!("segments at {a:#x} and {b:#x} overlap")));
    }
    let code = segments.iter().filter(|s| s.executable);
    if let Some((a, b)) = first_overlap(code.map(|s| (s.file_offset, s.file_offset + s.file_size))) {
        return Err(ElfError::Malformed(format!("executable segments at file offsets {a:#x} and {b:#x} overlap")));
    }
    Ok(segments)
}

/// The starts of two of the `[start, end)` ranges that share a byte, if any do.
fn first_overlap(ranges: impl Iterator<Item = (u64, u64)>) -> Option<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges.filter(|(start, end)| start < end).collect();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[1].0 < w[0].1).map(|w| (w[0].0, w[1].0))
}

fn phdr_vaddr(elf: &Elf, segments: &[LoadSegment]) -> Result<u64, ElfError> {
    if let Some(ph) = elf.program_headers.iter().find(|p| p.p_type == program_header::PT_PHDR) {
        return Ok(ph.p_vaddr);
    }
    let phoff = elf.header.e_phoff;
    segments
        .iter()
        .find(|s| s.file_offset <= phoff && phoff < s.file_offset + s.file_size)
        .map(|s| s.vaddr + (phoff - s.file_offset))
        .ok_or_else(|| ElfError::Malformed("program headers are not in a loadable segment".into()))
}

const R_X86_64_RELATIVE: u32 = 8;

/// The `R_X86_64_RELATIVE` relocations (what a static-pie needs; `parse` refuses one that needs others).
fn relative_relocations(elf: &Elf, kind: ElfKind) -> Vec<(u64, u64)> {
    if kind == ElfKind::Exec {
        return Vec::new();
    }
    elf.dynrelas
        .iter()
        .filter(|r| r.r_type == R_X86_64_RELATIVE)
        .map(|r| (r.r_offset, r.r_addend.unwrap_or(0) as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header + program headers, built by hand so the tests need no toolchain.
    fn tiny_elf(machine: u16, e_type: u16, phdrs: &[(u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little endian
        b[6] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&0x401000u64.to_le_bytes()); // entry
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(p_type, offset, vaddr, filesz, memsz) in phdrs {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&p_type.to_le_bytes());
            p[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            b.extend(p);
        }
        b.resize(0x2000, 0x90);
        b
    }

    #[test]
    fn reads_a_static_executable() {
        let elf = ElfImage::parse(&tiny_elf(header::EM_X86_64, header::ET_EXEC, &[(1, 0, 0x400000, 0x2000, 0x3000)]))
            .unwrap();
        assert_eq!(elf.kind, ElfKind::Exec);
        assert_eq!(elf.entry, 0x401000);
        assert_eq!(elf.phdr_vaddr, 0x400040);
        assert_eq!((elf.phnum, elf.phent), (1, 56));
        assert_eq!(elf.span(), (0x400000, 0x403000));
        assert!(elf.segments[0].executable && !elf.segments[0].writable);
    }

    #[test]
    fn refuses_what_kiln_cannot_run() {
        assert!(matches!(ElfImage::parse(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotElf)));
        let arm = tiny_elf(header::EM_AARCH64, header::ET_EXEC, &[(1, 0, 0x400000, 0x2000, 0x2000)]);
        assert!(matches!(ElfImage::parse(&arm), Err(ElfError::WrongMachine(m)) if m.contains("AARCH64")));
        let obj = tiny_elf(header::EM_X86_64, header::ET_REL, &[(1, 0, 0x400000, 0x2000, 0x2000)]);
        assert!(matches!(ElfImage::parse(&obj), Err(ElfError::NotExecutable(_))));
        let outside = tiny_elf(header::EM_X86_64, header::ET_EXEC, &[(1, 0x1000, 0x400000, 0x5000, 0x5000)]);
        assert!(matches!(ElfImage::parse(&outside), Err(ElfError::Malformed(_))));
        let mut class32 = arm.clone();
        class32[4] = 1;
        class32[18..20].copy_from_slice(&header::EM_386.to_le_bytes());
        assert!(matches!(ElfImage::parse(&class32), Err(ElfError::WrongMachine(_))));
        class32[18..20].copy_from_slice(&header::EM_X86_64.to_le_bytes());
        assert!(matches!(ElfImage::parse(&class32), Err(ElfError::Not64Bit)));
    }

    #[test]
    fn refuses_overlapping_segments() {
        let exec =
            |phdrs: &[(u32, u64, u64, u64, u64)]| ElfImage::parse(&tiny_elf(header::EM_X86_64, header::ET_EXEC, phdrs));
        // Side by side in memory and in the file: fine, even on one page.
        exec(&[(1, 0, 0x400000, 0x800, 0x800), (1, 0x800, 0x400800, 0x800, 0x1000)]).unwrap();
        // One inside the other's bss.
        let inside = exec(&[(1, 0, 0x400000, 0x1000, 0x10_0000), (1, 0x1000, 0x480000, 0x1000, 0x1000)]);
        assert!(matches!(inside, Err(ElfError::Malformed(m)) if m.contains("overlap")));
        // Two executable segments decoding the same file bytes at different addresses.
        let shared = exec(&[(1, 0, 0x400000, 0x2000, 0x2000), (1, 0, 0x10000000, 0x2000, 0x2000)]);
        assert!(matches!(shared, Err(ElfError::Malformed(m)) if m.contains("file offsets")));
    }

    #[test]
    fn reads_the_interpreter_of_a_dynamic_executable() {
        let mut b = tiny_elf(
            header::EM_X86_64,
            header::ET_EXEC,
            &[(3, 0x1000, 0x401000, 28, 28), (1, 0, 0x400000, 0x2000, 0x2000)],
        );
        b[0x1000..0x1000 + 28].copy_from_slice(b"/lib/ld-musl-x86_64.so.1\0\0\0\0");
        let elf = ElfImage::parse(&b).unwrap();
        assert_eq!(elf.interpreter.as_deref(), Some("/lib/ld-musl-x86_64.so.1"));
        assert!(elf.relative_relocations.is_empty());
    }

    #[test]
    fn a_library_is_no_program() {
        let mut b = tiny_elf(header::EM_X86_64, header::ET_DYN, &[(1, 0, 0, 0x2000, 0x2000)]);
        b[24..32].fill(0); // no entry
        assert!(matches!(ElfImage::parse(&b), Err(ElfError::NotExecutable(m)) if m.contains("shared library")));
        assert_eq!(ElfImage::parse_any(&b).unwrap().kind, ElfKind::Library);
    }
}
