//! The fake guest: a smoltcp interface at 10.0.2.15 and fd00::15 whose device is a `UserNet`, run on its own thread with
//! an application closure that is called after every poll until it reports done.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::{UserNet, UserNetConfig};

pub(crate) struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

pub(crate) struct Guest {
    pub net: Arc<UserNet>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dev: Queues,
    epoch: Instant,
}

impl Guest {
    pub fn new(net: Arc<UserNet>) -> Guest {
        let cfg = UserNetConfig::default();
        let mut dev = Queues { rx: VecDeque::new(), tx: VecDeque::new() };
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.guest_mac))),
            &mut dev,
            smoltcp::time::Instant::from_micros(0),
        );
        let v6 = cfg.ipv6.expect("the default network has IPv6");
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(cfg.guest_ip.into(), 24)).unwrap();
            a.push(IpCidr::new(v6.guest_ip.into(), v6.prefix_len)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(10, 0, 2, 2)).unwrap();
        iface.routes_mut().add_default_ipv6_route(v6.gateway).unwrap();
        Guest { net, iface, sockets: SocketSet::new(Vec::new()), dev, epoch: Instant::now() }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Waits briefly for frames from the relay, then moves frames both ways and polls the interface.
    pub fn step(&mut self) {
        let delay = self.iface.poll_delay(self.now(), &self.sockets).map_or(5_000, |d| d.total_micros()).min(5_000);
        let mut p = [libc::pollfd { fd: self.net.ready_fd(), events: libc::POLLIN, revents: 0 }];
        crate::poller::poll(&mut p, Some(Duration::from_micros(delay))).unwrap();
        let mut buf = vec![0; 65550];
        while let Some(n) = self.net.recv(&mut buf) {
            self.dev.rx.push_back(buf[..n].to_vec());
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        while let Some(f) = self.dev.tx.pop_front() {
            self.net.send(&f);
        }
    }

    /// How many guest TCP sockets are in each state, for timeout messages.
    fn census(&self) -> String {
        let mut states = std::collections::BTreeMap::new();
        for (_, s) in self.sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(t) = s {
                *states.entry(t.state().to_string()).or_insert(0) += 1;
            }
        }
        format!("guest TCP sockets: {states:?}; relay stats: {:?}", self.net.stats())
    }

    fn all_closed(&self) -> bool {
        self.sockets.iter().all(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(t) => {
                matches!(t.state(), State::Closed | State::TimeWait | State::Listen)
            }
            _ => true,
        })
    }

    /// Runs `app` after every step on a thread of its own until it returns true; panics after `limit`.
    pub fn spawn(
        net: Arc<UserNet>,
        limit: Duration,
        mut app: impl FnMut(&mut Guest) -> bool + Send + 'static,
    ) -> JoinHandle<Guest> {
        std::thread::spawn(move || {
            let mut g = Guest::new(net);
            let deadline = Instant::now() + limit;
            loop {
                g.step();
                if app(&mut g) {
                    // Keep answering until every connection has finished closing, as a real guest would.
                    let linger = Instant::now() + Duration::from_secs(5);
                    while !g.all_closed() && Instant::now() < linger {
                        g.step();
                    }
                    for _ in 0..20 {
                        g.step();
                    }
                    return g;
                }
                assert!(Instant::now() < deadline, "the fake guest timed out; {}", g.census());
            }
        })
    }
}
