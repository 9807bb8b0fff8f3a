//! How TCP connections end: resets relayed in both directions, and every relayed connection reaped.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use smoltcp::socket::tcp::{self, State};

use super::guest::Guest;
use super::scale::assert_reaped;
use super::tcp::{guest_socket, LIMIT};
use super::{free_tcp_port, fwd, localhost};
use crate::poller::close_with_reset;
use crate::{UserNet, UserNetConfig};

fn forwarded(guest_port: u16) -> (Arc<UserNet>, u16) {
    let port = free_tcp_port();
    let spec = format!("127.0.0.1:{port}:{guest_port}");
    let net = UserNet::new(UserNetConfig { forwards: vec![fwd(&spec)], ..Default::default() }).unwrap();
    (Arc::new(net), port)
}

#[test]
fn host_reset_aborts_the_guest_connection() {
    let (net, port) = forwarded(90);
    let got_data = Arc::new(AtomicBool::new(false));
    let flag = got_data.clone();
    let (mut h, mut saw_fin) = (None, false);
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.listen(90).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get_mut::<tcp::Socket>(handle);
        if s.can_recv() {
            let _ = s.recv(|b| (b.len(), ()));
            flag.store(true, Ordering::SeqCst);
        }
        saw_fin |= s.state() == State::CloseWait;
        assert!(!saw_fin, "the host's reset arrived as an orderly FIN");
        flag.load(Ordering::SeqCst) && s.state() == State::Closed
    });
    let mut s = TcpStream::connect(localhost(port)).unwrap();
    s.write_all(b"x").unwrap();
    while !got_data.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    close_with_reset(s);
    guest.join().unwrap();
    assert_reaped(&net);
}

#[test]
fn guest_abort_resets_the_host_connection() {
    let (net, port) = forwarded(91);
    let mut h = None;
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.listen(91).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get_mut::<tcp::Socket>(handle);
        if s.can_recv() {
            let _ = s.recv(|b| (b.len(), ()));
            s.abort();
            return true;
        }
        false
    });
    let mut s = TcpStream::connect(localhost(port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"x").unwrap();
    let mut buf = [0; 8];
    let r = s.read(&mut buf);
    assert!(matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset), "{r:?}");
    guest.join().unwrap();
    assert_reaped(&net);
}

#[test]
fn half_close_from_the_host_still_delivers_the_guest_reply() {
    let (net, port) = forwarded(92);
    let (mut h, mut replied) = (None, false);
    let guest = Guest::spawn(net.clone(), LIMIT, move |g| {
        let handle = *h.get_or_insert_with(|| {
            let mut s = guest_socket();
            s.listen(92).unwrap();
            g.sockets.add(s)
        });
        let s = g.sockets.get_mut::<tcp::Socket>(handle);
        // Answer only after the host's FIN: the relay must keep the other direction open.
        if !replied && s.state() == State::CloseWait {
            let mut req = [0; 16];
            let n = s.recv_slice(&mut req).unwrap();
            assert_eq!(&req[..n], b"request");
            s.send_slice(b"reply after FIN").unwrap();
            s.close();
            replied = true;
        }
        replied && matches!(s.state(), State::Closed | State::TimeWait)
    });
    let mut s = TcpStream::connect(localhost(port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"request").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "reply after FIN");
    guest.join().unwrap();
    assert_reaped(&net);
}

#[test]
fn drop_stops_the_relay_and_frees_forward_ports() {
    let (net, port) = forwarded(93);
    let _idle = TcpStream::connect(localhost(port)).unwrap();
    drop(Arc::try_unwrap(net).ok().expect("no other owner"));
    std::net::TcpListener::bind(localhost(port)).expect("the forward's port is still bound after drop");
}

#[test]
fn user_net_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<UserNet>();
}

/// The backlog of the listening socket on 127.0.0.1:`port`, as `ss` reports it (its Send-Q), if `ss` is there.
fn listen_backlog(port: u16) -> Option<u32> {
    let out = std::process::Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().find_map(|line| line.split_whitespace().nth(2)?.parse().ok())
}

#[test]
fn a_published_port_takes_bursts_beyond_std_backlog() {
    let (net, port) = forwarded(91);
    let Some(backlog) = listen_backlog(port) else {
        eprintln!("skipped: no `ss` to read the listener's backlog with");
        return;
    };
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    assert_eq!(backlog, somaxconn.min(65_535), "the published port's accept queue");
    drop(net);
}
