//! The context switch between two threads that are both inside the library OS: only the callee-saved registers and
//! the stack pointer change hands; everything else is on the threads' own kernel stacks.

use core::arch::global_asm;

global_asm!(
    ".globl kiln_switch_stacks",
    "kiln_switch_stacks:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
);

extern "C" {
    /// Saves the current stack pointer in `*save` and continues on the stack `load`, which was saved by an earlier
    /// switch (or prepared by [`initial_stack`]).
    pub fn kiln_switch_stacks(save: *mut u64, load: u64);
}

/// Words `kiln_switch_stacks` pops before it returns: six registers, then the return address.
pub const SWITCH_FRAME_WORDS: usize = 7;
