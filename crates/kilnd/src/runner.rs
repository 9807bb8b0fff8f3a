//! One instance's runs on threads of kilnd: its VM made with `kiln_launch::prepare` (every launcher's path) and run
//! with `Vm::run` (whose threads are the VMM's own, with whatever confinement the VMM gives them), its output in the
//! instance's log, its end in its record; then, if its restart policy says so, after a back-off, the same spec
//! again. The thread that starts it returns once the first VM is made, or with the error that kept it from being
//! made. An instance the last kilnd kept (`Held::keep`) starts as the VM its snapshot holds, not as a new one.

use crate::console::LogConsole;
use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::held::{Held, SIGKILL};
use kiln_image::instance::{now, Instances, State};
use kiln_launch::{chain, LaunchError, LaunchSpec, Prepared};
use kiln_vmm::ready::Shape;
use kiln_vmm::snapshot::Opened;
use kiln_vmm::{HostSignals, Outcome};
use std::fs::File;
use std::io::Write;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first restart's back-off, doubled at each restart up to [`MAX_BACKOFF`] (Docker's are 100 ms and 1 min).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long starts the back-off afresh.
const STEADY: Duration = Duration::from_secs(10);

/// The wait before restart number `n` (0-based since the last steady run).
pub fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << n.min(16)).min(MAX_BACKOFF)
}

/// An instance's runs as its restart policy sees them: the back-off grows with the runs since the last steady one.
#[derive(Default)]
pub(crate) struct Restarts {
    since_steady: u32,
}

impl Restarts {
    /// After a run of instance `id` that began at `started` and ended with `code` for `reason`: whether to run it
    /// again, once the back-off has passed; if not, its end is recorded (by the policy, or as stopped while waiting).
    pub(crate) fn again(
        &mut self,
        daemon: &Daemon,
        id: &str,
        held: &Held,
        started: Instant,
        code: i32,
        reason: &str,
    ) -> bool {
        if started.elapsed() >= STEADY {
            self.since_steady = 0;
        }
        if !daemon.after_run(id, code, reason, held.stopped()) {
            return false;
        }
        let delay = backoff(self.since_steady);
        self.since_steady += 1;
        if !held.wait_restart(delay) {
            daemon.ended(id, code, format!("stopped while waiting to restart; it had {reason}"));
            return false;
        }
        true
    }
}

/// Starts the instance `id` (recorded) from `spec`, or on from the snapshot `kept` (the last kilnd's): returns once
/// its VM runs.
pub fn start(daemon: &Arc<Daemon>, id: &str, spec: LaunchSpec, kept: Option<Opened>) -> Result<Arc<Held>, ApiError> {
    let held = Arc::new(Held::default());
    let (ready_tx, ready_rx) = channel();
    let (daemon2, id2, held2) = (daemon.clone(), id.to_string(), held.clone());
    std::thread::Builder::new()
        .name(format!("instance-{}", &id[..id.len().min(8)]))
        .spawn(move || runs(&daemon2, &id2, &spec, kept, &held2, move |r| drop(ready_tx.send(r))))
        .map_err(|e| ApiError::Internal(format!("cannot start a thread for the instance: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(held),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Internal("the instance's thread ended before its VM was made".into())),
    }
}

/// Runs the instance until it ends for good; `ready` hears how the first VM's making went.
fn runs(
    daemon: &Daemon,
    id: &str,
    spec: &LaunchSpec,
    mut kept: Option<Opened>,
    held: &Held,
    ready: impl FnOnce(Result<(), ApiError>),
) {
    let instances = Instances::new(daemon.store());
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(instances.log_path(id)) {
        Ok(log) => log,
        Err(e) => return ready(Err(ApiError::Internal(format!("cannot open the instance's log: {e}")))),
    };
    let mut ready = Some(ready);
    let mut restarts = Restarts::default();
    loop {
        let made = match kept.take() {
            Some(snapshot) => adopt(daemon, id, spec, snapshot),
            None => make(daemon, id, spec, &log),
        };
        let (prepared, core) = match made {
            Ok(made) => made,
            Err(e) => match ready.take() {
                Some(ready) => return ready(Err(e)),
                None => {
                    let why = format!("cannot restart: {e}");
                    let _ = writeln!(&log, "kiln: {why}");
                    daemon.ended(id, i32::from(kiln_launch::KILN_ERROR), why);
                    break;
                }
            },
        };
        if let Some(ready) = ready.take() {
            ready(Ok(()));
        }
        let started = Instant::now();
        let Ran::Ended(code, reason) = run_vm(daemon, id, (prepared, core), spec, held, &log) else {
            // Written for the next kilnd, which runs it on: its record stays running.
            let (pid, pid_start) = daemon.process();
            let _ = instances.update(id, |i| (i.kept, i.pid, i.pid_start) = (true, Some(pid), Some(pid_start)));
            break;
        };
        if !restarts.again(daemon, id, held, started, code, &reason) {
            break;
        }
    }
    held.set_ended();
}

/// Makes the VM and records the instance running; with the unnamed file in its folder that a crash's core file is
/// written into (as for `kiln run -d`'s instances: the crashed vCPU's thread only writes), if one can be made.
fn make(daemon: &Daemon, id: &str, spec: &LaunchSpec, log: &File) -> Result<(Prepared, Option<File>), ApiError> {
    let instances = Instances::new(daemon.store());
    let core = instances.unnamed_core(id).inspect_err(|e| tracing::warn!("instance {id}: no core file: {e}")).ok();
    let mut with_core = spec.clone();
    with_core.core_file = core.as_ref().map(|_| instances.core_path(id));
    let ready = daemon.ready_machine(Shape::of(spec.memory, spec.cpus));
    let mut prepared = kiln_launch::prepare_on(&with_core, kiln_libos::KERNEL, ready).map_err(|e| launch_error(&e))?;
    let core = core.and_then(|file| {
        let shared = file.try_clone().ok()?;
        prepared.vm.core_into(shared).then_some(file)
    });
    for notice in &prepared.notices {
        let _ = writeln!(&mut &*log, "kiln: {notice}");
    }
    let (pid, pid_start) = daemon.process();
    Instances::new(daemon.store()).update(id, |i| {
        i.state = State::Running;
        i.health = i.health_check.as_ref().map(|_| kiln_image::health::Health::Starting);
        (i.pid, i.pid_start, i.started_ms) = (Some(pid), Some(pid_start), Some(now()));
    })?;
    Ok((prepared, core))
}

/// The VM of a snapshot (the one the last kilnd kept, or one `POST /instances/restore` names), ready to run on; the record says it runs on this kilnd, with the
/// start time it had (its uptime goes on). The snapshot file goes once its VM is made: the VM maps it privately, so
/// its pages stay reachable, and a kilnd that crashed after this never runs an older state of the instance again.
fn adopt(daemon: &Daemon, id: &str, spec: &LaunchSpec, snapshot: Opened) -> Result<(Prepared, Option<File>), ApiError> {
    let started = Instant::now();
    let instances = Instances::new(daemon.store());
    // A crash's core file goes into the instance's folder, as for a VM it boots (`make`), not where the snapshot's
    // specification says (the snapshotted instance's, for `POST /instances/restore`).
    let core = instances.unnamed_core(id).inspect_err(|e| tracing::warn!("instance {id}: no core file: {e}")).ok();
    let mut with_core = spec.clone();
    with_core.core_file = core.as_ref().map(|_| instances.core_path(id));
    let ready = daemon.ready_machine(snapshot.shape());
    let mut vm = kiln_launch::restore_on(&with_core, snapshot, ready).map_err(|e| launch_error(&e))?;
    let core = core.and_then(|file| {
        let shared = file.try_clone().ok()?;
        vm.core_into(shared).then_some(file)
    });
    let _ = std::fs::remove_file(instances.dir(id).join(kiln_image::instance::KEPT_SNAPSHOT));
    let (pid, pid_start) = daemon.process();
    instances.update(id, |i| {
        (i.state, i.kept) = (State::Running, false);
        i.health = i.health_check.as_ref().map(|_| kiln_image::health::Health::Starting);
        (i.pid, i.pid_start) = (Some(pid), Some(pid_start));
        // A kept instance's uptime goes on; a restored one (`POST /instances/restore`) starts now.
        i.started_ms.get_or_insert_with(now);
    })?;
    tracing::debug!(id, took = ?started.elapsed(), "kept instance restored");
    Ok((Prepared { vm, object_sites: None, notices: Vec::new() }, core))
}

/// How a run of the VM ended.
enum Ran {
    /// The exit code and why.
    Ended(i32, String),
    /// It was written for the next kilnd ([`Held::keep`]).
    Kept,
}

/// Runs the VM to its end: the exit code and why, also written to the log unless the program just exited.
/// `kiln debug` reaches it through `debug.sock` in its folder, as it reaches `kiln run -d`'s instances; a crash's
/// core file, written into `core`, is named `core` there.
fn run_vm(
    daemon: &Daemon,
    id: &str,
    (prepared, core): (Prepared, Option<File>),
    spec: &LaunchSpec,
    held: &Held,
    log: &File,
) -> Ran {
    let mut vm = prepared.vm;
    let console = match log.try_clone() {
        Ok(log) => Arc::new(LogConsole::new(log)),
        Err(e) => {
            return Ran::Ended(i32::from(kiln_launch::KILN_ERROR), format!("kiln failed: cannot share the log: {e}"))
        }
    };
    let launch = match serde_json::to_value(spec) {
        Ok(launch) => launch,
        Err(e) => return Ran::Ended(i32::from(kiln_launch::KILN_ERROR), format!("kiln failed: its launch: {e}")),
    };
    let (signals, signals_rx) = channel();
    held.attach(signals);
    held.control(vm.controller(), launch);
    let instances = Instances::new(daemon.store());
    let _debug_socket = match kiln_vmm::debug::attach::DebugSocket::bind(&instances.dir(id)) {
        Ok((socket, file)) => {
            vm.accept_debuggers(socket);
            Some(file)
        }
        Err(e) => {
            tracing::warn!("instance {id}: kiln debug cannot reach it: {}", chain(&e));
            None
        }
    };
    // A stop that came while the VM was being made: it has been asked to end already.
    if held.stopped() {
        held.kill(held.kill_reason().unwrap_or_else(|| "stopped before it ran".into()));
    }
    // The VM's signal thread blocks in `recv`; it ends at the first return after the run, when the sender is gone.
    let wait = move || signals_rx.recv().map(|s| vec![s]).unwrap_or_default();
    let host_signals = HostSignals { wait: Box::new(wait), grace: Duration::from_secs(spec.signals.grace_secs.into()) };
    let checker = health_checker(daemon, id, spec);
    let result = vm.run(console, host_signals);
    if let (Ok((Outcome::Crashed(crash), _)), Some(file)) = (&result, &core) {
        match &crash.core_file {
            Some(Ok((path, len))) => {
                let line = match instances.name_core(id, file) {
                    Ok(()) => format!("kiln: core dumped to {} ({} KiB)", path.display(), len.div_ceil(1024)),
                    Err(e) => format!("kiln: no core file: cannot name it {}: {e}", path.display()),
                };
                let _ = writeln!(&mut &*log, "{line}");
            }
            Some(Err(e)) => {
                let _ = writeln!(&mut &*log, "kiln: no core file: {e}");
            }
            None => {}
        }
    }
    drop(checker);
    daemon.verdicts().forget(id);
    held.detach();
    let (code, reason) = match result {
        Ok((Outcome::Snapshotted(_), _)) if held.keeping() => return Ran::Kept,
        Ok((Outcome::Killed(SIGKILL), _)) => {
            (128 + SIGKILL as i32, held.kill_reason().unwrap_or_else(|| "killed by SIGKILL".into()))
        }
        Ok((outcome, _)) => {
            let ending = kiln_launch::ending(&outcome);
            (i32::from(ending.code), ending.reason)
        }
        Err(e) => (i32::from(kiln_launch::KILN_ERROR), format!("kiln failed: running the VM: {}", chain(&e))),
    };
    if reason != "exited" {
        let _ = writeln!(&mut &*log, "kiln: {reason}");
    }
    Ran::Ended(code, reason)
}

/// The instance's health checker, if its record has a check (checked at its creation).
pub(crate) fn health_checker(daemon: &Daemon, id: &str, spec: &LaunchSpec) -> Option<crate::health::Checker> {
    let check = Instances::new(daemon.store()).load(id).ok()?.health_check?;
    let (probe, host_ip) = crate::health::published_for(&check, spec).ok()?;
    let (root, verdicts) = (daemon.store().root().to_path_buf(), daemon.verdicts().clone());
    Some(crate::health::start(root, verdicts, id.to_string(), check, probe, host_ip))
}

/// A launch failure: the request's fault (400) unless the host failed (500).
fn launch_error(e: &LaunchError) -> ApiError {
    let message = format!("cannot start the instance: {}", chain(e));
    match e {
        LaunchError::Vm(_) | LaunchError::NoHome(_) | LaunchError::Store(_) | LaunchError::Random(_) => {
            ApiError::Internal(message)
        }
        _ => ApiError::BadRequest(message),
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let ms: Vec<u128> = (0..5).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600]);
        assert_eq!(backoff(10), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }
}
