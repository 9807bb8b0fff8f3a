//! An ELF object of the crashed program (the program, or a shared object its loader mapped) as the backtrace needs
//! it: where it was loaded, its call-frame information, its DWARF and its symbols. [`AddressSpace`] holds them all
//! and says which covers an address.

use gimli::{BaseAddresses, EhFrame, EndianArcSlice, LittleEndian, SectionId};
use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol, SectionKind, SymbolKind};
use std::sync::Arc;

type Reader = EndianArcSlice<LittleEndian>;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("cannot read the program's ELF: {0}")]
    Elf(#[from] object::Error),
}

/// A function in the symbol table: `[start, start + size)` in link-time addresses.
struct Symbol {
    start: u64,
    size: u64,
    name: String,
}

pub struct Program {
    /// What frames in it say they are in (`libc.so.6`); empty for the program itself.
    name: String,
    /// Added to link-time addresses to get guest addresses.
    bias: u64,
    /// The guest addresses its loadable segments cover.
    range: std::ops::Range<u64>,
    eh_frame: Option<(EhFrame<Reader>, BaseAddresses)>,
    dwarf: Option<addr2line::Context<Reader>>,
    /// Sorted by start.
    symbols: Vec<Symbol>,
    /// The executable sections' bytes by link-time address, for reading prologues.
    code: Vec<(u64, Arc<[u8]>)>,
}

impl Program {
    /// The bias of the program `elf` when a position-independent one is loaded at `pie_base` (0 for a
    /// position-dependent one).
    pub fn bias(elf: &[u8], pie_base: u64) -> Result<u64, ProgramError> {
        Ok(match object::File::parse(elf)?.kind() {
            ObjectKind::Executable => 0,
            _ => pie_base,
        })
    }

    /// Reads `elf`, loaded with `bias` added to its addresses; frames in it say they are in `name` (empty: the
    /// program).
    pub fn parse(elf: &[u8], bias: u64, name: &str) -> Result<Self, ProgramError> {
        let file = object::File::parse(elf)?;
        let start = file.segments().map(|s| s.address()).min().unwrap_or(0);
        let end = file.segments().map(|s| s.address().saturating_add(s.size())).max().unwrap_or(0);
        let range = bias.wrapping_add(start)..bias.wrapping_add(end);
        let section = |name: &str| {
            let section = file.section_by_name(name)?;
            let data = section.uncompressed_data().ok()?;
            Some((section.address(), Reader::new(Arc::from(&*data), LittleEndian)))
        };
        let eh_frame = section(".eh_frame").map(|(address, data)| {
            let mut bases = BaseAddresses::default().set_eh_frame(address);
            if let Some(text) = file.section_by_name(".text") {
                bases = bases.set_text(text.address());
            }
            if let Some(got) = file.section_by_name(".got") {
                bases = bases.set_got(got.address());
            }
            (EhFrame::from(data), bases)
        });
        let dwarf = match file.section_by_name(".debug_info") {
            None => None,
            Some(_) => {
                let empty = Reader::new(Arc::from(&[][..]), LittleEndian);
                let sections = gimli::Dwarf::load(|id: SectionId| {
                    Ok::<_, gimli::Error>(section(id.name()).map_or_else(|| empty.clone(), |(_, data)| data))
                });
                sections.ok().and_then(|dwarf| addr2line::Context::from_dwarf(dwarf).ok())
            }
        };
        // A stripped library keeps its exported functions (`.dynsym`): `qsort` in libc.so.6.
        let mut symbols: Vec<Symbol> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some(Symbol { start: s.address(), size: s.size(), name: s.name().ok()?.to_string() }))
            .collect();
        symbols.sort_by_key(|s| s.start);
        symbols.dedup_by_key(|s| s.start);
        let code = file
            .sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .filter_map(|s| Some((s.address(), Arc::from(&*s.uncompressed_data().ok()?))))
            .collect();
        Ok(Program { name: name.to_string(), bias, range, eh_frame, dwarf, symbols, code })
    }

    /// What frames in it say they are in; empty for the program itself.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The link-time address of guest address `addr` (none below the load base).
    pub(crate) fn link_address(&self, addr: u64) -> Option<u64> {
        addr.checked_sub(self.bias)
    }

    pub(crate) fn eh_frame(&self) -> Option<&(EhFrame<Reader>, BaseAddresses)> {
        self.eh_frame.as_ref()
    }

    pub(crate) fn dwarf(&self) -> Option<&addr2line::Context<Reader>> {
        self.dwarf.as_ref()
    }

    /// Whether the program has line information.
    pub fn has_debug_info(&self) -> bool {
        self.dwarf.is_some()
    }

    /// Whether the program has a symbol table with functions in it.
    pub fn has_symbols(&self) -> bool {
        !self.symbols.is_empty()
    }

    /// The code from link-time address `start` to the end of its section.
    pub(crate) fn code_from(&self, start: u64) -> Option<&[u8]> {
        let (address, bytes) = self.code.iter().find(|(a, b)| (*a..*a + b.len() as u64).contains(&start))?;
        bytes.get(usize::try_from(start - address).ok()?..)
    }

    /// The function symbol that covers link-time address `addr`, and where it starts.
    pub(crate) fn symbol(&self, addr: u64) -> Option<(&str, u64)> {
        let after = self.symbols.partition_point(|s| s.start <= addr);
        let symbol = self.symbols[..after].iter().rev().take(8).find(|s| addr - s.start < s.size.max(1))?;
        Some((&symbol.name, symbol.start))
    }
}

/// The crashed program's objects: the program, and the shared objects its loader mapped.
pub struct AddressSpace {
    objects: Vec<Program>,
}

impl AddressSpace {
    /// The program first: an address no object's segments cover is looked up in it.
    pub fn new(objects: Vec<Program>) -> Self {
        AddressSpace { objects }
    }

    /// The object whose segments cover guest address `addr`.
    pub(crate) fn object_at(&self, addr: u64) -> Option<&Program> {
        self.objects.iter().find(|o| o.range.contains(&addr)).or_else(|| self.objects.first())
    }

    /// Whether no object has line information or function symbols.
    pub(crate) fn unnamed(&self) -> bool {
        self.objects.iter().all(|o| !o.has_debug_info() && !o.has_symbols())
    }
}
