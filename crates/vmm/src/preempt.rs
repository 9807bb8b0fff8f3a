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

use crate::kick::Kicker;
use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long before a vCPU the kick found in the library OS is interrupted again: a few times what the way from its
/// last look at its signals back to the program takes, and rare enough to cost the vCPU little.
const RETRY: Duration = Duration::from_micros(200);

/// Per vCPU: whether it is to be interrupted in the program's code.
pub struct Preemption {
    requested: Vec<AtomicBool>,
}

impl Preemption {
    pub fn new(vcpus: usize) -> Self {
        Self { requested: (0..vcpus).map(|_| AtomicBool::new(false)).collect() }
    }

    /// Asks for vCPU `id` (an index the caller checked) to be interrupted if it runs the program's code.
    pub fn request(&self, kicks: &Kicker, id: usize) {
        // Stored before the kick: the kicked thread takes the request after the kick's EINTR.
        self.requested[id].store(true, Ordering::SeqCst);
        kicks.kick(id);
    }

    /// Takes vCPU `id`'s request, if it has one (on its own thread).
    pub fn take(&self, id: usize) -> bool {
        self.requested[id].swap(false, Ordering::SeqCst)
    }

    /// vCPU `id` was not in the program's code when it was kicked: it is kicked again a little later.
    pub fn retry(&self, kicks: &Kicker, id: usize) {
        self.requested[id].store(true, Ordering::SeqCst);
        kicks.kick_after(id, RETRY);
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
        assert!(!p.take(1));
        p.request(&kicks, 1);
        assert!(p.take(1));
        assert!(!p.take(1));
        p.retry(&kicks, 1);
        assert!(p.take(1) && !p.take(0));
    }
}
