//! The ways in and out of the library OS: `_start` (the VMM starts the vCPU here with %rdi = boot info and %rsp on a
//! library OS stack), the syscall entry that the program's syscall stubs call (and the page-0 trampoline jumps to, for
//! sites the VMM could not move to a stub), and the jump into the program.
//!
//! Syscall entry contract (the Linux x86-64 syscall ABI, reached by a `call` instead of `syscall`): %rax = number,
//! arguments in %rdi %rsi %rdx %r10 %r8 %r9, the return address on the program's stack. We return the result in %rax,
//! the return address in %rcx (as Linux's `syscall` leaves it there) and preserve every other register; flags are not
//! preserved (Linux's `syscall` restores them, but compilers treat an asm `syscall` as clobbering them).
//!
//! The return address is read off the program's stack on the way in and the way out is a `jmp`, not a `ret`: Linux's
//! `sysret` needs no stack, so programs may make syscalls while they have none (musl's detached threads unmap their
//! own stack and then call `exit`), and the way out must not read the program's stack either.

use core::arch::global_asm;

/// The program's registers at a syscall, as `kiln_syscall_entry` pushes them (the VMM reads them too, for debuggers:
/// the layout is `kiln-abi`'s). A new thread starts from a copy.
pub use kiln_abi::threads::SyscallFrame;

global_asm!(
    ".globl _start",
    "_start:",
    "    call {main}",
    "    ud2",
    "",
    // A secondary vCPU: %rdi = boot info, %rsi = its index, %rsp on its own boot stack.
    ".globl kiln_secondary_start",
    "kiln_secondary_start:",
    "    call {secondary}",
    "    ud2",
    "",
    // An unrewritten `syscall` on a host where it reaches CPL 0 (hardware KVM): the VMM's code at LSTAR put the
    // return address in this vCPU's area and came here at CPL 3 with the program's stack as it was. Nothing is pushed
    // on it, so the red zone of code made at run time stays intact; the frame reads as if a call had pushed it.
    ".globl kiln_unrewritten_syscall_entry",
    "kiln_unrewritten_syscall_entry:",
    "    lea rsp, [rsp - 8]",
    "    mov gs:[0], rsp",
    "    mov rcx, gs:[{unrewritten_return}]",
    "    jmp 5f",
    "",
    ".globl kiln_syscall_entry",
    "kiln_syscall_entry:",
    // Switch to the library OS stack; the program's stack may be a few KiB of goroutine stack.
    "    mov gs:[0], rsp",
    "    mov rcx, [rsp]",
    "5:",
    "    mov rsp, gs:[8]",
    "    push qword ptr gs:[0]",
    "    push 0",
    // The callee-saved registers are saved too (Rust would preserve them anyway) so that `clone` can give the new
    // thread the caller's registers.
    "    push r15",
    "    push r14",
    "    push r13",
    "    push r12",
    "    push rbp",
    "    push rbx",
    "    push rcx",
    "    push rcx",
    "    push r11",
    "    push r9",
    "    push r8",
    "    push r10",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push rax",
    "    cld",
    "    mov rdi, rsp",
    "    call {dispatch}",
    "kiln_syscall_return:",
    "    add rsp, 8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop r10",
    "    pop r8",
    "    pop r9",
    "    pop r11",
    // The resume address goes to this vCPU's slot, so that every register can be the program's when we jump.
    "    pop rcx",
    "    mov gs:[48], rcx",
    "    pop rcx",
    "    pop rbx",
    "    pop rbp",
    "    pop r12",
    "    pop r13",
    "    pop r14",
    "    pop r15",
    "    cmp qword ptr [rsp], 0",
    "    je 2f",
    "    popfq",
    "    jmp 3f",
    "2:",
    "    lea rsp, [rsp + 8]",
    "3:",
    "    pop rsp",
    "    lea rsp, [rsp + 8]",
    "    jmp qword ptr gs:[48]",
    "",
    // A new thread's first run: its kernel stack holds a `SyscallFrame` whose %rcx is where `clone` returns to and
    // whose user %rsp is one word below the stack `clone` was given; it returns 0 from `clone`.
    // The VMM resumes a vCPU here after the program faulted, with the fault in its `FaultRecord`: the program's
    // registers are in the record, none of them is needed here. The thread's library OS stack is empty (the program
    // was running), so a frame for the way out is built on it.
    ".globl kiln_fault_entry",
    "kiln_fault_entry:",
    "    mov rsp, gs:[8]",
    "    sub rsp, {frame_size}",
    "    cld",
    "    mov rdi, rsp",
    "    call {fault}",
    "    jmp kiln_syscall_return",
    "",
    ".globl kiln_thread_start",
    "kiln_thread_start:",
    "    xor eax, eax",
    "    jmp kiln_syscall_return",
    main = sym crate::kiln_main,
    secondary = sym crate::kiln_secondary_main,
    dispatch = sym crate::syscalls::dispatch,
    fault = sym crate::fault::entered,
    frame_size = const core::mem::size_of::<SyscallFrame>(),
    unrewritten_return = const kiln_abi::layout::PERCPU_UNREWRITTEN_RETURN,
);

/// Starts the program with Linux's initial register state: all zero but %rsp.
///
/// # Safety
/// `stack_pointer` must point at a valid initial stack (argc, argv, envp, auxv) and `entry` at the program's code.
pub unsafe fn enter_program(entry: u64, stack_pointer: u64) -> ! {
    // SAFETY: the caller vouches for the entry and stack; nothing of ours is used after the jump.
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "push {entry}",
            "xor eax, eax",
            "xor ebx, ebx",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor esi, esi",
            "xor edi, edi",
            "xor ebp, ebp",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "xor r10d, r10d",
            "xor r11d, r11d",
            "xor r12d, r12d",
            "xor r13d, r13d",
            "xor r14d, r14d",
            "xor r15d, r15d",
            "ret",
            sp = in(reg) stack_pointer,
            entry = in(reg) entry,
            options(noreturn)
        )
    }
}
