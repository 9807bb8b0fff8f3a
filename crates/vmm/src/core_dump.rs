//! The core file of a crash (`kiln run --core FILE`), made while the VM's memory still exists: the crashed thread's
//! registers first, the program's other threads from the library OS's thread table, every run of user pages below
//! the top of the lower half (the program's, and the direct map through which the library OS hands out memory and
//! maps files: guest RAM, at most once), the auxiliary vector, and the files mapped: the program and the shared
//! objects its loader listed (`link_map`), by their guest paths. `core_file` writes it.

use crate::core_file::{self, Core, CoreError, CoreSegment, CoreThread, MappedFile, XState, MAX_SEGMENTS};
use crate::elf::ElfImage;
use crate::link_map::LoadedObject;
use crate::memory::GuestRam;
use crate::user_memory;
use kiln_abi::layout::{page_align_down, page_align_up};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a core file says of the program, known at its boot: every VM keeps it, and a snapshot with it, so that a
/// restored VM's crash has a core file as a booted one's does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreProgram {
    /// The program's name and command line, for `NT_PRPSINFO`.
    pub name: String,
    pub args: String,
    /// The program's own mappings of its file (by its guest path).
    pub program_files: Vec<MappedFile>,
}

impl CoreProgram {
    /// For the program `elf` loaded at `base` from its guest path `exe_path`, run with `argv`.
    pub fn new(exe_path: &str, argv: &[String], elf: &ElfImage, base: u64) -> Self {
        let name = exe_path.rsplit('/').next().unwrap_or(exe_path).to_string();
        CoreProgram { name, args: argv.join(" "), program_files: mapped(elf, base, exe_path) }
    }
}

/// What the VMM keeps for a crash's core file.
#[derive(Clone, Debug, Default)]
pub struct CoreSetup {
    pub path: PathBuf,
    /// The file to write into, opened before the VM ran (see [`crate::Vm::core_into`]); else `path` is made.
    pub opened: Option<std::sync::Arc<std::fs::File>>,
    pub program: CoreProgram,
    pub auxv: Vec<u8>,
}

impl CoreSetup {
    pub fn new(path: PathBuf, program: CoreProgram, auxv: Vec<u8>) -> Self {
        CoreSetup { path, opened: None, program, auxv }
    }
}

/// The file mappings of `elf`'s loadable segments when loaded at `base`, named `path`.
fn mapped(elf: &ElfImage, base: u64, path: &str) -> Vec<MappedFile> {
    elf.segments
        .iter()
        .filter(|s| s.file_size != 0)
        .map(|s| MappedFile {
            start: page_align_down(base.wrapping_add(s.vaddr)),
            end: page_align_up(base.wrapping_add(s.vaddr).wrapping_add(s.file_size)),
            offset: page_align_down(s.file_offset),
            path: path.to_string(),
        })
        .collect()
}

/// Writes the core file of a crash: `threads` with the crashed one first, `objects` as the loader listed them.
/// Returns the file's length.
pub fn write(
    setup: &CoreSetup,
    ram: &GuestRam,
    pml4: u64,
    signal: u32,
    threads: Vec<CoreThread>,
    xstate: Option<XState>,
    objects: &[LoadedObject],
) -> Result<u64, CoreError> {
    let mut files = setup.program.program_files.clone();
    for object in objects.iter().filter(|o| !o.path.is_empty()) {
        let Some(elf) = object.file.as_deref().and_then(|f| ElfImage::parse_any(f).ok()) else { continue };
        files.extend(mapped(&elf, object.bias, &object.path));
    }
    let core = Core {
        signal,
        threads,
        segments: segments(ram, pml4),
        auxv: setup.auxv.clone(),
        files,
        xstate,
        name: setup.program.name.clone(),
        args: setup.program.args.clone(),
    };
    let page = |at: u64, page: &mut [u8]| {
        let bytes = user_memory::read(ram, pml4, at, page.len());
        page[..bytes.len()].copy_from_slice(&bytes);
        !bytes.is_empty()
    };
    match &setup.opened {
        Some(file) => core_file::write_opened(file, &setup.path, &core, page),
        None => core_file::write(&setup.path, &core, page),
    }
}

/// The runs of user pages, at most [`MAX_SEGMENTS`] and in all no more than four times guest RAM (the direct map
/// holds it once; the program's views of it can alias).
fn segments(ram: &GuestRam, pml4: u64) -> Vec<CoreSegment> {
    let mut budget = ram.size().saturating_mul(4);
    let mut out = Vec::new();
    user_memory::regions(ram, pml4, |region| {
        let len = region.end - region.start;
        if out.len() < MAX_SEGMENTS && len <= budget {
            budget -= len;
            out.push(CoreSegment { start: region.start, end: region.end, writable: region.writable });
        }
    });
    out
}
