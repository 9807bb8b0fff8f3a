//! A TCP/IP stack's smoltcp sockets, each in a socket set of its own, found for a packet by what the packet names: a TCP
//! segment by its four addresses and ports (a hash map), a connection request (a segment without ACK) by its port
//! among the sockets still listening there, a UDP datagram by its port. smoltcp's `Interface::poll` visits every
//! socket of the set it is given, for each packet and for sending; handing it a set of one socket makes a packet's
//! work, and a poll's, independent of how many sockets the program has (a listener's backlog of 128 included).
//!
//! Which sockets a poll must give a turn to send is known too: those the program changed (`get_mut`), those a packet
//! came to, and those whose timer (a retransmission, a delayed ACK) is due, kept in a deadline index.

#![no_std]

extern crate alloc;

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::hash::{BuildHasher, Hasher};
use hashbrown::HashMap;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp, AnySocket, Socket};
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address, Ipv6Address};

/// A socket of the stack.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Handle(u32);

/// Where packets for a socket are found: what it is filed under in the indexes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    /// Closed, or a UDP socket not yet bound: no packet is for it.
    Nowhere,
    /// A TCP connection (or one being made): local and remote endpoint.
    Connection(IpEndpoint, IpEndpoint),
    /// A TCP socket listening on a port.
    Listening(u16),
    /// A UDP socket bound to a port.
    Datagram(u16),
}

struct Slot {
    set: SocketSet<'static>,
    inner: SocketHandle,
    key: Key,
    /// When smoltcp next wants to send for it, as filed in `Sockets::timers`.
    due: Option<Instant>,
    /// For a socket that listened: the count of connection requests the stack had taken when this one took its
    /// own, so that `accept` hands connections out in the order they came, as Linux's accept queue does.
    arrival: u64,
}

/// Which lists name a slot's index (bits of `Sockets::named`): queued in `pending` for a turn to send at the next
/// poll; in `touched`, reached by a packet or a turn since the stack last looked. A removed socket's index is reused
/// once neither does.
const PENDING: u8 = 1;
const TOUCHED: u8 = 2;

/// What a packet is for, read from its IP and TCP/UDP headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// A TCP segment: its local and remote endpoints, and whether it carries an ACK (a listening socket only takes
    /// segments without).
    Tcp { local: IpEndpoint, remote: IpEndpoint, ack: bool },
    /// A UDP datagram to this address and port.
    Udp(IpEndpoint),
    /// Anything else (ICMP, neighbour discovery, damaged): no socket's business.
    Other,
}

/// Where a packet goes: what [`Sockets::route`] found for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To this socket alone.
    Socket(Handle),
    /// To no socket: smoltcp answers it as for a closed port.
    Nobody,
    /// Nowhere: the packet is dropped unread. Two kinds of segment for a connection still in SYN-SENT are: one
    /// without ACK, which is either a SYN (a simultaneous open) or one smoltcp ignores in that state anyway; and any
    /// segment before the socket's own SYN went out, which can acknowledge nothing. smoltcp (0.12 to 0.14 at least)
    /// panics on a SYN or SYN-ACK reaching a connecting socket before that socket's own SYN went out ("attempt to
    /// subtract sequence numbers with underflow", `tcp::Socket::last_scaled_window`): a SYN from anyone who guesses
    /// the port, a SYN-ACK from anyone who also guesses the initial sequence number. A simultaneous open still
    /// completes: the peer, having our SYN, answers it with a SYN-ACK.
    Drop,
}

impl Route {
    /// The socket for smoltcp to be handed the packet with, if any.
    pub fn handle(self) -> Option<Handle> {
        match self {
            Route::Socket(h) => Some(h),
            Route::Nobody | Route::Drop => None,
        }
    }
}

pub struct Sockets {
    slots: Vec<Option<Slot>>,
    named: Vec<u8>,
    free: Vec<u32>,
    connections: HashMap<(IpEndpoint, IpEndpoint), Handle, Keyed>,
    /// Per port, the TCP sockets listening on it (a listener's free backlog sockets).
    listening: HashMap<u16, Vec<Handle>, Keyed>,
    /// Per port, the UDP sockets bound to it, oldest first.
    datagrams: HashMap<u16, Vec<Handle>, Keyed>,
    timers: BTreeSet<(Instant, Handle)>,
    /// Connection requests listening sockets took, ever.
    arrivals: u64,
    pending: Vec<Handle>,
    touched: Vec<Handle>,
    /// The set given to smoltcp for packets that are no socket's: it answers them as for an unknown port.
    nobody: SocketSet<'static>,
}

impl Sockets {
    /// An empty table whose hash maps are keyed with `seed` (random per boot, so that a peer cannot choose endpoints
    /// that all land in one bucket).
    pub fn new(seed: u64) -> Sockets {
        let keyed = Keyed(seed | 1);
        Sockets {
            slots: Vec::new(),
            named: Vec::new(),
            free: Vec::new(),
            connections: HashMap::with_hasher(keyed),
            listening: HashMap::with_hasher(keyed),
            datagrams: HashMap::with_hasher(keyed),
            timers: BTreeSet::new(),
            arrivals: 0,
            pending: Vec::new(),
            touched: Vec::new(),
            nobody: SocketSet::new(Vec::new()),
        }
    }

    pub fn add<T: AnySocket<'static>>(&mut self, socket: T) -> Handle {
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let inner = set.add(socket);
        let slot = Slot { set, inner, key: Key::Nowhere, due: None, arrival: u64::MAX };
        let handle = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                Handle(i)
            }
            None => {
                self.slots.push(Some(slot));
                self.named.push(0);
                Handle((self.slots.len() - 1) as u32)
            }
        };
        self.file(handle);
        self.mark(handle);
        handle
    }

    pub fn remove(&mut self, handle: Handle) {
        self.unfile(handle);
        let slot = self.slots[handle.0 as usize].take().expect("a live socket");
        if let Some(due) = slot.due {
            self.timers.remove(&(due, handle));
        }
        // Lists that still name it skip empty slots, and free the index when they let go of it.
        if self.named[handle.0 as usize] == 0 {
            self.free.push(handle.0);
        }
    }

    fn slot(&self, handle: Handle) -> &Slot {
        self.slots[handle.0 as usize].as_ref().expect("a live socket")
    }

    fn slot_mut(&mut self, handle: Handle) -> &mut Slot {
        self.slots[handle.0 as usize].as_mut().expect("a live socket")
    }

    pub fn get<T: AnySocket<'static>>(&self, handle: Handle) -> &T {
        let slot = self.slot(handle);
        slot.set.get::<T>(slot.inner)
    }

    /// The socket, whatever its kind.
    pub fn socket(&self, handle: Handle) -> &Socket<'static> {
        let slot = self.slot(handle);
        slot.set.iter().next().expect("a set of one").1
    }

    /// The socket, to change: it gets a turn to send at the next poll, and is filed anew then.
    pub fn get_mut<T: AnySocket<'static>>(&mut self, handle: Handle) -> &mut T {
        self.mark(handle);
        let slot = self.slot_mut(handle);
        slot.set.get_mut::<T>(slot.inner)
    }

    /// The socket, to change without a turn to send: for one whose change may be nothing, which the caller then
    /// [`mark`](Self::mark)s if it was something.
    pub fn get_mut_unmarked<T: AnySocket<'static>>(&mut self, handle: Handle) -> &mut T {
        let slot = self.slot_mut(handle);
        slot.set.get_mut::<T>(slot.inner)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Handle, &Socket<'static>)> {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let slot = slot.as_ref()?;
            Some((Handle(i as u32), slot.set.iter().next()?.1))
        })
    }

    /// Every socket, to change: each gets a turn at the next poll.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Handle, &mut Socket<'static>)> {
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                self.mark(Handle(i as u32));
            }
        }
        self.slots.iter_mut().enumerate().filter_map(|(i, slot)| {
            let slot = slot.as_mut()?;
            Some((Handle(i as u32), slot.set.iter_mut().next()?.1))
        })
    }

    /// Queues `handle` for a turn to send at the next poll.
    pub fn mark(&mut self, handle: Handle) {
        if self.name(handle, PENDING) {
            self.pending.push(handle);
        }
    }

    /// Notes that a list names `handle`; whether it did not already.
    fn name(&mut self, handle: Handle, list: u8) -> bool {
        let named = &mut self.named[handle.0 as usize];
        let new = *named & list == 0;
        *named |= list;
        new
    }

    /// `list`, taken: the live sockets it named, each once; removed ones' indexes are freed once no list names them.
    fn take_list(&mut self, list: u8) -> Vec<Handle> {
        let taken = core::mem::take(if list == PENDING { &mut self.pending } else { &mut self.touched });
        taken
            .into_iter()
            .filter(|&h| {
                let named = &mut self.named[h.0 as usize];
                *named &= !list;
                let live = self.slots[h.0 as usize].is_some();
                if !live && *named == 0 {
                    self.free.push(h.0);
                }
                live
            })
            .collect()
    }

    /// Takes the sockets queued for a turn, and those whose timer is due at `now`.
    pub fn take_pending(&mut self, now: Instant) -> Vec<Handle> {
        while let Some(&(due, handle)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            self.slot_mut(handle).due = None;
            self.mark(handle);
        }
        self.take_list(PENDING)
    }

    /// Files the sockets waiting for a turn where packets will now find them (the program may have changed them),
    /// before packets are routed.
    pub fn file_pending(&mut self) {
        for i in 0..self.pending.len() {
            let handle = self.pending[i];
            if self.slots[handle.0 as usize].is_some() {
                self.file(handle);
            }
        }
    }

    /// Whether sockets wait for a turn regardless of timers.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the sockets that packets or turns reached since the last call (each once).
    pub fn take_touched(&mut self) -> Vec<Handle> {
        self.take_list(TOUCHED)
    }

    /// The earliest timer of any socket.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.first().map(|&(due, _)| due)
    }

    /// Where a packet for `target` goes (see [`Route`]).
    pub fn route(&self, target: &Target, is_broadcast: impl Fn(IpAddress) -> bool) -> Route {
        let found = match *target {
            Target::Tcp { local, remote, ack } => {
                if let Some(&h) = self.connections.get(&(local, remote)) {
                    if self.get::<tcp::Socket>(h).state() == tcp::State::SynSent && (!ack || !self.syn_went_out(h)) {
                        return Route::Drop;
                    }
                    return Route::Socket(h);
                }
                if ack {
                    return Route::Nobody;
                }
                // The most recently filed first: the one filed last is taken and leaves the end of the list.
                self.listening.get(&local.port).and_then(|list| {
                    list.iter().rev().copied().find(|&h| {
                        let addr = self.get::<tcp::Socket>(h).listen_endpoint().addr;
                        addr.is_none_or(|a| a == local.addr)
                    })
                })
            }
            Target::Udp(local) => self.datagrams.get(&local.port).and_then(|list| {
                list.iter().copied().find(|&h| {
                    let addr = self.get::<udp::Socket>(h).endpoint().addr;
                    addr.is_none_or(|a| a == local.addr || local.addr.is_multicast() || is_broadcast(local.addr))
                })
            }),
            Target::Other => None,
        };
        found.map_or(Route::Nobody, Route::Socket)
    }

    /// Whether connecting socket `handle` has sent its SYN: it has had a turn since it connected (`polled` files
    /// its timer), and smoltcp no longer wants one at once. Until the SYN goes out smoltcp asks for a turn now (its
    /// `poll_at` is `Now`, which `Interface::poll_at` gives as the time 0); once it is out, the SYN's retransmission
    /// time. A connected socket that has not been polled since has no timer filed (a closed socket has none).
    fn syn_went_out(&self, handle: Handle) -> bool {
        self.slot(handle).due.is_some_and(|due| due != Instant::from_millis(0))
    }

    /// The set holding `handle`'s socket alone, or the empty set for None, for smoltcp to poll.
    pub fn set_mut(&mut self, handle: Option<Handle>) -> &mut SocketSet<'static> {
        match handle {
            Some(h) => &mut self.slot_mut(h).set,
            None => &mut self.nobody,
        }
    }

    /// After smoltcp polled `handle`'s set: files it where packets will now find it, notes when its timer is due, and
    /// notes that it may have changed.
    pub fn polled(&mut self, handle: Handle, iface: &mut Interface, now: Instant) {
        self.file(handle);
        let slot = self.slot_mut(handle);
        let due = iface.poll_at(now, &slot.set);
        let before = core::mem::replace(&mut slot.due, due);
        if self.name(handle, TOUCHED) {
            self.touched.push(handle);
        }
        if before != due {
            if let Some(before) = before {
                self.timers.remove(&(before, handle));
            }
            if let Some(due) = due {
                self.timers.insert((due, handle));
            }
        }
    }

    /// When socket `handle`, which listened, took its connection request (see `Slot::arrival`): earlier is less.
    pub fn arrival(&self, handle: Handle) -> u64 {
        self.slot(handle).arrival
    }

    /// How many sockets listen on `port` now.
    pub fn listening_on(&self, port: u16) -> usize {
        self.listening.get(&port).map_or(0, Vec::len)
    }

    /// Files `handle` under what it is now, moving it from where it was.
    fn file(&mut self, handle: Handle) {
        let key = key_of(self.slot(handle));
        if key == self.slot(handle).key {
            return;
        }
        let was_listening = matches!(self.slot(handle).key, Key::Listening(_));
        self.unfile(handle);
        if was_listening {
            self.arrivals += 1;
            self.slot_mut(handle).arrival = self.arrivals;
        }
        match key {
            Key::Nowhere => {}
            Key::Connection(local, remote) => {
                // A newer socket on the same endpoints (a connection made again) takes their packets.
                self.connections.insert((local, remote), handle);
            }
            Key::Listening(port) => self.listening.entry(port).or_default().push(handle),
            Key::Datagram(port) => self.datagrams.entry(port).or_default().push(handle),
        }
        self.slot_mut(handle).key = key;
    }

    fn unfile(&mut self, handle: Handle) {
        match core::mem::replace(&mut self.slot_mut(handle).key, Key::Nowhere) {
            Key::Nowhere => {}
            Key::Connection(local, remote) => {
                if self.connections.get(&(local, remote)) == Some(&handle) {
                    self.connections.remove(&(local, remote));
                }
            }
            Key::Listening(port) => take_from(&mut self.listening, port, handle),
            Key::Datagram(port) => take_from(&mut self.datagrams, port, handle),
        }
    }
}

/// Removes `handle` from `map[port]`, searching from the end (where a listening socket a SYN took was).
fn take_from(map: &mut HashMap<u16, Vec<Handle>, Keyed>, port: u16, handle: Handle) {
    if let Some(list) = map.get_mut(&port) {
        if let Some(at) = list.iter().rposition(|&h| h == handle) {
            list.remove(at);
        }
        if list.is_empty() {
            map.remove(&port);
        }
    }
}

fn key_of(slot: &Slot) -> Key {
    match slot.set.iter().next().map(|(_, s)| s) {
        Some(Socket::Tcp(tcp)) => match (tcp.state(), tcp.local_endpoint(), tcp.remote_endpoint()) {
            (tcp::State::Closed, _, _) => Key::Nowhere,
            (tcp::State::Listen, _, _) => Key::Listening(tcp.listen_endpoint().port),
            (_, Some(local), Some(remote)) => Key::Connection(local, remote),
            _ => Key::Nowhere,
        },
        Some(Socket::Udp(udp)) if udp.is_open() => Key::Datagram(udp.endpoint().port),
        _ => Key::Nowhere,
    }
}

/// Reads what an IP packet is for: its protocol, addresses and ports. IPv6 packets whose first header is not TCP or
/// UDP (extension headers) are Other: smoltcp's stack here sends none and gets none from its peers.
pub fn target(packet: &[u8]) -> Target {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ACK: u8 = 0x10;
    let (src, dst, protocol, header): (IpAddress, IpAddress, u8, usize) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            // A fragment carries no ports (and smoltcp here takes no fragments).
            let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
            if fragment {
                return Target::Other;
            }
            let src = Ipv4Address::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Address::new(packet[16], packet[17], packet[18], packet[19]);
            (src.into(), dst.into(), packet[9], usize::from(packet[0] & 0x0f) * 4)
        }
        Some(6) if packet.len() >= 40 => {
            let (Some(src), Some(dst)) = (v6_at(packet, 8), v6_at(packet, 24)) else { return Target::Other };
            (src.into(), dst.into(), packet[6], 40)
        }
        _ => return Target::Other,
    };
    let Some(ports) = packet.get(header..header + 4) else { return Target::Other };
    let remote = IpEndpoint::new(src, u16::from_be_bytes([ports[0], ports[1]]));
    let local = IpEndpoint::new(dst, u16::from_be_bytes([ports[2], ports[3]]));
    match protocol {
        TCP => match packet.get(header + 13) {
            Some(flags) => Target::Tcp { local, remote, ack: flags & ACK != 0 },
            None => Target::Other,
        },
        UDP => Target::Udp(local),
        _ => Target::Other,
    }
}

/// What an Ethernet frame's IP packet is for (see [`target`]); Other for anything but IPv4 and IPv6.
pub fn frame_target(frame: &[u8]) -> Target {
    const ETHERNET_HEADER: usize = 14;
    match frame.get(12..ETHERNET_HEADER) {
        Some([0x08, 0x00]) | Some([0x86, 0xdd]) => target(&frame[ETHERNET_HEADER..]),
        _ => Target::Other,
    }
}

fn v6_at(packet: &[u8], at: usize) -> Option<Ipv6Address> {
    let octets: [u8; 16] = packet.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Address::from(octets))
}

/// A keyed multiply-rotate hash: cheap for the few words of an endpoint pair, and with a secret key a peer cannot
/// pick endpoints that collide.
#[derive(Clone, Copy)]
pub struct Keyed(u64);

pub struct KeyedHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl BuildHasher for Keyed {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher(self.0)
    }
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(MULTIPLIER).rotate_left(29);
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_u16(&mut self, word: u16) {
        self.write_u64(u64::from(word));
    }

    fn write_u8(&mut self, word: u8) {
        self.write_u64(u64::from(word));
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        let x = self.0 ^ (self.0 >> 31);
        x.wrapping_mul(MULTIPLIER) ^ (x >> 27)
    }
}

#[cfg(test)]
mod tests;
