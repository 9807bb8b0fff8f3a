//! TLB shootdown, for the library OS's `FlushTlb` hypercall: once it returns, no vCPU uses a translation it cached
//! before the call, so that memory the program made read-only or PROT_NONE faults on every vCPU.
//!
//! The guest runs at CPL 3 and cannot flush a TLB itself. The VMM can, through KVM (see [`arch::flush_tlb`]), but only
//! for a vCPU that is outside KVM_RUN. So each flush bumps a generation; every vCPU flushes before it enters the guest
//! if it has not caught up with the generation, and the caller waits for the vCPUs that are in the guest now, kicking
//! each out of KVM_RUN with [`KICK_SIGNAL`] until it has caught up. A vCPU outside the guest (parked, or handling an
//! exit) is not waited for: it cannot use a stale translation before it catches up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// How long the caller waits for a kicked vCPU before kicking it again (a signal that arrives just before the vCPU
/// enters KVM_RUN does not interrupt it).
const KICK_RETRY: Duration = Duration::from_micros(50);

/// The host signal that interrupts a vCPU thread's KVM_RUN. Its handler does nothing: the point is the interruption.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_kick_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction whose handler does nothing; without SA_RESTART, so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

#[derive(Default)]
struct VcpuTlb {
    /// The last generation this vCPU flushed for.
    flushed: AtomicU64,
    in_guest: AtomicBool,
    /// The kernel thread id of the vCPU's host thread, 0 until it runs.
    thread: AtomicU64,
}

pub struct Shootdown {
    generation: AtomicU64,
    vcpus: Vec<VcpuTlb>,
}

impl Shootdown {
    pub fn new(vcpus: usize) -> Self {
        install_kick_handler();
        Self { generation: AtomicU64::new(0), vcpus: (0..vcpus).map(|_| VcpuTlb::default()).collect() }
    }

    /// Called on vCPU `id`'s own thread before it first runs.
    pub fn register(&self, id: usize) {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) };
        self.vcpus[id].thread.store(me as u64, Ordering::SeqCst);
    }

    /// Right before vCPU `id` enters the guest: catches up with the flushes asked for meanwhile, with `flush` (which
    /// drops the vCPU's cached translations: [`crate::arch::flush_tlb`]).
    pub fn enter<E>(&self, id: usize, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let me = &self.vcpus[id];
        // Published before the generation is read: a flush that this read misses sees this vCPU in the guest.
        me.in_guest.store(true, Ordering::SeqCst);
        let generation = self.generation.load(Ordering::SeqCst);
        if me.flushed.load(Ordering::SeqCst) < generation {
            flush()?;
            me.flushed.fetch_max(generation, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Right after vCPU `id` left the guest.
    pub fn leave(&self, id: usize) {
        self.vcpus[id].in_guest.store(false, Ordering::SeqCst);
    }

    /// vCPU `id` (outside the guest, in its hypercall) has every vCPU drop its cached translations, its own with
    /// `flush`; returns once none can use one from before the call, or once `stop` is set (the VM is ending).
    pub fn flush_all<E>(&self, id: usize, flush: impl FnOnce() -> Result<(), E>, stop: &AtomicBool) -> Result<(), E> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        flush()?;
        self.vcpus[id].flushed.fetch_max(generation, Ordering::SeqCst);
        for (other, v) in self.vcpus.iter().enumerate().filter(|&(other, _)| other != id) {
            while v.in_guest.load(Ordering::SeqCst)
                && v.flushed.load(Ordering::SeqCst) < generation
                && !stop.load(Ordering::SeqCst)
            {
                let thread = v.thread.load(Ordering::SeqCst);
                if thread != 0 {
                    // SAFETY: tgkill only sends a signal; aimed at a thread id of this process (a thread that has
                    // ended gives ESRCH), with a handler that does nothing.
                    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), thread as libc::pid_t, kick_signal()) };
                }
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
        sd: Arc<Shootdown>,
        flushes: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            sd.register(1);
            while !stop.load(Ordering::SeqCst) {
                let counted = || {
                    flushes.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                };
                sd.enter(1, counted).unwrap();
                let ten_seconds = libc::timespec { tv_sec: 10, tv_nsec: 0 };
                // SAFETY: a plain sleep on a valid timespec; a signal ends it with EINTR.
                unsafe { libc::nanosleep(&ten_seconds, std::ptr::null_mut()) };
                sd.leave(1);
            }
        })
    }

    #[test]
    fn a_vcpu_in_the_guest_is_kicked_out_and_flushes_before_it_goes_back() {
        let sd = Arc::new(Shootdown::new(2));
        let (flushes, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let vcpu = sleeping_vcpu(sd.clone(), flushes.clone(), stop.clone());
        while !sd.vcpus[1].in_guest.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let started = Instant::now();
        let mut own = 0;
        sd.flush_all(
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
        while sd.vcpus[1].flushed.load(Ordering::SeqCst) < 1 {
            std::thread::yield_now();
        }
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
        stop.store(true, Ordering::SeqCst);
        sd.flush_all(0, || Ok::<(), ()>(()), &AtomicBool::new(false)).unwrap();
        vcpu.join().unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "a vCPU that left does not flush until it enters again");
    }

    #[test]
    fn vcpus_outside_the_guest_are_not_waited_for() {
        let sd = Shootdown::new(3);
        let started = Instant::now();
        sd.flush_all(1, || Ok::<(), ()>(()), &AtomicBool::new(false)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut flushed = false;
        sd.enter(0, || {
            flushed = true;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(flushed, "a vCPU that missed a flush catches up as it enters");
    }
}
