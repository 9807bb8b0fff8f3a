//! The thread that started the VM: it waits on a channel for the VM's end, forwards host signals into guest memory
//! (kicking a running vCPU to take them),
//! reads the vCPUs' KVM statistics (pread on their stats descriptors) and then reports, which is why its list is the
//! broadest: a crash's backtrace reads the program again (from its host file or the store), and a detached
//! instance's record is rewritten, and a snapshot is written from here. It opens files but runs no guest exit; under `--jail` there are no files to open.

use seccompiler::{BackendError, SeccompRule};

pub(super) const SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_writev,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_stat,
    libc::SYS_fstat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_flock,
    libc::SYS_rename,
    // Naming a detached instance's core file, written unnamed (O_TMPFILE) by the crashed vCPU's thread.
    libc::SYS_linkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_getcwd,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    // A host signal with no vCPU idle interrupts a running one (`preempt::request`): a kick.
    libc::SYS_tgkill,
    // A snapshot (`kiln snapshot`): the guest's pages written to the file, found with mincore where /proc is not.
    libc::SYS_pwrite64,
    libc::SYS_mincore,
];

pub(super) fn conditional() -> Result<Vec<(i64, Vec<SeccompRule>)>, BackendError> {
    Ok(vec![super::fcntl_with(&[libc::F_GETFD, libc::F_GETFL, libc::F_SETFD, libc::F_SETFL])?])
}
