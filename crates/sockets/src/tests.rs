//! The table driven as a stack drives it: clients and a listener over a loopback wire, each packet handed to
//! smoltcp with the socket `route` finds.

use super::*;
use alloc::collections::VecDeque;
use alloc::vec;
use smoltcp::iface::{Config, PollResult};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint};
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

/// A loopback at the IP layer: what is sent is received next.
#[derive(Default)]
struct Wire(VecDeque<Vec<u8>>);

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

fn caps() -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = 1500;
    caps
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.0.pop_front()?;
        Some((Rx(packet), Tx(&mut self.0)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.0))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

/// One packet, alone, answering onto the wire.
struct One<'a>(Option<Vec<u8>>, &'a mut VecDeque<Vec<u8>>);

impl Device for One<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        Some((Rx(self.0.take()?), Tx(&mut *self.1)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut *self.1))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

struct Stack {
    iface: Interface,
    wire: Wire,
    sockets: Sockets,
    /// Packets smoltcp was handed with no socket (answered as for a closed port).
    unrouted: usize,
}

const NOW: Instant = Instant::from_millis_const(1000);

impl Stack {
    fn new() -> Stack {
        let mut wire = Wire::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut wire, NOW);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8));
        });
        Stack { iface, wire, sockets: Sockets::new(0x1234_5678), unrouted: 0 }
    }

    fn poll(&mut self) {
        for _ in 0..100 {
            for h in self.sockets.take_pending(NOW) {
                let sent = self.iface.poll_egress(NOW, &mut self.wire, self.sockets.set_mut(Some(h)));
                self.sockets.polled(h, &mut self.iface, NOW);
                if sent == PollResult::SocketStateChanged {
                    self.sockets.mark(h);
                }
            }
            while let Some(packet) = self.wire.0.pop_front() {
                let handle = match self.sockets.route(&target(&packet), |_| false) {
                    Route::Drop => continue,
                    route => route.handle(),
                };
                self.unrouted += usize::from(handle.is_none());
                let mut one = One(Some(packet), &mut self.wire.0);
                self.iface.poll_ingress_single(NOW, &mut one, self.sockets.set_mut(handle));
                if let Some(h) = handle {
                    self.sockets.polled(h, &mut self.iface, NOW);
                    self.sockets.mark(h);
                }
            }
            if !self.sockets.has_pending() {
                return;
            }
        }
        panic!("the stack never settled");
    }

    fn socket() -> tcp::Socket<'static> {
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096]))
    }

    fn listen(&mut self, port: u16) -> Handle {
        let mut s = Self::socket();
        s.listen(IpListenEndpoint { addr: None, port }).unwrap();
        self.sockets.add(s)
    }

    fn connect(&mut self, from: u16, port: u16) -> Handle {
        let mut s = Self::socket();
        let local = IpListenEndpoint { addr: Some(IpAddress::v4(127, 0, 0, 1)), port: from };
        s.connect(self.iface.context(), (IpAddress::v4(127, 0, 0, 1), port), local).unwrap();
        self.sockets.add(s)
    }

    fn state(&self, h: Handle) -> tcp::State {
        self.sockets.get::<tcp::Socket>(h).state()
    }
}

#[test]
fn each_connection_lands_on_its_own_backlog_socket_in_arrival_order() {
    let mut st = Stack::new();
    let backlog: Vec<Handle> = (0..3).map(|_| st.listen(80)).collect();
    st.poll();
    assert_eq!(st.sockets.listening_on(80), 3);
    let clients: Vec<Handle> = (0..3).map(|i| st.connect(40000 + i, 80)).collect();
    for &c in &clients {
        // One at a time, so that arrival order is the clients' order.
        let _ = c;
        st.poll();
    }
    assert_eq!(st.sockets.listening_on(80), 0);
    let mut by_arrival = backlog.clone();
    by_arrival.sort_by_key(|&h| st.sockets.arrival(h));
    for (i, &h) in by_arrival.iter().enumerate() {
        assert_eq!(st.state(h), tcp::State::Established);
        let remote = st.sockets.get::<tcp::Socket>(h).remote_endpoint().unwrap();
        assert_eq!(remote.port, 40000 + i as u16, "the {i}th to arrive");
        assert_eq!(st.state(clients[i]), tcp::State::Established);
    }
    // Data from each client reaches its own server socket.
    for (i, &c) in clients.iter().enumerate() {
        st.sockets.get_mut::<tcp::Socket>(c).send_slice(&[i as u8]).unwrap();
    }
    st.poll();
    for (i, &h) in by_arrival.iter().enumerate() {
        let mut b = [0u8; 4];
        assert_eq!(st.sockets.get_mut::<tcp::Socket>(h).recv_slice(&mut b), Ok(1));
        assert_eq!(b[0], i as u8);
    }
    assert_eq!(st.unrouted, 0);
}

#[test]
fn a_syn_beyond_the_listening_sockets_is_refused_and_a_closed_connection_forgotten() {
    let mut st = Stack::new();
    let server = st.listen(80);
    let first = st.connect(40000, 80);
    st.poll();
    assert_eq!(st.state(first), tcp::State::Established);
    let second = st.connect(40001, 80);
    st.poll();
    assert_eq!(st.state(second), tcp::State::Closed, "refused with a reset");
    assert_eq!(st.unrouted, 1);
    // A reset of the first ends both ends, and unfiles them: a late segment for them finds nobody.
    st.sockets.get_mut::<tcp::Socket>(first).abort();
    st.poll();
    assert_eq!(st.state(server), tcp::State::Closed);
    let local = IpEndpoint::new(IpAddress::v4(127, 0, 0, 1), 80);
    let remote = IpEndpoint::new(IpAddress::v4(127, 0, 0, 1), 40000);
    assert_eq!(st.sockets.route(&Target::Tcp { local, remote, ack: true }, |_| false), Route::Nobody);
    st.sockets.remove(server);
    st.sockets.remove(first);
    // Their slots are reused once no list names them any more.
    assert_eq!(st.sockets.take_touched(), vec![second]);
    let again = st.listen(80);
    assert!(again == server || again == first || again == second);
}

#[test]
fn timers_give_a_turn_when_due() {
    let mut st = Stack::new();
    let _server = st.listen(80);
    let client = st.connect(40000, 80);
    // The SYN is lost: the client's retransmission timer is what gives it its next turn.
    for h in st.sockets.take_pending(NOW) {
        let _ = st.iface.poll_egress(NOW, &mut st.wire, st.sockets.set_mut(Some(h)));
        st.sockets.polled(h, &mut st.iface, NOW);
    }
    st.wire.0.clear();
    let due = st.sockets.next_due().expect("a retransmission is due");
    assert!(due > NOW);
    assert!(st.sockets.take_pending(NOW).is_empty());
    assert_eq!(st.sockets.take_pending(due), vec![client]);
}

#[test]
fn target_reads_endpoints_and_flags() {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[33] = 0x02;
    let local = IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 80);
    let remote = IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), 1234);
    assert_eq!(target(&p), Target::Tcp { local, remote, ack: false });
    p[33] = 0x12;
    assert_eq!(target(&p), Target::Tcp { local, remote, ack: true });
    p[9] = 17;
    assert_eq!(target(&p), Target::Udp(local));
    p[6] = 0x20; // more fragments
    assert_eq!(target(&p), Target::Other);
    assert_eq!(target(&p[..30]), Target::Other);
    assert_eq!(frame_target(&[0u8; 10]), Target::Other);
}

/// A segment from `peer`:80 to `local`, built as a peer's stack would.
fn segment(
    peer: IpAddress,
    local: IpEndpoint,
    seq: i32,
    ack: Option<i32>,
    control: TcpControl,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 80,
        dst_port: local.port,
        control,
        seq_number: TcpSeqNumber(seq),
        ack_number: ack.map(TcpSeqNumber),
        window_len: 1024,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let (IpAddress::Ipv4(src), IpAddress::Ipv4(dst)) = (peer, local.addr) else { unreachable!("IPv4 endpoints") };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut packet = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut ipv4 = Ipv4Packet::new_unchecked(&mut packet);
    ip.emit(&mut ipv4, &caps);
    tcp.emit(&mut TcpPacket::new_unchecked(ipv4.payload_mut()), &peer, &local.addr, &caps);
    packet
}

/// The sequence number of a SYN the client sent.
fn syn_number(syn: &[u8]) -> i32 {
    let ip = Ipv4Packet::new_checked(syn).expect("an IPv4 packet");
    let tcp = TcpPacket::new_checked(ip.payload()).expect("a TCP segment");
    assert!(tcp.syn() && !tcp.ack(), "the client's first segment is a bare SYN");
    tcp.seq_number().0
}

/// smoltcp (0.12.0, and 0.14.0 still) panics ("subtract sequence numbers with underflow", in `poll_at`) on a bare SYN
/// reaching a connecting socket before the socket's own SYN has gone out, as a packet does when it is read before the
/// stack's next turn to send: a server the program connects to, or anyone guessing the port, could stop the VM with
/// it (docs/security.md). `route` drops a segment without ACK for a connecting socket, before or after its SYN went
/// out, and the connection is made when the peer answers the client's SYN.
#[test]
fn a_peer_answering_a_connection_request_with_a_bare_syn_neither_panics_nor_stops_the_connection() {
    let local = IpEndpoint::new(IpAddress::v4(10, 0, 2, 15), 40000);
    let peer = IpAddress::v4(10, 0, 2, 2);
    let cases = [0, 1, -1, i32::MIN, i32::MAX, 0x1234_5678].into_iter().flat_map(|s| [(s, true), (s, false)]);
    for (seq, sent_first) in cases {
        let case = alloc::format!("seq {seq:#x}, the client's SYN sent first: {sent_first}");
        let mut wire = Wire::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut wire, NOW);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24));
        });
        let mut sockets = Sockets::new(0x5eed);
        let mut s = Stack::socket();
        s.connect(iface.context(), (peer, 80), IpListenEndpoint { addr: Some(local.addr), port: local.port }).unwrap();
        let client = sockets.add(s);
        let turn = |sockets: &mut Sockets, iface: &mut Interface, wire: &mut Wire| {
            for h in sockets.take_pending(NOW) {
                iface.poll_egress(NOW, wire, sockets.set_mut(Some(h)));
                sockets.polled(h, iface, NOW);
            }
        };
        let deliver = |sockets: &mut Sockets, iface: &mut Interface, wire: &mut Wire, packet: Vec<u8>| {
            let route = sockets.route(&target(&packet), |_| false);
            if let Route::Socket(h) = route {
                let mut one = One(Some(packet), &mut wire.0);
                iface.poll_ingress_single(NOW, &mut one, sockets.set_mut(Some(h)));
                sockets.polled(h, iface, NOW);
                sockets.mark(h);
            }
            route
        };
        if sent_first {
            turn(&mut sockets, &mut iface, &mut wire);
        }
        // The bare SYN is dropped, whether or not the client's SYN went out before it.
        let syn = segment(peer, local, seq, None, TcpControl::Syn, &[]);
        assert_eq!(deliver(&mut sockets, &mut iface, &mut wire, syn), Route::Drop, "{case}");
        turn(&mut sockets, &mut iface, &mut wire);
        assert_eq!(sockets.get::<tcp::Socket>(client).state(), tcp::State::SynSent, "{case}");
        let ours = wire.0.pop_front().expect("the client sent its SYN");
        assert_eq!(target(&ours), Target::Tcp { local: IpEndpoint::new(peer, 80), remote: local, ack: false });
        assert!(wire.0.is_empty(), "{case}: nothing answered the dropped SYN");
        let isn = syn_number(&ours);
        // The peer answers the client's SYN; the connection is made and data goes through.
        let syn_ack = segment(peer, local, seq, Some(isn.wrapping_add(1)), TcpControl::Syn, &[]);
        assert_eq!(deliver(&mut sockets, &mut iface, &mut wire, syn_ack), Route::Socket(client), "{case}");
        assert_eq!(sockets.get::<tcp::Socket>(client).state(), tcp::State::Established, "{case}");
        let data = segment(peer, local, seq.wrapping_add(1), Some(isn.wrapping_add(1)), TcpControl::Psh, b"hi");
        assert_eq!(deliver(&mut sockets, &mut iface, &mut wire, data), Route::Socket(client), "{case}");
        let mut got = [0u8; 4];
        assert_eq!(sockets.get_mut::<tcp::Socket>(client).recv_slice(&mut got), Ok(2), "{case}");
        assert_eq!(&got[..2], b"hi");
    }
}

/// A device whose queue toward the peer is full: smoltcp's turns send nothing.
struct Full;

impl Device for Full {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        None
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        None
    }
    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

/// The same panic as above, reached with the ACK a SYN-ACK carries: a peer that knows the connecting socket's initial
/// sequence number (here, a twin stack with the same seed makes the same) answers before the SYN went out — before
/// the socket's first turn, or after a turn the device had no room for. `route` drops it; once the SYN is out, the
/// same SYN-ACK makes the connection.
#[test]
fn a_syn_ack_before_the_connecting_socket_sent_its_syn_is_dropped() {
    let local = IpEndpoint::new(IpAddress::v4(10, 0, 2, 15), 40000);
    let peer = IpAddress::v4(10, 0, 2, 2);
    let stack = |seed: u64| {
        let mut wire = Wire::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut wire, NOW);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24));
        });
        let mut sockets = Sockets::new(0x5eed);
        let mut s = Stack::socket();
        s.connect(iface.context(), (peer, 80), IpListenEndpoint { addr: Some(local.addr), port: local.port }).unwrap();
        let client = sockets.add(s);
        (iface, wire, sockets, client)
    };
    for (seed, full_turn_first) in [(0, false), (0, true), (0xdead_beef, false), (0xdead_beef, true)] {
        let case = alloc::format!("seed {seed:#x}, a turn with a full device first: {full_turn_first}");
        // The twin shows the initial sequence number the socket will send.
        let (mut iface, mut wire, mut sockets, _) = stack(seed);
        for h in sockets.take_pending(NOW) {
            iface.poll_egress(NOW, &mut wire, sockets.set_mut(Some(h)));
        }
        let isn = syn_number(&wire.0.pop_front().expect("the twin sent its SYN"));
        let (mut iface, mut wire, mut sockets, client) = stack(seed);
        if full_turn_first {
            for h in sockets.take_pending(NOW) {
                iface.poll_egress(NOW, &mut Full, sockets.set_mut(Some(h)));
                sockets.polled(h, &mut iface, NOW);
            }
        }
        let syn_ack = segment(peer, local, 7, Some(isn.wrapping_add(1)), TcpControl::Syn, &[]);
        assert_eq!(sockets.route(&target(&syn_ack), |_| false), Route::Drop, "{case}");
        for h in sockets.take_pending(NOW) {
            iface.poll_egress(NOW, &mut wire, sockets.set_mut(Some(h)));
            sockets.polled(h, &mut iface, NOW);
        }
        assert_eq!(syn_number(&wire.0.pop_front().expect("the SYN went out")), isn, "{case}");
        assert_eq!(sockets.route(&target(&syn_ack), |_| false), Route::Socket(client), "{case}");
        let mut one = One(Some(syn_ack), &mut wire.0);
        iface.poll_ingress_single(NOW, &mut one, sockets.set_mut(Some(client)));
        sockets.polled(client, &mut iface, NOW);
        assert_eq!(sockets.get::<tcp::Socket>(client).state(), tcp::State::Established, "{case}");
    }
}
