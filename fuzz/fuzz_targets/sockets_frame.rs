//! The guest TCP/IP stack's socket table as packets from the network reach it: each packet (any bytes, from the
//! outside world) is read for its target (`frame_target` on Ethernet frames too), routed to a socket among
//! listeners, a bound UDP socket and a connecting client, and handed to smoltcp with that socket alone, as the
//! library OS does; then every socket gets its turn to send.
#![no_main]

use kiln_sockets::{frame_target, target, Route, Sockets};
use libfuzzer_sys::fuzz_target;
use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use std::collections::VecDeque;

/// Packets in from the fuzzer; what smoltcp sends is counted and dropped.
struct Wire {
    rx: VecDeque<Vec<u8>>,
    sent: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut usize);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        *self.0 += 1;
        f(&mut packet)
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.sent)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.sent))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 2048]), tcp::SocketBuffer::new(vec![0; 2048]))
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::from_millis(1000);
    let mut wire = Wire { rx: VecDeque::new(), sent: 0 };
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut wire, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24));
        let _ = a.push(IpCidr::new(IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, 0x15), 64));
    });
    let mut sockets = Sockets::new(0x5eed);
    for _ in 0..2 {
        let mut listener = tcp_socket();
        listener.listen(IpListenEndpoint { addr: None, port: 80 }).unwrap();
        sockets.add(listener);
    }
    let mut client = tcp_socket();
    let local = IpListenEndpoint { addr: Some(IpAddress::v4(10, 0, 2, 15)), port: 40000 };
    client.connect(iface.context(), (IpAddress::v4(10, 0, 2, 2), 80), local).unwrap();
    sockets.add(client);
    let mut dns = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
    );
    dns.bind(53).unwrap();
    sockets.add(dns);
    // Packets are separated by a length byte pair; an odd first byte marks an Ethernet frame.
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi & 0x7f) << 8 | usize::from(*lo)).min(tail.len());
        let (packet, after) = tail.split_at(len);
        rest = after;
        let is_frame = hi & 0x80 != 0;
        let found = if is_frame { frame_target(packet) } else { target(packet) };
        if is_frame {
            continue;
        }
        sockets.file_pending();
        let handle = match sockets.route(&found, |a| a == IpAddress::v4(10, 0, 2, 255)) {
            Route::Drop => continue,
            route => route.handle(),
        };
        wire.rx.push_back(packet.to_vec());
        iface.poll_ingress_single(now, &mut wire, sockets.set_mut(handle));
        if let Some(h) = handle {
            sockets.polled(h, &mut iface, now);
            sockets.mark(h);
        }
        for h in sockets.take_pending(now) {
            iface.poll_egress(now, &mut wire, sockets.set_mut(Some(h)));
            sockets.polled(h, &mut iface, now);
        }
        let _ = sockets.take_touched();
    }
});
