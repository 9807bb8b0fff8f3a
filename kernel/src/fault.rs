//! The program's faults. Where the VMM can resume a vCPU after an exception (our hosts can: see the VMM's
//! `fault.rs`), it diagnoses the fault, writes a `FaultRecord` into the vCPU's hypercall block page and resumes the
//! vCPU at `kiln_fault_entry`, which calls [`entered`] on the running thread's library OS stack. A handler the
//! program installed for the signal runs as on Linux: the faulting instruction's registers in its `ucontext`,
//! `si_code` and `si_addr` in its `siginfo`, and returning from it resumes at that instruction with those registers
//! (as changed by the handler). Go turns a nil dereference into a panic this way, and Rust std prints "has overflowed
//! its stack". Without a handler the VM ends with the VMM's crash report.
//!
//! The VMM also comes here with a program it interrupted without a fault (`INTERRUPTED`, see the VMM's `preempt.rs`):
//! another vCPU made a signal pending for this thread, the host sent one, or the thread's time slice ended while
//! others wait for a vCPU (it yields to them first). The signals pending are delivered as at a syscall's exit, and
//! the program resumes with every register as it was.

use crate::entry::SyscallFrame;
use crate::mm::{protect, vma};
use crate::syscalls::signal::{self, Fault};
use crate::{hypercall, percpu};
use kiln_abi::hypercall::{FaultRecord, Hypercall, FAULT_RECORD_OFFSET, INTERRUPTED, RENEWED};
use kiln_abi::layout::page_align_down;

const SIGSEGV: u64 = 11;
const NSIG: u64 = 64;
const SEGV_MAPERR: i64 = 1;
const SEGV_ACCERR: i64 = 2;
/// No syscall is being made: nothing for SA_RESTART to restart.
const NO_SYSCALL: u64 = u64::MAX;

/// Called by `kiln_fault_entry` with room for the frame the way out restores; returns the program's %rax.
pub extern "C" fn entered(frame: &mut SyscallFrame) -> i64 {
    let at = percpu::current().hypercall_block + FAULT_RECORD_OFFSET;
    // SAFETY: the record lies in this vCPU's own hypercall block page, which the VMM filled before resuming us.
    let record: FaultRecord = unsafe { core::ptr::read_volatile(at as *const FaultRecord) };
    let r = record.regs;
    *frame = SyscallFrame {
        nr: NO_SYSCALL,
        args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
        r11: r.r11,
        rcx: r.rip,
        user_rcx: r.rcx,
        rbx: r.rbx,
        rbp: r.rbp,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rflags: r.rflags | 0x2,
        user_rsp: r.rsp.wrapping_sub(8),
    };
    percpu::set_syscall_frame(frame);
    if record.signal == INTERRUPTED {
        crate::sched::interrupted(record.code == RENEWED);
        // Another thread may have run meanwhile.
        percpu::set_syscall_frame(frame);
        return pending_signals(frame, r.rax as i64);
    }
    let fault =
        Fault { code: refine_code(&record) as i32, addr: record.addr, trapno: record.trapno, error: record.error };
    if (1..=NSIG).contains(&record.signal) {
        if let Some(rax) = signal::deliver_fault(frame, record.signal as u32, fault, r.rax) {
            // Signals pending meanwhile come first, as on Linux: their handler returns into the fault's.
            return pending_signals(frame, rax);
        }
    }
    hypercall::call(Hypercall::FaultUnhandled, &[]);
    loop {
        core::hint::spin_loop();
    }
}

/// What a syscall's exit does about signals, for a program about to resume with `frame` and %rax = `rax`: passes on
/// the host's and the timers', and delivers the first one pending for this thread.
fn pending_signals(frame: &mut SyscallFrame, rax: i64) -> i64 {
    signal::poll_host_signals();
    crate::timers::fire_due();
    match crate::sched::take_signal() {
        Some(sig) => signal::deliver(frame, sig, rax),
        None => rax,
    }
}

/// The VMM sees only the page tables, where memory the program reserved without access has no page: Linux calls a
/// fault there SEGV_ACCERR (mapped, not accessible), as it does for PROT_NONE pages.
fn refine_code(record: &FaultRecord) -> i64 {
    let page = page_align_down(record.addr);
    let mapped = protect::leaf(page).is_some() || vma::owns(page);
    if record.signal == SIGSEGV && record.code == SEGV_MAPERR && mapped {
        SEGV_ACCERR
    } else {
        record.code
    }
}
