//! Preemption: interrupting a vCPU that runs the program's code, so that the library OS delivers the signals it made
//! pending for the thread there. Nothing at CPL 0 is involved, so it works the same on both host kinds: the library OS
//! (or the VMM's host-signal forwarder) asks for it, the VMM kicks the vCPU out of KVM_RUN ([`crate::kick`]) and, if
//! the vCPU was in the program's code, resumes it at the library OS's `kiln_fault_entry` with a `FaultRecord` whose
//! signal is `INTERRUPTED` and whose registers are the interrupted ones; the library OS delivers what is pending and
//! returns to the program with every register as it was.
//!
//! The library OS is not reentrant, and a vCPU in it looks at its thread's signals before it returns to the program
//! (every syscall's exit, a fault's entry, a thread switched in): so a vCPU found there, or in Kiln's CPL 0 stubs, or
//! with an exception on its way, is never redirected. If the kick found it there, it is tried again a little later
//! (it may have been past its last look, on its way back to the program); any exit the library OS makes (a
//! hypercall, a device access, a fault) settles the request, since the library OS looks after it.
//!
//! The library OS may also ask for a vCPU to be interrupted at a time: when runnable threads wait for a vCPU, the end
//! of the running thread's time slice, at which it yields. Such a deadline is spent only once the vCPU is interrupted
//! in the program's code (or goes idle), and the vCPU's host timer kicks it then. Spent, it is renewed a slice on
//! (the library OS replaces it when it wants none or a later one): while threads outnumber the vCPUs, each slice then
//! costs the one exit that ends it, not a second to ask for the next (~120 us each on `kvm_pvm`). A renewed slice
//! ends once the vCPU's host thread has run for a slice, not once a slice of wall time has passed: on a loaded host a
//! vCPU may run a quarter of the time, and slices of wall time would then cost it four times as many exits per unit
//! of work as on an idle one. (The library OS's own deadlines, for sleepers and timers, stay in wall time.)

use crate::kick::Kicker;
use kiln_abi::hypercall::TIME_SLICE_NS;
use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long before a vCPU the kick found in the library OS is interrupted again: a few times what the way from its
/// last look at its signals back to the program takes, and rare enough to cost the vCPU little.
const RETRY: Duration = Duration::from_micros(200);

/// How long before a vCPU whose deadline found it in the library OS is interrupted again, and how far a spent deadline
/// is renewed: a time slice.
const SLICE: Duration = Duration::from_nanos(TIME_SLICE_NS);

/// Why a vCPU is to be interrupted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Signals are pending for its thread.
    Request,
    /// Its deadline passed (the end of a time slice).
    Deadline,
}

/// Per vCPU: whether it is to be interrupted in the program's code now, and when at the latest otherwise.
pub struct Preemption {
    requested: Vec<AtomicBool>,
    /// Nanoseconds since `epoch` when the vCPU is to be interrupted (its thread's time slice ends); `u64::MAX` none.
    deadline: Vec<AtomicU64>,
    /// The vCPU thread's CPU time (ns) when its deadline was renewed; `u64::MAX` when the deadline is the library OS's.
    renewed_at_cpu: Vec<AtomicU64>,
    epoch: Instant,
}

/// The CPU time the calling thread has run, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

impl Preemption {
    pub fn new(vcpus: usize) -> Self {
        Self {
            requested: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            deadline: (0..vcpus).map(|_| AtomicU64::new(u64::MAX)).collect(),
            renewed_at_cpu: (0..vcpus).map(|_| AtomicU64::new(u64::MAX)).collect(),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Asks for vCPU `id` (an index the caller checked) to be interrupted if it runs the program's code.
    pub fn request(&self, kicks: &Kicker, id: usize) {
        // Stored before the kick: the kicked thread takes the request after the kick's EINTR.
        self.requested[id].store(true, Ordering::SeqCst);
        kicks.kick(id);
    }

    /// Asks for vCPU `id` to be interrupted `after` from now (or sooner, if it was asked for sooner already).
    pub fn request_after(&self, kicks: &Kicker, id: usize, after: Duration) {
        let at = self.now().saturating_add(after.as_nanos().min(u128::from(u64::MAX)) as u64);
        if self.deadline[id].fetch_min(at, Ordering::SeqCst) > at {
            if self.renewed_at_cpu[id].swap(u64::MAX, Ordering::SeqCst) != u64::MAX {
                kicks.disarm_running(id);
            }
            kicks.kick_after(id, after);
        }
    }

    /// On vCPU `id`'s own thread, after an EINTR: whether it is to be interrupted now, and why. A renewed slice is
    /// over once the thread has run for a slice since (its CPU-time timer's kick), whatever the wall clock says.
    pub fn due(&self, id: usize) -> Option<Why> {
        if self.requested[id].swap(false, Ordering::SeqCst) {
            return Some(Why::Request);
        }
        let renewed_at = self.renewed_at_cpu[id].load(Ordering::SeqCst);
        let over = match renewed_at {
            u64::MAX => self.deadline[id].load(Ordering::SeqCst) <= self.now(),
            _ => thread_cpu_ns().saturating_sub(renewed_at) >= TIME_SLICE_NS,
        };
        over.then_some(Why::Deadline)
    }

    /// Drops vCPU `id`'s request: the library OS runs there and looks after its signals.
    pub fn settle(&self, id: usize) {
        self.requested[id].store(false, Ordering::SeqCst);
    }

    /// vCPU `id` was interrupted in the program's code: a deadline that has passed is spent and renewed a slice on
    /// (true); a later one stays, with its kick.
    pub fn interrupted(&self, kicks: &Kicker, id: usize) -> bool {
        let now = self.now();
        let deadline = self.deadline[id].load(Ordering::SeqCst);
        if deadline <= now {
            let renewed = now.saturating_add(TIME_SLICE_NS);
            if self.deadline[id].compare_exchange(deadline, renewed, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                self.renewed_at_cpu[id].store(thread_cpu_ns(), Ordering::SeqCst);
                kicks.disarm(id);
                kicks.kick_after_running(id, SLICE);
                return true;
            }
        } else if deadline != u64::MAX {
            kicks.kick_after(id, Duration::from_nanos(deadline - now));
        }
        false
    }

    /// The library OS's own deadline for vCPU `id`, `after` from now (`None`: none), whatever it was.
    pub fn replace(&self, kicks: &Kicker, id: usize, after: Option<Duration>) {
        self.renewed_at_cpu[id].store(u64::MAX, Ordering::SeqCst);
        kicks.disarm_running(id);
        match after {
            Some(after) => {
                let at = self.now().saturating_add(after.as_nanos().min(u128::from(u64::MAX)) as u64);
                self.deadline[id].store(at, Ordering::SeqCst);
                kicks.kick_after(id, after);
            }
            None => {
                self.deadline[id].store(u64::MAX, Ordering::SeqCst);
                kicks.disarm(id);
            }
        }
    }

    /// On vCPU `id`'s own thread, after an EINTR that was not [`Self::due`]: its host timer may have served a retry
    /// meanwhile, so it is set again for the deadline still to come, if any.
    pub fn rearm(&self, kicks: &Kicker, id: usize) {
        let deadline = self.deadline[id].load(Ordering::SeqCst);
        let renewed_at = self.renewed_at_cpu[id].load(Ordering::SeqCst);
        if renewed_at != u64::MAX {
            let ran = thread_cpu_ns().saturating_sub(renewed_at);
            kicks.kick_after_running(id, Duration::from_nanos(TIME_SLICE_NS.saturating_sub(ran).max(1)));
        } else if deadline != u64::MAX {
            kicks.kick_after(id, Duration::from_nanos(deadline.saturating_sub(self.now())));
        }
    }

    /// vCPU `id` goes idle: it runs no thread whose slice could end.
    pub fn idle(&self, id: usize) {
        self.requested[id].store(false, Ordering::SeqCst);
        self.deadline[id].store(u64::MAX, Ordering::SeqCst);
        self.renewed_at_cpu[id].store(u64::MAX, Ordering::SeqCst);
    }

    /// vCPU `id` was not in the program's code when it was due: for a request, it is kicked again a little later; a
    /// deadline moves a slice on (the thread was in the library OS, so it is not computing without syscalls, and a busy
    /// server, mostly there, must not pay an exit every few microseconds for it).
    pub fn retry(&self, kicks: &Kicker, id: usize, why: Why) {
        match why {
            Why::Request => {
                self.requested[id].store(true, Ordering::SeqCst);
                kicks.kick_after(id, RETRY);
            }
            Why::Deadline => {
                self.deadline[id].store(self.now().saturating_add(TIME_SLICE_NS), Ordering::SeqCst);
                kicks.kick_after(id, SLICE);
            }
        }
    }
}

/// Whether a vCPU that KVM_RUN left with EINTR may be resumed in the library OS: it is at CPL 3 in the program's code
/// (anything but the library OS, whose vDSO functions count as the program's), and no event is being delivered to it.
pub fn in_program(
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    events: &kvm_vcpu_events,
    library_os: &Range<u64>,
    vdso_code: &[Range<u64>],
) -> bool {
    let in_library_os = library_os.contains(&regs.rip) && !vdso_code.iter().any(|f| f.contains(&regs.rip));
    let delivering = events.exception.injected != 0
        || events.exception.pending != 0
        || events.interrupt.injected != 0
        || events.nmi.injected != 0
        || events.nmi.pending != 0;
    sregs.cs.selector & 3 == 3 && !in_library_os && !delivering
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rip: u64, cpl: u16) -> (kvm_regs, kvm_sregs) {
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x30 | cpl;
        (kvm_regs { rip, ..Default::default() }, sregs)
    }

    #[test]
    fn only_the_programs_code_at_cpl_3_is_interrupted() {
        let library_os = 0x4000_0000_0000..0x4000_0010_0000;
        let vdso = vec![0x4000_0000_8000..0x4000_0000_8100, 0x4000_0000_9000..0x4000_0000_9040];
        let quiet = kvm_vcpu_events::default();
        let check = |rip, cpl, events: &kvm_vcpu_events| {
            let (regs, sregs) = at(rip, cpl);
            in_program(&regs, &sregs, events, &library_os, &vdso)
        };
        assert!(check(0x40_1000, 3, &quiet), "the program");
        assert!(check(0x4000_0000_8010, 3, &quiet), "a vDSO function runs as the program's code");
        assert!(!check(0x4000_0000_1000, 3, &quiet), "the library OS");
        assert!(!check(0x40_1000, 0, &quiet), "Kiln's CPL 0 stubs (hardware KVM)");
        let mut delivering = kvm_vcpu_events::default();
        delivering.exception.injected = 1;
        assert!(!check(0x40_1000, 3, &delivering), "an exception on its way");
    }

    #[test]
    fn a_request_is_taken_once_and_a_retry_makes_another() {
        let (p, kicks) = (Preemption::new(2), Kicker::new(2));
        assert_eq!(p.due(1), None);
        p.request(&kicks, 1);
        assert_eq!(p.due(1), Some(Why::Request));
        assert_eq!(p.due(1), None);
        p.retry(&kicks, 1, Why::Request);
        assert_eq!((p.due(1), p.due(0)), (Some(Why::Request), None));
        p.request(&kicks, 1);
        p.settle(1);
        assert_eq!(p.due(1), None, "settled by an exit of the library OS's");
    }

    #[test]
    fn a_deadline_is_due_once_it_passes_until_the_vcpu_is_interrupted_or_idle() {
        let (p, kicks) = (Preemption::new(1), Kicker::new(1));
        p.request_after(&kicks, 0, Duration::from_secs(3600));
        assert_eq!(p.due(0), None);
        assert!(!p.interrupted(&kicks, 0));
        assert_eq!(p.due(0), None, "a later deadline stays");
        p.request_after(&kicks, 0, Duration::ZERO);
        assert!(p.due(0) == Some(Why::Deadline) && p.due(0) == Some(Why::Deadline), "the earlier one wins, and stays");
        p.settle(0);
        assert_eq!(p.due(0), Some(Why::Deadline), "an exit of the library OS's does not end a slice");
        p.retry(&kicks, 0, Why::Deadline);
        assert_eq!(p.due(0), None, "found in the library OS, it moves a slice on");
        p.request_after(&kicks, 0, Duration::ZERO);
        assert!(p.interrupted(&kicks, 0), "spent, it is renewed");
        assert_eq!(p.due(0), None, "a slice on");
        p.replace(&kicks, 0, Some(Duration::ZERO));
        assert_eq!(p.due(0), Some(Why::Deadline), "replaced by a sooner one");
        p.replace(&kicks, 0, None);
        assert_eq!(p.due(0), None, "replaced by none");
        p.request_after(&kicks, 0, Duration::ZERO);
        p.replace(&kicks, 0, Some(Duration::from_secs(3600)));
        assert_eq!(p.due(0), None, "replaced by a later one, unlike a request");
        p.request_after(&kicks, 0, Duration::ZERO);
        p.idle(0);
        assert_eq!(p.due(0), None);
    }

    #[test]
    fn a_renewed_slice_ends_after_a_slice_of_the_threads_cpu_time() {
        let (p, kicks) = (Preemption::new(1), Kicker::new(1));
        p.request_after(&kicks, 0, Duration::ZERO);
        assert!(p.interrupted(&kicks, 0));
        // A slice of wall time in which the thread does not run (a loaded host): not over.
        std::thread::sleep(SLICE + Duration::from_millis(5));
        assert_eq!(p.due(0), None, "moved on by what is left of it");
        // Once the thread has run a slice since the renewal (and the moved deadline has passed), it is.
        let start = Instant::now();
        while p.due(0).is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "a slice of CPU time never ended");
        }
        // The library OS's own deadlines are wall time.
        p.request_after(&kicks, 0, Duration::ZERO);
        assert!(p.interrupted(&kicks, 0));
        p.request_after(&kicks, 0, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(p.due(0), Some(Why::Deadline), "a sleeper's deadline does not wait for CPU time");
    }
}
