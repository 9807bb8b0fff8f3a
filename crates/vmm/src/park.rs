//! Where an idle vCPU sleeps: the library OS's `Wait` parks the vCPU's host thread until its deadline or until
//! another vCPU's `Kick` (or the end of the VM) unparks it. A kick that arrives before the wait is kept, so that a
//! wake-up between the library OS deciding to wait and the wait itself is never lost.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Parker {
    kicked: Mutex<bool>,
    wake: Condvar,
}

impl Parker {
    /// Sleeps for at most `timeout`; returns early (or at once) if kicked since the last park.
    pub fn park(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut kicked = self.kicked.lock().unwrap_or_else(PoisonError::into_inner);
        while !*kicked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            kicked = self.wake.wait_timeout(kicked, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        *kicked = false;
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
        p.park(Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn parks_until_the_timeout_or_a_kick() {
        let p = Arc::new(Parker::default());
        let t = Instant::now();
        p.park(Duration::from_millis(20));
        assert!(t.elapsed() >= Duration::from_millis(20));
        let q = p.clone();
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            q.unpark();
        });
        let t = Instant::now();
        p.park(Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5));
        kicker.join().unwrap();
    }
}
