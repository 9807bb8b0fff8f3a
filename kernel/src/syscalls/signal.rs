//! Signals. Dispositions are process-wide; the blocked mask, pending set and alternate stack are per thread. A signal
//! sent to a thread that has a handler for it is marked pending (waking the thread from a blocking syscall with
//! EINTR) and delivered when that thread next leaves a syscall: `deliver` builds Linux's x86-64 signal frame on its
//! stack (or alternate stack) and the syscall "returns" into the handler; `rt_sigreturn` restores what the frame
//! saved. Default actions end the program (128 + n) or are ignored. A thread computing on another vCPU is interrupted
//! there by the VMM (`sched::post_signal`, `crate::fault`) and takes its signal at once. A fault goes to the
//! program's handler when the VMM can resume the vCPU after it (`crate::fault`); without a handler the VM ends with
//! the VMM's crash report.

use super::{Args, PID};
use crate::entry::SyscallFrame;
use crate::errno::{Errno, SysResult};
use crate::sync::{SpinGuard, SpinLock};
use crate::{hypercall, percpu, sched, user};
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::hypercall::FaultRegs;

const NSIG: u64 = 64;
const SIGKILL: u64 = 9;
const SIGSTOP: u64 = 19;
const SIGCHLD: u64 = 17;
const SIGCONT: u64 = 18;
const SIGURG: u64 = 23;
const SIGWINCH: u64 = 28;
pub const SIGPIPE: u64 = 13;
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
/// The main thread's id (also the process id).
const MAIN_TID: u32 = 1;
const SIG_BLOCK: u64 = 0;
const SIG_UNBLOCK: u64 = 1;
const SIG_SETMASK: u64 = 2;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_RESTART: u64 = 0x1000_0000;
/// Syscalls a handler with SA_RESTART resumes rather than failing with EINTR (read, write, readv, writev, futex);
/// as on Linux, sleeps and poll/select/epoll waits are never restarted.
const RESTARTABLE: [u64; 5] = [0, 1, 19, 20, 202];
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const SI_USER: i32 = 0;
const SI_TKILL: i32 = -6;
const UNBLOCKABLE: u64 = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1));

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SigAction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct StackT {
    pub sp: u64,
    pub flags: i32,
    pub _pad: i32,
    pub size: u64,
}

pub const SS_ONSTACK: i32 = 1;
pub const SS_DISABLE: i32 = 2;

/// Who sent a signal, as its `siginfo` tells it: the `si_code` (SI_USER for kill, SI_TKILL for tkill/tgkill,
/// SI_TIMER, SI_KERNEL), and for a POSIX timer's signal the timer's id, overrun and `sigev_value` (glibc's SIGEV_THREAD
/// timers find their timer through it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub code: i32,
    pub timer: Option<TimerInfo>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TimerInfo {
    pub id: i32,
    pub overrun: i32,
    pub value: u64,
}

impl Origin {
    pub const fn sent(code: i32) -> Origin {
        Origin { code, timer: None }
    }

    /// The `siginfo_t` of signal `sig` sent this way: number, code, then the sender (pid, uid 0) or the timer.
    fn siginfo(&self, sig: u32) -> [u8; 128] {
        let mut info = [0u8; 128];
        info[..4].copy_from_slice(&(sig as i32).to_le_bytes());
        info[8..12].copy_from_slice(&self.code.to_le_bytes());
        match self.timer {
            None => info[16..20].copy_from_slice(&(PID as i32).to_le_bytes()),
            Some(t) => {
                info[16..20].copy_from_slice(&t.id.to_le_bytes());
                info[20..24].copy_from_slice(&t.overrun.to_le_bytes());
                info[24..32].copy_from_slice(&t.value.to_le_bytes());
            }
        }
        info
    }
}

struct State {
    actions: [SigAction; NSIG as usize],
    /// Who sent each signal last.
    origins: [Origin; NSIG as usize],
}

static SIGNALS: SpinLock<State> = SpinLock::new(State {
    actions: [SigAction { handler: 0, flags: 0, restorer: 0, mask: 0 }; NSIG as usize],
    origins: [Origin::sent(SI_USER); NSIG as usize],
});

fn state() -> SpinGuard<'static, State> {
    SIGNALS.lock()
}

/// The signals the program ignores and those it catches, as masks (bit `n - 1` for signal `n`), for `/proc`.
pub fn ignored_and_caught() -> (u64, u64) {
    let s = state();
    s.actions.iter().enumerate().fold((0, 0), |(ignored, caught), (slot, action)| match action.handler {
        SIG_IGN => (ignored | 1 << slot, caught),
        0 => (ignored, caught),
        _ => (ignored, caught | 1 << slot),
    })
}

pub fn rt_sigaction(a: &Args) -> SysResult {
    let (sig, new, old, size) = (a[0], a[1], a[2], a[3]);
    if sig == 0 || sig > NSIG || size != 8 {
        return Err(Errno::EINVAL);
    }
    let mut s = state();
    let slot = (sig - 1) as usize;
    let previous = s.actions[slot];
    if new != 0 {
        if sig == SIGKILL || sig == SIGSTOP {
            return Err(Errno::EINVAL);
        }
        s.actions[slot] = user::read(new)?;
    }
    if old != 0 {
        user::write(old, previous)?;
    }
    Ok(0)
}

pub fn rt_sigprocmask(a: &Args) -> SysResult {
    let (how, new, old, size) = (a[0], a[1], a[2], a[3]);
    if size != 8 {
        return Err(Errno::EINVAL);
    }
    let previous = sched::blocked_signals();
    if new != 0 {
        let set: u64 = user::read(new)?;
        let mask = match how {
            SIG_BLOCK => previous | set,
            SIG_UNBLOCK => previous & !set,
            SIG_SETMASK => set,
            _ => return Err(Errno::EINVAL),
        };
        sched::set_blocked_signals(mask & !UNBLOCKABLE);
    }
    if old != 0 {
        user::write(old, previous)?;
    }
    Ok(0)
}

/// rt_sigpending: the signals sent to this thread and not yet delivered (those it blocks).
pub fn rt_sigpending(a: &Args) -> SysResult {
    if a[1] != 8 {
        return Err(Errno::EINVAL);
    }
    user::write(a[0], sched::pending_signals()).map(|()| 0)
}

/// Linux's MINSIGSTKSZ on x86-64: a smaller alternate stack is ENOMEM.
const MINSIGSTKSZ: u64 = 2048;

/// Whether `sp` is on the alternate stack `alt` (which grows down: its top is in, its bottom is not).
fn on_stack(alt: &StackT, sp: u64) -> bool {
    alt.flags & SS_DISABLE == 0 && sp > alt.sp && sp - alt.sp <= alt.size
}

/// As Linux: the old stack's flags say SS_ONSTACK while the caller runs on it, and a change is EPERM then.
pub fn sigaltstack(a: &Args) -> SysResult {
    let (new, old) = (a[0], a[1]);
    let previous = sched::altstack();
    // The program's %rsp before the `call` that made this syscall pushed its return address.
    let sp = crate::percpu::syscall_frame().user_rsp + 8;
    let onstack = on_stack(&previous, sp);
    if new != 0 {
        let stack: StackT = user::read(new)?;
        if onstack {
            return Err(Errno::EPERM);
        }
        // SS_ONSTACK is taken as 0, as Linux does for old programs; SS_AUTODISARM is not supported (EINVAL).
        let stack = match stack.flags {
            SS_DISABLE => StackT { sp: 0, size: 0, flags: SS_DISABLE, _pad: 0 },
            0 | SS_ONSTACK if stack.size < MINSIGSTKSZ => return Err(Errno::ENOMEM),
            0 | SS_ONSTACK => StackT { flags: 0, _pad: 0, ..stack },
            _ => return Err(Errno::EINVAL),
        };
        sched::set_altstack(stack);
    }
    if old != 0 {
        let flags = if previous.flags & SS_DISABLE != 0 {
            SS_DISABLE
        } else if onstack {
            SS_ONSTACK
        } else {
            0
        };
        user::write(old, StackT { flags, ..previous })?;
    }
    Ok(0)
}

/// What sending `sig` to thread `tid` (None: the current one) does now: the default action, nothing, or pending it
/// for delivery. `raiser` is the syscall frame of the program's thread that sends it (kill, tkill, tgkill), whose
/// registers a crash report shows if the signal ends the program now.
fn send(tid: Option<u32>, sig: u64, origin: Origin, raiser: Option<&SyscallFrame>) -> SysResult {
    if sig > NSIG {
        return Err(Errno::EINVAL);
    }
    if sig == 0 {
        // Only whether the thread exists (as Linux: ESRCH for one that has exited).
        return match tid {
            Some(t) if !sched::thread_exists(t) => Err(Errno::ESRCH),
            _ => Ok(0),
        };
    }
    let action = {
        let mut s = state();
        s.origins[(sig - 1) as usize] = origin;
        s.actions[(sig - 1) as usize]
    };
    // A signal for the whole process goes first to a thread waiting for it in sigwait.
    let tid = match tid {
        Some(MAIN_TID) if origin.code != SI_TKILL => sched::sigwaiter_for(sig as u32).or(tid),
        other => other,
    };
    // A blocked signal waits, even one whose default action ends the program: sigwait may take it.
    let held = match tid {
        Some(t) => sched::blocks(t, sig as u32) || sched::sigwaiter_for(sig as u32) == Some(t),
        None => false,
    };
    match action.handler {
        SIG_IGN => Ok(0),
        SIG_DFL if default_is_ignore(sig) => Ok(0),
        SIG_DFL if held => Ok(u64::from(sched::post_signal(tid, sig as u32))),
        SIG_DFL => die(sig, raiser.map(|frame| (frame, frame.nr))),
        _ if sched::post_signal(tid, sig as u32) => Ok(0),
        // A signal for the process goes to its main thread while that lives (as Linux prefers), else to the caller.
        _ if tid == Some(MAIN_TID) && origin.code == SI_USER => Ok(u64::from(sched::post_signal(None, sig as u32))),
        _ => Err(Errno::ESRCH),
    }
}

fn default_is_ignore(sig: u64) -> bool {
    matches!(sig, SIGCHLD | SIGCONT | SIGURG | SIGWINCH)
}

/// Signals whose default action dumps core on Linux (SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV,
/// SIGXCPU, SIGXFSZ, SIGSYS): the program crashed, and the VMM reports it as a crash, with a backtrace.
fn dumps_core(sig: u64) -> bool {
    // SIGQUIT ..= SIGFPE are 3, 4, 5, 6, 7, 8.
    matches!(sig, 3..=8 | 11 | 24 | 25 | 31)
}

/// The default action of `sig` ends the program. `thread` is the frame of the thread that raised or takes it, and
/// its %rax there: for a signal that dumps core the VMM's crash report shows that thread at that point (`abort()` in
/// its `raise`).
fn die(sig: u64, thread: Option<(&SyscallFrame, u64)>) -> ! {
    match thread {
        Some((frame, rax)) if dumps_core(sig) => hypercall::exit_dumping_core(sig, registers(frame, rax)),
        _ => hypercall::exit(128 + sig, sig),
    }
}

/// The program's registers as it resumes from `frame` with %rax = `rax`; the flags are the program's only after a
/// fault (a syscall keeps none).
fn registers(frame: &SyscallFrame, rax: u64) -> FaultRegs {
    let [rdi, rsi, rdx, r10, r8, r9] = frame.args;
    FaultRegs {
        rax,
        rbx: frame.rbx,
        rcx: frame.user_rcx,
        rdx,
        rsi,
        rdi,
        rbp: frame.rbp,
        rsp: frame.user_rsp.wrapping_add(8),
        r8,
        r9,
        r10,
        r11: frame.r11,
        r12: frame.r12,
        r13: frame.r13,
        r14: frame.r14,
        r15: frame.r15,
        rip: frame.rcx,
        rflags: if frame.rflags != 0 { frame.rflags } else { 0x202 },
    }
}

/// A timer's signal: to thread `thread`, or to the process.
pub fn raise(sig: u32, thread: Option<u32>, origin: Origin) {
    let _ = send(Some(thread.unwrap_or(MAIN_TID)), u64::from(sig), origin, None);
}

/// A signal the library OS raises in the current thread (SIGPIPE after a write to a closed pipe).
pub fn send_to_self(sig: u64) -> SysResult {
    send(None, sig, Origin::sent(SI_USER), None)
}

/// A signal for the whole process (kill, with the sending thread's frame; the host).
fn send_to_process(sig: u64, raiser: Option<&SyscallFrame>) -> SysResult {
    send(Some(MAIN_TID), sig, Origin::sent(SI_USER), raiser).map(|_| 0)
}

pub fn kill(a: &Args) -> SysResult {
    match a[0] as i64 {
        0 | -1 => send_to_process(a[1], Some(percpu::syscall_frame())),
        pid if pid as u64 == PID => send_to_process(a[1], Some(percpu::syscall_frame())),
        _ => Err(Errno::ESRCH),
    }
}

pub fn tkill(a: &Args) -> SysResult {
    let tid = u32::try_from(a[0]).map_err(|_| Errno::ESRCH)?;
    send(Some(tid), a[1], Origin::sent(SI_TKILL), Some(percpu::syscall_frame()))
}

pub fn tgkill(a: &Args) -> SysResult {
    if a[0] != PID {
        return Err(Errno::ESRCH);
    }
    let tid = u32::try_from(a[1]).map_err(|_| Errno::ESRCH)?;
    send(Some(tid), a[2], Origin::sent(SI_TKILL), Some(percpu::syscall_frame()))
}

// The x86-64 signal frame, as Linux lays it out: the handler's return address (the restorer), a `ucontext`, a
// `siginfo`; the FPU state sits below it, pointed to from the `ucontext`: the XSAVE area where the VMM enabled XSAVE
// (its software-reserved bytes saying so, `FP_XSTATE_MAGIC1`, and `FP_XSTATE_MAGIC2` after it, with `UC_FP_XSTATE`
// in the `ucontext`'s flags), else the 512 bytes of `fxsave`.
const UC: u64 = 8;
const UC_STACK: u64 = UC + 16;
const UC_MCONTEXT: u64 = UC + 40;
const UC_SIGMASK: u64 = UC_MCONTEXT + 256;
const INFO: u64 = UC_SIGMASK + 8;
const FRAME_SIZE: u64 = INFO + 128;
/// `_fpx_sw_bytes` in the legacy region's software-reserved bytes: magic1, the extended size (the area and magic2),
/// the components, the area's size.
const SW_BYTES: u64 = 464;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UC_FP_XSTATE: u64 = 1;
const RED_ZONE: u64 = 128;
/// CF, PF, AF, ZF, SF, DF, OF.
const RESTORED_FLAGS: u64 = 0xcd5;

/// What the handler's `siginfo` says beyond the signal number: who sent it, or which fault raised it.
#[derive(Clone, Copy)]
enum Cause {
    /// kill, tkill, tgkill, or the library OS (SIGPIPE): the `si_code` of the send.
    Sent(Origin),
    Fault(Fault),
}

/// A fault of the program's, as `crate::fault` hands it over.
#[derive(Clone, Copy)]
pub struct Fault {
    pub code: i32,
    pub addr: u64,
    pub trapno: u64,
    pub error: u64,
}

/// Registers in `struct sigcontext` order, then err, trapno, oldmask, cr2.
fn gregs(f: &SyscallFrame, rax: u64, rip: u64, rsp: u64, cause: Cause) -> [u64; 23] {
    let [rdi, rsi, rdx, r10, r8, r9] = f.args;
    let eflags = if f.rflags != 0 { f.rflags } else { 0x2 };
    let (error, trapno, cr2) = match cause {
        Cause::Fault(fault) => (fault.error, fault.trapno, fault.addr),
        Cause::Sent(_) => (0, 0, 0),
    };
    [
        r8, r9, r10, f.r11, f.r12, f.r13, f.r14, f.r15, rdi, rsi, f.rbp, f.rbx, rdx, rax, f.user_rcx, rsp, rip, eflags,
        0x2b_0033, error, trapno, 0, cr2,
    ]
}

/// Delivers the current thread's pending signal `sig` as it leaves a syscall whose result is `ret`: builds the frame
/// and points `frame` at the handler. Returns what the program's %rax should be now.
pub fn deliver(frame: &mut SyscallFrame, sig: u32, ret: i64) -> i64 {
    host_signal_taken(u64::from(sig));
    let (action, origin) = take_action(sig);
    match action.handler {
        SIG_IGN => return ret,
        SIG_DFL if default_is_ignore(u64::from(sig)) => return ret,
        SIG_DFL => die(u64::from(sig), Some((frame, ret as u64))),
        _ if action.flags & SA_RESTORER == 0 => die(u64::from(sig), Some((frame, ret as u64))),
        _ => {}
    }
    let (mut rip, rsp) = (frame.rcx, frame.user_rsp + 8);
    // SA_RESTART: once the handler returns, the syscall runs again: the saved state points back at the site (or at
    // the call that made it, in its stub or in place), with the syscall number in %rax.
    let mut ret = ret;
    if ret == -Errno::EINTR.0 && action.flags & SA_RESTART != 0 && RESTARTABLE.contains(&frame.nr) {
        rip = crate::syscall_site::restart_address(rip);
        ret = frame.nr as i64;
    }
    let restore = sched::take_saved_blocked().unwrap_or_else(sched::blocked_signals);
    if enter_handler(frame, sig, &action, Cause::Sent(origin), ret, rip, rsp, restore).is_err() {
        // No room for the frame: Linux kills the program with SIGSEGV.
        die(11, Some((frame, ret as u64)));
    }
    0
}

/// The disposition of `sig` and the `si_code` of its last send; a one-shot handler (SA_RESETHAND) is used up.
fn take_action(sig: u32) -> (SigAction, Origin) {
    let slot = (sig - 1) as usize;
    let mut s = state();
    let action = s.actions[slot];
    if action.flags & SA_RESETHAND != 0 && action.handler > SIG_IGN {
        s.actions[slot] = SigAction::default();
    }
    (action, s.origins[slot])
}

/// Runs the program's handler for the fault it made, whose registers `frame` holds (the faulting instruction in `rcx`,
/// the stack pointer minus 8 in `user_rsp`) but for %rax, which is `rax`. Returns None, changing nothing, when the fault cannot go to a handler:
/// none is installed, or the signal is blocked (Linux then kills the program), or the frame does not fit.
pub fn deliver_fault(frame: &mut SyscallFrame, sig: u32, fault: Fault, rax: u64) -> Option<i64> {
    let blocked = sched::blocked_signals();
    let action = state().actions[(sig - 1) as usize];
    if action.handler <= SIG_IGN || action.flags & SA_RESTORER == 0 || blocked & (1 << (sig - 1)) != 0 {
        return None;
    }
    let (action, _) = take_action(sig);
    let (rip, rsp) = (frame.rcx, frame.user_rsp.wrapping_add(8));
    enter_handler(frame, sig, &action, Cause::Fault(fault), rax as i64, rip, rsp, blocked).ok()?;
    Some(0)
}

/// Builds the signal frame for `sig` (the program to resume at `rip` with `rsp` and %rax = `rax`, mask `restore`)
/// and points `frame` at the handler, with the handler's mask in force.
#[allow(clippy::too_many_arguments, reason = "the state one frame saves")]
fn enter_handler(
    frame: &mut SyscallFrame,
    sig: u32,
    action: &SigAction,
    cause: Cause,
    rax: i64,
    rip: u64,
    rsp: u64,
    restore: u64,
) -> Result<(), Errno> {
    let alt = sched::altstack();
    let on_alt = on_stack(&alt, rsp);
    let top = if action.flags & SA_ONSTACK != 0 && alt.flags & SS_DISABLE == 0 && !on_alt {
        alt.sp.wrapping_add(alt.size)
    } else {
        rsp.wrapping_sub(RED_ZONE)
    };
    let fpstate = (top.wrapping_sub(fpstate_size())) & !63;
    // At the handler's first instruction %rsp + 8 is 16-byte aligned, as after a call.
    let at = ((fpstate.wrapping_sub(FRAME_SIZE)) & !15).wrapping_sub(8);
    let stack = StackT { flags: if on_alt { SS_ONSTACK } else { alt.flags }, ..alt };
    write_frame(at, fpstate, action.restorer, sig, cause, gregs(frame, rax as u64, rip, rsp, cause), restore, stack)?;
    // The handler runs with the mask the program had plus its own; sigreturn gives back `restore` (for sigsuspend:
    // the mask from before the call).
    let mut mask = sched::blocked_signals() | action.mask;
    if action.flags & SA_NODEFER == 0 {
        mask |= 1 << (sig - 1);
    }
    sched::set_blocked_signals(mask & !UNBLOCKABLE);
    frame.args[0] = u64::from(sig);
    frame.args[1] = at + INFO;
    frame.args[2] = at + UC;
    frame.rcx = action.handler;
    frame.user_rsp = at - 8;
    // Flags as a function call expects them (DF clear); the interrupted ones are in the frame.
    frame.rflags = 0x2;
    Ok(())
}

#[allow(clippy::too_many_arguments, reason = "the parts of one frame, laid out in one place")]
fn write_frame(
    at: u64,
    fpstate: u64,
    restorer: u64,
    sig: u32,
    cause: Cause,
    gregs: [u64; 23],
    blocked: u64,
    stack: StackT,
) -> Result<(), Errno> {
    user::check(at, fpstate.wrapping_add(fpstate_size()).wrapping_sub(at), true)?;
    let xsave = crate::fpu::features() != 0;
    if xsave {
        user::write_bytes(fpstate + 512, &[0; 64])?;
    }
    // SAFETY: the bytes at `fpstate` are the program's, writable (checked above), 64-byte aligned and as many as the
    // state takes, the XSAVE header zeroed; the state saved is the program's at the syscall or fault (the library OS
    // itself never touches these registers).
    unsafe { crate::fpu::save(fpstate as *mut u8) };
    if xsave {
        let size = crate::fpu::size() as u32;
        user::write(fpstate + SW_BYTES, [FP_XSTATE_MAGIC1, size + 4])?;
        user::write(fpstate + SW_BYTES + 8, crate::fpu::features())?;
        user::write(fpstate + SW_BYTES + 16, [size, 0, 0, 0, 0, 0, 0, 0])?;
        user::write(fpstate + u64::from(size), FP_XSTATE_MAGIC2)?;
    }
    user::write(at, restorer)?;
    user::write(at + UC, [if xsave { UC_FP_XSTATE } else { 0 }, 0])?;
    user::write(at + UC_STACK, stack)?;
    user::write(at + UC_MCONTEXT, gregs)?;
    user::write(at + UC_MCONTEXT + 23 * 8, fpstate)?;
    user::write(at + UC_MCONTEXT + 24 * 8, [0u64; 8])?;
    user::write(at + UC_SIGMASK, blocked)?;
    let info = match cause {
        Cause::Sent(origin) => origin.siginfo(sig),
        Cause::Fault(fault) => {
            let mut info = [0u8; 128];
            info[..4].copy_from_slice(&(sig as i32).to_le_bytes());
            info[8..12].copy_from_slice(&fault.code.to_le_bytes());
            info[16..24].copy_from_slice(&fault.addr.to_le_bytes());
            info
        }
    };
    user::write_bytes(at + INFO, &info)
}

/// Bytes a signal frame's FPU state takes: the XSAVE area and magic2, or the `fxsave` image.
fn fpstate_size() -> u64 {
    match crate::fpu::features() {
        0 => crate::fpu::FXSAVE_SIZE as u64,
        _ => crate::fpu::size() as u64 + 4,
    }
}

/// Restores the FPU state a signal frame holds at `fpstate` (the program may have edited it): an XSAVE area where
/// its software-reserved bytes and magic2 say so, else the `fxsave` image; nothing if it cannot be read.
fn restore_fpstate(fpstate: u64) {
    let size = crate::fpu::size() as u64;
    let sw: [u32; 2] = user::read(fpstate + SW_BYTES).unwrap_or_default();
    let xsave = crate::fpu::features() != 0
        && sw == [FP_XSTATE_MAGIC1, size as u32 + 4]
        && user::read::<u32>(fpstate + SW_BYTES + 16) == Ok(size as u32)
        && user::read::<u32>(fpstate + size) == Ok(FP_XSTATE_MAGIC2);
    let len = if xsave { size as usize } else { crate::fpu::FXSAVE_SIZE };
    if let Some(area) = crate::fpu::Area::from_program(len, xsave, |bytes| user::read_bytes(fpstate, bytes).is_ok()) {
        area.restore_as(xsave);
    }
}

/// rt_sigreturn: back to where the signal interrupted, with the registers (possibly changed by the handler), mask and
/// FPU state the frame holds. The frame's `ucontext` is just above the restorer's return address.
pub fn rt_sigreturn(frame: &mut SyscallFrame) -> i64 {
    let uc = frame.user_rsp + 8;
    let Ok(g) = user::read::<[u64; 23]>(uc + (UC_MCONTEXT - UC)) else { die(11, Some((frame, frame.nr))) };
    let fpstate: u64 = user::read(uc + (UC_MCONTEXT - UC) + 23 * 8).unwrap_or(0);
    let mask: u64 = user::read(uc + (UC_SIGMASK - UC)).unwrap_or(0);
    if fpstate != 0 {
        restore_fpstate(fpstate);
    }
    sched::set_blocked_signals(mask & !UNBLOCKABLE);
    let [r8, r9, r10, r11, r12, r13, r14, r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags, ..] = g;
    frame.args = [rdi, rsi, rdx, r10, r8, r9];
    (frame.r11, frame.r12, frame.r13, frame.r14, frame.r15, frame.rbp, frame.rbx) = (r11, r12, r13, r14, r15, rbp, rbx);
    frame.rcx = rip;
    frame.user_rcx = rcx;
    // The arithmetic flags and DF: the program's own. Nothing that changes how the CPU runs it (TF, AC, IOPL).
    frame.rflags = (eflags & RESTORED_FLAGS) | 0x2;
    frame.user_rsp = rsp.wrapping_sub(8);
    rax as i64
}

/// The table's entry for rt_sigreturn, which `dispatch` handles before the table (it needs the saved registers); never
/// called.
pub fn rt_sigreturn_marker(_: &Args) -> SysResult {
    Err(Errno::ENOSYS)
}

/// Where the VMM counts the signals the host sends (see `BootInfo::host_signals_phys`), and what we have passed on.
/// The VMM stops a program that has not taken a SIGINT, SIGTERM or SIGQUIT of the host's within a grace period (a
/// program that keeps the signal blocked never does): so each taking of a signal (delivered to a handler or by
/// `sigwait`, or ignored) tells it, in the page's words from `HOST_SIGNAL_TAKEN`, how many of the host's it covers.
static HOST_PAGE: AtomicU64 = AtomicU64::new(0);
static HOST_SEEN_GENERATION: AtomicU64 = AtomicU64::new(0);
static HOST_SEEN: [AtomicU64; NSIG as usize] = [const { AtomicU64::new(0) }; NSIG as usize];

pub fn init(boot: &kiln_abi::BootInfo) {
    HOST_PAGE.store(kiln_abi::layout::direct_map(boot.host_signals_phys), Ordering::Relaxed);
}

/// Word `index` of the host-signal page (the stdin's words are there too: `file::stdin`); none before `init`.
pub fn host_page_word(index: u64) -> Option<&'static AtomicU64> {
    (HOST_PAGE.load(Ordering::Relaxed) != 0 && index < 512).then(|| host_word(index))
}

fn host_word(index: u64) -> &'static AtomicU64 {
    let page = HOST_PAGE.load(Ordering::Relaxed);
    // SAFETY: the host-signal page is guest RAM the VMM set aside for this, mapped for the whole run; its words are
    // only accessed atomically.
    unsafe { &*((page + 8 * index) as *const AtomicU64) }
}

/// `sig` was taken (delivered, taken by `sigwait`, or ignored): every one the host sent that we have passed on.
fn host_signal_taken(sig: u64) {
    if HOST_PAGE.load(Ordering::Relaxed) != 0 && (1..NSIG).contains(&sig) {
        let seen = HOST_SEEN[sig as usize].load(Ordering::Acquire);
        host_word(kiln_abi::boot::HOST_SIGNAL_TAKEN + sig).store(seen, Ordering::Release);
    }
}

fn ignored(sig: u64) -> bool {
    let handler = state().actions[(sig - 1) as usize].handler;
    handler == SIG_IGN || (handler == SIG_DFL && default_is_ignore(sig))
}

/// Passes on the signals the host sent since the last look (Ctrl-C or `kill` of kiln) as signals to the process:
/// they go to the current thread. Cheap when nothing is new: one load.
pub fn poll_host_signals() {
    if HOST_PAGE.load(Ordering::Relaxed) == 0 {
        return;
    }
    // Input on stdin is news from the host too, in the same page.
    crate::file::stdin::poll();
    let generation = host_word(0).load(Ordering::Acquire);
    let seen = HOST_SEEN_GENERATION.load(Ordering::Acquire);
    if generation == seen
        || HOST_SEEN_GENERATION.compare_exchange(seen, generation, Ordering::AcqRel, Ordering::Acquire).is_err()
    {
        return;
    }
    for sig in 1..NSIG {
        let count = host_word(sig).load(Ordering::Acquire);
        if HOST_SEEN[sig as usize].swap(count, Ordering::AcqRel) != count {
            let _ = send_to_process(sig, None);
            if ignored(sig) {
                host_signal_taken(sig);
            }
        }
    }
}

/// pause: sleeps until a signal is delivered; always EINTR.
/// rt_sigtimedwait (sigwait, sigwaitinfo, sigtimedwait): takes a pending signal of the set, waiting for one until
/// the timeout; EAGAIN when it passes, EINTR when a signal outside the set runs its handler.
pub fn rt_sigtimedwait(a: &Args) -> SysResult {
    if a[3] != 8 {
        return Err(Errno::EINVAL);
    }
    let set: u64 = user::read::<u64>(a[0])? & !UNBLOCKABLE;
    let deadline = match a[2] {
        0 => u64::MAX,
        t => crate::time::since_boot_ns().saturating_add(user::read_timespec(t)?),
    };
    loop {
        if let Some(sig) = sched::take_signal_in(set) {
            host_signal_taken(u64::from(sig));
            if a[1] != 0 {
                let origin = state().origins[(sig - 1) as usize];
                user::write_bytes(a[1], &origin.siginfo(sig))?;
            }
            return Ok(u64::from(sig));
        }
        if crate::time::since_boot_ns() >= deadline {
            return Err(Errno::EAGAIN);
        }
        if sched::signal_deliverable() {
            return Err(Errno::EINTR);
        }
        sched::block(sched::Wait::SignalIn(set), deadline, || true);
    }
}

pub fn pause(_: &Args) -> SysResult {
    sched::block(sched::Wait::Signal, u64::MAX, || true);
    Err(Errno::EINTR)
}

/// rt_sigsuspend: waits for a signal with `mask` blocked meanwhile; the handler runs, then the old mask is back.
pub fn rt_sigsuspend(a: &Args) -> SysResult {
    if a[1] != 8 {
        return Err(Errno::EINVAL);
    }
    let mask: u64 = user::read(a[0])?;
    let old = sched::blocked_signals();
    sched::set_blocked_signals(mask & !UNBLOCKABLE);
    sched::set_saved_blocked(Some(old));
    sched::block(sched::Wait::Signal, u64::MAX, || true);
    if !sched::signal_deliverable() {
        // Woken without a handler to run (an ignored signal): the old mask is back now.
        sched::set_saved_blocked(None);
        sched::set_blocked_signals(old);
    }
    Err(Errno::EINTR)
}
