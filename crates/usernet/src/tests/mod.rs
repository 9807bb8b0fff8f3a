//! End-to-end tests: a second smoltcp interface plays the guest, wired to a `UserNet` through `send`/`recv`,
//! while ordinary std sockets play the host's programs. Nothing here touches the internet.

mod fuzz;
mod guest;
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
