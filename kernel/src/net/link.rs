//! The stack's one device, at the IP layer: packets for the loopback addresses and for the VM's own address go
//! round inside the library OS; others go out on the network card, in Ethernet frames, to the next hop's hardware
//! address (found with ARP). One smoltcp interface and one socket set serve both, so a socket never needs to know
//! which way its packets go, and a listener on 0.0.0.0 hears both.
//!
//! IPv6 stays on the loopback: the card carries IPv4 only (no neighbour discovery yet).

use super::virtio::{Receiver, Transmitter};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{Icmpv4Packet, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERNET_HEADER: usize = 14;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Packets kept while the next hop's address is asked for; older ones are dropped (TCP sends again).
const HELD_PACKETS: usize = 32;
/// Least time between two ARP requests for one address.
const ARP_RETRY_US: i64 = 500_000;
/// Largest IP packet on the loopback.
const LOOPBACK_MTU: usize = 65535;

/// The VM's place on the network card's link.
#[derive(Clone, Copy)]
pub struct Address {
    pub mac: [u8; 6],
    pub ip: Ipv4Address,
    pub prefix_len: u8,
    pub gateway: Ipv4Address,
    pub mtu: u16,
}

impl Address {
    fn on_link(&self, ip: Ipv4Address) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.ip) & mask
    }

    fn is_broadcast(&self, ip: Ipv4Address) -> bool {
        let host_bits = u32::MAX.checked_shr(u32::from(self.prefix_len)).unwrap_or(0);
        ip.is_broadcast() || (self.on_link(ip) && u32::from(ip) & host_bits == host_bits)
    }
}

pub struct Link {
    card_rx: Option<Receiver>,
    out: Egress,
    /// TCP ports with listeners, and how many more connection requests (SYNs) from the card their free backlog
    /// sockets can take this round. A SYN beyond that waits in `held_syns` for a later round (as in Linux's SYN
    /// queue), and one that waited too long is dropped, so the client sends it again instead of being refused
    /// (smoltcp would answer a SYN no socket takes with a reset).
    pub syn_room: BTreeMap<u16, usize>,
    held_syns: VecDeque<(Vec<u8>, Instant)>,
}

/// Most SYNs held for a full backlog, and for how long: less than a client's first retransmission (1 s), so that
/// a held SYN and its retransmission never both reach the stack.
const HELD_SYNS: usize = 4096;
const SYN_HOLD_US: i64 = 500_000;

/// Where transmitted packets go: what a transmit token needs, apart from the receive side.
struct Egress {
    loopback: VecDeque<Vec<u8>>,
    card: Option<Card>,
    now: Instant,
}

struct Card {
    tx: Transmitter,
    address: Address,
    /// IPv4 address → hardware address, learned from ARP.
    neighbours: Vec<(Ipv4Address, [u8; 6])>,
    /// Addresses asked for, and when.
    asked: Vec<(Ipv4Address, Instant)>,
    /// Packets waiting for their next hop's hardware address.
    held: VecDeque<(Ipv4Address, Vec<u8>)>,
}

impl Link {
    pub fn new() -> Link {
        Link {
            card_rx: None,
            out: Egress { loopback: VecDeque::new(), card: None, now: Instant::ZERO },
            syn_room: BTreeMap::new(),
            held_syns: VecDeque::new(),
        }
    }

    /// Puts the network card on the link.
    pub fn attach(&mut self, rx: Receiver, tx: Transmitter, address: Address) {
        self.card_rx = Some(rx);
        self.out.card = Some(Card { tx, address, neighbours: Vec::new(), asked: Vec::new(), held: VecDeque::new() });
    }

    /// Whether frames from the card wait to be read.
    pub fn has_frames(&self) -> bool {
        self.card_rx.as_ref().is_some_and(Receiver::has_frames)
    }

    /// Tells the card about receive buffers given back, where it asked (a VM exit); returns whether it asked to
    /// hear of frames queued for sending (see [`Link::kick`]).
    pub fn flush(&mut self) -> bool {
        let (Some(rx), Some(card)) = (&mut self.card_rx, &mut self.out.card) else { return false };
        rx.flush();
        card.tx.owes_kick()
    }

    /// Notifies the card of frames queued for sending.
    pub fn kick(&self) {
        if let Some(card) = &self.out.card {
            card.tx.kick();
        }
    }
}

impl Device for Link {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.out.now = now;
        if let Some(packet) = self.out.loopback.pop_front() {
            return Some((RxToken::Owned(packet), TxToken(&mut self.out)));
        }
        while let Some((packet, since)) = self.held_syns.front() {
            if (now - *since).total_micros() > SYN_HOLD_US as u64 {
                self.held_syns.pop_front();
                continue;
            }
            if syn_verdict(&mut self.syn_room, packet) == Syn::Hold {
                break;
            }
            let (packet, _) = self.held_syns.pop_front()?;
            return Some((RxToken::Owned(packet), TxToken(&mut self.out)));
        }
        let rx = self.card_rx.as_mut()?;
        let card = self.out.card.as_mut()?;
        loop {
            let (slot, len) = rx.next_frame()?;
            let frame = rx.frame(slot, len);
            if frame.len() < ETHERNET_HEADER {
                rx.recycle(slot);
                continue;
            }
            let dst: [u8; 6] = frame[..6].try_into().unwrap_or_default();
            let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
            let for_us = dst == card.address.mac || dst == BROADCAST;
            match ethertype {
                ETHERTYPE_IPV4 if for_us => {
                    let packet = &frame[ETHERNET_HEADER..];
                    // Behind held SYNs, a new one waits its turn.
                    let verdict = if !self.held_syns.is_empty() && is_syn(packet) {
                        Syn::Hold
                    } else {
                        syn_verdict(&mut self.syn_room, packet)
                    };
                    if verdict == Syn::Admit {
                        return Some((RxToken::Card { rx, slot, len }, TxToken(&mut self.out)));
                    }
                    if self.held_syns.len() < HELD_SYNS {
                        self.held_syns.push_back((packet.to_vec(), now));
                    }
                }
                ETHERTYPE_ARP => card.arp(&frame[ETHERNET_HEADER..]),
                _ => {}
            }
            rx.recycle(slot);
        }
    }

    fn transmit(&mut self, now: Instant) -> Option<TxToken<'_>> {
        self.out.now = now;
        Some(TxToken(&mut self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // Nothing on the loopback can corrupt a packet, so smoltcp neither computes nor checks checksums (a 64 KiB
        // segment summed twice cost a fifth of loopback throughput); packets leaving on the card get theirs in
        // `Card::send_ip`. Frames from the card come from the host's tap or kiln's own relay, not a wire.
        caps.checksum = smoltcp::phy::ChecksumCapabilities::ignored();
        caps.max_transmission_unit = self.out.card.as_ref().map_or(LOOPBACK_MTU, |c| usize::from(c.address.mtu));
        caps
    }
}

pub enum RxToken<'a> {
    Owned(Vec<u8>),
    Card { rx: &'a mut Receiver, slot: u16, len: usize },
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            RxToken::Owned(packet) => f(&packet),
            RxToken::Card { rx, slot, len } => {
                let result = f(&rx.frame(slot, len)[ETHERNET_HEADER..]);
                rx.recycle(slot);
                result
            }
        }
    }
}

pub struct TxToken<'a>(&'a mut Egress);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let result = f(&mut packet);
        self.0.route(packet);
        result
    }
}

impl Egress {
    /// Sends a packet the stack built on its way: round to the stack, out on the card, or nowhere.
    fn route(&mut self, packet: Vec<u8>) {
        let local = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let dst = Ipv4Address::new(packet[16], packet[17], packet[18], packet[19]);
                dst.is_loopback() || self.card.as_ref().is_some_and(|c| c.address.ip == dst)
            }
            Some(6) => true,
            _ => return,
        };
        if local {
            self.loopback.push_back(packet);
        } else if let Some(card) = &mut self.card {
            card.send_ip(packet, self.now);
        }
    }
}

impl Card {
    /// Sends an IPv4 packet to its next hop, or holds it until ARP says where that is.
    fn send_ip(&mut self, mut packet: Vec<u8>, now: Instant) {
        fill_checksums(&mut packet);
        let dst = Ipv4Address::new(packet[16], packet[17], packet[18], packet[19]);
        let hop = if self.address.on_link(dst) { dst } else { self.address.gateway };
        let mac = if self.address.is_broadcast(dst) { Some(BROADCAST) } else { self.neighbour(hop) };
        match mac {
            Some(mac) => self.frame(mac, ETHERTYPE_IPV4, &packet),
            None => {
                if self.held.len() == HELD_PACKETS {
                    self.held.pop_front();
                }
                self.held.push_back((hop, packet));
                self.ask(hop, now);
            }
        }
    }

    fn neighbour(&self, ip: Ipv4Address) -> Option<[u8; 6]> {
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

    /// Broadcasts "who has `ip`?", at most every [`ARP_RETRY_US`].
    fn ask(&mut self, ip: Ipv4Address, now: Instant) {
        match self.asked.iter_mut().find(|a| a.0 == ip) {
            Some(a) if (now - a.1).total_micros() < ARP_RETRY_US as u64 => return,
            Some(a) => a.1 = now,
            None => self.asked.push((ip, now)),
        }
        let (mac, own) = (self.address.mac, self.address.ip);
        self.frame(BROADCAST, ETHERTYPE_ARP, &arp(1, mac, own, [0; 6], ip));
    }

    /// An ARP packet from the link: learns its sender, answers a question about our address, and sends what waited
    /// for the answer.
    fn arp(&mut self, packet: &[u8]) {
        if packet.len() < 28 || packet[..6] != [0, 1, 8, 0, 6, 4] {
            return;
        }
        let op = u16::from_be_bytes([packet[6], packet[7]]);
        let sender_mac: [u8; 6] = packet[8..14].try_into().unwrap_or_default();
        let sender = Ipv4Address::new(packet[14], packet[15], packet[16], packet[17]);
        let target = Ipv4Address::new(packet[24], packet[25], packet[26], packet[27]);
        let for_us = target == self.address.ip;
        if self.address.on_link(sender) && sender != self.address.ip && sender_mac[0] & 1 == 0 {
            match self.neighbours.iter_mut().find(|n| n.0 == sender) {
                Some(n) => n.1 = sender_mac,
                None if for_us || self.asked.iter().any(|a| a.0 == sender) => {
                    self.neighbours.push((sender, sender_mac))
                }
                None => {}
            }
        }
        if op == 1 && for_us {
            let (mac, own) = (self.address.mac, self.address.ip);
            self.frame(sender_mac, ETHERTYPE_ARP, &arp(2, mac, own, sender_mac, sender));
        }
        self.release_held();
    }

    /// Sends the held packets whose next hop is now known.
    fn release_held(&mut self) {
        for _ in 0..self.held.len() {
            let Some((hop, packet)) = self.held.pop_front() else { break };
            match self.neighbour(hop) {
                Some(mac) => self.frame(mac, ETHERTYPE_IPV4, &packet),
                None => self.held.push_back((hop, packet)),
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Syn {
    Admit,
    Hold,
}

/// The destination port of an IPv4 TCP connection request (SYN without ACK).
fn syn_port(packet: &[u8]) -> Option<u16> {
    const TCP: u8 = 6;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if packet.len() < 20 || packet[9] != TCP {
        return None;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let tcp = packet.get(header..header + 14)?;
    (tcp[13] & (SYN | ACK) == SYN).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

fn is_syn(packet: &[u8]) -> bool {
    syn_port(packet).is_some()
}

/// Whether an IPv4 packet from the card may go to the stack now: anything but a connection request (SYN) to a port
/// whose listeners have no free backlog socket left this round (see `Link::syn_room`), which is held.
fn syn_verdict(room: &mut BTreeMap<u16, usize>, packet: &[u8]) -> Syn {
    let Some(port) = syn_port(packet) else { return Syn::Admit };
    match room.get_mut(&port) {
        Some(0) => Syn::Hold,
        Some(n) => {
            *n -= 1;
            Syn::Admit
        }
        None => Syn::Admit,
    }
}

/// Fills in the checksums of an IPv4 packet smoltcp left without (see `Link::capabilities`): the header's, and its
/// TCP, UDP or ICMP payload's.
fn fill_checksums(packet: &mut [u8]) {
    let Ok(mut ip) = Ipv4Packet::new_checked(packet) else { return };
    ip.fill_checksum();
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    match ip.next_header() {
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
                tcp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(ip.payload_mut()) {
                udp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Icmp => {
            if let Ok(mut icmp) = Icmpv4Packet::new_checked(ip.payload_mut()) {
                icmp.fill_checksum();
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
