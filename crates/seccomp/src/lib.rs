//! Seccomp allow-lists for the VMM's host threads. Once a thread is set up (its descriptors open, its timers made) it
//! confines itself with [`confine`] to the syscalls its kind needs (`lists/`), built in Rust with rust-vmm's
//! `seccompiler`; the thread running `Vm::run` follows once the VM's threads are started, where the process is the
//! VM's own ([`set_confine_caller`]). A forbidden call traps: `sigsys.rs` names the thread and the syscall on stderr
//! and ends the process with [`FORBIDDEN_EXIT`].

mod lists;
mod sigsys;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

pub use lists::{allowed_syscalls, KVM_VCPU_IOCTLS};
pub use sigsys::FORBIDDEN_EXIT;

/// Why a thread could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {0} thread")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error(
        "cannot install the seccomp filter of the {0} thread (run with --seccomp=off where the host has no seccomp)"
    )]
    Install(&'static str, #[source] seccompiler::Error),
}

/// What a filter does with a syscall its thread's list lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No filters (`--seccomp=off`, for debugging).
    Off,
    /// The process ends with a line naming the thread and the call (the default).
    Trap,
    /// The call goes ahead and the kernel logs it (audit, `dmesg`): how the lists were found.
    Log,
}

/// The kinds of VMM thread, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Runs one vCPU: KVM_RUN and the exits it handles (hypercalls, the console, the devices' queues, volume I/O).
    Vcpu(u32),
    /// Waits on a tap device and hands its frames to the guest.
    NetRx,
    /// Waits for the signals the host sends the process.
    HostSignals,
    /// The user-mode network's relay: host sockets on the guest's behalf.
    UserNet,
    /// The thread that started the VM and waits for its end, then reports it.
    Main,
    /// Serves gdb (`kiln run --gdb`, `kiln debug`): the GDB remote protocol on a connection another process or
    /// thread accepted, and descriptors received on the instance's debugger socket.
    Debugger,
    /// A detached instance's control socket: takes `kiln snapshot`'s requests and hands them to the VM.
    Control,
    /// Reads the host's stream for the program's stdin (`kiln_vmm::stdin`).
    Stdin,
}

impl Kind {
    /// Every kind (vCPUs as one).
    pub const ALL: [Kind; 8] = [
        Kind::Vcpu(0),
        Kind::NetRx,
        Kind::HostSignals,
        Kind::UserNet,
        Kind::Main,
        Kind::Debugger,
        Kind::Control,
        Kind::Stdin,
    ];

    /// The thread's name as the log line gives it (vCPUs without their number).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vcpu(_) => "vcpu",
            Kind::NetRx => "net-rx",
            Kind::HostSignals => "host-signals",
            Kind::UserNet => "usernet",
            Kind::Main => "main",
            Kind::Debugger => "debugger",
            Kind::Control => "control",
            Kind::Stdin => "stdin",
        }
    }

    fn index(self) -> usize {
        match self {
            Kind::Vcpu(_) => 0,
            Kind::NetRx => 1,
            Kind::HostSignals => 2,
            Kind::UserNet => 3,
            Kind::Main => 4,
            Kind::Debugger => 5,
            Kind::Control => 6,
            Kind::Stdin => 7,
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(Mode::Trap as u8);
static CONFINE_CALLER: AtomicBool = AtomicBool::new(false);

/// Sets the mode for threads confined from now on (a launcher calls it once, before it makes the VM).
pub fn set_mode(mode: Mode) {
    MODE.store(mode as u8, Ordering::SeqCst);
}

pub fn mode() -> Mode {
    match MODE.load(Ordering::SeqCst) {
        m if m == Mode::Off as u8 => Mode::Off,
        m if m == Mode::Log as u8 => Mode::Log,
        _ => Mode::Trap,
    }
}

/// Whether the thread that calls `Vm::run` is confined too ([`Kind::Main`]): true where the process is the VM's own
/// (`kiln run`, the shim's VM process), false where that thread goes on to other work (a daemon of many VMs).
pub fn set_confine_caller(yes: bool) {
    CONFINE_CALLER.store(yes, Ordering::SeqCst);
}

pub fn confines_caller() -> bool {
    CONFINE_CALLER.load(Ordering::SeqCst)
}

/// Confines the calling thread to `kind`'s list for the rest of its life (a no-op with [`Mode::Off`]).
pub fn confine(kind: Kind) -> Result<(), SeccompError> {
    let mode = mode();
    if mode == Mode::Off {
        return Ok(());
    }
    let filter = compiled(kind, mode)?;
    #[cfg(debug_assertions)]
    let forbidden = sigsys::test_hook_wanted(kind);
    sigsys::prepare(kind);
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install(kind.name(), e))?;
    #[cfg(debug_assertions)]
    if forbidden {
        sigsys::forbidden_call();
    }
    Ok(())
}

/// Each kind's filter, compiled once per process and mode (a VM's vCPUs share one).
fn compiled(kind: Kind, mode: Mode) -> Result<&'static BpfProgram, SeccompError> {
    const KINDS: usize = Kind::ALL.len();
    static TRAPPING: [OnceLock<BpfProgram>; KINDS] = [const { OnceLock::new() }; KINDS];
    static LOGGING: [OnceLock<BpfProgram>; KINDS] = [const { OnceLock::new() }; KINDS];
    let slot = match mode {
        Mode::Log => &LOGGING[kind.index()],
        _ => &TRAPPING[kind.index()],
    };
    if let Some(program) = slot.get() {
        return Ok(program);
    }
    let program = build(kind, mode).map_err(|e| SeccompError::Build(kind.name(), e))?;
    Ok(slot.get_or_init(|| program))
}

/// `kind`'s filter as BPF.
pub fn build(kind: Kind, mode: Mode) -> Result<BpfProgram, seccompiler::BackendError> {
    let mismatch = if mode == Mode::Log { SeccompAction::Log } else { SeccompAction::Trap };
    let filter = SeccompFilter::new(lists::rules(kind)?, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    filter.try_into()
}

#[cfg(test)]
mod tests;
