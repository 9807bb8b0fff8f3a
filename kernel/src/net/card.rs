//! The network card's side of the link: IP packets framed in Ethernet to their next hop, whose hardware address is
//! found with ARP (IPv4) or neighbour discovery (IPv6, RFC 4861), and the checksums the stack leaves out (see
//! `Link::capabilities`). The VM's addresses are fixed by the VMM (or, exported, leased by DHCP: `dhcp`), so there is
//! no router discovery or duplicate address detection.

use super::virtio::Transmitter;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv6Address, Ipv6Cidr, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress, TcpPacket,
    UdpPacket,
};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERNET_HEADER: usize = 14;
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Packets kept while the next hop's address is asked for; older ones are dropped (TCP sends again).
const HELD_PACKETS: usize = 32;
/// Most neighbours remembered, and most addresses remembered as asked about; beyond, the oldest is forgotten (it is
/// asked for again when needed), so that a busy or hostile link cannot grow the tables without end.
const NEIGHBOURS: usize = 256;
/// Least time between two questions (ARP requests, neighbour solicitations) for one address.
const ASK_RETRY_US: u64 = 500_000;
/// Neighbour discovery's messages carry the largest hop limit, so that a receiver knows they came from the link.
const NDISC_HOP_LIMIT: u8 = 255;
const ALL_NODES: Ipv6Address = Ipv6Address::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Most routes the card takes besides its default ones.
pub const MAX_ROUTES: usize = kiln_abi::boot::MAX_ROUTES;

/// The VM's place on the network card's link.
#[derive(Clone, Copy)]
pub struct Address {
    pub mac: [u8; 6],
    pub ip: Ipv4Address,
    /// 1 to 32: a /31 or /32 has no broadcast address (RFC 3021), and a /32 reaches nothing on the link but through
    /// its routes (Calico's pods: a link-scope route to the gateway, and the default route through it).
    pub prefix_len: u8,
    /// The IPv4 default router; unspecified for none.
    pub gateway: Ipv4Address,
    pub ip6: Option<Ipv6Net>,
    pub mtu: u16,
    /// Routes besides the default ones (a pod's CNI routes), in the order the VMM gave them.
    pub routes: [Option<Route>; MAX_ROUTES],
}

/// A route through the card: packets to `destination`/`prefix_len` go to `gateway`, or straight to their
/// destination on the link without one (a link-scope route). The most specific route wins.
#[derive(Clone, Copy)]
pub struct Route {
    pub destination: IpCidr,
    pub gateway: Option<IpAddress>,
}

/// The next hop the most specific of `candidates` (prefix length, hop) gives; the first of equally specific ones.
fn most_specific(candidates: impl Iterator<Item = (u8, IpAddress)>) -> Option<IpAddress> {
    let mut best: Option<(u8, IpAddress)> = None;
    for (len, hop) in candidates {
        if best.is_none_or(|(best_len, _)| len > best_len) {
            best = Some((len, hop));
        }
    }
    best.map(|(_, hop)| hop)
}

/// The VM's IPv6 address, its prefix and its default router (none: only the prefix, and link-local addresses,
/// are reachable).
#[derive(Clone, Copy)]
pub struct Ipv6Net {
    pub ip: Ipv6Address,
    pub prefix_len: u8,
    pub gateway: Option<Ipv6Address>,
}

impl Address {
    fn on_link(&self, ip: Ipv4Address) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.ip) & mask
    }

    fn is_broadcast(&self, ip: Ipv4Address) -> bool {
        let host_bits = u32::MAX.checked_shr(u32::from(self.prefix_len)).unwrap_or(0);
        ip.is_broadcast() || (self.prefix_len < 31 && self.on_link(ip) && u32::from(ip) & host_bits == host_bits)
    }

    /// The routes' next hops for `dst` (prefix length, hop), for [`most_specific`].
    fn routed(&self, dst: IpAddress) -> impl Iterator<Item = (u8, IpAddress)> + '_ {
        self.routes
            .iter()
            .flatten()
            .filter(move |r| r.destination.contains_addr(&dst))
            .map(move |r| (r.destination.prefix_len(), r.gateway.unwrap_or(dst)))
    }

    /// The next hop towards IPv4 `dst`: the most specific of the card's network (`dst` itself, on the link), its
    /// routes and its default router; none where nothing leads there.
    pub fn next_hop4(&self, dst: Ipv4Address) -> Option<Ipv4Address> {
        if dst.is_broadcast() {
            return Some(dst);
        }
        let default = (!self.gateway.is_unspecified()).then_some((0, IpAddress::Ipv4(self.gateway)));
        let network = self.on_link(dst).then_some((self.prefix_len, IpAddress::Ipv4(dst)));
        let hop = most_specific(default.into_iter().chain(network).chain(self.routed(IpAddress::Ipv4(dst))))?;
        match hop {
            IpAddress::Ipv4(hop) => Some(hop),
            IpAddress::Ipv6(_) => None,
        }
    }

    /// The next hop towards IPv6 `dst`: itself when on the link (the card's prefix, link-local, or multicast), else
    /// the most specific of the routes and the default router; none without IPv6 or a way there.
    pub fn next_hop6(&self, dst: Ipv6Address) -> Option<Ipv6Address> {
        let net = self.ip6?;
        if dst.is_unicast_link_local() || dst.is_multicast() {
            return Some(dst);
        }
        let default = net.gateway.map(|g| (0, IpAddress::Ipv6(g)));
        let on_link = Ipv6Cidr::new(net.ip, net.prefix_len).contains_addr(&dst);
        let network = on_link.then_some((net.prefix_len, IpAddress::Ipv6(dst)));
        match most_specific(default.into_iter().chain(network).chain(self.routed(IpAddress::Ipv6(dst))))? {
            IpAddress::Ipv6(hop) => Some(hop),
            IpAddress::Ipv4(_) => None,
        }
    }

    /// Whether IPv4 `ip` is on the card's link: routing sends to it directly, or it is a router of the card's.
    fn on_the_link(&self, ip: Ipv4Address) -> bool {
        let router = IpAddress::Ipv4(ip);
        self.next_hop4(ip) == Some(ip)
            || (ip == self.gateway && !ip.is_unspecified())
            || self.routes.iter().flatten().any(|r| r.gateway == Some(router))
    }

    /// Whether the VM has `ip` as an address on the card.
    pub fn is_own(&self, ip: IpAddress) -> bool {
        match ip {
            IpAddress::Ipv4(v4) => v4 == self.ip,
            IpAddress::Ipv6(v6) => self.ip6.is_some_and(|net| net.ip == v6),
        }
    }
}

pub struct Card {
    pub tx: Transmitter,
    pub address: Address,
    /// IP address → hardware address, learned from ARP and neighbour advertisements.
    neighbours: Vec<(IpAddress, [u8; 6])>,
    /// Addresses asked for, and when.
    asked: Vec<(IpAddress, Instant)>,
    /// Packets waiting for their next hop's hardware address.
    held: VecDeque<(IpAddress, Vec<u8>)>,
}

impl Card {
    pub fn new(tx: Transmitter, address: Address) -> Card {
        Card { tx, address, neighbours: Vec::new(), asked: Vec::new(), held: VecDeque::new() }
    }

    /// Whether a frame sent to `dst` is meant for the VM: its own address, broadcast, or (for IPv6) multicast, which
    /// the stack filters by IP address.
    pub fn hears(&self, dst: [u8; 6]) -> bool {
        dst == self.address.mac || dst == BROADCAST || (self.address.ip6.is_some() && dst[..2] == [0x33, 0x33])
    }

    /// Sends an IP packet to its next hop, or holds it until the hop's hardware address is known. Packets with no
    /// way out (IPv6 on a card without it, or a destination no route leads to) are dropped.
    pub fn send_ip(&mut self, mut packet: Vec<u8>, now: Instant) {
        fill_checksums(&mut packet);
        let (hop, mac, ethertype) = match packet[0] >> 4 {
            4 => {
                let dst = Ipv4Address::new(packet[16], packet[17], packet[18], packet[19]);
                let Some(hop) = self.address.next_hop4(dst) else { return };
                let broadcast = self.address.is_broadcast(dst).then_some(BROADCAST);
                (IpAddress::Ipv4(hop), broadcast, ETHERTYPE_IPV4)
            }
            _ => {
                let Some(dst) = ipv6_at(&packet, 24) else { return };
                let Some(hop) = self.address.next_hop6(dst) else { return };
                (IpAddress::Ipv6(hop), dst.is_multicast().then(|| multicast_mac(dst)), ETHERTYPE_IPV6)
            }
        };
        match mac.or_else(|| self.neighbour(hop)) {
            Some(mac) => self.frame(mac, ethertype, &packet),
            None => {
                if self.held.len() == HELD_PACKETS {
                    self.held.pop_front();
                }
                self.held.push_back((hop, packet));
                self.ask(hop, now);
            }
        }
    }

    fn neighbour(&self, ip: IpAddress) -> Option<[u8; 6]> {
        self.neighbours.iter().find(|n| n.0 == ip).map(|n| n.1)
    }

    fn frame(&mut self, to: [u8; 6], ethertype: u16, payload: &[u8]) {
        let from = self.address.mac;
        self.tx.send(ETHERNET_HEADER + payload.len(), |buf| {
            buf[..6].copy_from_slice(&to);
            buf[6..12].copy_from_slice(&from);
            buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
            buf[ETHERNET_HEADER..].copy_from_slice(payload);
        });
    }

    /// Asks the link where `ip` is, at most every [`ASK_RETRY_US`]: an ARP request, or a neighbour solicitation to
    /// the address's solicited-node group.
    fn ask(&mut self, ip: IpAddress, now: Instant) {
        match self.asked.iter_mut().find(|a| a.0 == ip) {
            Some(a) if (now - a.1).total_micros() < ASK_RETRY_US => return,
            Some(a) => a.1 = now,
            None => remember(&mut self.asked, (ip, now)),
        }
        let mac = self.address.mac;
        match ip {
            IpAddress::Ipv4(ip) => self.frame(BROADCAST, ETHERTYPE_ARP, &arp(1, mac, self.address.ip, [0; 6], ip)),
            IpAddress::Ipv6(target) => {
                let group = solicited_node(target);
                let solicit = NdiscRepr::NeighborSolicit { target_addr: target, lladdr: Some(hardware(mac)) };
                self.ndisc(multicast_mac(group), group, solicit);
            }
        }
    }

    /// Learns that `ip` is at `mac`: always for a neighbour already known (it may have moved), otherwise only for
    /// one the VM asked about or that asked about the VM, so that strangers cannot fill the table.
    fn learn(&mut self, ip: IpAddress, mac: [u8; 6], asked_us: bool) {
        if mac[0] & 1 != 0 || self.address.is_own(ip) {
            return;
        }
        match self.neighbours.iter_mut().find(|n| n.0 == ip) {
            Some(n) => n.1 = mac,
            None if asked_us || self.asked.iter().any(|a| a.0 == ip) => remember(&mut self.neighbours, (ip, mac)),
            None => {}
        }
        self.release_held();
    }

    /// An ARP packet from the link: learns its sender, and answers a question about our address.
    pub fn arp(&mut self, packet: &[u8]) {
        if packet.len() < 28 || packet[..6] != [0, 1, 8, 0, 6, 4] {
            return;
        }
        let op = u16::from_be_bytes([packet[6], packet[7]]);
        let sender_mac: [u8; 6] = packet[8..14].try_into().unwrap_or_default();
        let sender = Ipv4Address::new(packet[14], packet[15], packet[16], packet[17]);
        let target = Ipv4Address::new(packet[24], packet[25], packet[26], packet[27]);
        // Before DHCP gave the card an address, no question is about it.
        let for_us = target == self.address.ip && !target.is_unspecified();
        if self.address.on_the_link(sender) {
            self.learn(IpAddress::Ipv4(sender), sender_mac, for_us);
        }
        if op == 1 && for_us {
            let (mac, own) = (self.address.mac, self.address.ip);
            self.frame(sender_mac, ETHERTYPE_ARP, &arp(2, mac, own, sender_mac, sender));
        }
    }

    /// Takes an IPv6 packet from the link if it is neighbour discovery, which the card answers itself (the stack's
    /// IP-medium interface knows no link layer); returns false for anything else, which goes to the stack.
    pub fn take_ndisc(&mut self, packet: &[u8]) -> bool {
        let Ok(ip) = Ipv6Packet::new_checked(packet) else { return true };
        if ip.next_header() != IpProtocol::Icmpv6 {
            return false;
        }
        let Ok(icmp) = Icmpv6Packet::new_checked(ip.payload()) else { return true };
        if !matches!(
            icmp.msg_type(),
            Icmpv6Message::RouterSolicit
                | Icmpv6Message::RouterAdvert
                | Icmpv6Message::NeighborSolicit
                | Icmpv6Message::NeighborAdvert
                | Icmpv6Message::Redirect
        ) {
            return false;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        // A message that crossed a router is forged (RFC 4861, 7.1.1); one that fails its checksum is damaged.
        let parsed = Icmpv6Repr::parse(&src, &dst, &icmp, &ChecksumCapabilities::default());
        let (Some(own), NDISC_HOP_LIMIT, Ok(Icmpv6Repr::Ndisc(message))) = (self.address.ip6, ip.hop_limit(), parsed)
        else {
            return true;
        };
        match message {
            NdiscRepr::NeighborSolicit { target_addr, lladdr } if target_addr == own.ip => {
                let given = lladdr.and_then(|l| l.as_bytes().try_into().ok());
                if let Some(mac) = given.filter(|_| !src.is_unspecified()) {
                    self.learn(IpAddress::Ipv6(src), mac, true);
                }
                // The answer goes back to the asker; to everyone when it asked from the unspecified address (another
                // host's duplicate address check) or we cannot tell where it is.
                let asker = given.or_else(|| self.neighbour(IpAddress::Ipv6(src)));
                let (to, to_mac, flags) = match asker {
                    Some(mac) if !src.is_unspecified() => {
                        (src, mac, NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE)
                    }
                    _ => (ALL_NODES, multicast_mac(ALL_NODES), NdiscNeighborFlags::OVERRIDE),
                };
                let lladdr = Some(hardware(self.address.mac));
                self.ndisc(to_mac, to, NdiscRepr::NeighborAdvert { flags, target_addr: own.ip, lladdr });
            }
            NdiscRepr::NeighborAdvert { target_addr, lladdr: Some(lladdr), .. } => {
                if let Ok(mac) = lladdr.as_bytes().try_into() {
                    self.learn(IpAddress::Ipv6(target_addr), mac, false);
                }
            }
            _ => {}
        }
        true
    }

    /// Sends a neighbour discovery message from the VM's IPv6 address.
    fn ndisc(&mut self, to_mac: [u8; 6], to: Ipv6Address, message: NdiscRepr<'_>) {
        let Some(own) = self.address.ip6 else { return };
        let icmp = Icmpv6Repr::Ndisc(message);
        let header = Ipv6Repr {
            src_addr: own.ip,
            dst_addr: to,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp.buffer_len(),
            hop_limit: NDISC_HOP_LIMIT,
        };
        let mut packet = vec![0u8; header.buffer_len() + icmp.buffer_len()];
        let mut ip = Ipv6Packet::new_unchecked(&mut packet[..]);
        header.emit(&mut ip);
        let mut body = Icmpv6Packet::new_unchecked(ip.payload_mut());
        icmp.emit(&own.ip, &to, &mut body, &ChecksumCapabilities::default());
        self.frame(to_mac, ETHERTYPE_IPV6, &packet);
    }

    /// Sends the held packets whose next hop is now known.
    fn release_held(&mut self) {
        for _ in 0..self.held.len() {
            let Some((hop, packet)) = self.held.pop_front() else { break };
            match self.neighbour(hop) {
                Some(mac) => {
                    let ethertype =
                        if hop.version() == smoltcp::wire::IpVersion::Ipv4 { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 };
                    self.frame(mac, ethertype, &packet)
                }
                None => self.held.push_back((hop, packet)),
            }
        }
    }
}

/// Adds `entry` to a table of at most [`NEIGHBOURS`], forgetting the oldest to make room.
fn remember<T>(table: &mut Vec<T>, entry: T) {
    if table.len() == NEIGHBOURS {
        table.remove(0);
    }
    table.push(entry);
}

fn hardware(mac: [u8; 6]) -> RawHardwareAddress {
    RawHardwareAddress::from_bytes(&mac)
}

/// The IPv6 address at `at` in `packet`.
pub fn ipv6_at(packet: &[u8], at: usize) -> Option<Ipv6Address> {
    let octets: [u8; 16] = packet.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Address::from(octets))
}

/// The group that hears neighbour solicitations for `ip` (ff02::1:ffXX:XXXX, RFC 4291 2.7.1).
fn solicited_node(ip: Ipv6Address) -> Ipv6Address {
    let o = ip.octets();
    Ipv6Address::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet address of an IPv6 multicast group (33:33 and its last 32 bits, RFC 2464 7).
fn multicast_mac(group: Ipv6Address) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Fills in the checksums of an IP packet smoltcp left without (see `Link::capabilities`): IPv4's header checksum,
/// and its TCP, UDP or ICMP payload's.
fn fill_checksums(packet: &mut [u8]) {
    let (src, dst, protocol, payload) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(mut ip) = Ipv4Packet::new_checked(&mut *packet) else { return };
            ip.fill_checksum();
            let (src, dst, protocol) = (ip.src_addr().into(), ip.dst_addr().into(), ip.next_header());
            let header = usize::from(ip.header_len());
            let end = usize::from(ip.total_len());
            (src, dst, protocol, &mut packet[header..end])
        }
        Some(6) => {
            let Ok(ip) = Ipv6Packet::new_checked(&mut *packet) else { return };
            let (src, dst, protocol) = (ip.src_addr().into(), ip.dst_addr().into(), ip.next_header());
            let end = ip.total_len();
            (src, dst, protocol, &mut packet[40..end])
        }
        _ => return,
    };
    fill_payload_checksum(src, dst, protocol, payload);
}

fn fill_payload_checksum(src: IpAddress, dst: IpAddress, protocol: IpProtocol, payload: &mut [u8]) {
    match protocol {
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(payload) {
                tcp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(payload) {
                udp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Icmp => {
            if let Ok(mut icmp) = Icmpv4Packet::new_checked(payload) {
                icmp.fill_checksum();
            }
        }
        IpProtocol::Icmpv6 => {
            if let (Ok(mut icmp), IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) =
                (Icmpv6Packet::new_checked(payload), src, dst)
            {
                icmp.fill_checksum(&src, &dst);
            }
        }
        _ => {}
    }
}

/// An Ethernet/IPv4 ARP packet.
fn arp(op: u16, sender_mac: [u8; 6], sender: Ipv4Address, target_mac: [u8; 6], target: Ipv4Address) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&sender_mac);
    p[14..18].copy_from_slice(&sender.octets());
    p[18..24].copy_from_slice(&target_mac);
    p[24..28].copy_from_slice(&target.octets());
    p
}
