//! DHCPv4 for a card the host gave no address (an exported image booted without Linux's `ip=`): smoltcp's client
//! socket, on a small Ethernet interface of its own. The stack's interface is medium-IP (the card does ARP itself,
//! `card`), and smoltcp's client runs only on an Ethernet interface; so the link hands this one the frames that are
//! DHCP's (UDP to port 68) and the ARP replies (a renewal goes to the server's own address), and sends what it makes
//! as they are. A lease, a change of it or its loss comes out of [`Dhcp::poll`], for the stack to take.

use super::card::ETHERNET_HEADER;
use super::virtio::Transmitter;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// Most frames kept for the client between two polls; beyond, new ones are dropped (DHCP sends again).
const INBOX_FRAMES: usize = 16;
const ETHERTYPE_IPV4: u16 = 0x0800;
const UDP: u8 = 17;
const CLIENT_PORT: u16 = 68;

/// What the server gave: the address and its prefix, the default router, the DNS servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Cidr,
    pub router: Option<Ipv4Address>,
    pub dns: Vec<Ipv4Address>,
}

/// A change of the card's IPv4 configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Leased(Lease),
    /// The lease ran out (or the server refused to renew it): the card has no IPv4 address until the next.
    Lost,
}

pub struct Dhcp {
    iface: Interface,
    sockets: SocketSet<'static>,
    client: SocketHandle,
    frames: Frames,
}

impl Dhcp {
    /// A client for the card with hardware address `mac`, which asks at its first poll.
    pub fn new(mac: [u8; 6], now: Instant) -> Dhcp {
        let mut frames = Frames { inbox: VecDeque::new(), outbox: Vec::new() };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // The transaction IDs of the client's requests come from it.
        config.random_seed = super::random_u64();
        let iface = Interface::new(config, &mut frames, now);
        let mut sockets = SocketSet::new(Vec::new());
        let client = sockets.add(dhcpv4::Socket::new());
        Dhcp { iface, sockets, client, frames }
    }

    /// Takes a frame from the card if it is the client's: a DHCP message (IPv4, UDP to port 68), or an ARP reply,
    /// of which it keeps a copy (the card learns from it too). Returns whether the frame was a DHCP message.
    pub fn take(&mut self, frame: &[u8]) -> bool {
        let Some(ethertype) = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])) else { return false };
        let packet = &frame[ETHERNET_HEADER.min(frame.len())..];
        let (keep, is_dhcp) = match ethertype {
            ETHERTYPE_IPV4 => {
                let dhcp = is_dhcp_reply(packet);
                (dhcp, dhcp)
            }
            super::card::ETHERTYPE_ARP => (packet.get(6..8) == Some(&[0, 2]), false),
            _ => (false, false),
        };
        if keep && self.frames.inbox.len() < INBOX_FRAMES {
            self.frames.inbox.push_back(frame.to_vec());
        }
        is_dhcp
    }

    /// Runs the client: takes the frames kept for it, sends on `tx` what it has to send (the first DISCOVER,
    /// retransmissions, renewals), and returns the change of lease that came of it.
    pub fn poll(&mut self, now: Instant, tx: &mut Transmitter) -> Option<Change> {
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        for frame in self.frames.outbox.drain(..) {
            tx.send(frame.len(), |buf| buf.copy_from_slice(&frame));
        }
        let change = match self.sockets.get_mut::<dhcpv4::Socket>(self.client).poll()? {
            dhcpv4::Event::Configured(config) => Change::Leased(Lease {
                address: config.address,
                router: config.router,
                dns: config.dns_servers.iter().copied().collect(),
            }),
            dhcpv4::Event::Deconfigured => Change::Lost,
        };
        // The client's own interface answers for the address too: a renewal is unicast, and the server's answer
        // and its ARP reply come to it.
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Change::Leased(lease) = &change {
                let _ = addrs.push(IpCidr::Ipv4(lease.address));
            }
        });
        Some(change)
    }

    /// When the client next needs a poll (a retransmission, a renewal), if ever.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if !self.frames.inbox.is_empty() {
            return Some(now);
        }
        self.iface.poll_at(now, &self.sockets)
    }
}

/// Whether an IPv4 packet is UDP to DHCP's client port.
fn is_dhcp_reply(packet: &[u8]) -> bool {
    let Some(&first) = packet.first() else { return false };
    let header = usize::from(first & 0x0f) * 4;
    first >> 4 == 4
        && header >= 20
        && packet.get(9) == Some(&UDP)
        && packet.get(header + 2..header + 4) == Some(&CLIENT_PORT.to_be_bytes()[..])
}

/// The client interface's device: Ethernet frames kept for it, and those it sends, which [`Dhcp::poll`] puts on
/// the card.
struct Frames {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

impl Device for Frames {
    type RxToken<'a> = Inbound;
    type TxToken<'a> = Outbound<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Inbound, Outbound<'_>)> {
        let frame = self.inbox.pop_front()?;
        Some((Inbound(frame), Outbound(&mut self.outbox)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Outbound<'_>> {
        Some(Outbound(&mut self.outbox))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // DHCP's messages are small; 1500 bytes of IP is what every Ethernet link carries.
        caps.max_transmission_unit = 1500 + ETHERNET_HEADER;
        caps
    }
}

struct Inbound(Vec<u8>);

impl phy::RxToken for Inbound {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Outbound<'a>(&'a mut Vec<Vec<u8>>);

impl phy::TxToken for Outbound<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        // Bounded by the client, which sends a message or two a poll.
        if self.0.len() < INBOX_FRAMES {
            self.0.push(frame);
        }
        result
    }
}
