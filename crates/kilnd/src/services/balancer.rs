//! A service's published ports: kilnd listens on each host port itself and splices every connection it accepts to
//! one ready replica's loopback port (which the replica's user-mode network forwards into its guest), taking the
//! ready replicas in turn. A replica being drained takes no new connection; the controller stops it once the
//! connections it has are over. A connection that finds no ready replica waits for one (up to [`WAIT_FOR_READY`])
//! instead of being refused, so that the moments of an update where every replica is changing refuse nothing.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long an accepted connection waits for a ready replica before it is closed.
const WAIT_FOR_READY: Duration = Duration::from_secs(10);
/// How long a connect to a replica's port may take before the next replica is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a waiting connection looks again (besides being woken when a replica becomes ready).
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// One replica as the balancer sees it.
pub struct Backend {
    pub id: String,
    /// Its loopback port for each of the service's published ports, in order.
    ports: Vec<u16>,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Connections spliced to it now, and those being connected.
    active: AtomicUsize,
}

impl Backend {
    pub fn new(id: String, ports: Vec<u16>) -> Backend {
        Backend {
            id,
            ports,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(SeqCst)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    pub fn active(&self) -> usize {
        self.active.load(SeqCst)
    }
}

/// The replicas of one service.
#[derive(Default)]
pub struct Pool {
    backends: Mutex<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    changed: Notify,
}

/// A connection counted on its backend until dropped.
struct Taken(Arc<Backend>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, SeqCst);
    }
}

impl Pool {
    fn backends(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Backend>>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, backend: Arc<Backend>) {
        self.backends().push(backend);
    }

    pub fn remove(&self, id: &str) {
        self.backends().retain(|b| b.id != id);
    }

    /// Whether `backend` takes connections; waiting connections are woken when it does.
    pub fn set_ready(&self, backend: &Backend, ready: bool) {
        if backend.ready.swap(ready, SeqCst) != ready && ready {
            self.changed.notify_waiters();
        }
    }

    /// `backend` takes no new connection from now on; those it has go on.
    pub fn drain(&self, backend: &Backend) {
        backend.draining.store(true, SeqCst);
    }

    /// The next ready backend in turn, counted as taken. The count goes up before `draining` is read again, and the
    /// controller sets `draining` before it reads the count: so a replica is never stopped under a connection that
    /// was given to it.
    fn take(&self) -> Option<Taken> {
        let backends = self.backends();
        let n = backends.len();
        let start = self.next.fetch_add(1, SeqCst);
        for k in 0..n {
            let backend = &backends[(start + k) % n];
            if !backend.ready() || backend.draining() {
                continue;
            }
            backend.active.fetch_add(1, SeqCst);
            let taken = Taken(backend.clone());
            if backend.draining() {
                continue;
            }
            return Some(taken);
        }
        None
    }
}

/// Accepts connections on `listener` for published port number `index` until the task is aborted.
pub async fn serve(listener: TcpListener, pool: Arc<Pool>, index: usize) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(splice(client, pool.clone(), index));
            }
            Err(e) => {
                // Out of descriptors, mostly: wait rather than spin.
                tracing::warn!("a service port cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn splice(mut client: TcpStream, pool: Arc<Pool>, index: usize) {
    let _ = client.set_nodelay(true);
    let deadline = Instant::now() + WAIT_FOR_READY;
    while Instant::now() < deadline {
        if let Some(taken) = pool.take() {
            let Some(&port) = taken.0.ports.get(index) else { return };
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                // Its VM ended under us, most likely: the next one.
                _ => continue,
            }
        }
        let _ = tokio::time::timeout(LOOK_AGAIN, pool.changed.notified()).await;
    }
    tracing::warn!("a connection to a service port found no ready replica within {WAIT_FOR_READY:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_the_ready_replicas_and_never_to_a_draining_one() {
        let pool = Pool::default();
        let (a, b, c) = (
            Arc::new(Backend::new("a".into(), vec![1])),
            Arc::new(Backend::new("b".into(), vec![2])),
            Arc::new(Backend::new("c".into(), vec![3])),
        );
        for backend in [&a, &b, &c] {
            pool.add(backend.clone());
        }
        assert!(pool.take().is_none(), "none ready yet");
        pool.set_ready(&a, true);
        pool.set_ready(&b, true);
        let taken: Vec<String> = (0..4).map(|_| pool.take().unwrap().0.id.clone()).collect();
        assert_eq!(taken.iter().filter(|id| *id == "a").count(), 2, "{taken:?}");
        assert!(!taken.contains(&"c".to_string()));
        let held = pool.take().unwrap();
        assert_eq!(held.0.active(), 1);
        pool.drain(&a);
        pool.drain(&b);
        assert!(pool.take().is_none(), "draining replicas take nothing new");
        assert_eq!(held.0.active(), 1, "the connection it has goes on");
        drop(held);
        assert_eq!(a.active() + b.active(), 0);
        pool.remove("a");
        assert_eq!(pool.backends().len(), 2);
    }
}
