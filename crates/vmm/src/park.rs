//! Where an idle vCPU sleeps: the library OS's `Wait` parks the vCPU's host thread until its deadline (if it has one)
//! or until another vCPU's `Kick`, a frame from the network, a host signal or the end of the VM unparks it. A kick
//! that arrives before the wait is kept, so that a wake-up between the library OS deciding to wait and the wait
//! itself is never lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Parker {
    kicked: Mutex<bool>,
    wake: Condvar,
    /// Whether the vCPU sleeps here now (a hint: it may be about to wake).
    parked: AtomicBool,
}

impl Parker {
    /// Sleeps for at most `timeout` (`None`: until kicked); returns early (or at once) if kicked since the last park.
    pub fn park(&self, timeout: Option<Duration>) {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut kicked = self.kicked.lock().unwrap_or_else(PoisonError::into_inner);
        self.parked.store(true, Ordering::SeqCst);
        while !*kicked {
            kicked = match deadline {
                None => self.wake.wait(kicked).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.wake.wait_timeout(kicked, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
        *kicked = false;
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Whether the vCPU is parked now (it may be waking meanwhile: a hint, for the host-signal forwarder).
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }

    pub fn unpark(&self) {
        *self.kicked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_kick_before_the_park_is_not_lost() {
        let p = Parker::default();
        p.unpark();
        let t = Instant::now();
        p.park(Some(Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn parks_until_the_timeout_or_a_kick() {
        let p = Arc::new(Parker::default());
        let t = Instant::now();
        p.park(Some(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
        let q = p.clone();
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            q.unpark();
        });
        let t = Instant::now();
        p.park(Some(Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(5));
        kicker.join().unwrap();
    }

    #[test]
    fn parks_without_a_timeout_until_kicked() {
        let p = Arc::new(Parker::default());
        let q = p.clone();
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q.unpark();
        });
        let t = Instant::now();
        p.park(None);
        assert!(t.elapsed() >= Duration::from_millis(50));
        kicker.join().unwrap();
        // A timeout beyond what an Instant can hold is no timeout either (the guest may ask for any u64).
        p.unpark();
        p.park(Some(Duration::from_nanos(u64::MAX)));
    }
}
