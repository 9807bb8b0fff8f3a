//! Hypercalls: the library OS fills the calling vCPU's [`HypercallBlock`] and executes `out %eax, %dx` with `%dx` =
//! [`HYPERCALL_PORT`] and `%eax` = a [`Hypercall`] number. The VMM handles it, writes `ret` and resumes the vCPU: one VM
//! exit per hypercall. Every address in a block is guest-physical and is checked by the VMM.

/// I/O port of the hypercall `out` (32 bits wide: it covers four ports in the TSS I/O bitmap).
pub const HYPERCALL_PORT: u16 = 0x4b0;

/// Most bytes one `Write` hypercall moves; the library OS reports a short write beyond it, as Linux may.
pub const MAX_WRITE_BYTES: u64 = 1 << 20;
/// Most segments one `Write` hypercall may name.
pub const MAX_IO_SEGMENTS: u64 = 256;
/// Syscall numbers counted one by one in [`SyscallStats`]; higher numbers share the last slot.
pub const SYSCALL_SLOTS: usize = 512;
/// A `Wait` this long has no deadline: the vCPU sleeps until kicked (another vCPU's `Kick`, a frame from the network,
/// a host signal, the end of the VM). An idle VM then costs the host no CPU at all.
pub const WAIT_FOREVER: u64 = u64::MAX;
/// How long a thread runs while others wait for a vCPU before it makes room for them (the order of Linux CFS's
/// slices): the library OS asks for it, and the VMM renews a vCPU's deadline by it (see [`Hypercall::Preempt`]).
pub const TIME_SLICE_NS: u64 = 10_000_000;
/// An [`INTERRUPTED`] record's `code`: the vCPU's deadline had passed and is now a slice later.
pub const RENEWED: i64 = 1;
/// Longest message of a `Panic` hypercall the VMM reads.
pub const MAX_PANIC_MESSAGE: u64 = 4096;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// args: fd (1 = stdout, 2 = stderr), guest-physical address of an [`IoSegment`] array, segment count.
    /// ret: bytes written or a negative errno.
    Write = 1,
    /// args: exit code, the number of the signal that killed the program (0 for a normal exit), and
    /// [`EXIT_RAISED`] when a signal whose default action dumps core (SIGABRT from `abort()`, SIGQUIT, ...) ended
    /// it: the vCPU's [`FaultRecord`] then holds that signal and the registers of the thread that raised or took it,
    /// for the crash report. Does not return.
    Exit = 2,
    /// args: guest-physical address of a [`TraceRecord`]. Sent after each syscall when tracing is on.
    Trace = 3,
    /// args: guest-physical address and length of a UTF-8 message. The library OS hit a bug. Does not return.
    Panic = 4,
    /// args: nanoseconds to wait ([`WAIT_FOREVER`]: no deadline), and nanoseconds (0: none) after the wait ends at
    /// which to interrupt the vCPU as a [`Hypercall::Preempt`] for it asked for then would (its next `Wait` forgets
    /// it). The vCPU has nothing to run until then: the VMM
    /// sleeps it without burning host CPU, until the time passes or something kicks it. Before it does, it sends the frames queued on the network card (the library OS
    /// counts on this instead of notifying the card for them). ret: 0.
    Wait = 5,
    /// args: how many threads there are, and the guest-physical address and length (at most [`MAX_PANIC_MESSAGE`])
    /// of a UTF-8 line saying what each waits on. Every one of them waits (on a futex, without a deadline) and
    /// nothing can wake any: the program is deadlocked. Does not return.
    Deadlock = 6,
    /// args: a vCPU index. That vCPU has work: end its `Wait` now, or skip its next one. ret: 0.
    Kick = 7,
    /// The library OS changed page-table entries that were present (mprotect): before this returns, every vCPU has
    /// dropped the translations it cached, so that none uses the old permissions. ret: 0.
    FlushTlb = 8,
    /// The program's fault in the vCPU's [`FaultRecord`] cannot go to a handler (none installed, or the signal is
    /// blocked or ignored): the program dies of it, with the crash report the VMM made. Does not return.
    FaultUnhandled = 9,
    /// args: guest-physical address of an [`IoSegment`] array, segment count (at most [`MAX_IO_SEGMENTS`]). The
    /// library OS no longer uses these page-aligned ranges: the host drops their pages, which read as zero from then
    /// on and cost the host nothing until written again. ret: 0, or -EINVAL for a range that is not page-aligned
    /// guest RAM (nothing is dropped then).
    Discard = 10,
    /// args: a mask of vCPUs, and nanoseconds from now (0: now). Once that time has passed, the VMM interrupts each
    /// of them in the program's code and resumes it at `kiln_fault_entry` with a [`FaultRecord`] whose signal is
    /// [`INTERRUPTED`]. Now: the library OS made a signal pending for the thread one runs (a vCPU in the library OS
    /// needs nothing then: it looks at its signals before it returns to the program). Later: the end of a time slice,
    /// which is kept (the sooner of two) until the vCPU is interrupted in the program's code, then renewed a slice
    /// ([`TIME_SLICE_NS`]) on, which the record's `code` says ([`RENEWED`]), until the vCPU makes a `Wait` or the
    /// library OS replaces it: with a third argument of 1 the deadline becomes the one given ([`WAIT_FOREVER`]: none)
    /// whatever it was. So a slice that ends while others still wait costs the one exit that interrupts it. ret: 0.
    Preempt = 11,
    /// args: guest-physical address of an [`IoSegment`] array, segment count (at most [`MAX_IO_SEGMENTS`], and at
    /// most [`MAX_WRITE_BYTES`] in all). Takes what has come on the program's stdin (see
    /// [`crate::boot::HOST_STDIN_STATE`]) into those ranges. ret: bytes read; 0 at its end (or with no stdin);
    /// -EAGAIN when nothing has come yet.
    ReadStdin = 12,
    /// args: a terminal ioctl's request (TCGETS, TCSETS, TCSETSW, TCSETSF or TIOCGWINSZ) and the guest-physical
    /// address of its argument (a [`TERMINAL_ARG_BYTES`]-byte buffer that does not cross a page: the kernel's termios
    /// or a winsize), for the program's terminal (see [`crate::boot::HOST_TERMINAL`]). ret: 0 or a negative errno
    /// (-ENOTTY without a terminal, -EINVAL for another request).
    Terminal = 13,
    /// args: a TCP port the program now listens on (on all addresses or the VM's own; not the loopback's). Sent only
    /// where the boot info says [`crate::boot::BOOT_FLAG_POD_NETWORK`]: the VMM publishes the port in the pod's
    /// network namespace, where the pod's other containers, the pod's address and `kubectl port-forward` reach it.
    /// ret: 0 (also when the port is published already by this VM), -EADDRINUSE when another container of the pod
    /// has it, another negative errno when the host refused it (-ENOSYS without a pod network).
    Listen = 14,
}

/// The buffer a [`Hypercall::Terminal`] names: room for the kernel's termios (36 bytes) or a winsize (8).
pub const TERMINAL_ARG_BYTES: u64 = 64;
/// Bytes of the kernel's `struct termios` (TCGETS, TCSETS*) and of `struct winsize` (TIOCGWINSZ), x86-64.
pub const TERMIOS_BYTES: u64 = 36;
pub const WINSIZE_BYTES: u64 = 8;
/// The terminal ioctls' numbers (asm-generic/ioctls.h).
pub const TCGETS: u64 = 0x5401;
pub const TCSETS: u64 = 0x5402;
pub const TCSETSW: u64 = 0x5403;
pub const TCSETSF: u64 = 0x5404;
pub const TIOCGWINSZ: u64 = 0x5413;
/// Bytes the argument of terminal ioctl `request` has; None for a request the hypercall does not pass on.
pub fn terminal_arg_bytes(request: u64) -> Option<u64> {
    match request {
        TCGETS | TCSETS | TCSETSW | TCSETSF => Some(TERMIOS_BYTES),
        TIOCGWINSZ => Some(WINSIZE_BYTES),
        _ => None,
    }
}

/// Whether terminal ioctl `request` reads the terminal (the VMM writes its argument) rather than sets it.
pub fn terminal_request_reads(request: u64) -> bool {
    matches!(request, TCGETS | TIOCGWINSZ)
}

#[cfg(test)]
mod terminal_tests {
    #[test]
    fn terminal_arguments_fit_the_buffer() {
        for request in [super::TCGETS, super::TCSETS, super::TCSETSW, super::TCSETSF, super::TIOCGWINSZ] {
            assert!(super::terminal_arg_bytes(request).is_some_and(|n| n <= super::TERMINAL_ARG_BYTES));
        }
        assert_eq!(super::terminal_arg_bytes(0x540f), None, "TIOCGPGRP is not passed on");
    }
}

impl Hypercall {
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            1 => Self::Write,
            2 => Self::Exit,
            3 => Self::Trace,
            4 => Self::Panic,
            5 => Self::Wait,
            6 => Self::Deadlock,
            7 => Self::Kick,
            8 => Self::FlushTlb,
            9 => Self::FaultUnhandled,
            10 => Self::Discard,
            11 => Self::Preempt,
            12 => Self::ReadStdin,
            13 => Self::Terminal,
            14 => Self::Listen,
            _ => return None,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HypercallBlock {
    pub args: [u64; 6],
    pub ret: i64,
}

/// Where in a vCPU's hypercall block page the VMM writes the [`FaultRecord`] of the program's fault before it
/// resumes the vCPU at the library OS's `kiln_fault_entry`.
pub const FAULT_RECORD_OFFSET: u64 = 512;

/// [`Hypercall::Exit`]'s third argument when the vCPU's [`FaultRecord`] describes the signal that ended the program.
pub const EXIT_RAISED: u64 = 1;

/// [`FaultRecord::signal`] of a program that did not fault but was interrupted (see [`Hypercall::Preempt`]): the
/// registers are those of the instruction it resumes at, and the library OS delivers its pending signals.
pub const INTERRUPTED: u64 = 0;

/// A fault (exception) of the program, as the VMM diagnosed it, and the registers at the faulting instruction; or,
/// with signal [`INTERRUPTED`], the registers of a program the VMM interrupted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRecord {
    pub signal: u64,
    /// `si_code` as Linux sets it (SEGV_MAPERR, SEGV_ACCERR, ILL_ILLOPN, FPE_INTDIV, SI_KERNEL).
    pub code: i64,
    /// `si_addr`: the address accessed for SIGSEGV, the instruction's for the others.
    pub addr: u64,
    /// The x86 exception vector (14 for a page fault) and its error code, as `ucontext`'s `trapno` and `err`.
    pub trapno: u64,
    pub error: u64,
    pub regs: FaultRegs,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A guest-physical byte range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoSegment {
    pub phys: u64,
    pub len: u64,
}

/// One finished syscall, as `--trace-syscalls` prints it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceRecord {
    pub nr: u64,
    pub args: [u64; 6],
    pub ret: i64,
}

/// Per-number syscall counters kept by the library OS at its symbol `KILN_SYSCALL_STATS`, read by the VMM when the
/// program has ended, however it ended.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStats {
    pub calls: [u32; SYSCALL_SLOTS],
    pub enosys: [u32; SYSCALL_SLOTS],
}

impl SyscallStats {
    pub const fn new() -> Self {
        Self { calls: [0; SYSCALL_SLOTS], enosys: [0; SYSCALL_SLOTS] }
    }

    pub fn slot(nr: u64) -> usize {
        (nr as usize).min(SYSCALL_SLOTS - 1)
    }
}

impl Default for SyscallStats {
    fn default() -> Self {
        Self::new()
    }
}
