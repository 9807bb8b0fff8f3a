//! eventfd: a 64-bit counter. Writes add to it (blocking before it would overflow); reads take it all, or one in
//! semaphore mode, blocking while it is zero.

use super::wait::Waitable;
use super::{POLLIN, POLLOUT};
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::sync::Arc;

const MAX: u64 = u64::MAX - 1;

pub struct EventFd {
    value: SpinLock<u64>,
    semaphore: bool,
    pub waitable: Arc<Waitable>,
}

impl EventFd {
    pub fn new(initial: u64, semaphore: bool) -> Arc<EventFd> {
        Arc::new(EventFd { value: SpinLock::new(initial), semaphore, waitable: Waitable::new() })
    }

    fn changed(&self) {
        self.waitable.changed();
    }

    pub fn events(&self) -> u16 {
        let v = *self.value.lock();
        (if v > 0 { POLLIN } else { 0 }) | if v < MAX { POLLOUT } else { 0 }
    }

    pub fn read(&self, nonblocking: bool) -> Result<u64, Errno> {
        loop {
            {
                let mut v = self.value.lock();
                if *v > 0 {
                    let taken = if self.semaphore { 1 } else { *v };
                    *v -= taken;
                    drop(v);
                    self.changed();
                    return Ok(taken);
                }
                if nonblocking {
                    return Err(Errno::EAGAIN);
                }
            }
            self.waitable.wait_while(|| *self.value.lock() == 0)?;
        }
    }

    pub fn write(&self, add: u64, nonblocking: bool) -> Result<(), Errno> {
        if add == u64::MAX {
            return Err(Errno::EINVAL);
        }
        loop {
            {
                let mut v = self.value.lock();
                if MAX - *v >= add {
                    *v += add;
                    drop(v);
                    self.changed();
                    return Ok(());
                }
                if nonblocking {
                    return Err(Errno::EAGAIN);
                }
            }
            self.waitable.wait_while(|| MAX - *self.value.lock() < add)?;
        }
    }
}
