//! `UserNetConfig`: the addresses of the virtual network the guest sees (slirp's 10.0.2.0/24 plan by default, and
//! an IPv6 network beside it) and the `-p` forwards. Plain data; `UserNet::new` validates and applies it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    /// The IPv6 side of the network, if the guest has one.
    pub ipv6: Option<UserNet6>,
}

/// The guest's IPv6 network: its address, the gateway (the host's `::1`) and the DNS forwarder, all in one prefix.
#[derive(Clone, Copy, Debug)]
pub struct UserNet6 {
    pub guest_ip: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub dns: Ipv6Addr,
    pub prefix_len: u8,
}

impl UserNet6 {
    /// Whether `ip` is inside the guest's prefix.
    pub(crate) fn in_subnet(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
        u128::from(ip) & mask == u128::from(self.guest_ip) & mask
    }
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
            ipv6: Some(UserNet6 {
                guest_ip: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15),
                gateway: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
                dns: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
                prefix_len: 64,
            }),
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
pub(crate) fn host_target(net: &UserNetConfig, upstream: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
    let (gateway, dns, in_subnet, loopback): (IpAddr, IpAddr, bool, IpAddr) = match dst.ip() {
        IpAddr::V4(ip) => (net.gateway.into(), net.dns.into(), net.in_subnet(ip), Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) => {
            let v6 = net.ipv6?;
            (v6.gateway.into(), v6.dns.into(), v6.in_subnet(ip), Ipv6Addr::LOCALHOST.into())
        }
    };
    if dst.ip() == gateway {
        Some(SocketAddr::new(loopback, dst.port()))
    } else if dst.ip() == dns {
        (dst.port() == 53).then_some(upstream)
    } else if in_subnet {
        None
    } else {
        Some(dst)
    }
}

/// The address the guest knows a host peer by: the gateway for the host's loopback, and any address outside the
/// virtual network as itself.
pub(crate) fn seen_as(net: &UserNetConfig, from: SocketAddr) -> Option<SocketAddr> {
    match from {
        SocketAddr::V4(a) if a.ip().is_loopback() => Some(SocketAddr::new(net.gateway.into(), a.port())),
        SocketAddr::V4(a) if !net.in_subnet(*a.ip()) => Some(from),
        SocketAddr::V6(a) => {
            let v6 = net.ipv6?;
            if a.ip().is_loopback() {
                Some(SocketAddr::new(v6.gateway.into(), a.port()))
            } else {
                (!v6.in_subnet(*a.ip())).then_some(from)
            }
        }
        _ => None,
    }
}
