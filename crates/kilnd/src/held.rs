//! An instance that runs on threads of this process: how kilnd reaches its VM (the signals it forwards, SIGKILL to
//! end it) and learns that it ended.

use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The host signal numbers kilnd sends a VM (`kiln_vmm::HostSignals`).
pub const SIGTERM: u32 = 15;
pub const SIGKILL: u32 = 9;

pub struct Held {
    /// To the VM's host-signal thread; `None` once the run has returned.
    signals: Mutex<Option<Sender<u32>>>,
    ended: Mutex<bool>,
    ended_changed: Condvar,
    /// Why kilnd killed it, recorded instead of "killed by SIGKILL".
    kill_reason: Mutex<Option<String>>,
}

impl Held {
    pub fn new(signals: Sender<u32>) -> Self {
        Held {
            signals: Mutex::new(Some(signals)),
            ended: Mutex::new(false),
            ended_changed: Condvar::new(),
            kill_reason: Mutex::new(None),
        }
    }

    /// Sends `signal` to the VM; false if its run has ended.
    pub fn signal(&self, signal: u32) -> bool {
        let signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        signals.as_ref().is_some_and(|s| s.send(signal).is_ok())
    }

    /// Ends the VM at once, recording `reason`.
    pub fn kill(&self, reason: String) {
        *self.kill_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.signal(SIGKILL);
    }

    pub fn kill_reason(&self) -> Option<String> {
        self.kill_reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The run has returned and its ending is recorded.
    pub fn set_ended(&self) {
        self.signals.lock().unwrap_or_else(|e| e.into_inner()).take();
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ended_changed.notify_all();
    }

    /// Waits up to `limit` for the end; whether it came.
    pub fn wait_ended(&self, limit: Duration) -> bool {
        let deadline = Instant::now().checked_add(limit);
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while !*ended {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            ended = self.ended_changed.wait_timeout(ended, left).unwrap_or_else(|e| e.into_inner()).0;
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
        let held = Arc::new(Held::new(tx));
        assert!(held.signal(SIGTERM));
        assert_eq!(rx.recv().unwrap(), SIGTERM);
        assert!(!held.wait_ended(Duration::from_millis(10)));
        let ender = held.clone();
        let thread = std::thread::spawn(move || ender.set_ended());
        assert!(held.wait_ended(Duration::from_secs(10)));
        thread.join().unwrap();
        assert!(!held.signal(SIGTERM), "ended: no VM to signal");
        held.kill("why".into());
        assert_eq!(held.kill_reason().as_deref(), Some("why"));
    }
}
