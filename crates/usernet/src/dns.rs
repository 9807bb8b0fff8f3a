//! Which host resolver the DNS forwarder talks to. The forwarding itself is ordinary outbound UDP
//! (see `udp.rs`) with the destination rewritten from the virtual DNS address to this one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// The resolver the host uses: the first IPv4 `nameserver` in /etc/resolv.conf; without one,
/// systemd-resolved's stub (127.0.0.53) when it runs, else a public resolver (8.8.8.8).
pub(crate) fn host_resolver() -> SocketAddr {
    let from_file = std::fs::read_to_string("/etc/resolv.conf").ok().and_then(|t| first_nameserver(&t));
    let ip = from_file.unwrap_or_else(|| {
        if Path::new("/run/systemd/resolve/stub-resolv.conf").exists() {
            Ipv4Addr::new(127, 0, 0, 53)
        } else {
            Ipv4Addr::new(8, 8, 8, 8)
        }
    });
    SocketAddr::new(IpAddr::V4(ip), 53)
}

/// The first IPv4 nameserver in resolv.conf text. IPv6 ones are skipped: the relay's host sockets are IPv4.
pub(crate) fn first_nameserver(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .find_map(|w| w.parse::<Ipv4Addr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_first_ipv4_nameserver() {
        let text = "# generated\nsearch example.com\nnameserver fe80::1%eth0\nnameserver 192.168.1.1 # home\nnameserver 1.1.1.1\n";
        assert_eq!(first_nameserver(text), Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(first_nameserver("  nameserver\t127.0.0.53\n"), Some(Ipv4Addr::new(127, 0, 0, 53)));
        assert_eq!(first_nameserver("search x\n; nameserver 1.2.3.4\nnameserver\n"), None);
        assert_eq!(first_nameserver(""), None);
    }

    #[test]
    fn host_resolver_is_port_53() {
        assert_eq!(host_resolver().port(), 53);
    }
}
