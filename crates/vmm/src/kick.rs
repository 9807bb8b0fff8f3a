//! Kicking a vCPU out of KVM_RUN, for a TLB shootdown ([`crate::shootdown`]) or a preemption ([`crate::preempt`]):
//! a real-time signal to the vCPU's host thread. Its handler sets the vCPU's `immediate_exit` (as KVM's API
//! documentation suggests instead of KVM_SET_SIGNAL_MASK), so that a kick that lands just before the thread enters
//! KVM_RUN is not lost: KVM_RUN then returns EINTR at once. Each vCPU thread also has host timers that kick it later:
//! one on the wall clock (a preemption that found the vCPU in the library OS tries again, a deadline of the library
//! OS's) and one on the thread's own CPU time (the end of a renewed time slice, see `crate::preempt`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// The host signal that interrupts a vCPU thread's KVM_RUN.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

thread_local! {
    /// The `immediate_exit` byte of the vCPU this thread runs; null on other threads.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    // A const-initialised thread local of a Copy type: reading it allocates nothing, so it is async-signal-safe.
    let _ = IMMEDIATE_EXIT.try_with(|at| {
        let at = at.get();
        if !at.is_null() {
            // SAFETY: set by `Kicker::register` to the `immediate_exit` byte of this thread's vCPU, whose `kvm_run`
            // mapping outlives the registration (cleared by `Registration`'s drop before the vCPU is dropped).
            unsafe { at.write_volatile(1) };
        }
    });
}

fn install_kick_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a sigaction whose handler only stores a byte. KVM_RUN returns EINTR all the same (KVM does not
        // restart it); SA_RESTART spares the vCPU thread's other host calls (its sockets, the console) an EINTR
        // they would take for an error, since a kick from the host timer may come at any time.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

struct VcpuThread {
    /// The kernel thread id of the vCPU's host thread, 0 until it runs.
    thread: AtomicU64,
    in_guest: AtomicBool,
    /// The host timer that kicks this thread later (a `timer_t`, whose values start at 0), [`NO_TIMER`] until the
    /// thread registers.
    timer: AtomicU64,
    /// The same on the thread's CPU time.
    cpu_timer: AtomicU64,
}

const NO_TIMER: u64 = u64::MAX;

impl Default for VcpuThread {
    fn default() -> Self {
        Self {
            thread: AtomicU64::new(0),
            in_guest: AtomicBool::new(false),
            timer: AtomicU64::new(NO_TIMER),
            cpu_timer: AtomicU64::new(NO_TIMER),
        }
    }
}

/// The vCPUs' host threads, and how to interrupt each.
pub struct Kicker {
    vcpus: Vec<VcpuThread>,
}

/// Keeps vCPU `id` kickable while it lives: dropped before the vCPU, on the vCPU's own thread.
pub struct Registration<'a> {
    kicker: &'a Kicker,
    id: usize,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|at| at.set(std::ptr::null_mut()));
        let v = &self.kicker.vcpus[self.id];
        v.thread.store(0, Ordering::SeqCst);
        for timer in [&v.timer, &v.cpu_timer].map(|t| t.swap(NO_TIMER, Ordering::SeqCst)) {
            if timer != NO_TIMER {
                // SAFETY: a timer this registration created, deleted once (swapped out above).
                unsafe { libc::timer_delete(timer as usize as libc::timer_t) };
            }
        }
    }
}

impl Kicker {
    pub fn new(vcpus: usize) -> Self {
        install_kick_handler();
        Self { vcpus: (0..vcpus).map(|_| VcpuThread::default()).collect() }
    }

    /// Called on vCPU `id`'s own thread before it first runs; `immediate_exit` is the vCPU's byte in its `kvm_run`
    /// (null for a stand-in without one). The registration must be dropped on this thread before that byte goes.
    pub fn register(&self, id: usize, immediate_exit: *mut u8) -> Registration<'_> {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        IMMEDIATE_EXIT.with(|at| at.set(immediate_exit));
        let v = &self.vcpus[id];
        // SAFETY: a zeroed sigevent is valid; the fields set ask for `kick_signal` to this very thread.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = kick_signal();
        event.sigev_notify_thread_id = me;
        for (clock, slot) in [(libc::CLOCK_MONOTONIC, &v.timer), (libc::CLOCK_THREAD_CPUTIME_ID, &v.cpu_timer)] {
            let mut timer: libc::timer_t = std::ptr::null_mut();
            // SAFETY: valid pointers to the event and to where the new timer's id goes; a thread CPU-time clock is
            // this (the calling) thread's.
            if unsafe { libc::timer_create(clock, &mut event, &mut timer) } == 0 {
                slot.store(timer as usize as u64, Ordering::SeqCst);
            } else {
                tracing::warn!("vCPU {id} has no host timer: {}", std::io::Error::last_os_error());
            }
        }
        v.thread.store(me as u64, Ordering::SeqCst);
        Registration { kicker: self, id }
    }

    /// Right before vCPU `id` enters the guest.
    pub fn entering(&self, id: usize) {
        self.vcpus[id].in_guest.store(true, Ordering::SeqCst);
    }

    /// Right after vCPU `id` left the guest.
    pub fn left(&self, id: usize) {
        self.vcpus[id].in_guest.store(false, Ordering::SeqCst);
    }

    pub fn in_guest(&self, id: usize) -> bool {
        self.vcpus[id].in_guest.load(Ordering::SeqCst)
    }

    /// Interrupts vCPU `id`'s KVM_RUN now, or its next one if it is outside.
    pub fn kick(&self, id: usize) {
        let thread = self.vcpus[id].thread.load(Ordering::SeqCst);
        if thread != 0 {
            // SAFETY: tgkill only sends a signal; aimed at a thread id of this process (a thread that has ended gives
            // ESRCH), whose handler only stores a byte.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), thread as libc::pid_t, kick_signal()) };
        }
    }

    /// Kicks vCPU `id` once `after` has passed (replacing a later kick asked for before).
    pub fn kick_after(&self, id: usize, after: Duration) {
        self.set_timer(&self.vcpus[id].timer, Some(after));
    }

    /// Kicks vCPU `id` once its thread has run for `after` more (replacing a kick asked for before).
    pub fn kick_after_running(&self, id: usize, after: Duration) {
        self.set_timer(&self.vcpus[id].cpu_timer, Some(after));
    }

    /// Drops vCPU `id`'s later kicks, on the wall clock and on its CPU time.
    pub fn disarm(&self, id: usize) {
        self.set_timer(&self.vcpus[id].timer, None);
        self.disarm_running(id);
    }

    /// Drops vCPU `id`'s kick on its CPU time.
    pub fn disarm_running(&self, id: usize) {
        self.set_timer(&self.vcpus[id].cpu_timer, None);
    }

    fn set_timer(&self, timer: &AtomicU64, after: Option<Duration>) {
        let value = match after {
            Some(after) => libc::timespec { tv_sec: after.as_secs() as _, tv_nsec: after.subsec_nanos().max(1) as _ },
            None => libc::timespec { tv_sec: 0, tv_nsec: 0 },
        };
        let timer = timer.load(Ordering::SeqCst);
        if timer == NO_TIMER {
            return;
        }
        let spec = libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // SAFETY: a timer of ours, one-shot; a timer deleted meanwhile (its thread ended) gives EINVAL.
        unsafe { libc::timer_settime(timer as usize as libc::timer_t, 0, &spec, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A thread registered with a stand-in `immediate_exit` byte, which a kick sets; it reports when it sees it.
    fn watching_thread(kicker: Arc<Kicker>) -> (std::thread::JoinHandle<()>, Arc<AtomicBool>) {
        let (ready, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (r, s) = (ready.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut byte = 0u8;
            let at = &mut byte as *mut u8;
            let _registered = kicker.register(0, at);
            r.store(true, Ordering::SeqCst);
            let started = Instant::now();
            // SAFETY: `byte` lives on this stack frame; the handler writes it on this thread.
            while unsafe { at.read_volatile() } == 0 && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: as above.
            s.store(unsafe { at.read_volatile() } == 1, Ordering::SeqCst);
        });
        while !ready.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        (thread, seen)
    }

    #[test]
    fn a_kick_sets_the_vcpus_immediate_exit() {
        let kicker = Arc::new(Kicker::new(1));
        let (thread, seen) = watching_thread(kicker.clone());
        kicker.kick(0);
        thread.join().unwrap();
        assert!(seen.load(Ordering::SeqCst));
        // Once the registration is gone, a kick goes nowhere.
        kicker.kick(0);
        kicker.kick_after(0, Duration::from_millis(1));
    }

    #[test]
    fn a_later_kick_comes_from_the_threads_timer() {
        let kicker = Arc::new(Kicker::new(1));
        let (thread, seen) = watching_thread(kicker.clone());
        kicker.kick_after(0, Duration::from_millis(5));
        thread.join().unwrap();
        assert!(seen.load(Ordering::SeqCst));
    }
}
