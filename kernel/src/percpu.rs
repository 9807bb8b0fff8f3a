//! Per-vCPU state, reached through the GS base so that the syscall entry can find its stack without touching a
//! register the program owns.

use crate::cpu;
use crate::entry::SyscallFrame;
use core::cell::UnsafeCell;
use kiln_abi::layout::direct_map;
use kiln_abi::BootInfo;

/// The layout is shared with the assembly in `entry.rs`: keep the offsets in step.
#[repr(C)]
pub struct PerCpu {
    /// The program's %rsp at syscall entry (offset 0).
    pub user_rsp: u64,
    /// Top of the library OS stack the entry switches to (offset 8).
    pub kernel_stack_top: u64,
    /// Direct-map address of this vCPU's hypercall block.
    pub hypercall_block: u64,
    /// The registers of the syscall being handled (for `clone`).
    pub frame: u64,
}

struct Cpus(UnsafeCell<PerCpu>);
// SAFETY: one vCPU for now; each vCPU will own its own slot when more arrive.
unsafe impl Sync for Cpus {}

static BOOT_CPU: Cpus =
    Cpus(UnsafeCell::new(PerCpu { user_rsp: 0, kernel_stack_top: 0, hypercall_block: 0, frame: 0 }));

pub fn init(boot: &BootInfo) {
    // SAFETY: runs once, before anything else reads the per-CPU data.
    let cpu = unsafe { &mut *BOOT_CPU.0.get() };
    cpu.kernel_stack_top = direct_map(boot.kernel_stack_phys + boot.kernel_stack_size);
    cpu.hypercall_block = direct_map(boot.hypercall_block_phys);
    cpu::write_gs_base(BOOT_CPU.0.get() as u64);
}

pub fn current() -> &'static PerCpu {
    // SAFETY: initialised by `init` before the program runs; only read afterwards.
    unsafe { &*BOOT_CPU.0.get() }
}

fn current_mut() -> &'static mut PerCpu {
    // SAFETY: one vCPU; the fields are plain words and no reference to them is kept across calls.
    unsafe { &mut *BOOT_CPU.0.get() }
}

/// The stack the next syscall entry switches to: the running thread's.
pub fn set_kernel_stack_top(top: u64) {
    current_mut().kernel_stack_top = top;
}

pub fn set_syscall_frame(frame: &SyscallFrame) {
    current_mut().frame = frame as *const SyscallFrame as u64;
}

/// The registers of the syscall being handled on this vCPU.
pub fn syscall_frame() -> &'static SyscallFrame {
    // SAFETY: set by `dispatch` from the frame on the running thread's kernel stack, which outlives the syscall.
    unsafe { &*(current().frame as *const SyscallFrame) }
}
