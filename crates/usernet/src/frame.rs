//! Reading guest frames before the stack sees them, and writing the frames the relay builds itself.
//! `classify` decides per frame: hand it to smoltcp, answer it here (ARP for the rest of the subnet), relay it
//! as UDP, or hold it (a TCP SYN, until the host connect it triggers has an answer). Every length and checksum
//! is checked through `smoltcp::wire`'s checked constructors: the frame comes from a hostile guest.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

use crate::config::UserNetConfig;

const ETH_HEADER: usize = 14;
const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
/// The largest UDP payload that fits one frame at the link's MTU (the relay never fragments).
pub(crate) const fn udp_max_payload(mtu: u16) -> usize {
    mtu as usize - IPV4_HEADER - UDP_HEADER
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
    Udp { src_port: u16, dst: SocketAddrV4, payload: &'a [u8] },
    /// A TCP connection request (SYN without ACK) to `dst`.
    TcpSyn { src_port: u16, dst: SocketAddrV4 },
    /// Malformed, spoofed, or a protocol the relay does not carry.
    Drop,
}

pub(crate) fn classify<'a>(frame: &'a [u8], net: &UserNetConfig) -> GuestFrame<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return GuestFrame::Drop };
    match eth.ethertype() {
        EthernetProtocol::Arp => classify_arp(frame, net),
        EthernetProtocol::Ipv4 => classify_ipv4(&frame[ETH_HEADER..], net),
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
    let (src, dst) = (IpAddress::Ipv4(repr.src_addr), IpAddress::Ipv4(repr.dst_addr));
    match repr.next_header {
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else { return GuestFrame::Drop };
            let Ok(u) = UdpRepr::parse(&udp, &src, &dst, &ChecksumCapabilities::default()) else {
                return GuestFrame::Drop;
            };
            if !dst_ok || u.src_port == 0 || u.dst_port == 0 {
                return GuestFrame::Drop;
            }
            let dst = SocketAddrV4::new(repr.dst_addr, u.dst_port);
            GuestFrame::Udp { src_port: u.src_port, dst, payload: &payload[UDP_HEADER..usize::from(udp.len())] }
        }
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else { return GuestFrame::Drop };
            if !tcp.syn() || tcp.ack() || tcp.rst() || tcp.fin() {
                return GuestFrame::Stack;
            }
            if !dst_ok || !tcp.verify_checksum(&src, &dst) || tcp.src_port() == 0 || tcp.dst_port() == 0 {
                return GuestFrame::Drop;
            }
            GuestFrame::TcpSyn { src_port: tcp.src_port(), dst: SocketAddrV4::new(repr.dst_addr, tcp.dst_port()) }
        }
        IpProtocol::Icmp => GuestFrame::Stack,
        _ => GuestFrame::Drop,
    }
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

/// An Ethernet/IPv4/UDP frame to the guest. `payload` must be at most `udp_max_payload(mtu)` bytes.
pub(crate) fn udp_frame(guest_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: UDP_HEADER + payload.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0; ETH_HEADER + IPV4_HEADER + UDP_HEADER + payload.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(HOST_MAC),
        dst_addr: EthernetAddress(guest_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut ip_packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ip_packet, &caps);
    let mut udp = UdpPacket::new_unchecked(ip_packet.payload_mut());
    UdpRepr { src_port: src.port(), dst_port: dst.port() }.emit(
        &mut udp,
        &IpAddress::Ipv4(*src.ip()),
        &IpAddress::Ipv4(*dst.ip()),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_round_trips_through_classify() {
        let net = UserNetConfig::default();
        // A frame as the guest would send it: guest -> 8.8.8.8:53.
        let frame = udp_frame(HOST_MAC, SocketAddrV4::new(net.guest_ip, 4000), "8.8.8.8:53".parse().unwrap(), b"hi");
        assert_eq!(
            classify(&frame, &net),
            GuestFrame::Udp { src_port: 4000, dst: "8.8.8.8:53".parse().unwrap(), payload: b"hi" }
        );
        // Spoofed source: dropped.
        let frame = udp_frame(HOST_MAC, "10.0.2.99:4000".parse().unwrap(), "8.8.8.8:53".parse().unwrap(), b"hi");
        assert_eq!(classify(&frame, &net), GuestFrame::Drop);
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
