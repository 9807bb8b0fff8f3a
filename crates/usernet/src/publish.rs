//! Ports published as the guest listens on them (a pod's containers, `UserNet::publisher`): the VMM asks from a vCPU
//! thread, the relay thread binds the host socket (the relay's seccomp list has bind and listen; a vCPU's has not)
//! and answers. A port is published on all the host's addresses, IPv6 and IPv4 where the host has IPv6, and stays
//! published while the network runs.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::queue::Shared;

/// Most ports one guest may have published: each is a host socket, and the guest is not trusted.
pub(crate) const MAX_PUBLISHED: usize = 256;
/// How long a vCPU waits for the relay's answer (it binds one socket: microseconds, unless the relay is stuck).
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The accept queue of a port published this way, as for `-p` (see `engine::PUBLISHED_BACKLOG`).
const BACKLOG: i32 = 65_535;

/// Asks the relay thread to publish the guest's listening ports.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl Publisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Publisher {
        Publisher { shared }
    }

    /// Publishes TCP `port` on the host's addresses as the guest's `port`; waits for the relay's answer. Ok if it is
    /// published already; the host's error otherwise (`AddrInUse` where another program has it).
    pub fn publish(&self, port: u16) -> io::Result<()> {
        let (answer, answered) = mpsc::channel();
        self.shared.push_publish(port, answer);
        answered.recv_timeout(ANSWER_WAIT).unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// Binds `port` on every address: `[::]` (which takes IPv4 too), else `0.0.0.0` where the host has no IPv6.
pub(crate) fn bind(port: u16) -> io::Result<TcpListener> {
    let listener = match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
        Err(_) => TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?,
    };
    // SAFETY: listen takes no pointers; the descriptor is open and owned by `listener`.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}
