//! The host-signal thread: sleeps until the host sends the process a signal, `kiln run`'s in poll(2) on its
//! self-pipe (then drains it), the shim's in sigwait(3) (rt_sigtimedwait), and hands the signals on over a channel.

pub(super) const SYSCALLS: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_read, libc::SYS_rt_sigtimedwait];
