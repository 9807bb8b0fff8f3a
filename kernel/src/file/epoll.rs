//! epoll: an interest list of descriptors, checked for readiness when waited on. Level-triggered by default;
//! EPOLLET reports a descriptor again only after its object changed since the last report; EPOLLONESHOT disarms an
//! entry once reported, until EPOLL_CTL_MOD. An instance watches the objects of its entries (`wait::Waitable`), so
//! that `epoll_wait` sleeps until one of them changes, whatever else changes meanwhile.

use super::wait::Waitable;
use super::{File, POLLERR, POLLHUP};
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

pub const EPOLLEXCLUSIVE: u32 = 1 << 28;
pub const EPOLLONESHOT: u32 = 1 << 30;
pub const EPOLLET: u32 = 1 << 31;

struct Entry {
    fd: u64,
    /// The open file the descriptor referred to when added: closing every descriptor of it removes the entry, as
    /// on Linux.
    file: Weak<File>,
    events: u32,
    data: u64,
    armed: bool,
    /// The file's change count when this entry was last reported (edge-triggered entries).
    reported_at: Option<u64>,
}

#[derive(Default)]
pub struct Epoll {
    entries: SpinLock<Vec<Entry>>,
    /// Where the next `collect` starts looking: after the last entry reported, so that a wait for fewer events than
    /// are ready reports the others next time instead of the first ones again (Linux requeues reported entries).
    next: AtomicUsize,
    /// Changes with every change of an entry's object, and with every ADD and MOD (a thread already in
    /// `epoll_wait` must look at a descriptor added while ready: no change of it may come to wake that thread).
    pub waitable: Arc<Waitable>,
}

pub enum Ctl {
    Add,
    Mod,
    Del,
}

impl Epoll {
    pub fn ctl(&self, op: Ctl, fd: u64, file: &Arc<File>, events: u32, data: u64) -> Result<(), Errno> {
        let mut entries = self.entries.lock();
        entries.retain(|e| e.file.strong_count() > 0);
        let at = entries.iter().position(|e| e.fd == fd && e.file.ptr_eq(&Arc::downgrade(file)));
        match (op, at) {
            (Ctl::Add, Some(_)) => Err(Errno::EEXIST),
            (Ctl::Add, None) => {
                file.watch(&self.waitable);
                entries.push(Entry { fd, file: Arc::downgrade(file), events, data, armed: true, reported_at: None });
                drop(entries);
                self.waitable.changed();
                Ok(())
            }
            (Ctl::Mod, Some(i)) => {
                let e = &mut entries[i];
                (e.events, e.data, e.armed, e.reported_at) = (events, data, true, None);
                drop(entries);
                self.waitable.changed();
                Ok(())
            }
            (Ctl::Del, Some(i)) => {
                entries.remove(i);
                file.unwatch(&self.waitable);
                Ok(())
            }
            (Ctl::Mod | Ctl::Del, None) => Err(Errno::ENOENT),
        }
    }

    /// Appends up to `max` ready (events, data) pairs to `out`.
    pub fn collect(&self, out: &mut Vec<(u32, u64)>, max: usize) {
        // Declared before the guard, so dropped after it: the last reference to a socket (its descriptor closed
        // meanwhile) closes it, which may wait (SO_LINGER) and must not do so holding the lock.
        let mut files = Vec::new();
        let mut entries = self.entries.lock();
        entries.retain(|e| e.file.strong_count() > 0);
        let count = entries.len();
        files.reserve(count);
        let start = match self.next.load(Ordering::Relaxed) {
            at if at < count => at,
            _ => 0,
        };
        for at in (start..count).chain(0..start) {
            if out.len() == max {
                break;
            }
            let e = &mut entries[at];
            let Some(file) = e.file.upgrade() else { continue };
            files.push(file.clone());
            if !e.armed {
                continue;
            }
            let wanted = (e.events & 0xffff) as u16;
            // The change count first: a change between the two reads is then reported again next time, not lost
            // (read after, it would mark as reported a change whose readiness this report does not include).
            let changes = file.changes();
            let ready = u32::from(file.ready(wanted | POLLERR | POLLHUP));
            if ready == 0 {
                continue;
            }
            if e.events & EPOLLET != 0 {
                if e.reported_at == Some(changes) {
                    continue;
                }
                e.reported_at = Some(changes);
            }
            if e.events & EPOLLONESHOT != 0 {
                e.armed = false;
            }
            out.push((ready, e.data));
            self.next.store(at + 1, Ordering::Relaxed);
        }
    }

    /// Whether a wait would report something now (an epoll descriptor polled in turn): what `collect` would
    /// report, errors and hang-ups included, an edge-triggered entry only for a change not yet reported. Looks
    /// without consuming edge-triggered or one-shot reports.
    pub fn any_ready(&self) -> bool {
        let mut files = Vec::new();
        let ready = self.entries.lock().iter().any(|e| {
            let Some(file) = e.file.upgrade().filter(|_| e.armed) else { return false };
            let reported = e.events & EPOLLET != 0 && e.reported_at == Some(file.changes());
            let ready = !reported && file.ready((e.events & 0xffff) as u16 | POLLERR | POLLHUP) != 0;
            files.push(file);
            ready
        });
        // Dropped without the lock: the last reference to a socket closes it, which may wait (SO_LINGER).
        drop(files);
        ready
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        for file in self.entries.lock().iter().filter_map(|e| e.file.upgrade()) {
            file.unwatch(&self.waitable);
        }
    }
}
