//! An instance that runs on threads of this process: how kilnd reaches its VM (the signals it forwards, SIGKILL to
//! end it, a snapshot to keep it across kilnd's restart), asks it to stay stopped (no restart), and learns that it
//! ended for good.

use kiln_vmm::snapshot::{Request, SnapshotError, Written};
use kiln_vmm::Controller;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The host signal numbers kilnd sends a VM (`kiln_vmm::HostSignals`).
pub const SIGTERM: u32 = 15;
pub const SIGKILL: u32 = 9;

#[derive(Default)]
struct Status {
    /// To the running VM's host-signal thread; `None` between runs (waiting to restart) and after the last.
    signals: Option<Sender<u32>>,
    /// The running VM's controller (snapshots), and the launch specification its snapshot keeps.
    controller: Option<(Controller, serde_json::Value)>,
    /// Its VM is being (or was) written for the next kilnd: its run's end is not an end.
    keeping: bool,
    /// The user (or kilnd's own stop) asked it to stop: no restart.
    stopped: bool,
    /// Its last run has returned, its ending is recorded, and no restart follows.
    ended: bool,
    /// Why kilnd killed it, recorded instead of "killed by SIGKILL".
    kill_reason: Option<String>,
    /// It runs as a jailed process of its own (`crate::jailed`), which is not kept across kilnd's restart.
    jailed: bool,
}

#[derive(Default)]
pub struct Held {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Held {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A run starts: signals go to its VM.
    pub fn attach(&self, signals: Sender<u32>) {
        self.status().signals = Some(signals);
    }

    /// Snapshots of the running VM go to `controller`, keeping `launch` (its launch specification).
    pub fn control(&self, controller: Controller, launch: serde_json::Value) {
        self.status().controller = Some((controller, launch));
    }

    /// It runs as jailed processes, not on kilnd's threads.
    pub fn set_jailed(&self) {
        self.status().jailed = true;
    }

    /// The run has returned.
    pub fn detach(&self) {
        let mut status = self.status();
        status.signals = None;
        status.controller = None;
    }

    /// Pauses the running VM at its quiescent point, writes it to `path` and ends it there, so that the next kilnd
    /// runs it on ([`Held::keeping`] then says so to the run's thread). The reason it could not be, if not: no VM runs
    /// (between restarts), it is being stopped, or the snapshot was refused (a debugger attached).
    pub fn keep(&self, path: &Path) -> Result<Written, String> {
        let (controller, launch) = {
            let mut status = self.status();
            if status.stopped {
                return Err("it is being stopped".into());
            }
            if status.jailed {
                return Err("it is jailed, a process of its own, which kilnd does not snapshot".into());
            }
            let Some((controller, launch)) = status.controller.clone() else {
                return Err("no VM of it runs (it waits to restart)".into());
            };
            status.keeping = true;
            (controller, launch)
        };
        let request = Request { path: path.to_path_buf(), keep_running: false, launch };
        let written = controller.snapshot(request).map_err(|e| kiln_launch::chain(&e));
        if written.is_err() {
            self.status().keeping = false;
        }
        written
    }

    /// A snapshot of the running VM to `path` (`kiln snapshot`): it runs on, or ends there for good (no restart).
    /// None if no VM runs.
    pub fn snapshot(&self, path: &Path, keep_running: bool) -> Option<Result<Written, SnapshotError>> {
        let (controller, launch, was_stopped) = {
            let mut status = self.status();
            let (controller, launch) = status.controller.clone()?;
            let was_stopped = status.stopped;
            // Set before the VM can end with the snapshot, so that its thread sees no reason to restart it.
            status.stopped |= !keep_running;
            (controller, launch, was_stopped)
        };
        let written = controller.snapshot(Request { path: path.to_path_buf(), keep_running, launch });
        if written.is_err() {
            self.status().stopped = was_stopped;
        }
        Some(written)
    }

    /// Whether its VM was written for the next kilnd (its run ended there).
    pub fn keeping(&self) -> bool {
        self.status().keeping
    }

    /// Sends `signal` to the running VM; false if none runs.
    fn signal(&self, signal: u32) -> bool {
        self.status().signals.as_ref().is_some_and(|s| s.send(signal).is_ok())
    }

    /// Asks the program to stop (SIGTERM), for good: no restart follows.
    pub fn stop(&self) {
        self.status().stopped = true;
        self.changed.notify_all();
        self.signal(SIGTERM);
    }

    /// Ends the VM at once, for good, recording `reason`.
    pub fn kill(&self, reason: String) {
        {
            let mut status = self.status();
            status.stopped = true;
            status.kill_reason = Some(reason);
        }
        self.changed.notify_all();
        self.signal(SIGKILL);
    }

    pub fn stopped(&self) -> bool {
        self.status().stopped
    }

    pub fn kill_reason(&self) -> Option<String> {
        self.status().kill_reason.clone()
    }

    /// Waits `delay` before a restart; false if a stop came meanwhile.
    pub fn wait_restart(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut status = self.status();
        while !status.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            status = self.changed.wait_timeout(status, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        false
    }

    /// Its last run has returned and its ending is recorded.
    pub fn set_ended(&self) {
        {
            let mut status = self.status();
            status.signals = None;
            status.ended = true;
        }
        self.changed.notify_all();
    }

    /// Waits up to `limit` for the end; whether it came.
    pub fn wait_ended(&self, limit: Duration) -> bool {
        let deadline = Instant::now().checked_add(limit);
        let mut status = self.status();
        while !status.ended {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            status = self.changed.wait_timeout(status, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn signals_reach_the_vm_until_it_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        let held = Arc::new(Held::default());
        held.attach(tx);
        held.stop();
        assert_eq!(rx.recv().unwrap(), SIGTERM);
        assert!(held.stopped());
        assert!(!held.wait_ended(Duration::from_millis(10)));
        let ender = held.clone();
        let thread = std::thread::spawn(move || ender.set_ended());
        assert!(held.wait_ended(Duration::from_secs(10)));
        thread.join().unwrap();
        assert!(!held.signal(SIGTERM), "ended: no VM to signal");
        held.kill("why".into());
        assert_eq!(held.kill_reason().as_deref(), Some("why"));
    }

    #[test]
    fn a_stop_cuts_the_wait_for_a_restart_short() {
        let held = Arc::new(Held::default());
        assert!(held.wait_restart(Duration::from_millis(1)));
        let stopper = held.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            stopper.stop();
        });
        let start = Instant::now();
        assert!(!held.wait_restart(Duration::from_secs(30)));
        assert!(start.elapsed() < Duration::from_secs(10));
        thread.join().unwrap();
    }
}
