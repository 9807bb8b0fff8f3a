//! TCP through the relay: inbound `-p` forwards, outbound connections via the gateway, refusals, many at once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use smoltcp::socket::tcp::{self, State};

use super::guest::Guest;
use super::{free_tcp_port, fwd, localhost, pattern};
use crate::{UserNet, UserNetConfig, UserNetError};

pub(crate) const LIMIT: Duration = Duration::from_secs(15);

pub(crate) fn guest_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]))
}

/// Per-connection echo state for a guest server: bytes received but not yet sent back.
#[derive(Default)]
pub(crate) struct Echo {
    pending: Vec<u8>,
    closed: bool,
}

impl Echo {
    /// Echoes what it can; closes after the peer's FIN once everything went back. True when done.
    pub(crate) fn step(&mut self, s: &mut tcp::Socket) -> bool {
        if !self.pending.is_empty() && s.can_send() {
            let n = s.send_slice(&self.pending).unwrap_or(0);
            self.pending.drain(..n);
        }
        if self.pending.is_empty() && s.can_recv() {
            let _ = s.recv(|b| {
                self.pending.extend_from_slice(b);
                (b.len(), ())
            });
        }
        if !self.closed && self.pending.is_empty() && s.state() == State::CloseWait && s.recv_queue() == 0 {
            s.close();
            self.closed = true;
        }
        self.closed && matches!(s.state(), State::Closed | State::TimeWait)
    }
}

/// Writes `data` on one thread while reading everything back on this one; returns what came back.
pub(crate) fn echo_through(mut stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    back
}

#[test]
fn inbound_forward_echoes_multi_mib_byte_exact() {
    let port = free_tcp_port();
    let config = UserNetConfig { forwards: vec![fwd(&format!("127.0.0.1:{port}:80"))], ..Default::default() };
    let net = Arc::new(UserNet::new(config).unwrap());
    let mut listening = None;
    let mut echo = Echo::default();
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let h = *listening.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.listen(80).unwrap();
            g.sockets.add(s)
        });
        echo.step(g.sockets.get_mut::<tcp::Socket>(h))
    });
    let data = pattern(4 << 20, 1);
    let back = echo_through(TcpStream::connect(localhost(port)).unwrap(), data.clone());
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
    guest.join().unwrap();
    let stats = net.stats();
    assert_eq!(stats.tcp_inbound, 1);
    assert!(stats.frames_in > 1000 && stats.frames_out > 1000, "{stats:?}");
}

#[test]
fn outbound_via_gateway_reaches_host_listener_both_ways() {
    outbound_echo(UserNetConfig::default().gateway.into(), "127.0.0.1:0");
}

#[test]
fn outbound_via_ipv6_gateway_reaches_host_ipv6_loopback() {
    outbound_echo(UserNetConfig::default().ipv6.unwrap().gateway.into(), "[::1]:0");
}

/// A guest connection to `gateway` reaches a host listener on `host` (that family's loopback), 3 MiB each way.
fn outbound_echo(gateway: std::net::IpAddr, host: &str) {
    let listener = TcpListener::bind(host).unwrap();
    let port = listener.local_addr().unwrap().port();
    let net = Arc::new(UserNet::new(UserNetConfig::default()).unwrap());
    let up = pattern(3 << 20, 2);
    let down = pattern(3 << 20, 3);
    let host = {
        let (up, down) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            assert!(peer.ip().is_loopback());
            s.set_read_timeout(Some(LIMIT)).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(got == up, "guest->host bytes differ ({} of {})", got.len(), up.len());
            s.write_all(&down).unwrap();
        })
    };
    let (mut h, mut sent, mut got) = (None, 0, Vec::new());
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.connect(g.iface.context(), (gateway, port), 40000).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get_mut::<tcp::Socket>(handle);
        if sent < up.len() && s.can_send() {
            sent += s.send_slice(&up[sent..]).unwrap();
            if sent == up.len() {
                s.close();
            }
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if !s.may_recv() && sent == up.len() && s.state() != State::SynSent {
            assert!(got == down, "host->guest bytes differ ({} of {})", got.len(), down.len());
            return true;
        }
        false
    });
    host.join().unwrap();
    guest.join().unwrap();
    assert_eq!(net.stats().tcp_outbound, 1);
}

/// A relayed connection that carries nothing for longer than the relay's guest timeout stays open: only a guest that
/// stops answering loses its connections. Both directions: an inbound one (the relay connected to the guest) and an
/// outbound one (the guest connected through the relay), idle at once.
#[test]
fn idle_connections_outlive_the_guest_timeout() {
    let idle = Duration::from_micros(crate::tcp::GUEST_TIMEOUT.total_micros()) + Duration::from_secs(2);
    let port = free_tcp_port();
    let config = UserNetConfig { forwards: vec![fwd(&format!("127.0.0.1:{port}:80"))], ..Default::default() };
    let net = Arc::new(UserNet::new(config).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    // The host's server for the outbound connection: echoes until the guest closes.
    let host = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(idle + LIMIT)).unwrap();
        let mut buf = [0; 64];
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break,
                n => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    // The guest: echoes on the inbound connection, and on the outbound one sends a line now and another after `idle`,
    // expecting each back.
    let (mut server, mut echo) = (None, Echo::default());
    let (mut client, mut got, mut began) = (None, Vec::new(), None);
    let guest = Guest::spawn(net.clone(), idle + LIMIT, move |g| {
        let h = *server.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.listen(80).unwrap();
            g.sockets.add(s)
        });
        let inbound_done = echo.step(g.sockets.get_mut::<tcp::Socket>(h));
        let c = *client.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.connect(g.iface.context(), (UserNetConfig::default().gateway, host_port), 40002).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get_mut::<tcp::Socket>(c);
        if began.is_none() && s.can_send() {
            s.send_slice(b"early\n").unwrap();
            began = Some(std::time::Instant::now());
        }
        if got.len() == 6 && began.is_some_and(|t| t.elapsed() >= idle) && s.can_send() {
            s.send_slice(b"later\n").unwrap();
            s.close();
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        assert!(
            s.state() != State::Closed || got.len() == 12,
            "the outbound connection ended after {:?}",
            String::from_utf8_lossy(&got)
        );
        inbound_done && got == b"early\nlater\n"
    });
    let mut s = TcpStream::connect(localhost(port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut line = [0; 6];
    s.write_all(b"first\n").unwrap();
    s.read_exact(&mut line).unwrap();
    std::thread::sleep(idle);
    s.write_all(b"again\n").unwrap();
    s.read_exact(&mut line).expect("the idle inbound connection still echoes");
    assert_eq!(&line, b"again\n");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(s.read(&mut line).unwrap(), 0);
    guest.join().unwrap();
    host.join().unwrap();
}

#[test]
fn refused_host_connect_resets_the_guest() {
    let port = free_tcp_port(); // nothing listens there any more
    let net = Arc::new(UserNet::new(UserNetConfig::default()).unwrap());
    let mut h = None;
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.connect(g.iface.context(), (UserNetConfig::default().gateway, port), 40001).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get::<tcp::Socket>(handle);
        assert!(matches!(s.state(), State::SynSent | State::Closed), "{}", s.state());
        s.state() == State::Closed
    });
    guest.join().unwrap();
    assert_eq!(net.stats().tcp_outbound, 0);
}

#[test]
fn guest_refusing_an_inbound_connection_closes_the_host_one() {
    let port = free_tcp_port();
    let config = UserNetConfig { forwards: vec![fwd(&format!("127.0.0.1:{port}:81"))], ..Default::default() };
    let net = Arc::new(UserNet::new(config).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // The guest listens on nothing, so its stack answers the relay's SYN with a reset.
    let guest = Guest::spawn(net.clone(), LIMIT, move |_| stop2.load(std::sync::atomic::Ordering::SeqCst));
    let mut s = TcpStream::connect(localhost(port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0; 16];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a refused connection"),
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    guest.join().unwrap();
}

#[test]
fn port_in_use_names_the_spec_and_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = format!("127.0.0.1:{port}:80");
    let config = UserNetConfig { forwards: vec![fwd(&spec)], ..Default::default() };
    let err = UserNet::new(config).err().expect("binding a used port must fail");
    assert!(matches!(err, UserNetError::PortInUse { .. }), "{err:?}");
    let text = err.to_string();
    assert_eq!(
        text,
        format!("-p {spec}/tcp: 127.0.0.1:{port} is already in use by another program; choose another host port")
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn privileged_port_error_says_how_to_fix_it() {
    // Only meaningful without root/CAP_NET_BIND_SERVICE, and where unprivileged ports start at 1024.
    let spec = "127.0.0.1:1:80";
    match UserNet::new(UserNetConfig { forwards: vec![fwd(spec)], ..Default::default() }) {
        Ok(_) => {} // privileged test runner
        Err(UserNetError::PrivilegedPort { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
    }
    let e = UserNetError::PrivilegedPort {
        spec: fwd("80:80"),
        addr: "0.0.0.0:80".parse().unwrap(),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    assert!(e.to_string().starts_with("-p 80:80/tcp: binding 0.0.0.0:80 needs root or CAP_NET_BIND_SERVICE"));
}

#[test]
fn a_published_port_reaches_the_guest_and_a_second_publisher_is_refused() {
    let port = free_tcp_port();
    let net = Arc::new(UserNet::new(UserNetConfig::default()).unwrap());
    let publisher = net.publisher();
    publisher.publish(port).unwrap();
    publisher.publish(port).expect("publishing a port again is no error");
    let other = UserNet::new(UserNetConfig::default()).unwrap();
    let e = other.publisher().publish(port).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    let mut listening = None;
    let mut echo = Echo::default();
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let h = *listening.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.listen(port).unwrap();
            g.sockets.add(s)
        });
        echo.step(g.sockets.get_mut::<tcp::Socket>(h))
    });
    let data = pattern(64 << 10, 4);
    assert!(echo_through(TcpStream::connect(localhost(port)).unwrap(), data.clone()) == data);
    guest.join().unwrap();
    assert_eq!(net.stats().tcp_inbound, 1);
}
