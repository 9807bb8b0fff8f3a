//! The parent's side of the jail: it stays outside, waits for the jailed child and ends as it did, forwarding the
//! signals a user or containerd sends (the child has its own handlers for them, as `kiln run` has).

use crate::{check, JailError};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The signals the parent waits for, and the mask before they were blocked.
pub(crate) struct Blocked {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

/// Blocks the forwarded signals and SIGCHLD before the fork, so that none comes between the fork and the wait.
pub(crate) fn block_signals() -> Blocked {
    // SAFETY: sigemptyset initialises the zeroed sets; sigaddset adds valid signals; sigprocmask reads and writes
    // valid sets.
    unsafe {
        let mut set: libc::sigset_t = MaybeUninit::zeroed().assume_init();
        let mut old: libc::sigset_t = MaybeUninit::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        Blocked { set, old }
    }
}

/// In the child: the mask as it was.
pub(crate) fn unblock_signals(blocked: &Blocked) {
    // SAFETY: restores a mask sigprocmask returned.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &blocked.old, std::ptr::null_mut()) };
}

/// Waits for `child` to end, forwarding the signals; returns its exit status as a shell reports it.
pub(crate) fn wait(child: libc::pid_t, blocked: &Blocked) -> i32 {
    loop {
        // SAFETY: a valid, initialised signal set; no siginfo wanted.
        let sig = unsafe { libc::sigwaitinfo(&blocked.set, std::ptr::null_mut()) };
        if sig == libc::SIGCHLD || sig == -1 {
            let mut status = 0;
            // SAFETY: waits for our own child, with a valid place for its status.
            let ended = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if ended == child {
                return match (libc::WIFEXITED(status), libc::WIFSIGNALED(status)) {
                    (true, _) => libc::WEXITSTATUS(status),
                    (_, true) => 128 + libc::WTERMSIG(status),
                    _ => continue,
                };
            }
            if ended == -1 {
                return 125;
            }
        } else {
            // SAFETY: kill sends a signal to our child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// A pipe: (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check("make a pipe", unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether every write end of the pipe whose read end is `read` is closed.
pub(crate) fn closed(read: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; no waiting.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready == 1 && pfd.revents & libc::POLLHUP != 0
}
