//! The stdin relay: reads the stream its launcher opened (the shim's VM process: its own stdin, a pipe or a
//! terminal) and puts what comes in its buffer (guest memory for the state words); it wakes vCPUs through futexes,
//! and with none idle interrupts one (tgkill).

pub(super) const SYSCALLS: &[i64] = &[libc::SYS_read, libc::SYS_tgkill];
