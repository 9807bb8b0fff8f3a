//! The stack's one device, at the IP layer: packets for the loopback addresses and for the VM's own address go
//! round inside the library OS; others go out on the network card, in Ethernet frames, to the next hop's hardware
//! address (`card`). One smoltcp interface and one socket set serve both, so a socket never needs to know which way
//! its packets go, and a listener on 0.0.0.0 or :: hears both.

use super::card::{Address, Card, ETHERNET_HEADER, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::dhcp::{Change, Dhcp};
use super::virtio::{Receiver, Transmitter};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

/// Largest IP packet on the loopback.
const LOOPBACK_MTU: usize = 65535;

pub struct Link {
    card_rx: Option<Receiver>,
    out: Egress,
    /// TCP ports with listeners, and how many more connection requests (SYNs) from the card their free backlog
    /// sockets can take this round. A SYN beyond that waits in `held_syns` for a later round (as in Linux's SYN
    /// queue), and one that waited too long is dropped, so the client sends it again instead of being refused
    /// (smoltcp would answer a SYN no socket takes with a reset).
    pub syn_room: BTreeMap<u16, usize>,
    held_syns: VecDeque<(Vec<u8>, Instant)>,
    /// The DHCP client, for a card the host gave no address.
    dhcp: Option<Dhcp>,
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

impl Link {
    pub fn new() -> Link {
        Link {
            card_rx: None,
            out: Egress { loopback: VecDeque::new(), card: None, now: Instant::ZERO },
            syn_room: BTreeMap::new(),
            held_syns: VecDeque::new(),
            dhcp: None,
        }
    }

    /// Puts the network card on the link; with `dhcp`, it asks for its IPv4 address (`address` has none yet).
    pub fn attach(&mut self, rx: Receiver, tx: Transmitter, address: Address, dhcp: bool, now: Instant) {
        self.card_rx = Some(rx);
        self.out.card = Some(Card::new(tx, address));
        self.dhcp = dhcp.then(|| Dhcp::new(address.mac, now));
    }

    /// Runs the DHCP client, if the card has one, and takes the lease it got (or lost) on the card; returns the
    /// change, for the stack's interface to take too.
    pub fn poll_dhcp(&mut self, now: Instant) -> Option<Change> {
        let (Some(dhcp), Some(card)) = (&mut self.dhcp, &mut self.out.card) else { return None };
        let change = dhcp.poll(now, &mut card.tx)?;
        match &change {
            Change::Leased(lease) => {
                card.address.ip = lease.address.address();
                card.address.prefix_len = lease.address.prefix_len();
                card.address.gateway = lease.router.unwrap_or(Ipv4Address::UNSPECIFIED);
            }
            Change::Lost => card.address.ip = Ipv4Address::UNSPECIFIED,
        }
        Some(change)
    }

    /// When the DHCP client next needs a poll, if the card has one.
    pub fn dhcp_due(&mut self, now: Instant) -> Option<Instant> {
        self.dhcp.as_mut()?.poll_at(now)
    }

    /// The card's addresses, if the VM has one.
    pub fn card_address(&self) -> Option<Address> {
        self.out.card.as_ref().map(|c| c.address)
    }

    /// Whether nothing waits for the stack's next poll inside the link: no packet on the loopback. (Held SYNs that
    /// could go in went in during the poll; frames the card receives meanwhile are found by `has_frames`.)
    pub fn is_idle(&self) -> bool {
        self.out.loopback.is_empty()
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

impl Link {
    /// The next packet for the stack, in a device that holds it alone (and sends on the link), so that its socket
    /// can be found before smoltcp is given it (`sockets::Sockets::route`).
    pub fn next_packet(&mut self, now: Instant) -> Option<Single<'_>> {
        let caps = self.capabilities();
        let (rx, TxToken(out)) = self.receive(now)?;
        Some(Single { rx: Some(rx), out, caps })
    }
}

/// One packet from the link, as a device for `Interface::poll_ingress_single`; what smoltcp answers goes on the link.
pub struct Single<'a> {
    rx: Option<RxToken<'a>>,
    out: &'a mut Egress,
    caps: DeviceCapabilities,
}

impl Single<'_> {
    /// Drops the packet unread (its card buffer goes back to the card).
    pub fn discard(mut self) {
        if let Some(rx) = self.rx.take() {
            phy::RxToken::consume(rx, |_| ());
        }
    }

    /// The IP packet.
    pub fn packet(&self) -> &[u8] {
        match &self.rx {
            Some(RxToken::Owned(packet)) => packet,
            Some(RxToken::Card { rx, slot, len }) => &rx.frame(*slot, *len)[ETHERNET_HEADER..],
            None => &[],
        }
    }
}

impl<'a> Device for Single<'a> {
    type RxToken<'b>
        = RxToken<'a>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'a>, TxToken<'_>)> {
        let rx = self.rx.take()?;
        Some((rx, TxToken(&mut *self.out)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut *self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
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
            let packet = &frame[ETHERNET_HEADER..];
            let to_stack = match ethertype {
                _ if !card.hears(dst) => false,
                _ if self.dhcp.as_mut().is_some_and(|d| d.take(frame)) => false,
                ETHERTYPE_IPV4 => true,
                ETHERTYPE_IPV6 => card.address.ip6.is_some() && !card.take_ndisc(packet),
                ETHERTYPE_ARP => {
                    card.arp(packet);
                    false
                }
                _ => false,
            };
            if to_stack {
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
        let own = |ip| self.card.as_ref().is_some_and(|c| c.address.is_own(ip));
        let local = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let dst = Ipv4Address::new(packet[16], packet[17], packet[18], packet[19]);
                dst.is_loopback() || own(dst.into())
            }
            Some(6) => match super::card::ipv6_at(&packet, 24) {
                Some(dst) => dst.is_loopback() || own(dst.into()),
                None => return,
            },
            _ => return,
        };
        if local {
            self.loopback.push_back(packet);
        } else if let Some(card) = &mut self.card {
            card.send_ip(packet, self.now);
        }
    }
}

#[derive(PartialEq, Eq)]
enum Syn {
    Admit,
    Hold,
}

/// The destination port of a TCP connection request (SYN without ACK) in an IP packet.
fn syn_port(packet: &[u8]) -> Option<u16> {
    const TCP: u8 = 6;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let header = match packet.first()? >> 4 {
        4 if packet.len() >= 20 && packet[9] == TCP => usize::from(packet[0] & 0x0f) * 4,
        6 if packet.len() >= 40 && packet[6] == TCP => 40,
        _ => return None,
    };
    let tcp = packet.get(header..header + 14)?;
    (tcp[13] & (SYN | ACK) == SYN).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

fn is_syn(packet: &[u8]) -> bool {
    syn_port(packet).is_some()
}

/// Whether an IP packet from the card may go to the stack now: anything but a connection request (SYN) to a port
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
