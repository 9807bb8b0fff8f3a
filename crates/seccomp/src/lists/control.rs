//! A detached instance's control thread: accepts connections on the instance's control socket, reads one request
//! line, hands it to the VM over a channel and writes the answer back.

pub(super) const SYSCALLS: &[i64] =
    &[libc::SYS_accept, libc::SYS_accept4, libc::SYS_read, libc::SYS_recvfrom, libc::SYS_sendto, libc::SYS_poll];
