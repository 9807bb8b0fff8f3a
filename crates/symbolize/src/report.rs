//! Names for the walk's addresses, and how the backtrace reads: one line a frame, indented below the crash headline.

use crate::program::{AddressSpace, Program};
use std::fmt;

/// One function at one address: a physical frame, or one inlined into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub address: u64,
    /// Demangled; with `+0x..` when it came from the symbol table.
    pub function: Option<String>,
    /// `file:line`.
    pub location: Option<String>,
    /// Inlined into the next frame listed (same address).
    pub inlined: bool,
    /// The shared object it is in (`libc.so.6`); None in the program itself.
    pub object: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backtrace {
    pub frames: Vec<Frame>,
    /// Neither DWARF nor function symbols: the frames are bare addresses.
    pub no_symbols: bool,
}

impl Frame {
    /// ` in FUNCTION (FILE:LINE)`, as much of it as is known: what the crash headline appends.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        if let Some(function) = &self.function {
            text += &format!(" in {function}");
        }
        if let Some(location) = &self.location {
            text += &format!(" ({location})");
        }
        if let Some(object) = &self.object {
            text += &format!(" from {object}");
        }
        text
    }
}

impl Backtrace {
    /// What the crash headline appends for the faulting instruction.
    pub fn headline_suffix(&self) -> String {
        self.frames.first().map(Frame::describe).unwrap_or_default()
    }
}

impl fmt::Display for Backtrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.no_symbols {
            writeln!(f, "  (the program has no symbols: frames are addresses only)")?;
        }
        let mut number = 0;
        for frame in &self.frames {
            let inlined = if frame.inlined { " [inlined]" } else { "" };
            writeln!(f, "  #{number:<2} {:#x}{}{inlined}", frame.address, frame.describe())?;
            number += usize::from(!frame.inlined);
        }
        Ok(())
    }
}

/// Names `addresses` (the faulting `%rip` first, then return addresses).
pub(crate) fn name(space: &AddressSpace, addresses: &[u64]) -> Backtrace {
    let mut frames = Vec::new();
    for (i, &address) in addresses.iter().enumerate() {
        // A return address is just past its call: name the call.
        let probe = if i == 0 { address } else { address.wrapping_sub(1) };
        let program = space.object_at(probe);
        let object = program.map(|p| p.name().to_string()).filter(|n| !n.is_empty());
        let named = program.and_then(|p| Some(named(p, address, p.link_address(probe)?))).unwrap_or_default();
        match named.is_empty() {
            true => frames.push(Frame { address, function: None, location: None, inlined: false, object }),
            false => frames.extend(named.into_iter().map(|frame| Frame { object: object.clone(), ..frame })),
        }
    }
    Backtrace { frames, no_symbols: space.unnamed() }
}

/// The DWARF frames at `link` (innermost inlined function first), else its symbol.
fn named(program: &Program, address: u64, link: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    if let Some(dwarf) = program.dwarf() {
        if let Ok(mut iter) = dwarf.find_frames(link).skip_all_loads() {
            // Bounded: an inline chain is as deep as the DWARF nests it.
            while let Ok(Some(frame)) = iter.next() {
                if frames.len() == crate::MAX_FRAMES {
                    break;
                }
                let function = frame.function.as_ref().and_then(|f| f.demangle().ok()).map(|n| n.into_owned());
                let location = frame.location.as_ref().and_then(|l| Some(format!("{}:{}", l.file?, l.line?)));
                frames.push(Frame { address, function, location, inlined: true, object: None });
            }
        }
    }
    if let Some(last) = frames.last_mut() {
        last.inlined = false;
    }
    if frames.first().is_some_and(|f| f.function.is_some()) {
        return frames;
    }
    // No DWARF function here (a libc routine built without -g): the symbol table's name, keeping any line found.
    let location = frames.into_iter().find_map(|f| f.location);
    match program.symbol(link) {
        Some((symbol, start)) => {
            let offset = program.link_address(address).unwrap_or(link).wrapping_sub(start);
            let name = addr2line::demangle_auto(symbol.into(), None);
            let function = Some(if offset == 0 { name.into_owned() } else { format!("{name}+{offset:#x}") });
            vec![Frame { address, function, location, inlined: false, object: None }]
        }
        None if location.is_some() => vec![Frame { address, function: None, location, inlined: false, object: None }],
        None => Vec::new(),
    }
}
