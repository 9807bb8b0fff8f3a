//! VMs made ahead of time (`kiln daemon --ready-vms N`): kilnd keeps up to N machines
//! (`kiln_vmm::ready::ReadyMachine`: the KVM VM, its registered RAM, its vCPUs) of the shape it was last asked for,
//! and a create or a restore of that shape takes one instead of making it; a thread of its own makes the next in the
//! background. A machine is moved out of the pool to the one VM that takes it, so none is handed out twice; its RAM
//! is a fresh mapping no guest has run in.
//!
//! The shape followed is the last one asked for (at the start, `kiln run`'s default: 64 MiB and one vCPU): a request
//! of another shape is made on demand as without a pool, and the machines of the old shape are dropped for ones of
//! the new. Each ready machine holds its VM's and vCPUs' kernel memory, and an untouched RAM mapping (address space
//! only: `MAP_NORESERVE`, no page of it is there until a guest touches it).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// After a failure to make a machine (out of memory, a KVM limit), the refill waits this long before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// The refill thread's nice value: a machine made in the background yields the CPU to instances that run, the one
/// that just took a machine and is on its way to its first answer among them.
const REFILL_NICE: i32 = 10;

/// What the pool holds: something of a shape.
pub trait Machine: Send + 'static {
    type Shape: Copy + PartialEq + Send + std::fmt::Debug + 'static;
    fn shape(&self) -> Self::Shape;
}

impl Machine for kiln_vmm::ready::ReadyMachine {
    type Shape = kiln_vmm::ready::Shape;
    fn shape(&self) -> Self::Shape {
        kiln_vmm::ready::ReadyMachine::shape(self)
    }
}

struct State<M: Machine> {
    ready: VecDeque<M>,
    /// The shape the pool fills with.
    wanted: M::Shape,
    stopping: bool,
}

/// Up to `size` machines of the wanted shape, refilled by a thread of its own.
pub struct Pool<M: Machine> {
    size: usize,
    state: Mutex<State<M>>,
    changed: Condvar,
}

/// How many machines the pool holds, and of which shape.
#[cfg(test)]
#[derive(Debug, PartialEq)]
pub struct Level<S> {
    pub ready: usize,
    pub wanted: S,
}

impl<M: Machine> Pool<M> {
    /// A pool of `size` machines of `first` shape, made by `make` on a thread of its own; with `size` 0, an empty
    /// pool that makes none and hands none out.
    pub fn start<E: std::fmt::Display>(
        size: usize,
        first: M::Shape,
        make: impl Fn(M::Shape) -> Result<M, E> + Send + 'static,
    ) -> std::io::Result<Arc<Pool<M>>> {
        let pool = Arc::new(Pool {
            size,
            state: Mutex::new(State { ready: VecDeque::with_capacity(size), wanted: first, stopping: false }),
            changed: Condvar::new(),
        });
        if size > 0 {
            let filler = pool.clone();
            std::thread::Builder::new().name("kilnd-ready-vms".into()).spawn(move || filler.refill(make))?;
        }
        Ok(pool)
    }

    fn state(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready machine of `shape`, if the pool has one; the pool follows `shape` from now on, and makes the next.
    pub fn take(&self, shape: M::Shape) -> Option<M> {
        if self.size == 0 {
            return None;
        }
        let mut state = self.state();
        if state.wanted != shape {
            tracing::debug!(old = ?state.wanted, new = ?shape, "ready VMs: a new shape");
            state.wanted = shape;
            state.ready.retain(|m| m.shape() == shape);
        }
        let taken = state.ready.pop_front();
        drop(state);
        self.changed.notify_all();
        taken
    }

    #[cfg(test)]
    pub fn level(&self) -> Level<M::Shape> {
        let state = self.state();
        Level { ready: state.ready.len(), wanted: state.wanted }
    }

    /// Waits up to `limit` until the pool holds `size` machines; whether it does.
    #[cfg(test)]
    pub fn wait_full(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut state = self.state();
        while state.ready.len() < self.size {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Ends the refill and drops the ready machines.
    pub fn stop(&self) {
        let ready = {
            let mut state = self.state();
            state.stopping = true;
            std::mem::take(&mut state.ready)
        };
        self.changed.notify_all();
        drop(ready);
    }

    /// The refill thread: makes machines of the wanted shape while the pool holds fewer than `size`.
    fn refill<E: std::fmt::Display>(&self, make: impl Fn(M::Shape) -> Result<M, E>) {
        // SAFETY: gettid and setpriority have no memory arguments; a thread's nice value is its own under Linux.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, REFILL_NICE) };
        let mut state = self.state();
        loop {
            if state.stopping {
                return;
            }
            if state.ready.len() >= self.size {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let shape = state.wanted;
            drop(state);
            let made = make(shape);
            state = self.state();
            match made {
                // A machine of a shape no longer wanted is dropped (after the lock: closing a VM takes time).
                Ok(machine) if state.wanted == shape && !state.stopping => {
                    state.ready.push_back(machine);
                    tracing::debug!(?shape, ready = state.ready.len(), "a VM made ahead of time");
                    self.changed.notify_all();
                }
                Ok(machine) => {
                    drop(state);
                    drop(machine);
                    state = self.state();
                }
                Err(e) => {
                    tracing::warn!("cannot make a VM ahead of time ({shape:?}), trying again in {RETRY:?}: {e}");
                    state = self.changed.wait_timeout(state, RETRY).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A machine with a serial number, to tell machines apart.
    #[derive(Debug)]
    struct Fake {
        serial: u32,
        shape: u64,
    }

    impl Machine for Fake {
        type Shape = u64;
        fn shape(&self) -> u64 {
            self.shape
        }
    }

    fn fakes(size: usize, first: u64) -> (Arc<Pool<Fake>>, Arc<AtomicU32>) {
        let made = Arc::new(AtomicU32::new(0));
        let counter = made.clone();
        let make = move |shape| Ok::<_, String>(Fake { serial: counter.fetch_add(1, Ordering::SeqCst), shape });
        (Pool::start(size, first, make).unwrap(), made)
    }

    #[test]
    fn a_pool_fills_to_its_size_and_refills_what_is_taken() {
        let (pool, made) = fakes(3, 64);
        assert!(pool.wait_full(Duration::from_secs(10)));
        assert_eq!(pool.level(), Level { ready: 3, wanted: 64 });
        let taken = pool.take(64).expect("a ready machine");
        assert_eq!(taken.shape, 64);
        assert!(pool.wait_full(Duration::from_secs(10)), "refilled");
        assert_eq!(made.load(Ordering::SeqCst), 4);
        pool.stop();
        assert_eq!(pool.level().ready, 0);
    }

    #[test]
    fn no_machine_is_handed_out_twice() {
        let (pool, _) = fakes(2, 64);
        let serials = Mutex::new(HashSet::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        if let Some(m) = pool.take(64) {
                            assert!(serials.lock().unwrap().insert(m.serial), "machine {} handed out twice", m.serial);
                        }
                        std::thread::yield_now();
                    }
                });
            }
        });
        assert!(!serials.into_inner().unwrap().is_empty());
        pool.stop();
    }

    #[test]
    fn a_new_shape_replaces_the_old_ones() {
        let (pool, _) = fakes(2, 64);
        assert!(pool.wait_full(Duration::from_secs(10)));
        assert!(pool.take(128).is_none(), "none of that shape yet");
        assert!(pool.wait_full(Duration::from_secs(10)));
        assert_eq!(pool.level(), Level { ready: 2, wanted: 128 });
        assert_eq!(pool.take(128).map(|m| m.shape), Some(128));
        pool.stop();
    }

    #[test]
    fn a_pool_of_size_zero_makes_and_gives_nothing() {
        let (pool, made) = fakes(0, 64);
        assert!(pool.take(64).is_none());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(made.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_make_is_retried() {
        let tries = Arc::new(AtomicU32::new(0));
        let counter = tries.clone();
        let make = move |shape| match counter.fetch_add(1, Ordering::SeqCst) {
            0 => Err("no memory".to_string()),
            serial => Ok(Fake { serial, shape }),
        };
        let pool = Pool::start(1, 64, make).unwrap();
        assert!(pool.wait_full(RETRY * 10), "made after the failure");
        assert!(tries.load(Ordering::SeqCst) >= 2);
        pool.stop();
    }
}
