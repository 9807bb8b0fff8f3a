//! Crash backtraces for `kiln run`: the VMM copies the crashed thread's registers and stack
//! (`kiln_vmm::crash_stack`); this crate unwinds that copy with the program's `.eh_frame` (frame pointers where no
//! call-frame information covers an address) and names each frame from the program's own ELF, read on the host:
//! DWARF line information when it has some, its symbol table otherwise, Rust and C++ names demangled. The parsing is
//! the `object`, `gimli` and `addr2line` crates'; what is here is the walk and the wording.

mod program;
mod prologue;
mod report;
mod stack;
mod unwind;

pub use program::{AddressSpace, Program, ProgramError};
pub use report::{Backtrace, Frame};
pub use stack::{Registers, StackCopy};
pub use unwind::MAX_FRAMES;

/// The backtrace of the thread whose `registers` and `stack` these are, in the objects of `space`.
pub fn backtrace(space: &AddressSpace, registers: Registers, stack: &StackCopy) -> Backtrace {
    let addresses = unwind::walk(space, registers, stack);
    report::name(space, &addresses)
}
