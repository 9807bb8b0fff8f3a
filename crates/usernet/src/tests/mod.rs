//! End-to-end tests: a second smoltcp interface plays the guest, wired to a `UserNet` through `send`/`recv`,
//! while ordinary std sockets play the host's programs. Nothing here touches the internet.

mod fuzz;
mod guest;
mod lifecycle;
mod scale;
mod tcp;
mod udp;

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
