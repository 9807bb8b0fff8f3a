//! What a forbidden syscall does: the filter traps (SECCOMP_RET_TRAP), and the SIGSYS handler writes one line naming
//! the thread and the syscall, then ends the process. KILL_PROCESS would leave only an audit record in the host's
//! kernel log, where the user of `kiln run` never looks; the trap puts the reason on kiln's own stderr. The handler
//! runs in a thread that may be compromised, so it only reads a thread-local, formats into a stack buffer and makes
//! the two syscalls every list allows (write, exit_group): nothing that allocates or locks.

use crate::Kind;
use std::cell::Cell;
use std::sync::Once;

/// The exit status of a process stopped by its seccomp filter: 128 + SIGSYS, what a shell reports for a process the
/// kernel kills for a forbidden call (SECCOMP_RET_KILL_PROCESS), so scripts see the same either way.
pub const FORBIDDEN_EXIT: i32 = 128 + libc::SIGSYS;

thread_local! {
    /// The confined thread's kind (its `Kind::index`, or `u8::MAX` before) and vCPU number.
    static THREAD: Cell<(u8, u32)> = const { Cell::new((u8::MAX, 0)) };
}

/// Installs the handler (once per process) and notes which thread this is; called before the filter goes on.
pub(crate) fn prepare(kind: Kind) {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that only reads a thread-local, writes one line and exits.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
        }
    });
    let id = if let Kind::Vcpu(id) = kind { id } else { 0 };
    THREAD.with(|t| t.set((kind.index() as u8, id)));
}

/// The syscall number in a SIGSYS's siginfo (`_sigsys._syscall`: after signo, errno, code, padding and the call
/// address).
const SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a SIGSYS handler a full siginfo_t (128 bytes), whose `_sigsys._syscall` int is at
    // SYSCALL_OFFSET on x86-64.
    let nr = unsafe { info.cast::<u8>().add(SYSCALL_OFFSET).cast::<i32>().read_unaligned() };
    let (kind, id) = THREAD.try_with(Cell::get).unwrap_or((u8::MAX, 0));
    let mut line = Line::default();
    line.push(b"kiln: seccomp: thread ");
    line.push(thread_name(kind).as_bytes());
    if kind == Kind::Vcpu(0).index() as u8 {
        line.number(u64::from(id));
    }
    line.push(b" made forbidden syscall ");
    line.push(kiln_abi::syscall_names::name(nr as u64).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    line.number(nr as u64);
    line.push(b"); the VMM stopped (a Kiln bug, or a guest that took over a VMM thread; --seccomp=off to debug)\n");
    // SAFETY: write(2) from a stack buffer and _exit(2) are async-signal-safe, and every list allows them.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(FORBIDDEN_EXIT);
    }
}

fn thread_name(index: u8) -> &'static str {
    Kind::ALL.into_iter().find(|k| k.index() as u8 == index).map_or("unknown", Kind::name)
}

/// A line built without allocating.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line { bytes: [0; 256], len: 0 }
    }
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

/// Test-only (debug builds): `KILN_SECCOMP_TEST_FORBIDDEN=KIND` (a [`Kind::name`]) makes threads of that kind make a
/// forbidden call right after they are confined, so that the tests see the process stopped.
#[cfg(debug_assertions)]
pub(crate) fn test_hook_wanted(kind: Kind) -> bool {
    std::env::var_os("KILN_SECCOMP_TEST_FORBIDDEN").is_some_and(|k| k == kind.name())
}

#[cfg(debug_assertions)]
pub(crate) fn forbidden_call() {
    // SAFETY: getppid has no arguments and no effect; no list allows it.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_hold_names_and_numbers() {
        let mut line = Line::default();
        line.push(b"thread ");
        line.push(thread_name(Kind::UserNet.index() as u8).as_bytes());
        line.number(0);
        line.number(18_446_744_073_709_551_615);
        assert_eq!(&line.bytes[..line.len], b"thread usernet018446744073709551615");
        let mut long = Line::default();
        long.push(&[b'x'; 300]);
        assert_eq!(long.len, 256);
    }
}
