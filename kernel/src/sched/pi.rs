//! What priority-inheritance futexes and robust lists need from the scheduler: the owner of a PI futex hands it to
//! the first waiter by writing that thread's id into the futex word, under the scheduler lock, so that the waiter
//! wakes owning it (`syscalls::futex_pi`); and each thread's robust list head, walked when it exits.

use super::queues::Key;
use super::{make_woken_run, percpu, Scheduler, State, SCHEDULER};
use alloc::vec::Vec;

/// A look at the scheduler from under its lock (see `block_unless`).
pub struct Peek<'a>(pub(super) &'a Scheduler);

impl Peek<'_> {
    /// Whether thread `tid` exists (and has not exited).
    pub fn thread_exists(&self, tid: u32) -> bool {
        self.0.threads.iter().any(|t| t.state != State::Free && t.tid == tid)
    }

    /// Whether any thread waits for the PI futex at `addr`.
    pub fn pi_waiters(&self, addr: u64) -> bool {
        self.0.queues.first_waiter(Key::PiFutex(addr)).0.is_some()
    }
}

/// Under the scheduler lock, shows `give` the first thread waiting for the PI futex at `addr` (its tid), if any, and
/// whether others wait behind it; `give` updates the futex word and says whether that thread is woken (it then owns
/// the futex, or finds it free). Returns what `give` answered.
pub fn wake_pi_waiter<R>(addr: u64, give: impl FnOnce(Option<u32>, bool) -> (bool, R)) -> R {
    let mut guard = SCHEDULER.lock();
    let key = Key::PiFutex(addr);
    let (first, waiting) = guard.queues.first_waiter(key);
    let tid = first.map(|slot| guard.threads[slot].tid);
    let (wake, answer) = give(tid, waiting > 1);
    if wake && first.is_some() {
        let woken = guard.queues.take_waiters(key, 1, |_| true);
        make_woken_run(guard, woken);
    }
    answer
}

/// The addresses of the PI futexes that threads wait for (a dying thread hands over those it owns).
pub fn pi_futexes_waited() -> Vec<u64> {
    let s = SCHEDULER.lock();
    let keys = s.queues.keys_waited(Key::PiFutex(0), Key::PiFutex(u64::MAX));
    keys.filter_map(|key| if let Key::PiFutex(addr) = key { Some(addr) } else { None }).collect()
}

/// `set_robust_list` for the current thread.
pub fn set_robust_list(head: u64) {
    SCHEDULER.lock().threads[percpu::current().thread].robust_list = head;
}

/// The robust list head of thread `tid` (the current one for `None`); `None` if there is no such thread.
pub fn robust_list(tid: Option<u32>) -> Option<u64> {
    let s = SCHEDULER.lock();
    let slot = match tid {
        None => Some(percpu::current().thread),
        Some(tid) => s.slot_of(tid),
    };
    slot.map(|slot| s.threads[slot].robust_list)
}
