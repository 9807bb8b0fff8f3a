//! The allow-lists, one file per thread kind, found by running the test suites under `--seccomp=log` and `strace -f`
//! (`docs/security.md` says how) and kept to what the code paths need. Calls every thread makes (its own end, the
//! futexes of Rust's locks, the kick signal's return) are in [`COMMON`].

mod control;
mod debugger;
mod main_thread;
mod net_rx;
mod signals;
mod stdin;
mod usernet;
mod vcpu;

use crate::Kind;
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;

pub use vcpu::KVM_VCPU_IOCTLS;

/// What every confined thread may do: end itself (Rust's thread exit frees its signal stack, musl blocks signals and
/// unmaps the thread's stack), wait and wake on futexes (Rust's locks and channels), sleep, return from a signal
/// handler (the vCPU kick), write (the SIGSYS line, `tracing` and panics to stderr), allocate (`mmap` is
/// conditional: never executable memory; `brk` for musl's malloc, which the shim's binary uses: a crash report made
/// on a vCPU thread allocates), seed a hash map (std's `HashMap::new` asks `getrandom` once per thread: the user-mode
/// network's DNS forwarder died of it), close what it owns (debug builds check a descriptor with F_GETFD before
/// closing it), and go on with a wait that a stop interrupted (`restart_syscall`: the kernel resumes a `futex`, `poll`
/// or `nanosleep` with a timeout through it after SIGSTOP and SIGCONT, as Ctrl-Z then `fg` on `kiln run` sends; the
/// VMM died of it).
const COMMON: &[i64] = &[
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_brk,
    libc::SYS_getrandom,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_close,
    libc::SYS_getpid,
    libc::SYS_gettid,
];

/// `mmap` without PROT_EXEC: a thread that was taken over cannot make itself new code.
fn mmap_without_exec() -> Result<(i64, Vec<SeccompRule>), BackendError> {
    let no_exec = SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?;
    Ok((libc::SYS_mmap, vec![SeccompRule::new(vec![no_exec])?]))
}

/// `fcntl` with one of `commands` (F_GETFD, F_GETFL, ...) only.
pub(crate) fn fcntl_with(commands: &[libc::c_int]) -> Result<(i64, Vec<SeccompRule>), BackendError> {
    let rules = commands
        .iter()
        .map(|&cmd| {
            SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd as u64)?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((libc::SYS_fcntl, rules))
}

/// `ioctl` with one of `requests` only.
pub(crate) fn ioctl_with(requests: impl IntoIterator<Item = u64>) -> Result<(i64, Vec<SeccompRule>), BackendError> {
    let rules = requests
        .into_iter()
        .map(|request| {
            SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((libc::SYS_ioctl, rules))
}

/// The syscall numbers `kind` may make (with or without argument conditions), sorted.
pub fn allowed_syscalls(kind: Kind) -> Vec<i64> {
    let mut all: Vec<i64> = COMMON.iter().chain(own(kind)).copied().collect();
    all.extend(conditional(kind).map(|c| c.into_iter().map(|(nr, _)| nr).collect::<Vec<_>>()).unwrap_or_default());
    all.sort_unstable();
    all.dedup();
    all
}

fn own(kind: Kind) -> &'static [i64] {
    match kind {
        Kind::Vcpu(_) => vcpu::SYSCALLS,
        Kind::NetRx => net_rx::SYSCALLS,
        Kind::HostSignals => signals::SYSCALLS,
        Kind::UserNet => usernet::SYSCALLS,
        Kind::Main => main_thread::SYSCALLS,
        Kind::Debugger => debugger::SYSCALLS,
        Kind::Control => control::SYSCALLS,
        Kind::Stdin => stdin::SYSCALLS,
    }
}

/// Syscalls allowed only with certain arguments (a kind's own may replace the common ones).
fn conditional(kind: Kind) -> Result<Vec<(i64, Vec<SeccompRule>)>, BackendError> {
    let mut rules = vec![mmap_without_exec()?, fcntl_with(&[libc::F_GETFD])?];
    rules.extend(match kind {
        Kind::Vcpu(_) => vcpu::conditional()?,
        Kind::UserNet => usernet::conditional()?,
        Kind::Main => main_thread::conditional()?,
        Kind::Debugger => debugger::conditional()?,
        Kind::NetRx | Kind::HostSignals | Kind::Control | Kind::Stdin => Vec::new(),
    });
    Ok(rules)
}

/// `kind`'s rules for `SeccompFilter::new`: an empty rule list allows the call whatever its arguments.
pub(crate) fn rules(kind: Kind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().chain(own(kind)).map(|&nr| (nr, Vec::new())).collect();
    for (nr, conditions) in conditional(kind)? {
        rules.insert(nr, conditions);
    }
    Ok(rules)
}
