//! The debugger thread (`crate::Kind::Debugger`): the GDB remote protocol on a connection it was given (`kiln run
//! --gdb` accepts it before the VM starts, `kiln debug` in its own process), so no socket, bind, listen or accept.
//! It reads and peeks at the connection (recvfrom; gdbstub switches it to non-blocking and back for the peek, with
//! ioctl FIONBIO), answers (sendto), sets TCP_NODELAY on it, stops vCPUs (tgkill)
//! and, for `kiln debug`, sleeps in poll(2) on the instance's debugger socket and its stop pipe and takes the
//! descriptors sent there (recvmsg).

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

pub(super) const SYSCALLS: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_tgkill,
    libc::SYS_fstat,
];

/// `setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ...)` and `ioctl(fd, FIONBIO, ...)` only.
pub(super) fn conditional() -> Result<Vec<(i64, Vec<SeccompRule>)>, BackendError> {
    let level = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::IPPROTO_TCP as u64)?;
    let name = SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::TCP_NODELAY as u64)?;
    Ok(vec![
        (libc::SYS_setsockopt, vec![SeccompRule::new(vec![level, name])?]),
        super::ioctl_with([libc::FIONBIO as u64])?,
    ])
}
