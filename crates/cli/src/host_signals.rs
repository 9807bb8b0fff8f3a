//! SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `kiln` go to the program, as `docker run` forwards them: the program
//! may handle them (a server shutting down cleanly) or die of them (exit 128 + n). A third Ctrl-C stops the VM at once.
//! The handler notes the signal and writes a byte to a pipe (the self-pipe trick), which [`wait`] sleeps on: nothing in
//! kiln polls for signals, so an idle VM costs the host no CPU.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
/// Ctrl-Cs after which kiln stops waiting for the program.
const FORCE_AFTER: u32 = 3;

static PENDING: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);
/// The pipe's write end (non-blocking), -1 until `install`.
static WAKE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomics, write(2) and _exit(2) here: async-signal-safe.
    if sig == libc::SIGINT && INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1 >= FORCE_AFTER {
        let message = b"\nkiln: stopped the VM (Ctrl-C three times)\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static byte string.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(128 + libc::SIGINT);
        }
    }
    PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        // A full pipe already wakes the reader: a failed write loses nothing. errno is saved around it, as the
        // interrupted code may be about to read it.
        // SAFETY: errno is thread-local; write(2) on a non-blocking pipe is async-signal-safe; the byte is static.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, b"s".as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// The read end of the signals' pipe: what [`wait`] sleeps on.
pub struct Signals {
    wake: OwnedFd,
}

/// Installs the handlers; from here on the forwarded signals no longer end kiln but wait in [`Signals::wait`].
pub fn install() -> std::io::Result<Signals> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and nothing else owns them. The write end is owned by the
    // handler from here on, for the rest of the process (it is never closed).
    let wake = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    WAKE.store(fds[1], Ordering::SeqCst);
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction with a handler that only touches atomics and writes to a pipe (and exits on the
        // third Ctrl-C).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    Ok(Signals { wake })
}

impl Signals {
    /// Sleeps until signals come; returns their numbers.
    pub fn wait(&mut self) -> Vec<u32> {
        loop {
            let taken = take();
            if !taken.is_empty() {
                return taken;
            }
            let mut pfd = libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, for the duration of the call. EINTR just goes round again.
            unsafe { libc::poll(&mut pfd, 1, -1) };
            let mut drain = [0u8; 64];
            // SAFETY: reads into a local buffer of its length; the pipe is non-blocking.
            while unsafe { libc::read(self.wake.as_raw_fd(), drain.as_mut_ptr().cast(), drain.len()) } > 0 {}
        }
    }
}

/// Signals received since the last call.
fn take() -> Vec<u32> {
    let pending = PENDING.swap(0, Ordering::SeqCst);
    (1..64).filter(|sig| pending & (1 << sig) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_wakes_the_waiter() {
        let mut signals = install().unwrap();
        let waiter = std::thread::spawn(move || signals.wait());
        std::thread::sleep(std::time::Duration::from_millis(50));
        // SAFETY: sends SIGHUP to this process, whose handler was just installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        assert_eq!(waiter.join().unwrap(), vec![libc::SIGHUP as u32]);
    }
}
