//! UDP through the relay: inbound `-p .../udp` echo, outbound echo via the gateway, the DNS forwarder, and
//! ICMP echo to the gateway.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use smoltcp::socket::{icmp, udp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpEndpoint};

use super::guest::Guest;
use super::{free_udp_port, fwd, localhost};
use crate::{UserNet, UserNetConfig};

const LIMIT: Duration = Duration::from_secs(10);

fn guest_udp(port: u16) -> udp::Socket<'static> {
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]);
    let mut s = udp::Socket::new(buf(), buf());
    s.bind(port).unwrap();
    s
}

#[test]
fn inbound_udp_forward_echoes_per_peer() {
    let port = free_udp_port();
    let config = UserNetConfig { forwards: vec![fwd(&format!("127.0.0.1:{port}:7/udp"))], ..Default::default() };
    let net = Arc::new(UserNet::new(config).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let mut h = None;
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| g.sockets.add(guest_udp(7)));
        let s = g.sockets.get_mut::<udp::Socket>(handle);
        while let Ok((data, meta)) = s.recv() {
            let reply = [b"echo:".as_slice(), data].concat();
            // The relay stands every host peer in as the gateway with a port of its own.
            assert_eq!(meta.endpoint.addr, IpAddress::from(UserNetConfig::default().gateway));
            s.send_slice(&reply, meta.endpoint).unwrap();
        }
        stop2.load(std::sync::atomic::Ordering::SeqCst)
    });
    let peers: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for (i, p) in peers.iter().enumerate() {
        p.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let msg = format!("hello {i}");
        let mut buf = [0; 64];
        // The first datagram may race the guest's socket setup; retry a few times.
        let got = (0..20).find_map(|_| {
            p.send_to(msg.as_bytes(), localhost(port)).unwrap();
            p.recv_from(&mut buf).ok()
        });
        let (n, from) = got.expect("no UDP echo from the guest");
        assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
        assert_eq!(from, localhost(port));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    guest.join().unwrap();
    assert!(net.stats().udp_flows >= 3);
}

/// Sends `msg` from guest port `from` to `to` until a reply arrives; returns the reply and where it came from.
fn guest_udp_exchange(net: Arc<UserNet>, from: u16, to: IpEndpoint, msg: Vec<u8>) -> (Vec<u8>, IpEndpoint) {
    let (mut h, mut tries) = (None, 0u32);
    let result = Arc::new(std::sync::Mutex::new(None));
    let out = result.clone();
    let guest = Guest::spawn(net, LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| g.sockets.add(guest_udp(from)));
        let s = g.sockets.get_mut::<udp::Socket>(handle);
        if let Ok((data, meta)) = s.recv() {
            *out.lock().unwrap() = Some((data.to_vec(), meta.endpoint));
            return true;
        }
        tries += 1;
        if tries % 50 == 1 {
            s.send_slice(&msg, to).unwrap();
        }
        false
    });
    guest.join().unwrap();
    let r = result.lock().unwrap().take().unwrap();
    r
}

#[test]
fn outbound_udp_via_gateway_gets_replies_from_the_gateway() {
    outbound_udp(UserNetConfig::default().gateway.into(), "127.0.0.1:0");
}

#[test]
fn outbound_udp_via_ipv6_gateway_reaches_host_ipv6_loopback() {
    outbound_udp(UserNetConfig::default().ipv6.unwrap().gateway.into(), "[::1]:0");
}

/// A datagram from the guest to `gw` reaches a host server on `host` (that family's loopback), and its answer comes
/// back from `gw`.
fn outbound_udp(gw: std::net::IpAddr, host: &str) {
    let server = UdpSocket::bind(host).unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0; 2048];
        while let Ok((n, peer)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&[b"pong:".as_slice(), &buf[..n]].concat(), peer);
        }
    });
    let net = Arc::new(UserNet::new(UserNetConfig::default()).unwrap());
    let (reply, from) = guest_udp_exchange(net.clone(), 5555, (gw, port).into(), b"ping".to_vec());
    assert_eq!(reply, b"pong:ping");
    assert_eq!(from, (gw, port).into());
    assert_eq!(net.stats().udp_flows, 1);
}

#[test]
fn dns_queries_go_to_the_configured_upstream() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream: SocketAddr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0; 512];
        while let Ok((n, peer)) = server.recv_from(&mut buf) {
            // Echo the query's ID with the QR bit set, as a resolver's answer would.
            let mut answer = buf[..n].to_vec();
            if answer.len() > 2 {
                answer[2] |= 0x80;
            }
            let _ = server.send_to(&answer, peer);
        }
    });
    let config = UserNetConfig { dns_upstream: Some(upstream), ..Default::default() };
    let net = Arc::new(UserNet::new(config).unwrap());
    let dns = UserNetConfig::default().dns;
    let query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let (reply, from) = guest_udp_exchange(net, 6000, (dns, 53).into(), query);
    assert_eq!(&reply[..3], &[0x12, 0x34, 0x81]);
    assert_eq!(from, (dns, 53).into());
}

#[test]
fn gateway_answers_ping() {
    let net = Arc::new(UserNet::new(UserNetConfig::default()).unwrap());
    let (mut h, mut tries) = (None, 0u32);
    let guest = Guest::spawn(net, LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| {
            let b = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
            let mut s = icmp::Socket::new(b(), b());
            s.bind(icmp::Endpoint::Ident(0x4b4e)).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get_mut::<icmp::Socket>(handle);
        let gw = IpAddress::from(UserNetConfig::default().gateway);
        if let Ok((data, from)) = s.recv() {
            let p = Icmpv4Packet::new_checked(data).unwrap();
            let r = Icmpv4Repr::parse(&p, &Default::default()).unwrap();
            assert!(matches!(r, Icmpv4Repr::EchoReply { ident: 0x4b4e, seq_no: 1, data: b"kiln" }));
            assert_eq!(from, gw);
            return true;
        }
        tries += 1;
        if tries % 50 == 1 && s.can_send() {
            let repr = Icmpv4Repr::EchoRequest { ident: 0x4b4e, seq_no: 1, data: b"kiln" };
            let buf = s.send(repr.buffer_len(), gw).unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &Default::default());
        }
        false
    });
    guest.join().unwrap();
}
