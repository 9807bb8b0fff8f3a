//! A vCPU thread: KVM_RUN and the exits it handles. Hypercalls write the program's output (write, writev to the
//! console), devices move frames (the tap's write, the user-mode network's eventfd) and volume blocks (pread, pwrite,
//! fdatasync; after a snapshot, fstat and futimens) and a detached instance's core file (pwrite, ftruncate), time slices re-arm the thread's own timers
//! (timer_settime), kicks go to other vCPUs (tgkill), idle vCPUs park on futexes. Its ioctls are KVM's vCPU calls and
//! the terminal's (a program's termios and window size, on a console that is a pty), checked by number.

use seccompiler::{BackendError, SeccompRule};

pub(super) const SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    // A detached instance's core file, opened before the VM ran, written by the crashed vCPU's thread (pwrite64).
    libc::SYS_ftruncate,
    // The first write to a volume after a snapshot that lets the VM run on: its file's modification time is read and,
    // if the write left it where the snapshot saw it, moved on (`kiln_vmm::snapshot::volume::Stamp`).
    libc::SYS_fstat,
    libc::SYS_utimensat,
    libc::SYS_timer_settime,
    libc::SYS_timer_delete,
    libc::SYS_tgkill,
];

const KVMIO: u64 = 0xae;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

use kvm_sizes::*;
mod kvm_sizes {
    // The sizes of the structures the ioctls pass, from the kernel's uapi (kvm.h, x86-64).
    pub const REGS: usize = 144;
    pub const SREGS: usize = 312;
    pub const VCPU_EVENTS: usize = 64;
    pub const MSRS: usize = 8;
    pub const XSAVE: usize = 4096;
    pub const XCRS: usize = 392;
}

/// The vCPU ioctls a vCPU thread makes while the VM runs (`_IO`/`_IOR`/`_IOW` numbers from kvm.h), by name.
pub const KVM_VCPU_IOCTLS: &[(&str, u64)] = &[
    ("KVM_RUN", io(0x80)),
    ("KVM_GET_REGS", ior(0x81, REGS)),
    ("KVM_SET_REGS", iow(0x82, REGS)),
    ("KVM_GET_SREGS", ior(0x83, SREGS)),
    ("KVM_SET_SREGS", iow(0x84, SREGS)),
    ("KVM_GET_MSRS", iowr(0x88, MSRS)),
    ("KVM_SET_MSRS", iow(0x89, MSRS)),
    ("KVM_GET_VCPU_EVENTS", ior(0x9f, VCPU_EVENTS)),
    ("KVM_SET_VCPU_EVENTS", iow(0xa0, VCPU_EVENTS)),
    // A snapshot: each vCPU reads its own extended state and XCR0 where it holds. gdb reads and writes the x87/SSE
    // registers in the same state (`kiln_vmm::debug::fpu`).
    ("KVM_GET_XSAVE", ior(0xa4, XSAVE)),
    ("KVM_SET_XSAVE", iow(0xa5, XSAVE)),
    ("KVM_GET_XCRS", ior(0xa6, XCRS)),
];

/// The terminal ioctls the `Terminal` hypercall passes on to the console's pty (a container's `-t`), by name.
pub const TERMINAL_IOCTLS: &[(&str, u64)] =
    &[("TCGETS", 0x5401), ("TCSETS", 0x5402), ("TCSETSW", 0x5403), ("TCSETSF", 0x5404), ("TIOCGWINSZ", 0x5413)];

pub(super) fn conditional() -> Result<Vec<(i64, Vec<SeccompRule>)>, BackendError> {
    let ioctls = KVM_VCPU_IOCTLS.iter().chain(TERMINAL_IOCTLS).map(|&(_, number)| number);
    Ok(vec![super::ioctl_with(ioctls)?])
}
