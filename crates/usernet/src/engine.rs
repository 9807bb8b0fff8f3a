//! The relay thread: one loop that takes the guest's frames, runs the smoltcp interface, moves bytes between
//! smoltcp sockets and host sockets, and sleeps in epoll (`sources`) on every host socket plus the kick eventfd
//! until something happens or smoltcp's next timer is due.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::config::UserNetConfig;
use crate::device::FrameDevice;
use crate::forward::{PortForward, Proto};
use crate::frame::{classify, GuestFrame, HOST_MAC};
use crate::queue::{Counters, Shared};
use crate::sources::{Owner, Sources};
use crate::tcp::{TcpRelay, TcpToken};
use crate::udp::{UdpForward, UdpRelay};
use crate::{dns, UserNetError};

/// How many readiness events one wait takes at most (more wait for the next turn).
const EVENTS: usize = 1024;

/// The accept queue of a published TCP port: as deep as the host allows (Linux caps it at `net.core.somaxconn`), as
/// Go's and nginx's listeners ask. std listens with 128: beyond that many handshakes at once Linux answers with SYN
/// cookies, and a cookie's last ACK that meets a full queue is dropped without a word, so the client holds a
/// connection the relay never accepts; where the server speaks first, nothing ever brings it back.
const PUBLISHED_BACKLOG: i32 = 65_535;

/// Binds a published TCP port with [`PUBLISHED_BACKLOG`].
fn listen_published(f: &PortForward, addr: SocketAddr) -> Result<TcpListener, UserNetError> {
    let l = TcpListener::bind(addr).map_err(|e| bind_error(f, addr, e))?;
    // Linux takes a second listen(2) on a listening socket as its new backlog.
    // SAFETY: listen takes no pointers; the descriptor is open and owned by `l`.
    if unsafe { libc::listen(l.as_raw_fd(), PUBLISHED_BACKLOG) } != 0 {
        return Err(bind_error(f, addr, std::io::Error::last_os_error()));
    }
    l.set_nonblocking(true).map_err(|e| bind_error(f, addr, e))?;
    Ok(l)
}

pub(crate) struct Engine {
    net: UserNetConfig,
    shared: Arc<Shared>,
    poll: Poll,
    iface: Interface,
    device: FrameDevice,
    sockets: SocketSet<'static>,
    tcp: TcpRelay,
    udp: UdpRelay,
    epoch: Instant,
}

fn bind_error(spec: &PortForward, addr: SocketAddr, source: std::io::Error) -> UserNetError {
    let spec = spec.clone();
    match source.kind() {
        std::io::ErrorKind::AddrInUse => UserNetError::PortInUse { spec, addr, source },
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            UserNetError::PrivilegedPort { spec, addr, source }
        }
        _ => UserNetError::Bind { spec, addr, source },
    }
}

fn check_addresses(net: &UserNetConfig) -> Result<(), UserNetError> {
    let bad = |m: String| Err(UserNetError::BadAddresses(m));
    if !(8..=30).contains(&net.prefix_len) {
        return bad(format!("prefix length /{} must be between /8 and /30", net.prefix_len));
    }
    for (name, ip) in [("gateway", net.gateway), ("DNS", net.dns)] {
        if !net.in_subnet(ip) {
            return bad(format!(
                "the {name} address {ip} is outside the guest's subnet {}/{}",
                net.guest_ip, net.prefix_len
            ));
        }
        if ip == net.guest_ip {
            return bad(format!("the {name} address {ip} is the guest's own address"));
        }
    }
    if let Some(v6) = net.ipv6 {
        if !(8..=126).contains(&v6.prefix_len) {
            return bad(format!("IPv6 prefix length /{} must be between /8 and /126", v6.prefix_len));
        }
        for (name, ip) in [("IPv6 gateway", v6.gateway), ("IPv6 DNS", v6.dns)] {
            if !v6.in_subnet(ip) || ip == v6.guest_ip {
                return bad(format!(
                    "the {name} address {ip} is not another address in the guest's prefix {}/{}",
                    v6.guest_ip, v6.prefix_len
                ));
            }
        }
    }
    if net.guest_mac[0] & 1 != 0 {
        return bad("the guest MAC address is a multicast address".into());
    }
    Ok(())
}

impl Engine {
    pub fn new(net: UserNetConfig, shared: Arc<Shared>) -> Result<Engine, UserNetError> {
        check_addresses(&net)?;
        let mut tcp_listeners = Vec::new();
        let mut udp_forwards = Vec::new();
        for f in &net.forwards {
            let addr = SocketAddr::new(f.host_ip, f.host_port);
            match f.proto {
                Proto::Tcp => {
                    tcp_listeners.push((f.clone(), listen_published(f, addr)?));
                }
                Proto::Udp => {
                    let sock = UdpSocket::bind(addr).map_err(|e| bind_error(f, addr, e))?;
                    sock.set_nonblocking(true).map_err(|e| bind_error(f, addr, e))?;
                    udp_forwards.push(UdpForward { spec: f.clone(), sock });
                }
            }
        }
        let upstream = net.dns_upstream.unwrap_or_else(dns::host_resolver);

        let epoch = Instant::now();
        let mut device = FrameDevice::new(shared.clone(), net.mtu);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(HOST_MAC)));
        config.random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x6b696c6e, |d| d.as_nanos() as u64);
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(net.gateway.into(), net.prefix_len));
            if net.dns != net.gateway {
                let _ = addrs.push(IpCidr::new(net.dns.into(), net.prefix_len));
            }
            if let Some(v6) = net.ipv6 {
                let _ = addrs.push(IpCidr::new(v6.gateway.into(), v6.prefix_len));
                if v6.dns != v6.gateway {
                    let _ = addrs.push(IpCidr::new(v6.dns.into(), v6.prefix_len));
                }
            }
        });
        // With any_ip and a default route through one of our own addresses, smoltcp accepts packets for every
        // destination: the stack impersonates the whole outside world.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(net.gateway);
        if let Some(v6) = net.ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(v6.gateway);
        }

        let poll = Poll::new().map_err(UserNetError::Epoll)?;
        let registry = || poll.registry().try_clone().map_err(UserNetError::Epoll);
        let kick = shared.kick.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&kick), Owner::engine_token(0), Interest::READABLE)
            .map_err(UserNetError::Epoll)?;
        let tcp_sources = Sources::new(registry()?, Owner::Tcp);
        let udp_sources = Sources::new(registry()?, Owner::Udp);
        Ok(Engine {
            tcp: TcpRelay::new(net.clone(), upstream, shared.clone(), tcp_listeners, tcp_sources)
                .map_err(UserNetError::Epoll)?,
            udp: UdpRelay::new(net.clone(), upstream, shared.clone(), udp_forwards, udp_sources)
                .map_err(UserNetError::Epoll)?,
            net,
            shared,
            poll,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            epoch,
        })
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        while !self.shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            for (port, answer) in self.shared.take_publish() {
                let _ = answer.send(self.tcp.publish(port));
            }
            for frame in self.shared.take_from_guest() {
                self.on_guest_frame(frame, now);
            }
            let t = self.now();
            self.iface.poll(t, &mut self.device, &mut self.sockets);
            self.tcp.pump_all(&mut self.sockets);
            self.iface.poll(t, &mut self.device, &mut self.sockets);
            self.tcp.requests_sent(self.device.take_requests_sent());
            let reap_due = self.tcp.reap(&mut self.sockets, now);
            self.shared.wake_if_pushed();
            if self.udp.next_expiry().is_some_and(|at| at <= now) {
                self.udp.expire(now);
            }

            // Sleep until an event, or the first timer: none at all when idle, so that an idle VM costs nothing.
            // While the guest's queue is full smoltcp keeps asking to be polled now; the guest draining the queue
            // kicks us instead.
            let smoltcp_due = match self.iface.poll_delay(self.now(), &self.sockets) {
                Some(d) if self.shared.to_guest_has_room() => Some(now + Duration::from_micros(d.total_micros())),
                _ => None,
            };
            let due = [smoltcp_due, reap_due, self.udp.next_expiry()].into_iter().flatten().min();
            // Round up, so that a 0.4 ms smoltcp deadline does not become a busy loop of 0 ms waits.
            let timeout = due.map(|at| {
                Duration::from_millis(at.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000) as u64)
            });
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            let now = Instant::now();
            for event in events.iter() {
                let token = event.token();
                match Owner::of(token) {
                    Some(Owner::Engine) => self.shared.kick.clear(),
                    Some(Owner::Tcp) => match self.tcp.lookup(token) {
                        Some(TcpToken::Listener(i)) => self.tcp.accept(i, &mut self.iface, &mut self.sockets),
                        Some(TcpToken::Connecting(key)) => {
                            self.tcp.on_connect_ready(key, &mut self.sockets, &mut self.device);
                            // Let the replayed SYN reach its listener now: a second listener on the same
                            // destination made before then could take it and cross the two connections.
                            let t = self.now();
                            while !matches!(
                                self.iface.poll_ingress_single(t, &mut self.device, &mut self.sockets),
                                PollIngressSingleResult::None
                            ) {}
                        }
                        Some(TcpToken::Conn(h)) => {
                            let broken = event.is_error() || event.is_read_closed();
                            let readable = event.is_readable() || broken;
                            let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                            self.tcp.on_conn_events(h, readable, writable);
                        }
                        None => {}
                    },
                    Some(Owner::Udp) => {
                        if let Some(t) = self.udp.lookup(token) {
                            self.udp.on_readable(t, now);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    fn on_guest_frame(&mut self, frame: Vec<u8>, now: Instant) {
        enum Then {
            Stack,
            Reply(Vec<u8>),
            Syn(u16, SocketAddr),
            Done,
            Drop,
        }
        let then = match classify(&frame, &self.net) {
            GuestFrame::Stack => Then::Stack,
            GuestFrame::ArpReply(r) => Then::Reply(r),
            GuestFrame::Udp { src_port, dst, payload } => {
                self.udp.relay_from_guest(src_port, dst, payload, now);
                Then::Done
            }
            GuestFrame::TcpSyn { src_port, dst } => Then::Syn(src_port, dst),
            GuestFrame::Drop => Then::Drop,
        };
        match then {
            Then::Stack if self.tcp.awaits_its_request(&frame) => Counters::bump(&self.shared.stats.dropped),
            Then::Stack => self.device.inject(frame),
            Then::Reply(r) => {
                if !self.shared.push_to_guest(r) {
                    Counters::bump(&self.shared.stats.dropped);
                }
            }
            Then::Syn(port, dst) => self.tcp.on_syn(port, dst, frame, &mut self.sockets, &mut self.device),
            Then::Done => {}
            Then::Drop => Counters::bump(&self.shared.stats.dropped),
        }
    }
}
