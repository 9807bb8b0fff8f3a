//! `UserNetConfig`: the addresses of the virtual network the guest sees (slirp's 10.0.2.0/24 plan by default)
//! and the `-p` forwards. Plain data; `UserNet::new` validates and applies it.

use std::net::{Ipv4Addr, SocketAddr};

use crate::forward::PortForward;

/// The virtual network one guest lives in.
#[derive(Clone, Debug)]
pub struct UserNetConfig {
    pub guest_mac: [u8; 6],
    pub guest_ip: Ipv4Addr,
    /// The guest's default route; TCP/UDP to this address reaches the host's 127.0.0.1.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// A DNS forwarder (UDP and TCP port 53) to `dns_upstream`.
    pub dns: Ipv4Addr,
    /// Where DNS queries to `dns` go. `None`: the first IPv4 nameserver in the host's /etc/resolv.conf
    /// (see `dns::host_resolver`).
    pub dns_upstream: Option<SocketAddr>,
    pub forwards: Vec<PortForward>,
    /// Largest IP packet on the link (the guest's MTU). There is no wire, so it may be far above Ethernet's 1500:
    /// fewer, larger frames cost fewer wake-ups and VM exits per byte.
    pub mtu: u16,
}

impl Default for UserNetConfig {
    fn default() -> Self {
        UserNetConfig {
            guest_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            prefix_len: 24,
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dns_upstream: None,
            forwards: Vec::new(),
            mtu: 1500,
        }
    }
}

impl UserNetConfig {
    /// Whether `ip` is inside the guest's subnet.
    pub(crate) fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.guest_ip) & mask
    }
}

/// Where the guest's traffic to `dst` goes on the host, or `None` when nothing is there.
/// The gateway is the host's loopback; the DNS address is the upstream resolver (port 53 only);
/// other addresses inside the virtual subnet do not exist.
pub(crate) fn host_target(
    net: &UserNetConfig,
    upstream: SocketAddr,
    dst: std::net::SocketAddrV4,
) -> Option<SocketAddr> {
    let ip = *dst.ip();
    if ip == net.gateway {
        Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port()))
    } else if ip == net.dns {
        (dst.port() == 53).then_some(upstream)
    } else if net.in_subnet(ip) {
        None
    } else {
        Some(SocketAddr::V4(dst))
    }
}
