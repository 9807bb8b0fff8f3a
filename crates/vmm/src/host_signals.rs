//! Signals the host sends to `kiln`, forwarded to the program, and the grace a stop signal gets. The VMM counts each
//! signal in the host-signal page (`BootInfo::host_signals_phys`); the library OS passes the new ones on and writes
//! back how many of each it has taken (delivered to a handler or to `sigwait`, or ignored). With no vCPU idle to pass
//! them on, `vm.rs` has a running one interrupted ([`crate::preempt`]). A program may still never take SIGTERM (it
//! keeps it blocked, or the thread it went to never runs): a SIGINT, SIGTERM or SIGQUIT still untaken after the grace
//! period ends the VM, as `docker stop` ends a container that does not.
//! The guest's count is only ever compared with the VMM's own: a guest that lies only spares itself.

use crate::memory::GuestRam;
use kiln_abi::boot::HOST_SIGNAL_TAKEN;
use std::time::{Duration, Instant};

/// How the VM hears of host signals.
pub struct HostSignals {
    /// Blocks until the host has sent signals to this process, and returns their numbers (the VMM calls it on a
    /// thread of its own, so an idle VM sleeps in it instead of polling). SIGKILL (9), which no process can catch,
    /// is for an in-process launcher: it ends the VM at once (`Outcome::Killed(9)`), the program unasked. Once the
    /// run has returned, the next return of `wait` ends that thread.
    pub wait: Box<dyn FnMut() -> Vec<u32> + Send>,
    /// How long the program has to take a SIGINT, SIGTERM or SIGQUIT before the VM is stopped.
    pub grace: Duration,
}

/// Signals that ask the program to end (SIGINT, SIGQUIT, SIGTERM). SIGHUP is not one: daemons take it as "reload",
/// and a program busy computing should not die of that.
pub const STOP_SIGNALS: [u32; 3] = [2, 3, 15];
/// Signal numbers the page has a word for.
const NSIG: u32 = 64;

/// A stop signal sent and not yet seen taken.
#[derive(Clone, Copy, Debug)]
struct Untaken {
    signal: u32,
    /// The VMM's count of `signal` once this one was sent: taken when the guest's count reaches it.
    count: u64,
    deadline: Instant,
}

/// The VMM's side of the page: its own counts (never read back from guest memory) and the stop signals awaited.
pub(crate) struct Forwarder {
    page: u64,
    grace: Duration,
    generation: u64,
    sent: [u64; NSIG as usize],
    untaken: Vec<Untaken>,
}

impl Forwarder {
    pub fn new(page: u64, grace: Duration) -> Forwarder {
        Forwarder { page, grace, generation: 0, sent: [0; NSIG as usize], untaken: Vec::new() }
    }

    /// Tells the library OS that the host sends `sig` (1-63; others are ignored); the caller wakes idle vCPUs.
    pub fn forward(&mut self, ram: &GuestRam, sig: u32, now: Instant) {
        if !(1..NSIG).contains(&sig) {
            return;
        }
        let count = &mut self.sent[sig as usize];
        *count = count.wrapping_add(1);
        self.generation = self.generation.wrapping_add(1);
        // The count first, then the generation the library OS watches (x86 keeps stores in order). The page is the
        // VMM's own choice inside guest RAM, so the writes cannot fail.
        let _ = ram.write_obj(self.page + 8 * u64::from(sig), *count);
        let _ = ram.write_obj(self.page, self.generation);
        if STOP_SIGNALS.contains(&sig) {
            self.untaken.push(Untaken { signal: sig, count: *count, deadline: now + self.grace });
        }
    }

    /// When the oldest stop signal still awaited runs out of grace.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.untaken.iter().map(|u| u.deadline).min()
    }

    /// Forgets the stop signals the guest has taken (its count of them reached the VMM's); returns one that ran out
    /// of grace untaken, if any.
    pub fn overdue(&mut self, ram: &GuestRam, now: Instant) -> Option<u32> {
        let page = self.page;
        let taken = |sig: u32| -> u64 { ram.read_obj(page + 8 * (HOST_SIGNAL_TAKEN + u64::from(sig))).unwrap_or(0) };
        // A wrapping comparison, though 64-bit counts never come near wrapping.
        self.untaken.retain(|u| (taken(u.signal).wrapping_sub(u.count) as i64) < 0);
        self.untaken.iter().find(|u| u.deadline <= now).map(|u| u.signal)
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;
    const SECOND: Duration = Duration::from_secs(1);

    fn ram() -> GuestRam {
        GuestRam::new(2 << 20).unwrap()
    }

    fn forwarder() -> Forwarder {
        Forwarder::new(PAGE, 10 * SECOND)
    }

    fn take(ram: &GuestRam, sig: u32, count: u64) {
        ram.write_obj(PAGE + 8 * (HOST_SIGNAL_TAKEN + u64::from(sig)), count).unwrap();
    }

    #[test]
    fn forwarding_counts_the_signal_then_the_generation() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 15, t0);
        f.forward(&ram, 15, t0);
        f.forward(&ram, 1, t0);
        f.forward(&ram, 64, t0);
        assert_eq!(ram.read_obj::<u64>(PAGE).unwrap(), 3, "signal 64 has no word and is dropped");
        assert_eq!(ram.read_obj::<u64>(PAGE + 8 * 15).unwrap(), 2);
        assert_eq!(ram.read_obj::<u64>(PAGE + 8).unwrap(), 1);
    }

    #[test]
    fn the_vmm_keeps_its_own_counts() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 15, t0);
        ram.write_obj(PAGE + 8 * 15, 1000u64).unwrap();
        f.forward(&ram, 15, t0);
        assert_eq!(ram.read_obj::<u64>(PAGE + 8 * 15).unwrap(), 2, "what the guest wrote there changes nothing");
    }

    #[test]
    fn a_stop_signal_untaken_after_the_grace_is_overdue() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 15, t0);
        assert_eq!(f.next_deadline(), Some(t0 + 10 * SECOND));
        assert_eq!(f.overdue(&ram, t0 + 9 * SECOND), None, "still in its grace");
        assert_eq!(f.overdue(&ram, t0 + 10 * SECOND), Some(15));
    }

    #[test]
    fn a_taken_stop_signal_is_forgotten() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 15, t0);
        take(&ram, 15, 1);
        assert_eq!(f.overdue(&ram, t0 + 11 * SECOND), None);
        assert_eq!(f.next_deadline(), None, "nothing awaited: the VMM waits without a deadline again");
    }

    #[test]
    fn only_stop_signals_get_a_grace() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 1, t0);
        f.forward(&ram, 10, t0);
        assert_eq!(f.next_deadline(), None, "SIGHUP and SIGUSR1 are never awaited");
        for sig in [2, 3] {
            f.forward(&ram, sig, t0);
            assert_eq!(f.overdue(&ram, t0 + 10 * SECOND), Some(sig));
            take(&ram, sig, 1);
        }
    }

    #[test]
    fn a_second_signal_has_its_own_grace() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 15, t0);
        f.forward(&ram, 15, t0 + 5 * SECOND);
        take(&ram, 15, 1);
        // The first was taken; the second is not overdue until its own deadline.
        assert_eq!(f.overdue(&ram, t0 + 12 * SECOND), None);
        assert_eq!(f.next_deadline(), Some(t0 + 15 * SECOND));
        assert_eq!(f.overdue(&ram, t0 + 15 * SECOND), Some(15));
    }

    #[test]
    fn a_guest_count_beyond_the_vmm_s_only_counts_as_taken() {
        let (ram, mut f, t0) = (ram(), forwarder(), Instant::now());
        f.forward(&ram, 2, t0);
        take(&ram, 2, u64::MAX / 4);
        assert_eq!(f.overdue(&ram, t0 + 60 * SECOND), None);
    }
}
