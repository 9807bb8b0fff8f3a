//! The VM process: `containerd-shim-kiln-v2 vm SPEC [--netns PATH [--take-address]] [--stdin] [--terminal]` (SPEC, a
//! [`LaunchSpec`] as JSON, which the shim wrote from the bundle), one per container, whose pid containerd sees as the
//! task's. It makes the VM with `kiln_launch::prepare` (the launch path `kiln run` takes), says on [`READY_FD`]
//! whether that worked, waits on [`GO_FD`] for the task's Start, then runs the program with its output on its stdout
//! and stderr (containerd's FIFOs, or the task's terminal) and its stdin relayed from its own (a pipe the shim fills from
//! containerd's FIFO, or the terminal), and exits with the program's status, as `kiln run` does. Given the pod's network namespace
//! (`--netns`), it enters it first and takes the pod's address (`podnet.rs`); the shim gives it back when the process
//! ends. SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to it (`ctr task kill`) go to the program, as `kiln run` forwards
//! them; SIGKILL ends the VM.

use crate::console::ShimConsole;
use crate::podnet;
use kiln_launch::{chain, LaunchSpec, Prepared};
use kiln_vmm::{HostSignals, Outcome};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the VM process reads the Start: a byte, or end of file when the task is deleted unstarted.
pub const GO_FD: i32 = 3;
/// Where the VM process reports its preparation: [`READY`], or the error.
pub const READY_FD: i32 = 4;
pub const READY: &str = "ready";
/// Exit status for Kiln's own failures (as `kiln run` and `docker run` use 125).
pub const KILN_ERROR: i32 = 125;
/// Exit status of a deadlocked program (as `kiln run` reports it).
const DEADLOCK_EXIT: i32 = 124;
/// The signals forwarded to the program, as `kiln run` forwards them.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The VM process's command line: `vm SPEC [--netns PATH [--take-address]] [--stdin] [--terminal]`.
#[derive(Debug, Default, PartialEq)]
pub struct VmArgs {
    pub spec: String,
    /// The pod's network namespace, whose address the VM takes.
    pub netns: Option<PathBuf>,
    /// The process's stdin (a pipe the shim fills from containerd's stdin FIFO) is the program's.
    pub stdin: bool,
    /// The process's standard streams are a terminal (`terminal.rs`): the program's too, its stdin included.
    pub terminal: bool,
    /// The VM takes the pod's address through a tap (`io.kiln.pod-network=tap`); else it is on the user-mode network
    /// in the pod's namespace, shared with the pod's other containers.
    pub take_address: bool,
}

const USAGE: &str = "usage: vm SPEC [--netns PATH [--take-address]] [--stdin] [--terminal]";

impl VmArgs {
    pub fn parse(args: &[String]) -> Result<VmArgs, String> {
        let (spec, mut rest) = args.split_first().ok_or(USAGE)?;
        let mut parsed = VmArgs { spec: spec.clone(), ..VmArgs::default() };
        while let [flag, more @ ..] = rest {
            rest = more;
            let slot = match flag.as_str() {
                "--terminal" => {
                    parsed.terminal = true;
                    continue;
                }
                "--stdin" => {
                    parsed.stdin = true;
                    continue;
                }
                "--take-address" => {
                    parsed.take_address = true;
                    continue;
                }
                "--netns" => &mut parsed.netns,
                other => return Err(format!("unknown flag {other}; {USAGE}")),
            };
            let [value, more @ ..] = rest else { return Err(format!("{flag} needs a value")) };
            *slot = Some(value.into());
            rest = more;
        }
        Ok(parsed)
    }

    /// The command line for `parse`.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec![self.spec.clone().into()];
        if let Some(netns) = &self.netns {
            args.extend(["--netns".into(), netns.clone().into_os_string()]);
        }
        for (flag, on) in
            [("--stdin", self.stdin), ("--terminal", self.terminal), ("--take-address", self.take_address)]
        {
            if on {
                args.push(flag.into());
            }
        }
        args
    }
}

/// Runs the VM process; returns its exit status.
pub fn main(args: &VmArgs) -> i32 {
    let (spec_path, netns) = (args.spec.as_str(), args.netns.as_deref());
    // Blocked before any thread exists, so that every thread inherits it and the signals wait for `sigwait`.
    let forwarded = signal_set();
    // SAFETY: a valid, initialised signal set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &forwarded, std::ptr::null_mut()) };
    // SAFETY: the shim hands these two descriptors to this process (`task.rs`) and nothing else in it owns them.
    let (mut go, mut ready) = unsafe { (File::from_raw_fd(GO_FD), File::from_raw_fd(READY_FD)) };
    // Entered before any thread exists, so that the VM's threads (and its tap) live in the pod's namespace.
    let take = |path: &Path| match args.take_address {
        true => podnet::enter(path).and_then(|()| podnet::set_up()).map(Some),
        false => podnet::enter(path).and_then(|()| podnet::share()),
    };
    let pod = match netns.map(take).transpose() {
        Ok(pod) => pod.flatten(),
        Err(e) => {
            // Half made (unless another container has it): given back, as the shim does only for a ready VM.
            if let (Some(netns), false) = (netns.filter(|_| args.take_address), matches!(e, podnet::PodNetError::Taken))
            {
                podnet::tear_down(netns);
            }
            let _ = ready.write_all(chain(&e).as_bytes());
            return KILN_ERROR;
        }
    };
    // Jailed by default where the shim runs as root (it does under containerd): namespaces now, before any thread
    // exists; the rest once the VM is built.
    let jailed = match jail_wanted() {
        true => match kiln_jail::enter_in_place() {
            Ok(()) => true,
            Err(e) => {
                let taken = netns.filter(|_| args.take_address);
                return refuse(taken, &mut ready, format!("cannot make the VM process's jail: {e}"));
            }
        },
        false => false,
    };
    // The process is the VM's own: the thread that runs it is confined too once the VM's threads are started.
    kiln_seccomp::set_confine_caller(true);
    let prepared = read_spec(spec_path).and_then(|mut spec| {
        if let Some(network) = pod {
            spec.network = network;
        }
        let prepared = kiln_launch::prepare(&spec, kiln_libos::KERNEL).map_err(|e| chain(&e))?;
        Ok((spec, prepared))
    });
    let (spec, Prepared { vm, notices, .. }) = match prepared {
        Ok(p) => p,
        Err(message) => {
            if let Some(netns) = netns.filter(|_| args.take_address) {
                podnet::tear_down(netns);
            }
            let _ = ready.write_all(message.as_bytes());
            return KILN_ERROR;
        }
    };
    if ready.write_all(READY.as_bytes()).is_err() {
        return KILN_ERROR;
    }
    drop(ready);
    let mut byte = [0u8; 1];
    if !matches!(go.read(&mut byte), Ok(1)) {
        return KILN_ERROR;
    }
    drop(go);
    for notice in notices {
        eprintln!("kiln: {notice}");
    }
    if jailed {
        if let Err(e) = lock_down(&spec) {
            eprintln!("kiln: cannot close the VM process's jail: {e}");
            return KILN_ERROR;
        }
    }
    let wait = move || wait_signals(&forwarded);
    let host_signals = HostSignals { wait: Box::new(wait), grace: Duration::from_secs(spec.signals.grace_secs.into()) };
    let console = match args.terminal {
        true => ShimConsole::terminal(),
        false => ShimConsole::new(args.stdin),
    };
    match vm.run(Arc::new(console), host_signals) {
        Ok((outcome, _)) => exit_status(outcome),
        Err(e) => {
            eprintln!("kiln: running the VM failed: {}", chain(&e));
            KILN_ERROR
        }
    }
}

/// Whether to jail the VM process: as root, unless `KILN_JAIL=off` (in the shim's environment) says not to.
fn jail_wanted() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::env::var_os("KILN_JAIL").is_none_or(|v| v != "off")
}

/// Says why the VM cannot be made (gives the pod's network back, unless another container has it), for the shim.
fn refuse(netns: Option<&Path>, ready: &mut File, message: String) -> i32 {
    if let Some(netns) = netns {
        podnet::tear_down(netns);
    }
    let _ = ready.write_all(message.as_bytes());
    KILN_ERROR
}

/// Closes the jail around this process, whose VM is built (as `kiln run --jail` does, without the PID namespace:
/// containerd knows the process by its pid): an empty root, a uid of its own, resource limits, and a network
/// namespace of its own unless the user-mode network needs the host's.
fn lock_down(spec: &LaunchSpec) -> Result<(), kiln_jail::JailError> {
    let identity = kiln_jail::default_identity()?;
    let new_network = !matches!(spec.network, kiln_launch::network::Network::User { .. });
    let limits = kiln_jail::Limits::for_vm(spec.cpus)?;
    kiln_jail::lock_down(&kiln_jail::Lockdown { identity, new_network, limits })
}

fn read_spec(path: &str) -> Result<LaunchSpec, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Sleeps until one of the forwarded signals comes (they are blocked in every thread, so they wait here).
fn wait_signals(set: &libc::sigset_t) -> Vec<u32> {
    loop {
        let mut sig = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a valid place for the result.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return vec![sig as u32];
        }
    }
}

/// The exit status containerd reports for the program's end, as `kiln run` exits: its code, or 128 + the signal
/// that ended it; what went wrong goes to its stderr first.
fn exit_status(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Exited(code) => code & 0xff,
        Outcome::Killed(signal) => 128 + signal.min(127) as i32,
        Outcome::Deadlocked { threads, waits } => {
            eprintln!("kiln: program deadlocked: {threads} threads wait with no deadline, and nothing can wake them ({waits})");
            DEADLOCK_EXIT
        }
        Outcome::Crashed(crash) => {
            eprintln!("kiln: program crashed: {crash}");
            crash.signal.exit_code()
        }
        Outcome::SignalUntaken { signal, grace } => {
            let name = kiln_vmm::signal::signal_name(signal);
            eprintln!("kiln: the program did not take {name} within {} s: stopped the VM", grace.as_secs());
            128 + signal.min(127) as i32
        }
        Outcome::Stopped(why) => {
            eprintln!("kiln: stopped the VM: {why}");
            KILN_ERROR
        }
        Outcome::Snapshotted(path) => {
            eprintln!("kiln: snapshotted to {}", path.display());
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VmArgs;

    #[test]
    fn the_command_line_goes_both_ways() {
        let args = VmArgs {
            spec: "/b/kiln-spec.json".into(),
            netns: Some("/var/run/netns/pod".into()),
            stdin: true,
            terminal: true,
            take_address: true,
        };
        let line: Vec<String> = args.to_args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(VmArgs::parse(&line).unwrap(), args);
        let bare = VmArgs::parse(&["spec.json".to_string()]).unwrap();
        assert_eq!(bare, VmArgs { spec: "spec.json".into(), ..VmArgs::default() });
        assert!(VmArgs::parse(&["s".into(), "--netns".into()]).unwrap_err().contains("--netns needs a value"));
        assert!(VmArgs::parse(&["s".into(), "--tty".into()]).unwrap_err().contains("unknown flag --tty"));
        assert!(VmArgs::parse(&[]).is_err());
    }
}
