//! UDP relaying. Outbound: one host socket per guest source port, sending wherever the guest sends (rewritten
//! by `host_target`), with replies delivered from the address the guest originally used. Inbound (`-p .../udp`):
//! each host peer of a forward gets its own gateway port, so the guest's replies find their way back.
//! Idle flows expire. Datagrams are built into frames here directly; smoltcp is not involved. A flow is keyed by the
//! guest's source address and port, so the guest's IPv4 and IPv6 flows from one port stay apart.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{host_target, seen_as, UserNetConfig};
use crate::forward::PortForward;
use crate::frame::{udp_frame, udp_max_payload};
use crate::queue::{Counters, Shared};
use crate::sources::Sources;
use mio::Interest;

/// A flow nobody used for this long is forgotten and its host socket closed.
const UDP_IDLE: Duration = Duration::from_secs(120);
/// DNS lookups use a fresh source port each, so their flows are forgotten much sooner.
const DNS_IDLE: Duration = Duration::from_secs(10);
/// Caps on what a guest (or the peers of a forward) can make the relay hold.
const MAX_OUTBOUND_FLOWS: usize = 4096;
const MAX_PEERS: usize = 4096;
const MAX_DESTS_PER_FLOW: usize = 256;

struct OutFlow {
    sock: UdpSocket,
    /// Its id in `UdpRelay::sources`.
    source: usize,
    last_used: Instant,
    idle_limit: Duration,
    /// Host address sent to → the address the guest used for it, so replies come from where the guest expects.
    dests: HashMap<SocketAddr, SocketAddr>,
}

pub(crate) struct UdpForward {
    pub spec: PortForward,
    pub sock: UdpSocket,
}

struct Peer {
    forward: usize,
    addr: SocketAddr,
    last_used: Instant,
}

pub(crate) struct UdpRelay {
    net: UserNetConfig,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// By the guest's source (address, port).
    outbound: HashMap<SocketAddr, OutFlow>,
    forwards: Vec<UdpForward>,
    sources: Sources<UdpToken>,
    /// Gateway port → the forward peer it stands for; `peer_ports` is the reverse index.
    peers: HashMap<u16, Peer>,
    peer_ports: HashMap<(usize, SocketAddr), u16>,
    next_port: u16,
    buf: Vec<u8>,
    /// No flow or peer is forgotten before this (none: there are none): the relay thread sleeps until then at most.
    next_expiry: Option<Instant>,
}

impl UdpRelay {
    /// The relay, waiting on the `-p .../udp` sockets through `sources`.
    pub fn new(
        net: UserNetConfig,
        upstream: SocketAddr,
        shared: Arc<Shared>,
        forwards: Vec<UdpForward>,
        mut sources: Sources<UdpToken>,
    ) -> io::Result<Self> {
        for (i, forward) in forwards.iter().enumerate() {
            sources.add(forward.sock.as_raw_fd(), Interest::READABLE, UdpToken::Forward(i))?;
        }
        Ok(UdpRelay {
            net,
            upstream,
            shared,
            outbound: HashMap::new(),
            forwards,
            sources,
            peers: HashMap::new(),
            peer_ports: HashMap::new(),
            next_port: 49152,
            buf: vec![0; 65536],
            next_expiry: None,
        })
    }

    /// What `token` (one of the UDP relay's) stands for.
    pub fn lookup(&self, token: mio::Token) -> Option<UdpToken> {
        self.sources.lookup(token)
    }

    fn drop_one(&self) {
        Counters::bump(&self.shared.stats.dropped);
    }

    /// The guest's own address in `dst`'s family, if it has one.
    fn guest_ip(&self, dst: IpAddr) -> Option<IpAddr> {
        match dst {
            IpAddr::V4(_) => Some(self.net.guest_ip.into()),
            IpAddr::V6(_) => self.net.ipv6.map(|v6| v6.guest_ip.into()),
        }
    }

    /// A datagram the guest sent from `src_port` to `dst`.
    pub fn relay_from_guest(&mut self, src_port: u16, dst: SocketAddr, payload: &[u8], now: Instant) {
        let Some(guest_ip) = self.guest_ip(dst.ip()) else { return self.drop_one() };
        let src = SocketAddr::new(guest_ip, src_port);
        if dst.ip() == IpAddr::V4(self.net.gateway) {
            if let Some(peer) = self.peers.get_mut(&dst.port()) {
                peer.last_used = now;
                let _ = self.forwards[peer.forward].sock.send_to(payload, peer.addr);
                return;
            }
        }
        let Some(target) = host_target(&self.net, self.upstream, dst) else { return self.drop_one() };
        if !self.outbound.contains_key(&src) {
            if self.outbound.len() >= MAX_OUTBOUND_FLOWS {
                // Full: the least recently used flow makes room (a linear scan, only at the cap).
                if let Some(oldest) = self.outbound.iter().min_by_key(|(_, f)| f.last_used).map(|(p, _)| *p) {
                    if let Some(flow) = self.outbound.remove(&oldest) {
                        self.sources.forget(flow.source);
                    }
                }
            }
            let bind: SocketAddr = match target {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let Ok(sock) = UdpSocket::bind(bind).and_then(|s| s.set_nonblocking(true).map(|()| s)) else {
                return self.drop_one();
            };
            let Ok(source) = self.sources.add(sock.as_raw_fd(), Interest::READABLE, UdpToken::Outbound(src)) else {
                return self.drop_one();
            };
            Counters::bump(&self.shared.stats.udp_flows);
            let idle_limit = if dst.port() == 53 { DNS_IDLE } else { UDP_IDLE };
            let flow = OutFlow { sock, source, last_used: now, idle_limit, dests: HashMap::new() };
            self.outbound.insert(src, flow);
            self.expires_at(now + idle_limit);
        }
        let Some(flow) = self.outbound.get_mut(&src) else { return };
        flow.last_used = now;
        if flow.dests.len() >= MAX_DESTS_PER_FLOW && !flow.dests.contains_key(&target) {
            flow.dests.clear();
        }
        flow.dests.insert(target, dst);
        if flow.sock.send_to(payload, target).is_err() {
            self.drop_one();
        }
    }

    pub fn on_readable(&mut self, token: UdpToken, now: Instant) {
        match token {
            UdpToken::Forward(i) => self.drain_forward(i, now),
            UdpToken::Outbound(guest) => self.drain_outbound(guest, now),
        }
    }

    /// Sends the guest `len` bytes of `buf` from `src` to its address and port `dst`.
    fn deliver(&self, src: SocketAddr, dst: SocketAddr, len: usize) {
        if len > udp_max_payload(self.net.mtu, dst.is_ipv6()) {
            return self.drop_one();
        }
        let Some(frame) = udp_frame(self.net.guest_mac, src, dst, &self.buf[..len]) else { return self.drop_one() };
        if !self.shared.push_to_guest(frame) {
            self.drop_one();
        }
    }

    fn drain_outbound(&mut self, guest: SocketAddr, now: Instant) {
        loop {
            let Some(flow) = self.outbound.get_mut(&guest) else { return };
            let (len, from) = match flow.sock.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            flow.last_used = now;
            // A reply comes from where the guest sent; a v4-mapped peer of an IPv6 socket is the IPv4 one.
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            match flow.dests.get(&from).copied().or_else(|| seen_as(&self.net, from)) {
                Some(src) if src.is_ipv4() == guest.is_ipv4() => self.deliver(src, guest, len),
                _ => self.drop_one(),
            }
        }
    }

    fn drain_forward(&mut self, i: usize, now: Instant) {
        loop {
            let (len, from) = match self.forwards[i].sock.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(_) => return,
            };
            let Some(port) = self.peer_port(i, from, now) else {
                self.drop_one();
                continue;
            };
            let guest = SocketAddr::new(self.net.guest_ip.into(), self.forwards[i].spec.guest_port);
            self.deliver(SocketAddr::new(self.net.gateway.into(), port), guest, len);
        }
    }

    /// The gateway port that stands for `peer` of forward `i`, allocated on first use.
    fn peer_port(&mut self, i: usize, peer: SocketAddr, now: Instant) -> Option<u16> {
        if let Some(port) = self.peer_ports.get(&(i, peer)) {
            if let Some(p) = self.peers.get_mut(port) {
                p.last_used = now;
            }
            return Some(*port);
        }
        if self.peers.len() >= MAX_PEERS {
            let oldest = self.peers.iter().min_by_key(|(_, p)| p.last_used).map(|(port, p)| (*port, p.forward, p.addr));
            if let Some((port, forward, addr)) = oldest {
                self.peers.remove(&port);
                self.peer_ports.remove(&(forward, addr));
            }
        }
        let port = loop {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
            if !self.peers.contains_key(&p) {
                break p;
            }
        };
        Counters::bump(&self.shared.stats.udp_flows);
        self.peers.insert(port, Peer { forward: i, addr: peer, last_used: now });
        self.peer_ports.insert((i, peer), port);
        self.expires_at(now + UDP_IDLE);
        Some(port)
    }

    /// Forgets idle flows, and notes when the next of the others may be forgotten.
    pub fn expire(&mut self, now: Instant) {
        let sources = &mut self.sources;
        let mut next: Option<Instant> = None;
        let mut keep_until = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        self.outbound.retain(|_, f| {
            let keep = now.duration_since(f.last_used) < f.idle_limit;
            if keep {
                keep_until(f.last_used + f.idle_limit);
            } else {
                sources.forget(f.source);
            }
            keep
        });
        let peer_ports = &mut self.peer_ports;
        self.peers.retain(|_, p| {
            let keep = now.duration_since(p.last_used) < UDP_IDLE;
            if keep {
                keep_until(p.last_used + UDP_IDLE);
            } else {
                peer_ports.remove(&(p.forward, p.addr));
            }
            keep
        });
        self.next_expiry = next;
    }

    /// When [`UdpRelay::expire`] has something to look at next (a flow's use since then only makes it look early).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.next_expiry
    }

    fn expires_at(&mut self, at: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(at, |n| n.min(at)));
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum UdpToken {
    Forward(usize),
    Outbound(SocketAddr),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_flows_expire_sooner_than_others() {
        let shared = Arc::new(Shared::new().unwrap());
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sink.local_addr().unwrap().port();
        let net = UserNetConfig::default();
        let poll = mio::Poll::new().unwrap();
        let sources = Sources::new(poll.registry().try_clone().unwrap(), crate::sources::Owner::Udp);
        let mut relay = UdpRelay::new(net.clone(), sink.local_addr().unwrap(), shared, Vec::new(), sources).unwrap();
        let t0 = Instant::now();
        let at = |ip: Ipv4Addr, port| SocketAddr::new(ip.into(), port);
        assert_eq!(relay.next_expiry(), None, "no flow: nothing to wake up for");
        relay.relay_from_guest(1000, at(net.dns, 53), b"q", t0);
        relay.relay_from_guest(1001, at(net.gateway, port), b"x", t0);
        // Inside the subnet but neither gateway nor DNS: nobody is there.
        relay.relay_from_guest(1002, at(Ipv4Addr::new(10, 0, 2, 9), port), b"x", t0);
        assert_eq!(relay.outbound.len(), 2);
        assert_eq!(relay.next_expiry(), Some(t0 + DNS_IDLE));
        relay.expire(t0 + DNS_IDLE + Duration::from_secs(1));
        let flow = |port| relay.outbound.contains_key(&at(net.guest_ip, port));
        assert!(flow(1001) && !flow(1000));
        assert_eq!(relay.next_expiry(), Some(t0 + UDP_IDLE));
        relay.expire(t0 + UDP_IDLE + Duration::from_secs(1));
        assert!(relay.outbound.is_empty());
        assert_eq!(relay.next_expiry(), None, "every flow forgotten: nothing to wake up for");
        assert_eq!(relay.sources.len(), 0, "expired flows are no longer waited on");
        let mut buf = [0; 8];
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(sink.recv_from(&mut buf).unwrap().0, 1);
        assert_eq!(sink.recv_from(&mut buf).unwrap().0, 1);
    }
}
