//! Many TCP connections at once, both directions, and that the relay reaps them all when they end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::socket::tcp;

use super::guest::Guest;
use super::tcp::{echo_through, guest_socket, Echo, LIMIT};
use super::{free_tcp_port, fwd, listener_with_backlog, localhost, pattern, raise_fd_limit};
use crate::{UserNet, UserNetConfig};

/// Waits until the relay holds no TCP connection any more.
pub(crate) fn assert_reaped(net: &UserNet) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.shared.stats.tcp_live.load(Ordering::Relaxed) != 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections never reaped",
            net.shared.stats.tcp_live.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn many_concurrent_inbound_connections() {
    const N: usize = 250;
    let port = free_tcp_port();
    let config = UserNetConfig { forwards: vec![fwd(&format!("127.0.0.1:{port}:80"))], ..Default::default() };
    let net = Arc::new(UserNet::new(config).unwrap());
    let mut servers: Vec<(smoltcp::iface::SocketHandle, Echo)> = Vec::new();
    let mut done = 0;
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        if servers.is_empty() {
            for _ in 0..N {
                let mut s = guest_socket();
                s.listen(80).unwrap();
                servers.push((g.sockets.add(s), Echo::default()));
            }
        }
        servers.retain_mut(|(h, e)| {
            let finished = e.step(g.sockets.get_mut::<tcp::Socket>(*h));
            if finished {
                g.sockets.remove(*h);
                done += 1;
            }
            !finished
        });
        done == N
    });
    // Open all of them before sending anything, so they really are concurrent.
    let streams: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(localhost(port)).unwrap()).collect();
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::spawn(move || {
                let data = pattern(16 * 1024 + i, i as u64 + 10);
                assert!(echo_through(s, data.clone()) == data, "connection {i} garbled");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    guest.join().unwrap();
    assert_eq!(net.stats().tcp_inbound, N as u64);
    assert_reaped(&net);
}

#[test]
fn many_concurrent_outbound_connections() {
    const N: u16 = 200;
    let listener = listener_with_backlog(N);
    let port = listener.local_addr().unwrap().port();
    let host = std::thread::spawn(move || {
        let mut handlers = Vec::new();
        for _ in 0..N {
            let (mut s, _) = listener.accept().unwrap();
            handlers.push(std::thread::spawn(move || {
                let mut buf = [0; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => s.write_all(&buf[..n]).unwrap(),
                    }
                }
            }));
        }
        for h in handlers {
            h.join().unwrap();
        }
    });
    let mut conns = Vec::new();
    let mut finished = 0;
    let guest = Guest::spawn(net_for_outbound(), LIMIT, move |g| {
        if conns.is_empty() {
            for i in 0..N {
                let mut s = guest_socket();
                s.connect(g.iface.context(), (UserNetConfig::default().gateway, port), 20000 + i).unwrap();
                conns.push((g.sockets.add(s), false, Vec::new(), pattern(3000, i.into())));
            }
        }
        for (h, sent, got, data) in conns.iter_mut() {
            let s = g.sockets.get_mut::<tcp::Socket>(*h);
            if !*sent && s.can_send() {
                assert_eq!(s.send_slice(data).unwrap(), data.len());
                *sent = true;
            }
            if s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
                if got.len() == data.len() {
                    assert!(got == data);
                    s.close();
                    finished += 1;
                }
            }
        }
        finished == N as usize
    });
    let g = guest.join().unwrap();
    host.join().unwrap();
    assert_reaped(&g.net);
}

fn net_for_outbound() -> Arc<UserNet> {
    Arc::new(UserNet::new(UserNetConfig::default()).unwrap())
}

#[test]
fn a_thousand_concurrent_outbound_connections() {
    const N: u16 = 1000;
    raise_fd_limit(4 * N as u64 + 1000);
    let listener = listener_with_backlog(N);
    let port = listener.local_addr().unwrap().port();
    let host = std::thread::spawn(move || {
        // Every connection is accepted before any is answered, so all N are open in the relay at once.
        let mut streams: Vec<TcpStream> = (0..N).map(|_| listener.accept().unwrap().0).collect();
        for s in &mut streams {
            s.write_all(b"hello").unwrap();
        }
        for mut s in streams {
            s.set_read_timeout(Some(LIMIT)).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
    });
    let net = Arc::new(UserNet::new(UserNetConfig::default()).unwrap());
    let mut conns = Vec::new();
    let mut greeted = 0;
    let guest = Guest::spawn(net.clone(), Duration::from_secs(30), move |g| {
        if conns.is_empty() {
            for i in 0..N {
                let b = || tcp::SocketBuffer::new(vec![0; 2048]);
                let mut s = tcp::Socket::new(b(), b());
                s.connect(g.iface.context(), (UserNetConfig::default().gateway, port), 30000 + i).unwrap();
                conns.push((g.sockets.add(s), false));
            }
        }
        for (h, done) in conns.iter_mut().filter(|(_, done)| !*done) {
            let s = g.sockets.get_mut::<tcp::Socket>(*h);
            if s.recv_queue() >= 5 {
                let mut buf = [0; 5];
                assert_eq!(s.recv_slice(&mut buf), Ok(5));
                assert_eq!(&buf, b"hello");
                s.close();
                *done = true;
                greeted += 1;
            }
        }
        greeted == N as usize
    });
    guest.join().unwrap();
    host.join().unwrap();
    assert_eq!(net.stats().tcp_outbound, N as u64);
    assert_reaped(&net);
}
