//! The tap's receive pump: sleeps in poll(2) on the tap and its stop pipe, reads frames, puts them in the guest's
//! receive queue (guest memory) and wakes vCPUs (futexes); a queue the guest broke ends the VM from here, which kicks
//! every vCPU out of the guest (tgkill).

pub(super) const SYSCALLS: &[i64] =
    &[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_read, libc::SYS_readv, libc::SYS_tgkill];
