//! Hostile frames: random bytes, every truncation and bit flip of valid ARP/UDP/TCP frames, and lying length
//! fields. Nothing may panic; the relay must keep working afterwards and count what it dropped.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::pattern;
use crate::frame::{classify, udp_frame, HOST_MAC};
use crate::{UserNet, UserNetConfig};

fn eth(ethertype: EthernetProtocol, payload_len: usize) -> Vec<u8> {
    let mut f = vec![0; 14 + payload_len];
    EthernetRepr {
        src_addr: EthernetAddress(UserNetConfig::default().guest_mac),
        dst_addr: EthernetAddress(HOST_MAC),
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let net = UserNetConfig::default();
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(net.guest_mac),
        source_protocol_addr: net.guest_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut f = eth(EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
    f
}

fn tcp_syn(dst: SocketAddrV4) -> Vec<u8> {
    tcp_syn_from(41000, dst, 1234)
}

/// A bare SYN from the guest's `src_port` to `dst`, with sequence number `seq`.
fn tcp_syn_from(src_port: u16, dst: SocketAddrV4, seq: i32) -> Vec<u8> {
    tcp_syn_answering(src_port, dst, seq, None)
}

/// A guest SYN, or with `ack` a SYN-ACK.
fn tcp_syn_answering(src_port: u16, dst: SocketAddrV4, seq: i32, ack: Option<i32>) -> Vec<u8> {
    let net = UserNetConfig::default();
    let caps = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port,
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq),
        ack_number: ack.map(TcpSeqNumber),
        window_len: 1024,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: net.guest_ip,
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = eth(EthernetProtocol::Ipv4, 20 + tcp.buffer_len());
    let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
    ip.emit(&mut p, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(p.payload_mut()),
        &IpAddress::Ipv4(net.guest_ip),
        &IpAddress::Ipv4(*dst.ip()),
        &caps,
    );
    f
}

fn valid_frames() -> Vec<Vec<u8>> {
    let net = UserNetConfig::default();
    let guest = SocketAddr::V4(SocketAddrV4::new(net.guest_ip, 4444));
    let guest6 = SocketAddr::new(net.ipv6.unwrap().guest_ip.into(), 4444);
    let to = |ip: Ipv4Addr, port| SocketAddr::V4(SocketAddrV4::new(ip, port));
    vec![
        arp_request(Ipv4Addr::new(10, 0, 2, 77)),
        arp_request(net.gateway),
        // To TEST-NET addresses and the discard port on the gateway: harmless if they do get relayed.
        udp_frame(HOST_MAC, guest, to(Ipv4Addr::new(192, 0, 2, 1), 9), b"payload").unwrap(),
        udp_frame(HOST_MAC, guest, to(net.dns, 53), &[0; 12]).unwrap(),
        udp_frame(HOST_MAC, guest6, "[2001:db8::1]:9".parse().unwrap(), b"payload").unwrap(),
        udp_frame(HOST_MAC, guest6, SocketAddr::new(net.ipv6.unwrap().dns.into(), 53), &[0; 12]).unwrap(),
        tcp_syn(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 9)),
        tcp_syn(SocketAddrV4::new(net.gateway, 9)),
    ]
}

/// Every mutation the tests try, on top of some random frames.
fn hostile_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in valid_frames() {
        for len in 0..f.len() {
            out.push(f[..len].to_vec());
        }
        for bit in 0..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            out.push(g);
        }
        // Lying length fields: IPv4 header length, total length, UDP/TCP length or offset set to extremes.
        for (at, value) in
            [(14, 0x4f), (14, 0x40), (16, 0xff), (17, 0xff), (16, 0), (17, 0), (38, 0xff), (39, 0), (46, 0xff)]
        {
            if at < f.len() {
                let mut g = f.clone();
                g[at] = value;
                out.push(g);
            }
        }
        let mut long = f.clone();
        long.extend(pattern(70_000, 9));
        out.push(long);
    }
    for i in 0..2000u64 {
        let bytes = pattern((i as usize * 7919) % 1600, i);
        out.push(bytes.clone());
        let mut with_ip_header = eth(EthernetProtocol::Ipv4, 0);
        with_ip_header.extend_from_slice(&bytes);
        out.push(with_ip_header);
    }
    out
}

#[test]
fn classify_survives_hostile_frames() {
    let net = UserNetConfig::default();
    for f in hostile_frames() {
        let _ = classify(&f, &net);
    }
}

#[test]
fn relay_survives_hostile_frames_and_keeps_working() {
    let net = UserNet::new(UserNetConfig::default()).unwrap();
    let mut buf = vec![0; 65550];
    for (i, f) in hostile_frames().iter().enumerate() {
        net.send(f);
        if i % 512 == 0 {
            while net.recv(&mut buf).is_some() {}
        }
    }
    // Still alive: an ARP question for another subnet host is answered.
    std::thread::sleep(Duration::from_millis(100));
    while net.recv(&mut buf).is_some() {}
    net.send(&arp_request(Ipv4Addr::new(10, 0, 2, 99)));
    let reply = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(5));
        net.recv(&mut buf)
    });
    let n = reply.expect("no ARP reply after the fuzzing");
    let frame = EthernetFrame::new_checked(&buf[..n]).unwrap();
    assert_eq!(frame.ethertype(), EthernetProtocol::Arp);
    assert!(net.stats().dropped > 1000, "{:?}", net.stats());
}

#[test]
fn ready_fd_stays_readable_while_frames_wait() {
    let net = UserNet::new(UserNetConfig::default()).unwrap();
    let readable = |ms| {
        let mut p = [libc::pollfd { fd: net.ready_fd(), events: libc::POLLIN, revents: 0 }];
        crate::poller::poll(&mut p, Some(Duration::from_millis(ms))).unwrap() == 1
    };
    assert!(!readable(50));
    net.send(&arp_request(Ipv4Addr::new(10, 0, 2, 50)));
    net.send(&arp_request(Ipv4Addr::new(10, 0, 2, 51)));
    assert!(readable(2000));
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = vec![0; 2048];
    assert!(net.recv(&mut buf).is_some());
    assert!(readable(0), "one frame still waits");
    assert!(readable(0), "polling does not clear it");
    assert!(net.recv(&mut buf).is_some());
    assert!(!readable(0), "the queue is empty");
    assert!(net.recv(&mut buf).is_none());
    // A too-small buffer drops the frame rather than truncating it.
    net.send(&arp_request(Ipv4Addr::new(10, 0, 2, 52)));
    assert!(readable(2000));
    assert!(net.recv(&mut [0; 10]).is_none());
    assert!(!readable(0));
}

/// The relay connects to the guest for a `-p` forward from a gateway port it hands out in order (49152 first), so a
/// guest knows which one comes next. It sends bare SYNs from the forward's guest port to that gateway port while a
/// host client connects: smoltcp (0.14 still) panics on such a SYN reaching the relay's connecting socket before that
/// socket's SYN went out, which stopped the relay's thread. Here the relay cannot send its SYN at first (it has not
/// learnt the guest's MAC address), then can. The SYNs are dropped and counted, before and after; the relay's SYN
/// reaches the guest, and the relay keeps working.
#[test]
fn bare_syns_to_the_gateway_port_of_a_forward_being_connected_are_dropped() {
    let port = super::free_tcp_port();
    let config = UserNetConfig { forwards: vec![super::fwd(&format!("127.0.0.1:{port}:80"))], ..Default::default() };
    let gateway = config.gateway;
    let net = UserNet::new(config).unwrap();
    let mut buf = vec![0; 65550];
    let client = std::thread::spawn(move || std::net::TcpStream::connect(super::localhost(port)).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seq = 0i32;
    let mut syn = |net: &UserNet| {
        seq = seq.wrapping_add(0x0101_0101);
        net.send(&tcp_syn_from(80, SocketAddrV4::new(gateway, 49152), seq));
        std::thread::sleep(Duration::from_micros(200));
    };
    // Before the relay can send its SYN: until it has accepted the host's connection, and 100 SYNs after.
    while net.stats().tcp_inbound == 0 {
        assert!(std::time::Instant::now() < deadline, "the relay never took the connection: {:?}", net.stats());
        syn(&net);
    }
    for _ in 0..100 {
        syn(&net);
    }
    let before = net.stats().dropped;
    assert!(before >= 100, "the SYNs while the relay could not send were dropped: {:?}", net.stats());
    // The guest makes itself known; the relay's SYN comes, and 100 more SYNs go to its socket still in SYN-SENT.
    net.send(&arp_request(gateway));
    let (mut relay_syn, mut after) = (false, 0);
    while after < 100 {
        assert!(std::time::Instant::now() < deadline, "no SYN from the relay: {:?}", net.stats());
        syn(&net);
        after += usize::from(relay_syn);
        while let Some(n) = net.recv(&mut buf) {
            let Ok(eth) = EthernetFrame::new_checked(&buf[..n]) else { continue };
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else { continue };
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else { continue };
            relay_syn |= tcp.src_port() == 49152 && tcp.dst_port() == 80 && tcp.syn() && !tcp.ack();
        }
    }
    let _stream = client.join().unwrap();
    let stats = net.stats();
    assert_eq!(stats.tcp_inbound, 1, "{stats:?}");
    assert!(stats.dropped >= before + 100, "the SYNs after the relay's were dropped: {stats:?}");
    // Still alive: an ARP question is answered.
    while net.recv(&mut buf).is_some() {}
    net.send(&arp_request(Ipv4Addr::new(10, 0, 2, 99)));
    let is_arp = |f: &[u8]| EthernetFrame::new_checked(f).is_ok_and(|f| f.ethertype() == EthernetProtocol::Arp);
    let reply = (0..400).find_map(|_| {
        std::thread::sleep(Duration::from_millis(5));
        net.recv(&mut buf).filter(|&n| is_arp(&buf[..n]))
    });
    assert!(reply.is_some(), "no ARP reply after the SYNs: {:?}", net.stats());
}

/// The same panic through a SYN-ACK: a guest that predicts the relay's initial sequence number (smoltcp's generator
/// is not a cryptographic one) answers the relay's connection before its SYN went out. Until it did, the guest's
/// SYN-ACKs to that gateway port are dropped and counted, whatever they acknowledge; once it did, the SYN-ACK that
/// acknowledges it makes the connection and the host client's bytes reach the guest.
#[test]
fn syn_acks_to_a_forward_being_connected_are_dropped_until_its_syn_went_out() {
    let port = super::free_tcp_port();
    let config = UserNetConfig { forwards: vec![super::fwd(&format!("127.0.0.1:{port}:80"))], ..Default::default() };
    let gateway = SocketAddrV4::new(config.gateway, 49152);
    let net = UserNet::new(config).unwrap();
    let mut buf = vec![0; 65550];
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(super::localhost(port)).unwrap();
        std::io::Write::write_all(&mut stream, b"through").unwrap();
        stream
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut guess = 0i32;
    let mut syn_ack = |net: &UserNet| {
        guess = guess.wrapping_add(0x0101_0101);
        net.send(&tcp_syn_answering(80, gateway, 7, Some(guess)));
        std::thread::sleep(Duration::from_micros(200));
    };
    // The relay cannot send its SYN yet: it has not learnt the guest's MAC address.
    while net.stats().tcp_inbound == 0 {
        assert!(std::time::Instant::now() < deadline, "the relay never took the connection: {:?}", net.stats());
        syn_ack(&net);
    }
    for _ in 0..100 {
        syn_ack(&net);
    }
    let before = net.stats().dropped;
    assert!(before >= 100, "the SYN-ACKs while the relay could not send were dropped: {:?}", net.stats());
    net.send(&arp_request(gateway.ip().to_owned()));
    let segment = |buf: &[u8]| -> Option<(bool, bool, i32, Vec<u8>)> {
        let eth = EthernetFrame::new_checked(buf).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        (tcp.src_port() == 49152 && tcp.dst_port() == 80)
            .then(|| (tcp.syn(), tcp.ack(), tcp.seq_number().0, tcp.payload().to_vec()))
    };
    let isn = loop {
        assert!(std::time::Instant::now() < deadline, "no SYN from the relay: {:?}", net.stats());
        std::thread::sleep(Duration::from_millis(1));
        if let Some((true, false, seq, _)) = net.recv(&mut buf).and_then(|n| segment(&buf[..n])) {
            break seq;
        }
    };
    net.send(&tcp_syn_answering(80, gateway, 7, Some(isn.wrapping_add(1))));
    let mut got = Vec::new();
    while got != b"through" {
        assert!(std::time::Instant::now() < deadline, "the client's bytes never came: {:?} {got:?}", net.stats());
        std::thread::sleep(Duration::from_millis(1));
        if let Some((false, true, _, payload)) = net.recv(&mut buf).and_then(|n| segment(&buf[..n])) {
            got.extend(payload);
        }
    }
    let _stream = client.join().unwrap();
    assert_eq!(net.stats().dropped, before, "nothing dropped once the relay's SYN went out");
}
