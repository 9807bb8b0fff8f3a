//! Bringing every vCPU to a quiescent point for a snapshot: each vCPU, asked at its next turn of its loop (out of
//! KVM_RUN, no hypercall half-answered), hands over its state and waits; the requester writes the snapshot and then
//! lets them run on or end the VM.

use super::vcpu_state::VcpuState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What a held vCPU does once the snapshot is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Runs on from where it was.
    Run,
    /// The VM ends: the vCPU's thread returns.
    End,
}

#[derive(Default)]
struct Inner {
    /// Each vCPU's state once it holds; `gone` for one whose thread has ended.
    held: Vec<Option<VcpuState>>,
    gone: Vec<bool>,
    /// Set by [`Pause::release`]; taken by the vCPUs as they leave.
    release: Option<Release>,
    /// vCPUs still in [`Pause::hold`] after a release.
    holding: usize,
}

pub(crate) struct Pause {
    wanted: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Pause {
    pub(crate) fn new(vcpus: usize) -> Self {
        let inner = Inner { held: vec![None; vcpus], gone: vec![false; vcpus], ..Inner::default() };
        Self { wanted: AtomicBool::new(false), inner: Mutex::new(inner), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether vCPUs must hold at their next turn (cheap: read at every turn of every vCPU's loop).
    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    /// Asks every vCPU to hold; the caller then wakes and kicks them. False if a pause is already under way.
    pub(crate) fn request(&self) -> bool {
        let inner = self.lock();
        if self.wanted() || inner.holding > 0 {
            return false;
        }
        self.wanted.store(true, Ordering::SeqCst);
        true
    }

    /// vCPU `id` holds with `state` until the requester releases it; returns what to do then.
    pub(crate) fn hold(&self, id: usize, state: VcpuState) -> Release {
        let mut inner = self.lock();
        if !self.wanted() {
            return Release::Run;
        }
        inner.held[id] = Some(state);
        inner.holding += 1;
        self.changed.notify_all();
        while inner.release.is_none() {
            inner = self.changed.wait(inner).unwrap_or_else(PoisonError::into_inner);
        }
        let release = inner.release.unwrap_or(Release::Run);
        inner.held[id] = None;
        inner.holding -= 1;
        if inner.holding == 0 {
            inner.release = None;
        }
        self.changed.notify_all();
        release
    }

    /// vCPU `id`'s thread ended: it will never hold.
    pub(crate) fn gone(&self, id: usize) {
        let mut inner = self.lock();
        inner.gone[id] = true;
        self.changed.notify_all();
    }

    /// Waits until every vCPU holds (their states, by vCPU), or `timeout` passes or a vCPU's thread ended (None: the
    /// pause is called off and any vCPU holding runs on).
    pub(crate) fn wait_all(&self, timeout: Duration, mut nudge: impl FnMut()) -> Option<Vec<VcpuState>> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.gone.iter().any(|&g| g) {
                break;
            }
            if inner.held.iter().all(Option::is_some) {
                return Some(inner.held.iter_mut().filter_map(Option::take).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A vCPU kicked just before it entered KVM_RUN leaves at once; one that parked again is woken again.
            drop(inner);
            nudge();
            inner = self.lock();
            let slice = left.min(Duration::from_millis(5));
            inner = self.changed.wait_timeout(inner, slice).unwrap_or_else(PoisonError::into_inner).0;
        }
        drop(inner);
        self.release(Release::Run);
        None
    }

    /// Lets the held vCPUs go: on, or to their end.
    pub(crate) fn release(&self, how: Release) {
        let mut inner = self.lock();
        self.wanted.store(false, Ordering::SeqCst);
        if inner.holding > 0 {
            inner.release = Some(how);
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_vcpu_holds_then_runs_on() {
        let pause = Arc::new(Pause::new(2));
        assert!(pause.request());
        assert!(!pause.request(), "one pause at a time");
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let pause = pause.clone();
                std::thread::spawn(move || pause.hold(id, VcpuState::default()))
            })
            .collect();
        let states = pause.wait_all(Duration::from_secs(10), || {}).expect("both hold");
        assert_eq!(states.len(), 2);
        pause.release(Release::End);
        for t in threads {
            assert_eq!(t.join().unwrap(), Release::End);
        }
        assert!(!pause.wanted());
        assert!(pause.request(), "a second pause after the first");
    }

    #[test]
    fn a_vcpu_that_never_holds_calls_the_pause_off() {
        let pause = Pause::new(2);
        assert!(pause.request());
        pause.gone(1);
        assert!(pause.wait_all(Duration::from_secs(10), || {}).is_none());
        assert!(!pause.wanted());
        let pause = Pause::new(1);
        assert!(pause.request());
        assert!(pause.wait_all(Duration::from_millis(20), || {}).is_none());
        assert_eq!(pause.hold(0, VcpuState::default()), Release::Run, "not wanted any more");
    }
}
