//! TLB shootdown, for the library OS's `FlushTlb` hypercall: once it returns, no vCPU uses a translation it cached
//! before the call, so that memory the program made read-only or PROT_NONE faults on every vCPU.
//!
//! The guest runs at CPL 3 and cannot flush a TLB itself. The VMM can, through KVM (see [`arch::flush_tlb`]), but only
//! for a vCPU that is outside KVM_RUN. So each flush bumps a generation; every vCPU flushes before it enters the guest
//! if it has not caught up with the generation, and the caller waits for the vCPUs that are in the guest now, kicking
//! each out of KVM_RUN ([`crate::kick`]) until it has caught up. A vCPU outside the guest (parked, or handling an
//! exit) is not waited for: it cannot use a stale translation before it catches up.

use crate::kick::Kicker;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long the caller waits for a kicked vCPU before kicking it again (kept although a kick is no longer lost before
/// KVM_RUN, see [`crate::kick`]: cheap insurance for a flush).
const KICK_RETRY: Duration = Duration::from_micros(50);

pub struct Shootdown {
    generation: AtomicU64,
    /// Per vCPU: the last generation it flushed for.
    flushed: Vec<AtomicU64>,
}

impl Shootdown {
    pub fn new(vcpus: usize) -> Self {
        Self { generation: AtomicU64::new(0), flushed: (0..vcpus).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Right before vCPU `id` enters the guest: catches up with the flushes asked for meanwhile, with `flush` (which
    /// drops the vCPU's cached translations: [`crate::arch::flush_tlb`]).
    pub fn enter<E>(&self, kicks: &Kicker, id: usize, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        // Published before the generation is read: a flush that this read misses sees this vCPU in the guest.
        kicks.entering(id);
        let generation = self.generation.load(Ordering::SeqCst);
        if self.flushed[id].load(Ordering::SeqCst) < generation {
            flush()?;
            self.flushed[id].fetch_max(generation, Ordering::SeqCst);
        }
        Ok(())
    }

    /// vCPU `id` (outside the guest, in its hypercall) has every vCPU drop its cached translations, its own with
    /// `flush`; returns once none can use one from before the call, or once `stop` is set (the VM is ending).
    pub fn flush_all<E>(
        &self,
        kicks: &Kicker,
        id: usize,
        flush: impl FnOnce() -> Result<(), E>,
        stop: &AtomicBool,
    ) -> Result<(), E> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        flush()?;
        self.flushed[id].fetch_max(generation, Ordering::SeqCst);
        for (other, flushed) in self.flushed.iter().enumerate().filter(|&(other, _)| other != id) {
            while kicks.in_guest(other) && flushed.load(Ordering::SeqCst) < generation && !stop.load(Ordering::SeqCst) {
                kicks.kick(other);
                tracing::trace!(vcpu = other, "kicked for a TLB flush");
                std::thread::sleep(KICK_RETRY);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A stand-in vCPU thread whose "guest" is a 10-second sleep: only a kick ends it early.
    fn sleeping_vcpu(
        (sd, kicks): (Arc<Shootdown>, Arc<Kicker>),
        flushes: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let _registered = kicks.register(1, std::ptr::null_mut());
            while !stop.load(Ordering::SeqCst) {
                let counted = || {
                    flushes.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                };
                sd.enter(&kicks, 1, counted).unwrap();
                let ten_seconds = libc::timespec { tv_sec: 10, tv_nsec: 0 };
                // SAFETY: a plain sleep on a valid timespec; a signal ends it with EINTR.
                unsafe { libc::nanosleep(&ten_seconds, std::ptr::null_mut()) };
                kicks.left(1);
            }
        })
    }

    #[test]
    fn a_vcpu_in_the_guest_is_kicked_out_and_flushes_before_it_goes_back() {
        let (sd, kicks) = (Arc::new(Shootdown::new(2)), Arc::new(Kicker::new(2)));
        let (flushes, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let vcpu = sleeping_vcpu((sd.clone(), kicks.clone()), flushes.clone(), stop.clone());
        while !kicks.in_guest(1) {
            std::thread::yield_now();
        }
        let started = Instant::now();
        let mut own = 0;
        sd.flush_all(
            &kicks,
            0,
            || {
                own += 1;
                Ok::<(), ()>(())
            },
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "the sleeping vCPU was not kicked");
        assert_eq!(own, 1);
        // It flushes before going back in, once for the generation.
        while sd.flushed[1].load(Ordering::SeqCst) < 1 {
            std::thread::yield_now();
        }
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
        stop.store(true, Ordering::SeqCst);
        sd.flush_all(&kicks, 0, || Ok::<(), ()>(()), &AtomicBool::new(false)).unwrap();
        vcpu.join().unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "a vCPU that left does not flush until it enters again");
    }

    #[test]
    fn vcpus_outside_the_guest_are_not_waited_for() {
        let (sd, kicks) = (Shootdown::new(3), Kicker::new(3));
        let started = Instant::now();
        sd.flush_all(&kicks, 1, || Ok::<(), ()>(()), &AtomicBool::new(false)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut flushed = false;
        sd.enter(&kicks, 0, || {
            flushed = true;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(flushed, "a vCPU that missed a flush catches up as it enters");
    }
}
