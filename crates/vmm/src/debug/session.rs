//! A debugger's hold on a running VM (all-stop, as gdb's default mode): the vCPU threads and the debugger's thread
//! meet here. A vCPU that hits a breakpoint, finishes a single step or faults reports a [`StopEvent`] and asks every
//! vCPU to stop; each vCPU thread then waits at the top of its run loop ([`Session::hold`]), with its registers
//! published, until the debugger resumes them with what each should do ([`Resume`]). A vCPU parked in the library
//! OS's `Wait` runs no guest code and counts as stopped: should it wake meanwhile, it holds before KVM_RUN.
//!
//! The debugger's breakpoints live here too (address -> the byte the `int3` replaced), so that the vCPUs can tell a
//! breakpoint from the program's own `int3`, and memory reads show the program's bytes.

use super::threads::VcpuView;
use kvm_bindings::kvm_regs;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Why the program stopped, as a vCPU saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopEvent {
    /// A vCPU ran into a debugger breakpoint at `addr` (its %rip has been moved back there).
    Breakpoint {
        vcpu: usize,
        addr: u64,
    },
    /// A vCPU finished the single step it was asked for.
    Step {
        vcpu: usize,
    },
    /// vCPU `vcpu` reached the program's first instruction (its %rip is there).
    Started {
        vcpu: usize,
    },
    /// A vCPU's thread faulted with this Linux signal; resuming it with the signal hands it to the program.
    Signal {
        vcpu: usize,
        signal: u8,
    },
    /// The program exited with this code, or was ended by this signal.
    Exited(i32),
    Killed(u8),
}

/// What a held vCPU does when the debugger resumes the program.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resume {
    /// Registers the debugger changed.
    pub regs: Option<kvm_regs>,
    /// x87/SSE registers the debugger changed.
    pub fpu: Option<kvm_bindings::kvm_fpu>,
    /// Upper halves of AVX registers the debugger changed.
    pub ymmh: Option<super::avx::YmmHigh>,
    /// Run one instruction, then stop.
    pub step: bool,
    /// Deliver the fault it stopped on (else the faulting instruction runs again, as with gdb's `signal 0`).
    pub deliver: bool,
    /// Stay held (gdb's scheduler locking runs only the threads it names).
    pub stay: bool,
}

#[derive(Default)]
struct Inner {
    /// vCPU `i`'s state while it is held.
    held: Vec<Option<VcpuView>>,
    resume: Vec<Resume>,
    /// Bumped at every resume: a held vCPU waits until it changes.
    generation: u64,
    events: VecDeque<StopEvent>,
    /// Debugger breakpoints: address -> the program's byte under the `int3`.
    breakpoints: BTreeMap<u64, u8>,
    /// vCPU threads that returned (the VM is ending).
    gone: Vec<bool>,
    /// The debugger went away: nothing stops the VM any more.
    detached: bool,
    /// The program's first instruction and its byte, until a vCPU reaches it.
    first: Option<(u64, u8)>,
}

pub struct Session {
    stop: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Session {
    /// A session for a VM with `vcpus` vCPUs. With `first` (the program's first instruction, where the VMM wrote an
    /// `int3`, and the byte it replaced) the VM runs until it gets there; without, it stops at once.
    pub fn new(vcpus: usize, first: Option<(u64, u8)>) -> Self {
        let inner = Inner {
            held: vec![None; vcpus],
            resume: vec![Resume::default(); vcpus],
            gone: vec![false; vcpus],
            first,
            ..Inner::default()
        };
        Self { stop: AtomicBool::new(first.is_none()), inner: Mutex::new(inner), changed: Condvar::new() }
    }

    /// If `addr` is the program's first instruction, not reached before: its byte, to put back.
    pub fn take_first(&self, addr: u64) -> Option<u8> {
        let mut inner = self.lock();
        let (_, byte) = inner.first.filter(|&(at, _)| at == addr)?;
        inner.first = None;
        Some(byte)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether vCPUs must hold at their next chance (cheap: read at every turn of every vCPU's loop).
    pub fn stop_wanted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// vCPU `id`, stopped with `view`, waits until the debugger resumes the program, and returns what to do then.
    pub fn hold(&self, id: usize, view: VcpuView) -> Resume {
        let mut inner = self.lock();
        if inner.detached || !self.stop_wanted() {
            return Resume::default();
        }
        inner.held[id] = Some(view);
        self.changed.notify_all();
        loop {
            let generation = inner.generation;
            while inner.generation == generation && !inner.detached {
                inner = self.changed.wait(inner).unwrap_or_else(PoisonError::into_inner);
            }
            let resume = std::mem::take(&mut inner.resume[id]);
            if !resume.stay || inner.detached {
                inner.held[id] = None;
                return resume;
            }
        }
    }

    /// A vCPU saw `event`: every vCPU is asked to stop (`kick` interrupts the one given), and the debugger is told.
    pub fn report(&self, event: StopEvent, kick: impl Fn(usize)) {
        let mut inner = self.lock();
        if inner.detached {
            return;
        }
        inner.events.push_back(event);
        self.stop.store(true, Ordering::SeqCst);
        (0..inner.held.len()).for_each(kick);
        self.changed.notify_all();
    }

    /// vCPU `id`'s thread returned: the debugger no longer waits for it.
    pub fn gone(&self, id: usize) {
        let mut inner = self.lock();
        if let Some(g) = inner.gone.get_mut(id) {
            *g = true;
        }
        self.changed.notify_all();
    }

    /// The debugger asks every vCPU to stop (gdb's Ctrl-C).
    pub fn interrupt(&self, kick: impl Fn(usize)) {
        let inner = self.lock();
        self.stop.store(true, Ordering::SeqCst);
        (0..inner.held.len()).for_each(kick);
    }

    /// Waits until no vCPU runs guest code: each is held, parked (`parked(i)`) or gone. Returns the held vCPUs'
    /// states.
    pub fn wait_stopped(&self, parked: impl Fn(usize) -> bool) -> Vec<Option<VcpuView>> {
        let mut inner = self.lock();
        loop {
            let all = (0..inner.held.len()).all(|i| inner.held[i].is_some() || inner.gone[i] || parked(i));
            if all {
                return inner.held.clone();
            }
            // A parked vCPU that wakes holds before it runs, so polling `parked` now and then is enough.
            inner =
                self.changed.wait_timeout(inner, Duration::from_millis(5)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// The next event, waiting at most until `deadline`. Breakpoint events for breakpoints removed since are dropped
    /// (that vCPU already stands before the instruction, which now runs as the program's).
    pub fn next_event(&self, deadline: Instant) -> Option<StopEvent> {
        let mut inner = self.lock();
        loop {
            while let Some(event) = inner.events.pop_front() {
                match event {
                    StopEvent::Breakpoint { addr, .. } if !inner.breakpoints.contains_key(&addr) => continue,
                    event => return Some(event),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            inner = self.changed.wait_timeout(inner, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Resumes every held vCPU, vCPU `i` with `actions[i]`.
    pub fn resume(&self, actions: Vec<Resume>) {
        let mut inner = self.lock();
        for (i, action) in actions.into_iter().enumerate().take(inner.resume.len()) {
            inner.resume[i] = action;
        }
        inner.generation += 1;
        // Only if nothing happened meanwhile (an event already waiting stops the vCPUs again at once).
        self.stop.store(!inner.events.is_empty(), Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// The debugger is gone: the program runs on, untouched by it.
    pub fn detach(&self) {
        let mut inner = self.lock();
        inner.detached = true;
        inner.events.clear();
        self.stop.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Whether the debugger went away.
    pub fn detached(&self) -> bool {
        self.lock().detached
    }

    /// A new debugger takes over a session whose last one went away (`kiln debug` again); false if one is still
    /// attached. The program runs on until the debugger stops it.
    pub fn reattach(&self) -> bool {
        let mut inner = self.lock();
        if !inner.detached {
            return false;
        }
        inner.detached = false;
        inner.events.clear();
        inner.first = None;
        true
    }

    /// Waits until the debugger has gone (it has heard how the program ended), at most `timeout`.
    pub fn wait_detached(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while !inner.detached {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            inner = self.changed.wait_timeout(inner, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    pub fn breakpoint_at(&self, addr: u64) -> bool {
        self.lock().breakpoints.contains_key(&addr)
    }

    /// Records a breakpoint at `addr` over the program's byte `original`; false if one is there already.
    pub fn add_breakpoint(&self, addr: u64, original: u8) -> bool {
        let mut inner = self.lock();
        if inner.breakpoints.contains_key(&addr) {
            return false;
        }
        inner.breakpoints.insert(addr, original);
        true
    }

    /// Forgets the breakpoint at `addr`, returning the program's byte to put back.
    pub fn remove_breakpoint(&self, addr: u64) -> Option<u8> {
        self.lock().breakpoints.remove(&addr)
    }

    /// Every breakpoint (address, the program's byte).
    pub fn breakpoints(&self) -> Vec<(u64, u8)> {
        self.lock().breakpoints.iter().map(|(&a, &b)| (a, b)).collect()
    }

    /// `bytes` read at `addr` with the program's bytes in place of breakpoints.
    pub fn unpatch(&self, addr: u64, bytes: &mut [u8]) {
        let end = addr.saturating_add(bytes.len() as u64);
        for (&at, &original) in self.lock().breakpoints.range(addr..end) {
            bytes[(at - addr) as usize] = original;
        }
    }

    /// For a write of `bytes` at `addr`: records the new program bytes under breakpoints and keeps the `int3`s in
    /// `bytes`.
    pub fn patch(&self, addr: u64, bytes: &mut [u8]) {
        let end = addr.saturating_add(bytes.len() as u64);
        let mut inner = self.lock();
        for (&at, original) in inner.breakpoints.range_mut(addr..end) {
            let i = (at - addr) as usize;
            *original = bytes[i];
            bytes[i] = INT3;
        }
    }
}

pub const INT3: u8 = 0xcc;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_held_vcpu_waits_for_the_resume_and_gets_its_action() {
        let s = Arc::new(Session::new(2, None));
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.hold(1, VcpuView::default()))
        };
        let held = s.wait_stopped(|i| i == 0);
        assert!(held[1].is_some() && held[0].is_none());
        s.resume(vec![Resume::default(), Resume { step: true, ..Resume::default() }]);
        assert!(t.join().unwrap().step);
        assert!(!s.stop_wanted());
    }

    #[test]
    fn reads_show_the_programs_bytes_and_writes_keep_the_breakpoints() {
        let s = Session::new(1, None);
        assert!(s.add_breakpoint(0x1001, 0x55));
        assert!(!s.add_breakpoint(0x1001, 0x55));
        let mut bytes = [0x90, INT3, 0x90];
        s.unpatch(0x1000, &mut bytes);
        assert_eq!(bytes, [0x90, 0x55, 0x90]);
        let mut written = [0x11, 0x22];
        s.patch(0x1001, &mut written);
        assert_eq!(written, [INT3, 0x22]);
        assert_eq!(s.remove_breakpoint(0x1001), Some(0x11));
    }

    #[test]
    fn a_second_debugger_attaches_only_once_the_first_is_gone() {
        let s = Session::new(1, None);
        assert!(!s.reattach(), "the first debugger is still there");
        s.report(StopEvent::Step { vcpu: 0 }, |_| {});
        s.detach();
        assert!(!s.stop_wanted(), "detached: the program runs");
        s.wait_detached(Duration::from_secs(5));
        assert!(s.reattach());
        assert!(!s.detached());
        assert!(!s.stop_wanted(), "it runs on until the new debugger stops it");
        assert_eq!(s.next_event(Instant::now()), None, "nothing left over from the last session");
    }

    #[test]
    fn events_for_removed_breakpoints_are_dropped() {
        let s = Session::new(1, None);
        s.add_breakpoint(0x10, 0);
        s.report(StopEvent::Breakpoint { vcpu: 0, addr: 0x10 }, |_| {});
        s.report(StopEvent::Breakpoint { vcpu: 0, addr: 0x20 }, |_| {});
        s.report(StopEvent::Step { vcpu: 0 }, |_| {});
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(s.next_event(soon), Some(StopEvent::Breakpoint { vcpu: 0, addr: 0x10 }));
        assert_eq!(s.next_event(soon), Some(StopEvent::Step { vcpu: 0 }));
        assert_eq!(s.next_event(soon), None);
    }
}
