//! How the VMM finds the program's threads and their saved registers in guest memory, for debuggers and crash
//! reports (`crates/vmm/src/guest_threads.rs`): the library OS publishes where its thread table lies and how a slot
//! is laid out ([`ThreadTable`], at its exported `KILN_THREAD_TABLE`), and every thread that is not running the
//! program's code has the program's registers in a [`SyscallFrame`] at the top of its library OS stack.
//!
//! The VMM reads all this only while no vCPU runs; the guest is hostile, so every value is bounded there.

/// The program's registers as `kiln_syscall_entry` (and `kiln_fault_entry`) save them, at
/// `kernel_stack_top - size_of::<SyscallFrame>()` of the thread. A new thread starts from a copy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallFrame {
    /// The syscall number (`u64::MAX` when the library OS was entered by a fault or an interruption, not a syscall).
    pub nr: u64,
    /// %rdi %rsi %rdx %r10 %r8 %r9.
    pub args: [u64; 6],
    pub r11: u64,
    /// Where the program resumes: the return address for a syscall.
    pub rcx: u64,
    /// The program's %rcx when it resumes: for a syscall, the return address too, as Linux's `syscall` leaves it.
    pub user_rcx: u64,
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// RFLAGS to resume with, or 0 to leave the flags as they are (a syscall: Linux programs treat the flags as
    /// clobbered). Set only when resuming from a fault's signal handler, whose context holds the flags.
    pub rflags: u64,
    /// The program's %rsp at the entry: it points at the return address the site's `call` pushed (which is also in
    /// `rcx`); the syscall returns with %rsp 8 bytes above it.
    pub user_rsp: u64,
}

/// [`ThreadTable::magic`]: this layout, version 1.
pub const THREAD_TABLE_MAGIC: u64 = 0x6b69_6c6e_7468_7201;

/// A thread slot's state byte ([`ThreadTable::state_offset`]).
pub const THREAD_FREE: u8 = 0;
pub const THREAD_RUNNABLE: u8 = 1;
pub const THREAD_RUNNING: u8 = 2;
pub const THREAD_BLOCKED: u8 = 3;

/// Where the library OS's thread slots are and what the VMM may read of each. Offsets are within a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTable {
    /// [`THREAD_TABLE_MAGIC`] once the table is set up; 0 before.
    pub magic: u64,
    /// Guest-virtual (direct-map) address of slot 0, and how many slots there are.
    pub slots: u64,
    pub len: u64,
    /// Bytes from one slot to the next.
    pub stride: u64,
    /// `u32` thread id.
    pub tid_offset: u64,
    /// `u8` state: `THREAD_*`.
    pub state_offset: u64,
    /// `u64`: the vCPU a running thread runs on.
    pub cpu_offset: u64,
    /// `u64`: the top of the thread's library OS stack; its [`SyscallFrame`] lies just below.
    pub kernel_stack_top_offset: u64,
    /// `u64`: the thread's FS base while it does not run (a running thread's is its vCPU's).
    pub fs_base_offset: u64,
    /// `[u8; 16]`: its name (`prctl(PR_SET_NAME)`), NUL-padded.
    pub name_offset: u64,
}
