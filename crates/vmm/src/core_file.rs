//! ELF core files of a crashed program, as Linux writes them and gdb reads them (`gdb PROGRAM CORE`): `ET_CORE`, a
//! `PT_NOTE` segment with an `NT_PRSTATUS` per thread (the crashed one first, followed by its `NT_PRFPREG` and
//! `NT_X86_XSTATE`: the x87, SSE and AVX registers its vCPU held), `NT_PRPSINFO`, `NT_AUXV` and `NT_FILE` (the
//! mapped objects, so that gdb finds shared objects by their paths), then a `PT_LOAD` per run of the
//! program's pages. The headers are laid out with the `object` crate's ELF writer; the pages are written straight
//! from guest memory at their offsets, all-zero pages skipped (holes in a sparse file), so a core costs the disk what
//! the program touched. The file appears whole (written beside it, then renamed) or not at all.

use object::elf;
use object::write::elf::{FileHeader, ProgramHeader, Writer};
use object::write::WritableBuffer;
use object::Endianness;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub const PAGE: u64 = 4096;
/// At most this many `PT_LOAD` segments (below `PN_XNUM`, beyond which ELF needs a section table to count them).
pub const MAX_SEGMENTS: usize = 60_000;
/// `elf_prstatus` on x86-64: signal info, pids, times, then `user_regs_struct` at 112, `pr_fpvalid`.
const PRSTATUS_SIZE: usize = 336;
const PRSTATUS_REGS: usize = 112;
/// `pr_fpvalid`: whether `NT_PRFPREG` follows.
const PRSTATUS_FPVALID: usize = 328;
/// `elf_prpsinfo` on x86-64.
const PRPSINFO_SIZE: usize = 136;
const USER_CS: u64 = 0x33;
const USER_SS: u64 = 0x2b;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot write the core file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lay out the core file: {0}")]
    Layout(String),
}

/// A thread as `NT_PRSTATUS` describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreThread {
    pub tid: u32,
    pub regs: kiln_abi::hypercall::FaultRegs,
    pub fs_base: u64,
}

/// The crashed thread's extended state: the standard-format XSAVE area its vCPU held (KVM_GET_XSAVE's region,
/// x87 and SSE in its first 512 bytes) and XCR0, the components it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XState {
    pub area: Vec<u8>,
    pub xcr0: u64,
}

/// Where Linux keeps XCR0 in the `NT_X86_XSTATE` note (the `fxsave` image's software-reserved bytes), which gdb
/// reads to know which registers the note holds.
const XSTATE_XCR0: usize = 464;
/// The `fxsave` image: `NT_PRFPREG`.
const FXSAVE_SIZE: usize = 512;

impl XState {
    /// The note's bytes: the area up to the end of the last component XCR0 enables (the size Linux gives it), with
    /// XCR0 in the software-reserved bytes. `component` gives a component's (offset, size) in the area (CPUID leaf
    /// 0xD). None where the area is shorter than XCR0 says.
    fn note(&self, component: impl Fn(u32) -> (usize, usize)) -> Option<Vec<u8>> {
        let size = (2..64)
            .filter(|i| self.xcr0 & (1 << i) != 0)
            .map(&component)
            .map(|(offset, size)| offset + size)
            .fold(FXSAVE_SIZE + 64, usize::max);
        let mut bytes = self.area.get(..size)?.to_vec();
        bytes[XSTATE_XCR0..XSTATE_XCR0 + 8].copy_from_slice(&self.xcr0.to_le_bytes());
        Some(bytes)
    }
}

/// A component's offset and size in the standard-format XSAVE area, from this CPU's CPUID leaf 0xD (the guest's
/// vCPU reports the host's).
fn cpuid_component(component: u32) -> (usize, usize) {
    let leaf = std::arch::x86_64::__cpuid_count(0xd, component);
    (leaf.ebx as usize, leaf.eax as usize)
}

/// A run of the program's pages: `[start, end)`, page-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreSegment {
    pub start: u64,
    pub end: u64,
    pub writable: bool,
}

/// A mapping of a file (`NT_FILE`): `[start, end)` maps the file from byte `offset` on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// What a core file says.
#[derive(Clone, Debug, Default)]
pub struct Core {
    /// The signal that ended the program.
    pub signal: u32,
    /// The crashed thread first.
    pub threads: Vec<CoreThread>,
    pub segments: Vec<CoreSegment>,
    /// The auxiliary vector's bytes, AT_NULL included.
    pub auxv: Vec<u8>,
    pub files: Vec<MappedFile>,
    /// The crashed thread's x87/SSE/AVX registers, where they were read.
    pub xstate: Option<XState>,
    /// The program's name (at most 15 bytes are kept) and its arguments (at most 79).
    pub name: String,
    pub args: String,
}

/// The headers and notes (all the file's bytes before its first segment), and each segment's file offset.
pub fn layout(core: &Core) -> Result<(Vec<u8>, Vec<u64>), CoreError> {
    let notes = notes(core);
    let segments = &core.segments[..core.segments.len().min(MAX_SEGMENTS)];
    let mut head = HeadBuffer(Vec::new());
    let mut writer = Writer::new(Endianness::Little, true, &mut head);
    writer.reserve_file_header();
    writer.reserve_program_headers(1 + segments.len() as u32);
    let notes_offset = writer.reserve(notes.len() as u64, 4);
    let offsets: Vec<u64> = segments.iter().map(|s| writer.reserve(s.end - s.start, PAGE)).collect();
    let header = FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_CORE,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    };
    writer.write_file_header(&header).map_err(|e| CoreError::Layout(e.to_string()))?;
    writer.write_align_program_headers();
    writer.write_program_header(&ProgramHeader {
        p_type: elf::PT_NOTE,
        p_flags: elf::ProgramFlags(0),
        p_offset: notes_offset,
        p_vaddr: 0,
        p_paddr: 0,
        p_filesz: notes.len() as u64,
        p_memsz: 0,
        p_align: 4,
    });
    for (segment, &offset) in segments.iter().zip(&offsets) {
        // No NX bit in Kiln's page tables: everything mapped is executable, as `/proc/self/maps` says.
        let write = if segment.writable { elf::PF_W.0 } else { 0 };
        writer.write_program_header(&ProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags: elf::ProgramFlags(elf::PF_R.0 | elf::PF_X.0 | write),
            p_offset: offset,
            p_vaddr: segment.start,
            p_paddr: 0,
            p_filesz: segment.end - segment.start,
            p_memsz: segment.end - segment.start,
            p_align: PAGE,
        });
    }
    writer.pad_until(notes_offset);
    writer.write(&notes);
    Ok((head.0, offsets))
}

/// The object writer's buffer for the headers alone: it asks to reserve the whole file's length (the segments
/// too), which is not held in memory.
struct HeadBuffer(Vec<u8>);

impl WritableBuffer for HeadBuffer {
    fn reserve(&mut self, _: u64) -> Result<(), ()> {
        Ok(())
    }
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Writes `core` to `path`; `page` fills a buffer with the program's page at a virtual address (false: unreadable,
/// left as zeros). Returns the file's length.
pub fn write(path: &Path, core: &Core, page: impl FnMut(u64, &mut [u8]) -> bool) -> Result<u64, CoreError> {
    let io = |source| CoreError::Io { path: path.display().to_string(), source };
    let laid_out = layout(core)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial).map_err(io)?;
    match write_into(&file, core, laid_out, page) {
        Ok(end) => {
            std::fs::rename(&partial, path).map_err(io)?;
            Ok(end)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(io(e))
        }
    }
}

/// Writes `core` into `file`, opened before the VM ran (an instance's unnamed core file): only pwrite and
/// ftruncate, calls a vCPU thread's seccomp list has. `shown` names it in errors.
pub fn write_opened(
    file: &std::fs::File,
    shown: &Path,
    core: &Core,
    page: impl FnMut(u64, &mut [u8]) -> bool,
) -> Result<u64, CoreError> {
    let laid_out = layout(core)?;
    write_into(file, core, laid_out, page).map_err(|source| CoreError::Io { path: shown.display().to_string(), source })
}

fn write_into(
    file: &std::fs::File,
    core: &Core,
    (head, offsets): (Vec<u8>, Vec<u64>),
    mut page: impl FnMut(u64, &mut [u8]) -> bool,
) -> std::io::Result<u64> {
    file.set_len(0)?;
    file.write_all_at(&head, 0)?;
    let mut bytes = vec![0u8; PAGE as usize];
    let mut end = head.len() as u64;
    for (segment, &offset) in core.segments.iter().zip(&offsets) {
        for at in (segment.start..segment.end).step_by(PAGE as usize) {
            bytes.fill(0);
            let position = offset + (at - segment.start);
            if page(at, &mut bytes) && bytes.iter().any(|&b| b != 0) {
                file.write_all_at(&bytes, position)?;
            }
        }
        end = offset + (segment.end - segment.start);
    }
    file.set_len(end)?;
    Ok(end)
}

fn notes(core: &Core) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, thread) in core.threads.iter().enumerate() {
        // Only the crashed thread's registers are known: the others' were saved by the library OS, which keeps no
        // x87/SSE state for a thread in a syscall.
        let xstate = core.xstate.as_ref().filter(|x| i == 0 && x.area.len() >= FXSAVE_SIZE);
        let mut status = prstatus(core.signal, thread);
        status[PRSTATUS_FPVALID] = u8::from(xstate.is_some());
        note(&mut out, elf::NT_PRSTATUS.0, &status);
        if let Some(xstate) = xstate {
            note(&mut out, elf::NT_PRFPREG.0, &xstate.area[..FXSAVE_SIZE]);
            if let Some(area) = xstate.note(cpuid_component) {
                note(&mut out, elf::NT_X86_XSTATE.0, &area);
            }
        }
    }
    note(&mut out, elf::NT_PRPSINFO.0, &prpsinfo(core));
    if !core.auxv.is_empty() {
        note(&mut out, elf::NT_AUXV.0, &core.auxv);
    }
    if !core.files.is_empty() {
        note(&mut out, elf::NT_FILE.0, &file_note(&core.files));
    }
    out
}

/// A note named "CORE": sizes, type, name and description each padded to 4 bytes.
fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    const NAME: &[u8] = b"CORE\0";
    out.extend((NAME.len() as u32).to_le_bytes());
    out.extend((desc.len() as u32).to_le_bytes());
    out.extend(kind.to_le_bytes());
    out.extend(NAME);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn prstatus(signal: u32, thread: &CoreThread) -> Vec<u8> {
    let mut p = vec![0u8; PRSTATUS_SIZE];
    p[0..4].copy_from_slice(&signal.to_le_bytes());
    p[12..14].copy_from_slice(&(signal as u16).to_le_bytes());
    p[32..36].copy_from_slice(&thread.tid.to_le_bytes());
    p[36..40].copy_from_slice(&0u32.to_le_bytes());
    p[40..44].copy_from_slice(&1u32.to_le_bytes());
    p[44..48].copy_from_slice(&1u32.to_le_bytes());
    let r = thread.regs;
    // `user_regs_struct`; orig_rax -1 (not in a syscall), the segment selectors the program runs with.
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX,
        r.rip,
        USER_CS,
        r.rflags,
        r.rsp,
        USER_SS,
        thread.fs_base,
        0,
        0,
        0,
        0,
        0,
    ];
    for (i, value) in regs.iter().enumerate() {
        p[PRSTATUS_REGS + i * 8..][..8].copy_from_slice(&value.to_le_bytes());
    }
    p
}

fn prpsinfo(core: &Core) -> Vec<u8> {
    let mut p = vec![0u8; PRPSINFO_SIZE];
    p[1] = b'R';
    p[24..28].copy_from_slice(&1u32.to_le_bytes());
    p[36..40].copy_from_slice(&1u32.to_le_bytes());
    let name = core.name.as_bytes();
    p[40..40 + name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
    let args = core.args.as_bytes();
    p[56..56 + args.len().min(79)].copy_from_slice(&args[..args.len().min(79)]);
    p
}

/// `NT_FILE`: count, page size, (start, end, offset in pages) for each, then the paths, NUL-terminated.
fn file_note(files: &[MappedFile]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((files.len() as u64).to_le_bytes());
    out.extend(PAGE.to_le_bytes());
    for f in files {
        for value in [f.start, f.end, f.offset / PAGE] {
            out.extend(value.to_le_bytes());
        }
    }
    for f in files {
        out.extend(f.path.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    use object::{Object, ObjectSegment};

    fn core() -> Core {
        let regs = kiln_abi::hypercall::FaultRegs { rip: 0x401000, rsp: 0x7fff_0000, ..Default::default() };
        Core {
            signal: 11,
            threads: vec![CoreThread { tid: 1, regs, fs_base: 0 }, CoreThread { tid: 2, regs, fs_base: 0 }],
            segments: vec![
                CoreSegment { start: 0x400000, end: 0x402000, writable: false },
                CoreSegment { start: 0x7ffe_f000, end: 0x7fff_1000, writable: true },
            ],
            auxv: vec![0; 16],
            files: vec![MappedFile { start: 0x400000, end: 0x402000, offset: 0, path: "/app".into() }],
            xstate: Some(XState { area: vec![0; 4096], xcr0: 0x7 }),
            name: "app".into(),
            args: "app --flag".into(),
        }
    }

    #[test]
    fn a_core_file_parses_with_its_notes_and_segments() {
        let dir = std::env::temp_dir().join(format!("kiln-core-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("core");
        let len = write(&path, &core(), |at, page| {
            page[0] = (at >> 12) as u8;
            at != 0x401000
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        let elf = ElfFile64::<Endianness>::parse(&*bytes).unwrap();
        assert_eq!(elf.kind(), object::ObjectKind::Core);
        let loads: Vec<_> = elf.segments().map(|s| (s.address(), s.size())).collect();
        assert_eq!(loads, [(0x400000, 0x2000), (0x7ffe_f000, 0x2000)]);
        let data: Vec<&[u8]> = elf.segments().map(|s| s.data().unwrap()).collect();
        assert_eq!((data[0][0], data[0][0x1000]), (0, 0), "an all-zero page (a hole), an unreadable one");
        assert_eq!((data[1][0], data[1][0x1000]), (0xef, 0xf0), "each page's bytes at its offset");
        let notes: Vec<u32> = elf
            .elf_program_headers()
            .iter()
            .filter_map(|h| h.notes(Endianness::Little, &*bytes).ok().flatten())
            .flat_map(|mut n| {
                std::iter::from_fn(move || n.next().ok().flatten().map(|n| n.n_type(Endianness::Little).0))
            })
            .collect();
        assert_eq!(
            notes,
            [1, 2, 0x202, 1, 3, 6, 0x4649_4c45],
            "two threads (the first's FP state), prpsinfo, auxv, files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_xstate_note_ends_with_the_last_component_xcr0_enables_and_carries_xcr0() {
        let mut area = vec![0u8; 4096];
        area[576] = 0xaa; // the upper half of ymm0
        let avx = XState { area: area.clone(), xcr0: 0b111 };
        let component = |i| match i {
            2 => (576, 256),
            _ => (1024, 64),
        };
        let note = avx.note(component).unwrap();
        assert_eq!(note.len(), 832);
        assert_eq!((note[576], u64::from_le_bytes(note[464..472].try_into().unwrap())), (0xaa, 0b111));
        let sse_only = XState { area: area.clone(), xcr0: 0b11 };
        assert_eq!(sse_only.note(component).unwrap().len(), 576, "the legacy area and the XSAVE header");
        let short = XState { area: vec![0; 600], xcr0: 0b111 };
        assert!(short.note(component).is_none());
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let path = Path::new("/nonexistent-kiln-dir/core");
        assert!(write(path, &core(), |_, _| true).is_err());
    }
}
