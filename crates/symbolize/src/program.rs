//! The program's ELF as the backtrace needs it: where it was loaded, its call-frame information, its DWARF and its
//! symbols.

use gimli::{BaseAddresses, EhFrame, EndianArcSlice, LittleEndian, SectionId};
use object::{Object, ObjectKind, ObjectSection, ObjectSymbol, SymbolKind};
use std::sync::Arc;

type Reader = EndianArcSlice<LittleEndian>;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("cannot read the program's ELF: {0}")]
    Elf(#[from] object::Error),
    #[error("the program is loaded by its dynamic loader at an address Kiln does not track")]
    LoadedByItsLoader,
}

/// A function in the symbol table: `[start, start + size)` in link-time addresses.
struct Symbol {
    start: u64,
    size: u64,
    name: String,
}

pub struct Program {
    /// Added to link-time addresses to get guest addresses.
    bias: u64,
    eh_frame: Option<(EhFrame<Reader>, BaseAddresses)>,
    dwarf: Option<addr2line::Context<Reader>>,
    /// Sorted by start.
    symbols: Vec<Symbol>,
}

impl Program {
    /// Reads `elf`; `pie_base` is where a position-independent program without a dynamic loader was loaded.
    pub fn parse(elf: &[u8], pie_base: u64) -> Result<Self, ProgramError> {
        let file = object::File::parse(elf)?;
        let has_interp = file.sections().any(|s| s.name() == Ok(".interp"));
        let bias = match file.kind() {
            ObjectKind::Executable => 0,
            ObjectKind::Dynamic if has_interp => return Err(ProgramError::LoadedByItsLoader),
            _ => pie_base,
        };
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
        let mut symbols: Vec<Symbol> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some(Symbol { start: s.address(), size: s.size(), name: s.name().ok()?.to_string() }))
            .collect();
        symbols.sort_by_key(|s| s.start);
        Ok(Program { bias, eh_frame, dwarf, symbols })
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

    /// The function symbol that covers link-time address `addr`, and where it starts.
    pub(crate) fn symbol(&self, addr: u64) -> Option<(&str, u64)> {
        let after = self.symbols.partition_point(|s| s.start <= addr);
        let symbol = self.symbols[..after].iter().rev().take(8).find(|s| addr - s.start < s.size.max(1))?;
        Some((&symbol.name, symbol.start))
    }
}
