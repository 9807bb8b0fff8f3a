//! The frame queues between the VMM's threads and the relay thread, the two eventfds that signal them,
//! and the shared counters. `from_guest` kicks the relay; `push_to_guest` keeps `ready` readable while
//! frames wait for the guest.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::poller::EventFd;
use crate::UserNetStats;

/// Frames from the guest waiting for the relay; beyond this the relay is far behind and frames are dropped.
const FROM_GUEST_MAX: usize = 4096;
/// Frames waiting for the guest; beyond this the relay stops transmitting (smoltcp sees no TX token).
pub(crate) const TO_GUEST_MAX: usize = 1024;

#[derive(Default)]
pub(crate) struct Counters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub tcp_inbound: AtomicU64,
    pub tcp_outbound: AtomicU64,
    pub udp_flows: AtomicU64,
    pub dropped: AtomicU64,
    /// TCP connections currently held (not part of `UserNetStats`; the tests watch reaping with it).
    pub tcp_live: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> UserNetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UserNetStats {
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            tcp_inbound: get(&self.tcp_inbound),
            tcp_outbound: get(&self.tcp_outbound),
            udp_flows: get(&self.udp_flows),
            dropped: get(&self.dropped),
        }
    }
}

pub(crate) struct Shared {
    from_guest: Mutex<VecDeque<Vec<u8>>>,
    to_guest: Mutex<VecDeque<Vec<u8>>>,
    /// Wakes the relay thread: frames from the guest, room in the guest queue, or stop.
    pub kick: EventFd,
    /// Readable while `to_guest` is not empty.
    pub ready: EventFd,
    pub stop: AtomicBool,
    pub stats: Counters,
    /// Frames were queued for the guest since the relay last called the waker.
    pub pushed: AtomicBool,
    /// Called by the relay thread after a round that queued frames for the guest (see `UserNet::set_waker`).
    pub waker: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Ports the guest listens on, to publish (see `UserNet::publisher`), each with where its answer goes.
    pub publish: Mutex<Vec<(u16, std::sync::mpsc::Sender<io::Result<()>>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a VecDeque half-modified, so the data is still good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new() -> io::Result<Shared> {
        Ok(Shared {
            from_guest: Mutex::new(VecDeque::new()),
            to_guest: Mutex::new(VecDeque::new()),
            kick: EventFd::new()?,
            ready: EventFd::new()?,
            stop: AtomicBool::new(false),
            stats: Counters::default(),
            pushed: AtomicBool::new(false),
            waker: Mutex::new(None),
            publish: Mutex::new(Vec::new()),
        })
    }

    /// Asks the relay to publish `port`; the answer comes on `answer`.
    pub fn push_publish(&self, port: u16, answer: std::sync::mpsc::Sender<io::Result<()>>) {
        lock(&self.publish).push((port, answer));
        self.kick.signal();
    }

    /// The publish requests waiting for the relay.
    pub fn take_publish(&self) -> Vec<(u16, std::sync::mpsc::Sender<io::Result<()>>)> {
        std::mem::take(&mut *lock(&self.publish))
    }

    pub fn kick(&self) {
        self.kick.signal();
    }

    pub fn push_from_guest(&self, frame: &[u8]) {
        Counters::bump(&self.stats.frames_in);
        let mut q = lock(&self.from_guest);
        if q.len() >= FROM_GUEST_MAX {
            Counters::bump(&self.stats.dropped);
            return;
        }
        q.push_back(frame.to_vec());
        if q.len() == 1 {
            self.kick.signal();
        }
    }

    /// Everything the guest sent since the last call.
    pub fn take_from_guest(&self) -> VecDeque<Vec<u8>> {
        std::mem::take(&mut *lock(&self.from_guest))
    }

    pub fn to_guest_has_room(&self) -> bool {
        lock(&self.to_guest).len() < TO_GUEST_MAX
    }

    /// Queues a frame for the guest; false (frame not queued) when the queue is full.
    pub fn push_to_guest(&self, frame: Vec<u8>) -> bool {
        let mut q = lock(&self.to_guest);
        if q.len() >= TO_GUEST_MAX {
            return false;
        }
        q.push_back(frame);
        if q.len() == 1 {
            self.ready.signal();
        }
        self.pushed.store(true, Ordering::Release);
        true
    }

    /// Calls the waker if frames were queued for the guest since the last call.
    pub fn wake_if_pushed(&self) {
        if self.pushed.swap(false, Ordering::AcqRel) {
            if let Some(wake) = &*lock(&self.waker) {
                wake();
            }
        }
    }

    pub fn to_guest(&self, buf: &mut [u8]) -> Option<usize> {
        let mut q = lock(&self.to_guest);
        loop {
            let was_full = q.len() >= TO_GUEST_MAX;
            let frame = q.pop_front()?;
            if q.is_empty() {
                self.ready.clear();
            }
            if was_full {
                self.kick.signal();
            }
            if frame.len() > buf.len() {
                Counters::bump(&self.stats.dropped);
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            Counters::bump(&self.stats.frames_out);
            return Some(frame.len());
        }
    }
}
