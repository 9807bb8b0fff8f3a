//! SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `kiln` go to the program, as `docker run` forwards them: the program
//! may handle them (a server shutting down cleanly) or die of them (exit 128 + n). A third Ctrl-C stops the VM at once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
/// Ctrl-Cs after which kiln stops waiting for the program.
const FORCE_AFTER: u32 = 3;

static PENDING: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomics here: async-signal-safe.
    if sig == libc::SIGINT && INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1 >= FORCE_AFTER {
        let message = b"\nkiln: stopped the VM (Ctrl-C three times)\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static byte string.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(128 + libc::SIGINT);
        }
    }
    PENDING.fetch_or(1 << sig, Ordering::SeqCst);
}

pub fn install() {
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction with a handler that only touches atomics (and exits on the third Ctrl-C).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Signals received since the last call.
pub fn take() -> Vec<u32> {
    let pending = PENDING.swap(0, Ordering::SeqCst);
    (1..64).filter(|sig| pending & (1 << sig) != 0).collect()
}
