//! The user-mode network's relay: it makes, connects, accepts and closes host sockets as the guest's connections
//! and flows come and go, sleeps in epoll on them and its eventfd, and hands frames to the card (guest memory,
//! futexes; a broken receive queue ends the VM from here, kicking every vCPU: tgkill). It never opens a file: the
//! host's resolver was read when the network was set up.

use seccompiler::{BackendError, SeccompRule};

pub(super) const SYSCALLS: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_poll,
    libc::SYS_tgkill,
];

pub(super) fn conditional() -> Result<Vec<(i64, Vec<SeccompRule>)>, BackendError> {
    Ok(vec![
        super::fcntl_with(&[libc::F_GETFD, libc::F_GETFL, libc::F_SETFL, libc::F_SETFD])?,
        // std's set_nonblocking.
        super::ioctl_with([libc::FIONBIO as u64])?,
    ])
}
