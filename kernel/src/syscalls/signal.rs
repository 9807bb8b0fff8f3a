//! Signal dispositions, masks and alternate stacks are recorded and reported back. A signal a program sends itself
//! takes its default action (ending the program, as `abort()` needs); running an installed handler is not done yet,
//! so such a send fails with ENOSYS. Faults end the VM (see the VMM's crash report).

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::sync::{SpinGuard, SpinLock};
use crate::{hypercall, user};

const NSIG: u64 = 64;
const SIGKILL: u64 = 9;
const SIGSTOP: u64 = 19;
const SIGCHLD: u64 = 17;
const SIGCONT: u64 = 18;
const SIGURG: u64 = 23;
const SIGWINCH: u64 = 28;
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const PID: u64 = 1;
const SIG_BLOCK: u64 = 0;
const SIG_UNBLOCK: u64 = 1;
const SIG_SETMASK: u64 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SigAction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StackT {
    sp: u64,
    flags: i32,
    _pad: i32,
    size: u64,
}

const SS_DISABLE: i32 = 2;

struct State {
    actions: [SigAction; NSIG as usize],
    mask: u64,
    altstack: StackT,
}

/// Process-wide for now, the mask and the alternate stack too (Linux keeps those per thread): nothing is delivered yet,
/// so only what programs read back matters.
static SIGNALS: SpinLock<State> = SpinLock::new(State {
    actions: [SigAction { handler: 0, flags: 0, restorer: 0, mask: 0 }; NSIG as usize],
    mask: 0,
    altstack: StackT { sp: 0, flags: SS_DISABLE, _pad: 0, size: 0 },
});

fn state() -> SpinGuard<'static, State> {
    SIGNALS.lock()
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
    let mut s = state();
    let previous = s.mask;
    if new != 0 {
        let set: u64 = user::read(new)?;
        let unblockable = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1));
        s.mask = match how {
            SIG_BLOCK => previous | set,
            SIG_UNBLOCK => previous & !set,
            SIG_SETMASK => set,
            _ => return Err(Errno::EINVAL),
        } & !unblockable;
    }
    if old != 0 {
        user::write(old, previous)?;
    }
    Ok(0)
}

pub fn sigaltstack(a: &Args) -> SysResult {
    let (new, old) = (a[0], a[1]);
    let mut s = state();
    let previous = s.altstack;
    if new != 0 {
        let stack: StackT = user::read(new)?;
        if stack.flags & !SS_DISABLE != 0 {
            return Err(Errno::EINVAL);
        }
        s.altstack = stack;
    }
    if old != 0 {
        user::write(old, previous)?;
    }
    Ok(0)
}

pub const SIGPIPE: u64 = 13;

/// Delivers `sig` to the program itself.
pub fn send_to_self(sig: u64) -> SysResult {
    if sig > NSIG {
        return Err(Errno::EINVAL);
    }
    if sig == 0 {
        return Ok(0);
    }
    match state().actions[(sig - 1) as usize].handler {
        SIG_IGN => Ok(0),
        SIG_DFL if matches!(sig, SIGCHLD | SIGCONT | SIGURG | SIGWINCH) => Ok(0),
        SIG_DFL => hypercall::exit(128 + sig, sig),
        _ => Err(Errno::ENOSYS),
    }
}

pub fn kill(a: &Args) -> SysResult {
    match a[0] as i64 {
        0 | -1 => send_to_self(a[1]),
        pid if pid as u64 == PID => send_to_self(a[1]),
        _ => Err(Errno::ESRCH),
    }
}

pub fn tkill(a: &Args) -> SysResult {
    if a[0] != PID {
        return Err(Errno::ESRCH);
    }
    send_to_self(a[1])
}

pub fn tgkill(a: &Args) -> SysResult {
    if a[0] != PID || a[1] != PID {
        return Err(Errno::ESRCH);
    }
    send_to_self(a[2])
}
