//! Waiting for objects to change: each socket, pipe, eventfd and epoll instance has a `Waitable`, and a change to
//! the object wakes only the threads waiting on that object, and the epoll instances and `poll`/`select` calls that
//! watch it.
//!
//! A waiter reads the change count, looks at the object, and blocks only while the count is still what it read
//! (compared under the scheduler lock, which the waker's wake takes too): a change in between is never lost, at
//! worst it makes a spurious wake-up. Watchers (an epoll instance, a `poll` call) are `Waitable`s themselves, told of
//! every change of what they watch, so that a multi-object wait is a wait on one count.

use crate::errno::Errno;
use crate::sched::{self, Wait, Woken};
use crate::sync::SpinLock;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Default)]
pub struct Waitable {
    changes: AtomicU64,
    /// Threads in `wait`: a change with none skips the scheduler's lock.
    waiting: AtomicUsize,
    /// Who is told of every change (once per watch: an object an epoll instance holds twice is in here twice).
    watchers: SpinLock<Vec<Arc<Waitable>>>,
}

impl Waitable {
    pub fn new() -> Arc<Waitable> {
        Arc::new(Waitable::default())
    }

    /// A waitable that lives in a static.
    pub const fn new_static() -> Waitable {
        Waitable { changes: AtomicU64::new(0), waiting: AtomicUsize::new(0), watchers: SpinLock::new(Vec::new()) }
    }

    fn key(&self) -> u64 {
        self as *const Waitable as u64
    }

    /// How often the object changed (edge-triggered epoll compares it).
    pub fn count(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// The object changed (became readable, writable, hung up, or may have): wakes its waiters and tells its
    /// watchers. Call it after the change and without locks the scheduler may be waiting for (the stack's).
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        // A waiter counts itself before it checks the count, a changer counts the change before it looks for
        // waiters (both sequentially consistent): either the waiter sees the change or the changer sees the waiter.
        if self.waiting.load(Ordering::SeqCst) != 0 {
            sched::wake_object(self.key());
        }
        for watcher in self.watchers.lock().iter() {
            watcher.changed();
        }
    }

    pub fn watch(&self, watcher: &Arc<Waitable>) {
        self.watchers.lock().push(watcher.clone());
    }

    pub fn unwatch(&self, watcher: &Arc<Waitable>) {
        let mut watchers = self.watchers.lock();
        if let Some(at) = watchers.iter().position(|w| Arc::ptr_eq(w, watcher)) {
            watchers.swap_remove(at);
        }
    }

    /// Sleeps until the count moves past `seen` or `deadline` (ns since boot; `u64::MAX`: none) passes; EINTR if a
    /// signal comes first.
    pub fn wait(&self, seen: u64, deadline: u64) -> Result<(), Errno> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let woken = sched::block(Wait::Object(self.key()), deadline, || self.count() == seen);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match woken {
            Some(Woken::Signal) => Err(Errno::EINTR),
            _ => Ok(()),
        }
    }

    /// Sleeps while `still()` holds, until the object changes; EINTR if a signal comes first. The count is read
    /// before `still()` looks, so a change after the look makes the wait return at once.
    pub fn wait_while(&self, still: impl FnOnce() -> bool) -> Result<(), Errno> {
        let seen = self.count();
        if !still() {
            return Ok(());
        }
        self.wait(seen, u64::MAX)
    }
}

/// The objects one `poll` or `select` call waits on: it watches each for as long as it lives.
pub struct PollSet {
    pub waitable: Arc<Waitable>,
    watched: Vec<Arc<super::File>>,
}

impl PollSet {
    pub fn new() -> PollSet {
        PollSet { waitable: Waitable::new(), watched: Vec::new() }
    }

    pub fn watch(&mut self, file: Arc<super::File>) {
        file.watch(&self.waitable);
        self.watched.push(file);
    }
}

impl Drop for PollSet {
    fn drop(&mut self) {
        for file in &self.watched {
            file.unwatch(&self.waitable);
        }
    }
}
