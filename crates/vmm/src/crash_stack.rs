//! What a crash report keeps of the crashed thread for its backtrace: the registers an unwinder starts from and a
//! copy of the stack above `%rsp`, read through the guest's page tables while the VM still exists. The host unwinds
//! and names the frames later from the program's ELF (`kiln-symbolize`); the VMM only copies bytes, bounded.

use crate::memory::GuestRam;
use crate::user_memory;

/// At most this much stack is copied: deep enough for a few dozen ordinary frames, small enough to copy at every
/// crash without notice.
pub const MAX_STACK_COPY: u64 = 256 * 1024;

/// The crashed thread's unwinding state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashStack {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// The guest's bytes from `rsp` up, as far as consecutive user-readable pages go (at most [`MAX_STACK_COPY`]).
    pub bytes: Vec<u8>,
}

/// Copies the stack of a thread stopped at `rip` with `rsp` and `rbp`, in the address space rooted at `pml4`. It
/// stops at the first page that is unmapped, not user-accessible or outside RAM: a hostile or broken `%rsp` gives a
/// short (or empty) copy, never an error.
pub fn capture(ram: &GuestRam, pml4: u64, rip: u64, rsp: u64, rbp: u64) -> CrashStack {
    CrashStack { rip, rsp, rbp, bytes: user_memory::read(ram, pml4, rsp, MAX_STACK_COPY as usize) }
}
