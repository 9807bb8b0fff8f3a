//! End-to-end tests: a second smoltcp interface plays the guest, wired to a `UserNet` through `send`/`recv`,
//! while ordinary std sockets play the host's programs. Nothing here touches the internet.

mod fuzz;
mod guest;
mod lifecycle;
mod scale;
mod tcp;
mod udp;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A listener on 127.0.0.1 whose accept queue holds `backlog` connections. std listens with a backlog of 128; once
/// more handshakes than that are under way, Linux answers new SYNs with SYN cookies, and a cookie's final ACK that
/// finds the accept queue full is dropped without a trace: the connecting side (the relay) holds an established
/// connection that the listener never accepts, and when the listener's side is the one to speak first, nothing is ever
/// sent that would bring it back. The scale tests connect more than 128 at once.
pub(crate) fn listener_with_backlog(backlog: u16) -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // Linux takes a second listen(2) on a listening socket as its new backlog (capped by net.core.somaxconn).
    // SAFETY: listen takes no pointers; the fd is open, owned by `listener`.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), i32::from(backlog)) }, 0);
    listener
}

pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Deterministic test bytes (xorshift), different per `seed`.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn fwd(spec: &str) -> crate::PortForward {
    spec.parse().unwrap()
}

pub(crate) fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Lifts the soft open-files limit to at least `want` (up to the hard limit): the scale tests hold
/// thousands of sockets in this one process.
pub(crate) fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the live local above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= want {
        return;
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: setrlimit reads one rlimit from the live local above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}
