//! Reading guest frames before the stack sees them, and writing the frames the relay builds itself.
//! `classify` decides per frame: hand it to smoltcp, answer it here (ARP for the rest of the subnet), relay it
//! as UDP, or hold it (a TCP SYN, until the host connect it triggers has an answer). Every length and checksum
//! is checked through `smoltcp::wire`'s checked constructors: the frame comes from a hostile guest. IPv6 neighbour
//! discovery and ICMPv6 go to smoltcp, which owns the gateway and DNS addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket, UdpRepr,
};

use crate::config::UserNetConfig;

const ETH_HEADER: usize = 14;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;
/// The largest UDP payload that fits one frame at the link's MTU (the relay never fragments).
pub(crate) const fn udp_max_payload(mtu: u16, ipv6: bool) -> usize {
    mtu as usize - if ipv6 { IPV6_HEADER } else { IPV4_HEADER } - UDP_HEADER
}

/// The MAC address the whole outside world has, as seen by the guest.
pub(crate) const HOST_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// What to do with one guest frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GuestFrame<'a> {
    /// Hand it to the smoltcp interface unchanged.
    Stack,
    /// Send this ARP reply back to the guest.
    ArpReply(Vec<u8>),
    /// A UDP datagram to relay.
    Udp { src_port: u16, dst: SocketAddr, payload: &'a [u8] },
    /// A TCP connection request (SYN without ACK) to `dst`.
    TcpSyn { src_port: u16, dst: SocketAddr },
    /// Malformed, spoofed, or a protocol the relay does not carry.
    Drop,
}

pub(crate) fn classify<'a>(frame: &'a [u8], net: &UserNetConfig) -> GuestFrame<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return GuestFrame::Drop };
    match eth.ethertype() {
        EthernetProtocol::Arp => classify_arp(frame, net),
        EthernetProtocol::Ipv4 => classify_ipv4(&frame[ETH_HEADER..], net),
        EthernetProtocol::Ipv6 => classify_ipv6(&frame[ETH_HEADER..], net),
        _ => GuestFrame::Drop,
    }
}

fn classify_arp<'a>(frame: &[u8], net: &UserNetConfig) -> GuestFrame<'a> {
    let Ok(arp) = ArpPacket::new_checked(&frame[ETH_HEADER..]) else { return GuestFrame::Drop };
    let Ok(ArpRepr::EthernetIpv4 {
        operation, source_hardware_addr, source_protocol_addr, target_protocol_addr, ..
    }) = ArpRepr::parse(&arp)
    else {
        return GuestFrame::Drop;
    };
    match operation {
        // The stack owns the gateway and DNS addresses; answering those itself also teaches it the guest's MAC.
        ArpOperation::Request if target_protocol_addr == net.gateway || target_protocol_addr == net.dns => {
            GuestFrame::Stack
        }
        ArpOperation::Request
            if net.in_subnet(target_protocol_addr)
                && target_protocol_addr != net.guest_ip
                && source_hardware_addr.is_unicast() =>
        {
            GuestFrame::ArpReply(arp_reply(source_hardware_addr, source_protocol_addr, target_protocol_addr))
        }
        ArpOperation::Reply => GuestFrame::Stack,
        _ => GuestFrame::Drop,
    }
}

fn classify_ipv4<'a>(packet: &'a [u8], net: &UserNetConfig) -> GuestFrame<'a> {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else { return GuestFrame::Drop };
    let Ok(repr) = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()) else { return GuestFrame::Drop };
    if repr.src_addr != net.guest_ip || ip.more_frags() || ip.frag_offset() != 0 {
        return GuestFrame::Drop;
    }
    let d = repr.dst_addr;
    let dst_ok = !(d.is_broadcast() || d.is_multicast() || d.is_unspecified() || d.is_loopback() || d == net.guest_ip);
    let payload = &packet[usize::from(ip.header_len())..usize::from(ip.total_len())];
    match repr.next_header {
        IpProtocol::Icmp => GuestFrame::Stack,
        protocol => classify_transport(IpRepr::Ipv4(repr), protocol, payload, dst_ok),
    }
}

fn classify_ipv6<'a>(packet: &'a [u8], net: &UserNetConfig) -> GuestFrame<'a> {
    let Some(v6) = net.ipv6 else { return GuestFrame::Drop };
    let Ok(ip) = Ipv6Packet::new_checked(packet) else { return GuestFrame::Drop };
    let Ok(repr) = Ipv6Repr::parse(&ip) else { return GuestFrame::Drop };
    if repr.src_addr != v6.guest_ip {
        return GuestFrame::Drop;
    }
    let d = repr.dst_addr;
    let dst_ok = !(d.is_multicast() || d.is_unspecified() || d.is_loopback() || d == v6.guest_ip);
    let payload = &packet[IPV6_HEADER..ip.total_len()];
    match repr.next_header {
        // Neighbour discovery (to multicast groups too) and echo requests are the stack's.
        IpProtocol::Icmpv6 => GuestFrame::Stack,
        protocol => classify_transport(IpRepr::Ipv6(repr), protocol, payload, dst_ok),
    }
}

/// A guest's TCP or UDP packet in `ip`: what to do with it. `dst_ok`: its destination can be relayed to.
fn classify_transport(ip: IpRepr, protocol: IpProtocol, payload: &[u8], dst_ok: bool) -> GuestFrame<'_> {
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let to = |port| SocketAddr::new(IpAddr::from(dst), port);
    match protocol {
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else { return GuestFrame::Drop };
            let Ok(u) = UdpRepr::parse(&udp, &src, &dst, &ChecksumCapabilities::default()) else {
                return GuestFrame::Drop;
            };
            if !dst_ok || u.src_port == 0 || u.dst_port == 0 {
                return GuestFrame::Drop;
            }
            GuestFrame::Udp {
                src_port: u.src_port,
                dst: to(u.dst_port),
                payload: &payload[UDP_HEADER..usize::from(udp.len())],
            }
        }
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else { return GuestFrame::Drop };
            if !tcp.syn() || tcp.ack() || tcp.rst() || tcp.fin() {
                return GuestFrame::Stack;
            }
            if !dst_ok || !tcp.verify_checksum(&src, &dst) || tcp.src_port() == 0 || tcp.dst_port() == 0 {
                return GuestFrame::Drop;
            }
            GuestFrame::TcpSyn { src_port: tcp.src_port(), dst: to(tcp.dst_port()) }
        }
        _ => GuestFrame::Drop,
    }
}

/// The addresses and TCP segment of an Ethernet frame carrying one (IPv4 or IPv6), read through the checked
/// constructors; None for anything else.
fn tcp_segment(frame: &[u8]) -> Option<(IpAddress, IpAddress, TcpPacket<&[u8]>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let packet = &frame[ETH_HEADER..];
    let (src, dst, payload) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 {
                return None;
            }
            let payload = packet.get(usize::from(ip.header_len())..usize::from(ip.total_len()))?;
            (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()), payload)
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let payload = packet.get(IPV6_HEADER..ip.total_len())?;
            (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()), payload)
        }
        _ => return None,
    };
    Some((src, dst, TcpPacket::new_checked(payload).ok()?))
}

/// The source endpoint of a connection request (a SYN without ACK) the stack sends, if `frame` is one.
pub(crate) fn connection_request_source(frame: &[u8]) -> Option<(IpAddress, u16)> {
    let (src, _, tcp) = tcp_segment(frame)?;
    (tcp.syn() && !tcp.ack()).then(|| (src, tcp.src_port()))
}

/// The destination endpoint of a guest frame's TCP segment, if it carries one.
pub(crate) fn tcp_destination(frame: &[u8]) -> Option<(IpAddress, u16)> {
    let (_, dst, tcp) = tcp_segment(frame)?;
    Some((dst, tcp.dst_port()))
}

fn arp_reply(guest_mac: EthernetAddress, guest_ip: Ipv4Addr, asked: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(HOST_MAC),
        source_protocol_addr: asked,
        target_hardware_addr: guest_mac,
        target_protocol_addr: guest_ip,
    };
    let mut frame = vec![0; ETH_HEADER + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr { src_addr: EthernetAddress(HOST_MAC), dst_addr: guest_mac, ethertype: EthernetProtocol::Arp }
        .emit(&mut eth);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    frame
}

/// An Ethernet/IP/UDP frame to the guest; None if `src` and `dst` are not of one family. `payload` must be at most
/// `udp_max_payload(mtu, ..)` bytes.
pub(crate) fn udp_frame(guest_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    let (src_ip, dst_ip) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
    let payload_len = UDP_HEADER + payload.len();
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            IpRepr::Ipv4(Ipv4Repr { src_addr, dst_addr, next_header: IpProtocol::Udp, payload_len, hop_limit: 64 })
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            IpRepr::Ipv6(Ipv6Repr { src_addr, dst_addr, next_header: IpProtocol::Udp, payload_len, hop_limit: 64 })
        }
        _ => return None,
    };
    let ethertype = match ip {
        IpRepr::Ipv4(_) => EthernetProtocol::Ipv4,
        IpRepr::Ipv6(_) => EthernetProtocol::Ipv6,
    };
    let mut frame = vec![0; ETH_HEADER + ip.header_len() + UDP_HEADER + payload.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr { src_addr: EthernetAddress(HOST_MAC), dst_addr: EthernetAddress(guest_mac), ethertype }
        .emit(&mut eth);
    let packet = eth.payload_mut();
    ip.emit(&mut *packet, &caps);
    let mut udp = UdpPacket::new_unchecked(&mut packet[ip.header_len()..]);
    UdpRepr { src_port: src.port(), dst_port: dst.port() }.emit(
        &mut udp,
        &src_ip,
        &dst_ip,
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_round_trips_through_classify() {
        let net = UserNetConfig::default();
        // A frame as the guest would send it: guest -> 8.8.8.8:53.
        let guest = SocketAddr::new(net.guest_ip.into(), 4000);
        let frame = udp_frame(HOST_MAC, guest, "8.8.8.8:53".parse().unwrap(), b"hi").unwrap();
        assert_eq!(
            classify(&frame, &net),
            GuestFrame::Udp { src_port: 4000, dst: "8.8.8.8:53".parse().unwrap(), payload: b"hi" }
        );
        // Spoofed source: dropped.
        let frame =
            udp_frame(HOST_MAC, "10.0.2.99:4000".parse().unwrap(), "8.8.8.8:53".parse().unwrap(), b"hi").unwrap();
        assert_eq!(classify(&frame, &net), GuestFrame::Drop);
    }

    #[test]
    fn ipv6_udp_frames_round_trip_through_classify() {
        let net = UserNetConfig::default();
        let v6 = net.ipv6.unwrap();
        let guest = SocketAddr::new(v6.guest_ip.into(), 4000);
        let far: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        let frame = udp_frame(HOST_MAC, guest, far, b"hi").unwrap();
        assert_eq!(classify(&frame, &net), GuestFrame::Udp { src_port: 4000, dst: far, payload: b"hi" });
        // Spoofed source, or multicast destination: dropped.
        let frame = udp_frame(HOST_MAC, "[fd00::99]:4000".parse().unwrap(), far, b"hi").unwrap();
        assert_eq!(classify(&frame, &net), GuestFrame::Drop);
        let frame = udp_frame(HOST_MAC, guest, "[ff02::1]:53".parse().unwrap(), b"hi").unwrap();
        assert_eq!(classify(&frame, &net), GuestFrame::Drop);
        // A damaged checksum: dropped.
        let mut frame = udp_frame(HOST_MAC, guest, far, b"hi").unwrap();
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert_eq!(classify(&frame, &net), GuestFrame::Drop);
        // No IPv6 on this network: dropped.
        let v4_only = UserNetConfig { ipv6: None, ..UserNetConfig::default() };
        assert_eq!(classify(&udp_frame(HOST_MAC, guest, far, b"hi").unwrap(), &v4_only), GuestFrame::Drop);
        assert_eq!(udp_frame(HOST_MAC, guest, "8.8.8.8:53".parse().unwrap(), b"hi"), None);
    }

    #[test]
    fn arp_for_other_subnet_hosts_is_answered_here() {
        let net = UserNetConfig::default();
        let guest_mac = EthernetAddress(net.guest_mac);
        let ask = |target: Ipv4Addr| {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: guest_mac,
                source_protocol_addr: net.guest_ip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            let mut frame = vec![0; ETH_HEADER + repr.buffer_len()];
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            EthernetRepr {
                src_addr: guest_mac,
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Arp,
            }
            .emit(&mut eth);
            repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            frame
        };
        assert_eq!(classify(&ask(net.gateway), &net), GuestFrame::Stack);
        assert_eq!(classify(&ask(net.guest_ip), &net), GuestFrame::Drop);
        assert_eq!(classify(&ask(Ipv4Addr::new(192, 168, 0, 1)), &net), GuestFrame::Drop);
        let GuestFrame::ArpReply(reply) = classify(&ask(Ipv4Addr::new(10, 0, 2, 77)), &net) else { panic!() };
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 { source_hardware_addr, source_protocol_addr, .. } = arp else { panic!() };
        assert_eq!((source_hardware_addr.0, source_protocol_addr), (HOST_MAC, Ipv4Addr::new(10, 0, 2, 77)));
    }
}
