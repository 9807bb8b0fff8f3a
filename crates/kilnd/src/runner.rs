//! One instance's run on threads of kilnd: its VM made with `kiln_launch::prepare` (every launcher's path) and run
//! with `Vm::run` (whose threads are the VMM's own, with whatever confinement the VMM gives them), its output in the
//! instance's log, its end in its record. The thread that starts it returns once the VM is made, or with the error
//! that kept it from being made.

use crate::console::LogConsole;
use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::held::{Held, SIGKILL};
use kiln_image::instance::{now, Instances, State};
use kiln_launch::{chain, LaunchError, LaunchSpec, Prepared};
use kiln_vmm::{HostSignals, Outcome};
use std::io::Write;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

/// Starts the instance `id` (recorded, state created) from `spec`: returns once its VM runs.
pub fn start(daemon: &Arc<Daemon>, id: &str, spec: LaunchSpec) -> Result<Arc<Held>, ApiError> {
    let (signals, signals_rx) = channel();
    let held = Arc::new(Held::new(signals));
    let (ready_tx, ready_rx) = channel();
    let (daemon2, id2, held2) = (daemon.clone(), id.to_string(), held.clone());
    std::thread::Builder::new()
        .name(format!("instance-{}", &id[..id.len().min(8)]))
        .spawn(move || run(&daemon2, &id2, &spec, &held2, signals_rx, |r| drop(ready_tx.send(r))))
        .map_err(|e| ApiError::Internal(format!("cannot start a thread for the instance: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(held),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Internal("the instance's thread ended before its VM was made".into())),
    }
}

/// Prepares the VM, says so through `ready`, runs it and records its end.
fn run(
    daemon: &Daemon,
    id: &str,
    spec: &LaunchSpec,
    held: &Held,
    signals: Receiver<u32>,
    ready: impl FnOnce(Result<(), ApiError>),
) {
    let instances = Instances::new(daemon.store());
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(instances.log_path(id)) {
        Ok(log) => log,
        Err(e) => return ready(Err(ApiError::Internal(format!("cannot open the instance's log: {e}")))),
    };
    let Prepared { vm, notices, .. } = match kiln_launch::prepare(spec, kiln_libos::KERNEL) {
        Ok(prepared) => prepared,
        Err(e) => return ready(Err(launch_error(&e))),
    };
    for notice in notices {
        let _ = writeln!(&log, "kiln: {notice}");
    }
    let (pid, pid_start) = daemon.process();
    let running = instances.update(id, |i| {
        i.state = State::Running;
        (i.pid, i.pid_start, i.started_ms) = (Some(pid), Some(pid_start), Some(now()));
    });
    if let Err(e) = running {
        return ready(Err(e.into()));
    }
    let console = match log.try_clone() {
        Ok(log) => Arc::new(LogConsole::new(log)),
        Err(e) => return ready(Err(ApiError::Internal(format!("cannot share the instance's log: {e}")))),
    };
    ready(Ok(()));
    // The VM's signal thread blocks in `recv`; it ends at the first return after the run, when every sender is gone.
    let wait = move || signals.recv().map(|s| vec![s]).unwrap_or_default();
    let host_signals = HostSignals { wait: Box::new(wait), grace: Duration::from_secs(spec.signals.grace_secs.into()) };
    let result = vm.run(console, host_signals);
    let (code, reason) = match result {
        Ok((outcome, _)) => {
            let ending = kiln_launch::ending(&outcome);
            match outcome {
                Outcome::Killed(SIGKILL) => (ending.code, held.kill_reason().unwrap_or(ending.reason)),
                _ => (ending.code, ending.reason),
            }
        }
        Err(e) => (kiln_launch::KILN_ERROR, format!("kiln failed: running the VM: {}", chain(&e))),
    };
    if reason != "exited" {
        let _ = writeln!(&log, "kiln: {reason}");
    }
    daemon.ended(id, i32::from(code), reason);
    held.set_ended();
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
