//! Per-vCPU state, reached through the GS base so that the syscall entry can find its stack without touching a
//! register the program owns.

use crate::cpu;
use crate::entry::SyscallFrame;
use core::cell::UnsafeCell;
use kiln_abi::layout::{direct_map, PAGE_SIZE};
use kiln_abi::BootInfo;

pub const MAX_CPUS: usize = 64;

/// The layout is shared with the assembly in `entry.rs`: keep the offsets in step.
#[repr(C)]
pub struct PerCpu {
    /// The program's %rsp at syscall entry (offset 0).
    pub user_rsp: u64,
    /// Top of the library OS stack the entry switches to: the running thread's (offset 8).
    pub kernel_stack_top: u64,
    /// Direct-map address of this vCPU's hypercall block.
    pub hypercall_block: u64,
    /// The registers of the syscall being handled (for `clone`).
    pub frame: u64,
    /// This vCPU's index, 0 for the boot vCPU.
    pub id: usize,
    /// Slot in the thread table of the thread this vCPU runs.
    pub thread: usize,
    /// Where the way out of the library OS jumps to (offset 48): written right before the jump.
    pub resume_rip: u64,
    /// Where an unrewritten `syscall` returns to, left here by the VMM's CPL 0 code at LSTAR (offset 56, hardware KVM
    /// only): `kiln_unrewritten_syscall_entry` reads it.
    pub unrewritten_return: u64,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, resume_rip) == 48);
const _: () =
    assert!(core::mem::offset_of!(PerCpu, unrewritten_return) as u64 == kiln_abi::layout::PERCPU_UNREWRITTEN_RETURN);

struct Slot(UnsafeCell<PerCpu>);
// SAFETY: each vCPU uses only its own slot (found through its own GS base).
unsafe impl Sync for Slot {}

static CPUS: [Slot; MAX_CPUS] = [const {
    Slot(UnsafeCell::new(PerCpu {
        user_rsp: 0,
        kernel_stack_top: 0,
        hypercall_block: 0,
        frame: 0,
        id: 0,
        thread: 0,
        resume_rip: 0,
        unrewritten_return: 0,
    }))
}; MAX_CPUS];

/// Sets up vCPU `id`'s slot and points its GS base at it. Each vCPU runs this once, first.
pub fn init(boot: &BootInfo, id: usize) {
    let slot = CPUS[id].0.get();
    // SAFETY: only vCPU `id` touches its slot, and it does nothing else yet.
    let cpu = unsafe { &mut *slot };
    cpu.id = id;
    let stack = boot.kernel_stack_phys + id as u64 * boot.kernel_stack_size;
    cpu.kernel_stack_top = direct_map(stack + boot.kernel_stack_size);
    cpu.hypercall_block = direct_map(boot.hypercall_block_phys + id as u64 * PAGE_SIZE);
    cpu::write_gs_base(slot as u64);
}

fn this() -> *mut PerCpu {
    cpu::read_gs_base() as *mut PerCpu
}

pub fn current() -> &'static PerCpu {
    // SAFETY: the GS base points at this vCPU's own slot, set by `init` before anything runs.
    unsafe { &*this() }
}

fn current_mut() -> &'static mut PerCpu {
    // SAFETY: as above; the fields are plain words and no reference to them is kept across calls.
    unsafe { &mut *this() }
}

pub fn id() -> usize {
    current().id
}

/// The stack the next syscall entry switches to: the running thread's.
pub fn set_kernel_stack_top(top: u64) {
    current_mut().kernel_stack_top = top;
}

pub fn set_thread(slot: usize) {
    current_mut().thread = slot;
}

pub fn set_syscall_frame(frame: &SyscallFrame) {
    current_mut().frame = frame as *const SyscallFrame as u64;
}

/// The registers of the syscall being handled on this vCPU.
pub fn syscall_frame() -> &'static SyscallFrame {
    // SAFETY: set by `dispatch` from the frame on the running thread's kernel stack, which outlives the syscall.
    unsafe { &*(current().frame as *const SyscallFrame) }
}
