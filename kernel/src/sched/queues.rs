//! The scheduler's indexes over the thread table, so that no hot path scans every slot: the run queue (runnable
//! threads in the order they became runnable), the wait queues (blocked threads by what they wait on, in the order
//! they blocked) and the deadlines of blocked threads, earliest first. The table stays the truth; these only say
//! where to look, and `Scheduler` keeps them in step with each thread's state (see its invariants).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a blocked thread can be woken through: a futex word of the program, or an object of the library OS (a
/// socket, pipe, eventfd, epoll instance or a poll call's watcher), told apart so that a program's futex calls never
/// reach the library OS's waiters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Key {
    Futex(u64),
    /// A priority-inheritance futex: its waiters are handed the lock one at a time, never woken by FUTEX_WAKE.
    PiFutex(u64),
    Object(u64),
}

pub struct Queues {
    run: VecDeque<usize>,
    waiting: BTreeMap<Key, VecDeque<usize>>,
    deadlines: BTreeSet<(u64, usize)>,
}

impl Queues {
    pub const fn new() -> Queues {
        Queues { run: VecDeque::new(), waiting: BTreeMap::new(), deadlines: BTreeSet::new() }
    }

    pub fn push_runnable(&mut self, slot: usize) {
        self.run.push_back(slot);
    }

    /// Makes room for `threads` runnable threads without allocating later; false if memory ran out.
    pub fn reserve_runnable(&mut self, threads: usize) -> bool {
        self.run.try_reserve(threads.saturating_sub(self.run.len())).is_ok()
    }

    pub fn any_runnable(&self) -> bool {
        !self.run.is_empty()
    }

    /// Takes the first runnable thread that `may_run` accepts. Threads another vCPU must run (it idles on their
    /// stack) are skipped; there is at most one per vCPU, so this looks at a handful of entries at most.
    pub fn take_runnable(&mut self, may_run: impl Fn(usize) -> bool) -> Option<usize> {
        let at = self.run.iter().position(|&slot| may_run(slot))?;
        self.run.remove(at)
    }

    /// Records a blocked thread: waiting on `key` (if any) until `deadline` (`u64::MAX`: none).
    pub fn block(&mut self, slot: usize, key: Option<Key>, deadline: u64) {
        if let Some(key) = key {
            self.waiting.entry(key).or_default().push_back(slot);
        }
        if deadline != u64::MAX {
            self.deadlines.insert((deadline, slot));
        }
    }

    /// Forgets a blocked thread that is woken: its place on `key`'s queue (if still there) and its deadline.
    pub fn unblock(&mut self, slot: usize, key: Option<Key>, deadline: u64) {
        if let Some(key) = key {
            if let Some(queue) = self.waiting.get_mut(&key) {
                if let Some(at) = queue.iter().position(|&s| s == slot) {
                    queue.remove(at);
                }
                if queue.is_empty() {
                    self.waiting.remove(&key);
                }
            }
        }
        if deadline != u64::MAX {
            self.deadlines.remove(&(deadline, slot));
        }
    }

    /// Takes, in wait order, up to `count` of the threads waiting on `key` that `wanted` accepts off its queue.
    pub fn take_waiters(&mut self, key: Key, count: usize, wanted: impl Fn(usize) -> bool) -> VecDeque<usize> {
        let mut taken = VecDeque::new();
        let Some(queue) = self.waiting.get_mut(&key) else { return taken };
        queue.retain(|&slot| {
            if taken.len() < count && wanted(slot) {
                taken.push_back(slot);
                false
            } else {
                true
            }
        });
        if queue.is_empty() {
            self.waiting.remove(&key);
        }
        taken
    }

    /// The first thread waiting on `key`, and how many wait on it in all.
    pub fn first_waiter(&self, key: Key) -> (Option<usize>, usize) {
        self.waiting.get(&key).map_or((None, 0), |queue| (queue.front().copied(), queue.len()))
    }

    /// The keys in `from..=to` that threads wait on.
    pub fn keys_waited(&self, from: Key, to: Key) -> impl Iterator<Item = Key> + '_ {
        self.waiting.range(from..=to).map(|(&key, _)| key)
    }

    /// Moves up to `count` waiters of `from` to the end of `to`'s queue (FUTEX_REQUEUE); returns them.
    pub fn requeue(&mut self, from: Key, to: Key, count: usize) -> VecDeque<usize> {
        let moved = self.take_waiters(from, count, |_| true);
        if !moved.is_empty() {
            self.waiting.entry(to).or_default().extend(moved.iter().copied());
        }
        moved
    }

    /// The earliest deadline of a blocked thread.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// A blocked thread whose deadline is not after `now`, if any.
    pub fn expired(&self, now: u64) -> Option<usize> {
        self.deadlines.first().filter(|&&(deadline, _)| deadline <= now).map(|&(_, slot)| slot)
    }
}
