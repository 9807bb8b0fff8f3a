//! kilnd's jailed instances: each run of one is a jailed instance process, the one `kiln run -d --jail` makes (the
//! `kiln` executable, told by [`INSTANCE_ENV`] which record to launch: new namespaces, an empty root, a uid of its own,
//! rlimits, seccomp), supervised by kilnd from outside as it supervises the VMs on its threads: the restart policy,
//! the health check, the log (the process's output), stop and kill (signals sent through a pidfd), and the end
//! recorded. Told by [`SUPERVISOR_ENV`] that kilnd supervises it, the instance process leaves its record to kilnd: it
//! says "booted" on [`READY_FD`] and why its program ended on [`ENDING_FD`], and kilnd records the rest.

use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::held::{Held, SIGKILL};
use crate::runner::{health_checker, Restarts};
use kiln_image::instance::{now, Instances, State};
use kiln_launch::{LaunchSpec, KILN_ERROR};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Instant;

/// Names the instance record to the process that runs it.
pub const INSTANCE_ENV: &str = "KILN_INSTANCE";
/// Set (to `kilnd`) for an instance process that kilnd supervises.
pub const SUPERVISOR_ENV: &str = "KILN_SUPERVISOR";
/// The descriptor the instance process says "booted" on (one byte), as for `kiln run -d`'s starter.
pub const READY_FD: i32 = 3;
/// The descriptor a supervised instance process says why its program ended on (words, then it closes).
pub const ENDING_FD: i32 = 4;

/// Whether kilnd can run jailed instances: as root (the jail makes namespaces and changes uid), with the `kiln`
/// executable to run them with. The executable, or why not.
pub fn kiln_executable() -> Result<PathBuf, ApiError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ApiError::BadRequest(
            "jail: kilnd does not run as root, and a jail needs root (it makes namespaces and changes uid)".into(),
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| ApiError::Internal(format!("jail: cannot find kilnd's own executable: {e}")))?;
    // `kiln daemon` is kiln itself; a `kilnd` executable runs the `kiln` beside it.
    if exe.file_name().is_some_and(|n| n == "kiln") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("kiln");
    match beside.is_file() {
        true => Ok(beside),
        false => Err(ApiError::Internal(format!(
            "jail: jailed instances run with the kiln executable, and there is none beside {}",
            exe.display()
        ))),
    }
}

/// Starts the jailed instance `id` (recorded, its launch specification in its record) with `kiln`: returns once its
/// first process has booted its VM, or with why it did not.
pub fn start(daemon: &Arc<Daemon>, id: &str, spec: LaunchSpec, kiln: PathBuf) -> Result<Arc<Held>, ApiError> {
    let held = Arc::new(Held::default());
    held.set_jailed();
    let (ready_tx, ready_rx) = channel();
    let (daemon2, id2, held2) = (daemon.clone(), id.to_string(), held.clone());
    // The processes are this thread's children: it waits for them, and PR_SET_PDEATHSIG ties them to it, which lives
    // until the instance has ended for good (or kilnd has died).
    std::thread::Builder::new()
        .name(format!("jailed-{}", &id[..id.len().min(8)]))
        .spawn(move || runs(&daemon2, &id2, &spec, &kiln, &held2, move |r| drop(ready_tx.send(r))))
        .map_err(|e| ApiError::Internal(format!("cannot start a thread for the instance: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(held),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Internal("the instance's thread ended before its process booted".into())),
    }
}

/// Runs the instance's processes until it ends for good, as `runner` runs VMs; `ready` hears how the first boot went.
fn runs(
    daemon: &Daemon,
    id: &str,
    spec: &LaunchSpec,
    kiln: &Path,
    held: &Held,
    ready: impl FnOnce(Result<(), ApiError>),
) {
    let instances = Instances::new(daemon.store());
    let log_path = instances.log_path(id);
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(log) => log,
        Err(e) => return ready(Err(ApiError::Internal(format!("cannot open the instance's log: {e}")))),
    };
    let mut ready = Some(ready);
    let mut restarts = Restarts::default();
    loop {
        let process = match boot(daemon, id, kiln, &log, &log_path) {
            Ok(process) => process,
            Err(e) => match ready.take() {
                Some(ready) => return ready(Err(e)),
                None => {
                    let why = format!("cannot restart: {e}");
                    let _ = writeln!(&log, "kiln: {why}");
                    daemon.ended(id, i32::from(KILN_ERROR), why);
                    break;
                }
            },
        };
        if let Some(ready) = ready.take() {
            ready(Ok(()));
        }
        let started = Instant::now();
        let (code, reason) = supervise(daemon, id, spec, process, held, &log);
        if !restarts.again(daemon, id, held, started, code, &reason) {
            break;
        }
    }
    held.set_ended();
}

/// A booted instance process.
struct Process {
    child: Child,
    /// Signals go through it: never to another process that took its pid once it was reaped.
    pidfd: OwnedFd,
    /// Where it says why its program ended.
    ending: File,
}

/// Starts an instance process and waits until its VM has booted (recorded running), or says why it did not.
fn boot(daemon: &Daemon, id: &str, kiln: &Path, log: &File, log_path: &Path) -> Result<Process, ApiError> {
    let instances = Instances::new(daemon.store());
    let image = instances.load(id)?.image;
    // Where this run's lines start: a boot that fails says why in its last `kiln: ` line.
    let log_start = log.metadata().map_or(0, |m| m.len());
    let internal = |what: &str, e: std::io::Error| ApiError::Internal(format!("cannot {what}: {e}"));
    let (ready_read, ready_write) = pipe().map_err(|e| internal("make a pipe", e))?;
    let (ending_read, ending_write) = pipe().map_err(|e| internal("make a pipe", e))?;
    let (ready_fd, ending_fd) = (ready_write.as_raw_fd(), ending_write.as_raw_fd());
    let mut command = Command::new(kiln);
    command
        .args(["run", "-d", "--jail", "--"])
        .arg(&image)
        .env(INSTANCE_ENV, id)
        .env(SUPERVISOR_ENV, "kilnd")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| internal("share the log", e))?)
        .stderr(log.try_clone().map_err(|e| internal("share the log", e))?);
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (setsid, sigemptyset,
    // pthread_sigmask, signal, prctl, fcntl, dup2) on memory of its own.
    unsafe {
        command.pre_exec(move || {
            // Its own session: a terminal's signals to kilnd are not its. It dies with this thread (kilnd's end).
            libc::setsid();
            // kilnd's threads block its stop signals (they wait for them in `sigwait`), and exec keeps the mask and
            // ignored signals: the jailed VMM would never take a SIGTERM.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                libc::signal(signal, libc::SIG_DFL);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Moved above both targets first, so that neither dup2 overwrites the other pipe's end; dup2 leaves the
            // targets open across exec, the copies close there.
            let ready = libc::fcntl(ready_fd, libc::F_DUPFD_CLOEXEC, 10);
            let ending = libc::fcntl(ending_fd, libc::F_DUPFD_CLOEXEC, 10);
            if ready < 0 || ending < 0 || libc::dup2(ready, READY_FD) < 0 || libc::dup2(ending, ENDING_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| internal(&format!("start {}", kiln.display()), e))?;
    drop((ready_write, ending_write));
    let pidfd = pidfd_open(child.id());
    let mut byte = [0u8; 1];
    let booted = File::from(ready_read).read(&mut byte).is_ok_and(|n| n == 1);
    let pidfd = match (booted, pidfd) {
        (true, Ok(pidfd)) => pidfd,
        (true, Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(internal("watch the instance's process (pidfd_open)", e));
        }
        (false, _) => {
            let status = child.wait().map_err(|e| internal("wait for the instance's process", e))?;
            let log = std::fs::read(log_path).unwrap_or_default();
            let this_run = String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default()).into_owned();
            let why = this_run.lines().rev().find_map(|l| l.strip_prefix("kiln: ")).map(str::to_string);
            let why = why.unwrap_or_else(|| format!("its jailed process ended before the VM booted ({status})"));
            return Err(ApiError::BadRequest(format!("cannot start the instance: {why}")));
        }
    };
    let (pid, pid_start) = daemon.process();
    instances.update(id, |i| {
        i.state = State::Running;
        i.health = i.health_check.as_ref().map(|_| kiln_image::health::Health::Starting);
        (i.pid, i.pid_start, i.started_ms) = (Some(pid), Some(pid_start), Some(now()));
    })?;
    Ok(Process { child, pidfd, ending: File::from(ending_read) })
}

/// Supervises a booted process to its end (signals from `held`, the health check): its exit code and why.
fn supervise(daemon: &Daemon, id: &str, spec: &LaunchSpec, process: Process, held: &Held, log: &File) -> (i32, String) {
    let Process { mut child, pidfd, mut ending } = process;
    let (signals, signals_rx) = channel::<u32>();
    held.attach(signals);
    // The jail's parent forwards SIGTERM (and the other stop signals) to the jailed VMM; SIGKILL ends it, and the
    // jailed process with it (its PR_SET_PDEATHSIG).
    let forwarder = std::thread::Builder::new().name("jailed-signals".into()).spawn(move || {
        while let Ok(signal) = signals_rx.recv() {
            if let Err(e) = pidfd_send_signal(&pidfd, signal) {
                tracing::debug!("signal {signal} to a jailed instance process: {e}");
            }
        }
    });
    if let Err(e) = &forwarder {
        tracing::error!("instance {id}: no thread to forward signals: {e}; killing it");
        let _ = child.kill();
    }
    // A stop that came while the process booted: it has been asked to end already.
    if held.stopped() {
        held.kill(held.kill_reason().unwrap_or_else(|| "stopped before it ran".into()));
    }
    let checker = health_checker(daemon, id, spec);
    let status = child.wait();
    drop(checker);
    daemon.verdicts().forget(id);
    held.detach();
    if let Ok(forwarder) = forwarder {
        let _ = forwarder.join();
    }
    let mut said = String::new();
    // Read to its end: the jailed child holds a copy, closed when it has ended too.
    let _ = ending.read_to_string(&mut said);
    remove_cgroup(child.id());
    let status = match status {
        Ok(status) => status,
        Err(e) => return (i32::from(KILN_ERROR), format!("kiln failed: cannot wait for its jailed process: {e}")),
    };
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => i32::from(KILN_ERROR),
    };
    let reason = match (status.signal(), held.kill_reason()) {
        (Some(signal), Some(reason)) if signal == SIGKILL as i32 => reason,
        _ if !said.is_empty() => return (code, said),
        (Some(signal), None) => format!("its jailed process was killed by signal {signal}"),
        _ => format!("its jailed process ended with {status} without saying why"),
    };
    let _ = writeln!(&mut &*log, "kiln: {reason}");
    (code, reason)
}

/// Removes the jailed child's cgroup (named by its parent's pid), which a jail parent that was killed leaves behind;
/// the child may take a moment to leave it.
fn remove_cgroup(key: u32) {
    for _ in 0..50 {
        if kiln_jail::cgroup::remove(key) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!("cannot remove the cgroup of jailed instance process {key}: a process is still in it");
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor (close-on-exec, as pidfds are) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: u32) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal as libc::c_int, std::ptr::null::<u8>(), 0)
    };
    match ret {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
