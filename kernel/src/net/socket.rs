//! A socket descriptor: a TCP connection, a TCP listener with its backlog, or a UDP socket, over the smoltcp
//! sockets of `net::Stack`.
//!
//! smoltcp's TCP socket is one connection; a listener with a backlog of N is N smoltcp sockets listening on the port.
//! `accept` hands out one that has a connection and puts a fresh listening socket in its place. Blocking operations
//! wait on the descriptor's waitable, which a poll of the stack that changes one of its smoltcp sockets tells.

use super::addr::{self, AF_INET6};
use super::kept;
use super::options::{Direction, Options, DEFAULT_BUFFER};
use super::{inspect, with, Families, PortClaim, Protocol, Stack};
use crate::errno::Errno;
use crate::file::wait::Waitable;
use crate::file::{POLLERR, POLLHUP, POLLIN, POLLOUT};
use crate::sync::SpinLock;
use crate::time;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use kiln_sockets::Handle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

pub const POLLRDHUP: u16 = 0x2000;
/// Bytes each direction of a TCP connection buffers by default.
pub const TCP_BUFFER: usize = DEFAULT_BUFFER;
/// Datagrams and bytes a UDP socket buffers each way.
const UDP_PACKETS: usize = 64;
pub const UDP_BUFFER: usize = 64 << 10;
/// The largest backlog a listener takes; it then keeps one connection more waiting for `accept`, as Linux does.
pub const MAX_BACKLOG: usize = 128;

enum Role {
    /// TCP before `connect` or `listen`.
    Fresh,
    Connecting(Handle),
    Connected(Handle),
    Listening(Vec<Handle>),
    Datagram(Handle),
}

struct State {
    role: Role,
    /// The bound address (None: any) and port (0: none yet).
    local: (Option<IpAddress>, u16),
    /// Whether this socket claimed `local`'s port (an accepted connection shares its listener's).
    owns_port: bool,
    /// UDP: where `send` without an address goes.
    peer: Option<IpEndpoint>,
    shut_read: bool,
    /// The program closed its sending side (shutdown): a connection that ends up closed after both FINs then ended
    /// normally; any other that ends up closed was reset.
    shut_write: bool,
    /// The connection's closed state was looked at (a reset sets `error` once).
    closed_seen: bool,
    /// The error Linux keeps on a socket (`sk_err`): a failed connect's, a reset's. SO_ERROR reports and clears it,
    /// and so do the next read (once the data before it was read) and write.
    error: Option<Errno>,
    /// SO_RCVTIMEO and SO_SNDTIMEO in nanoseconds, 0 for none.
    timeouts: [u64; 2],
    options: Options,
    /// TCP while connecting: where to, and `Stack::accepts` when the connection was last tried.
    connecting_to: Option<(IpEndpoint, u64)>,
    /// The multicast groups joined (IP_ADD_MEMBERSHIP, IPV6_ADD_MEMBERSHIP).
    groups: Vec<IpAddress>,
}

impl State {
    /// A socket in `role`, at `local`, not yet shut down, bound by its own port or sent to.
    fn new(role: Role, local: (Option<IpAddress>, u16), timeouts: [u64; 2], options: Options) -> State {
        State {
            role,
            local,
            owns_port: false,
            peer: None,
            shut_read: false,
            shut_write: false,
            closed_seen: false,
            error: None,
            timeouts,
            options,
            connecting_to: None,
            groups: Vec::new(),
        }
    }
}

pub struct Socket {
    pub family: u16,
    pub protocol: Protocol,
    state: SpinLock<State>,
    /// Told of every change of its smoltcp sockets (see `Stack::tracked`).
    pub waitable: Arc<Waitable>,
}

/// `n` zero bytes, or ENOMEM when the library OS is out of memory (a socket call then fails, as Linux's would,
/// rather than the VM). Large buffers come from untouched zeroed frames (see `heap.rs`).
fn zeroed(n: usize) -> Result<Vec<u8>, Errno> {
    // SO_RCVBUF/SO_SNDBUF never ask for less than half Linux's minimum, but an empty buffer needs no allocation.
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = core::alloc::Layout::array::<u8>(n).map_err(|_| Errno::ENOMEM)?;
    // SAFETY: `layout` has a non-zero size (`n` > 0 above).
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(Errno::ENOMEM);
    }
    // SAFETY: `ptr` holds `n` initialised (zero) bytes from the global allocator with `u8`'s array layout, which
    // is what a Vec of this length and capacity frees with.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

fn tcp_socket(options: &Options) -> Result<tcp::Socket<'static>, Errno> {
    let rx = tcp::SocketBuffer::new(zeroed(options.buffer(Direction::Receive))?);
    let tx = tcp::SocketBuffer::new(zeroed(options.buffer(Direction::Send))?);
    let mut socket = tcp::Socket::new(rx, tx);
    options.configure(&mut socket);
    // ACK at once: a delayed ACK only helps on a real network, and on the loopback it holds each window update back
    // until its timer (10 ms), which throttled a bulk transfer to 6 MB/s. Connections through the card delay theirs
    // once they know their peer (`delay_acks_off_the_loopback`).
    socket.set_ack_delay(None);
    Ok(socket)
}

/// How long a connection through the card holds the ACK of data received, for it to ride on the reply (smoltcp's
/// default; Linux's least is 40 ms). More than a segment's worth unacknowledged, or a doubled window, goes at once.
const CARD_ACK_DELAY: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(10);

/// Connection `h` is established: if its peer is beyond the library OS (not the loopback, nor the VM's own address,
/// which the link also keeps inside), its ACKs wait [`CARD_ACK_DELAY`] for a reply to ride on, as Linux's do, instead
/// of costing a frame of their own (redis through `-p` sent two frames a request, the reply and a bare ACK).
fn delay_acks_off_the_loopback(s: &mut Stack, h: Handle) {
    let outside = s.sockets.get::<tcp::Socket>(h).remote_endpoint().is_some_and(|peer| !s.is_own(peer.addr));
    if outside {
        s.sockets.get_mut::<tcp::Socket>(h).set_ack_delay(Some(CARD_ACK_DELAY));
    }
}

fn udp_socket(options: &Options) -> Result<udp::Socket<'static>, Errno> {
    let buffer = || Ok(udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; UDP_PACKETS], zeroed(UDP_BUFFER)?));
    let mut socket = udp::Socket::new(buffer()?, buffer()?);
    options.configure_udp(&mut socket);
    Ok(socket)
}

/// What a `recv` got: `n` bytes into the buffer, of a message `full` bytes long (a datagram cut to the buffer is
/// longer), from `from` (UDP).
#[derive(Default)]
pub struct Received {
    pub n: usize,
    pub full: usize,
    pub from: Option<IpEndpoint>,
}

/// How long an operation may wait: not at all, or until a deadline (nanoseconds since boot; `u64::MAX`: forever).
#[derive(Clone, Copy)]
pub enum Patience {
    None,
    Until(u64),
}

impl Patience {
    /// A socket's blocking mode and timeout (SO_RCVTIMEO or SO_SNDTIMEO; 0 for none).
    pub fn new(nonblocking: bool, timeout_ns: u64) -> Patience {
        match (nonblocking, timeout_ns) {
            (true, _) => Patience::None,
            (false, 0) => Patience::Until(u64::MAX),
            (false, t) => Patience::Until(time::since_boot_ns().saturating_add(t)),
        }
    }
}

/// Repeats `attempt` (on the stack, polled after it) until it gives an answer, waiting for `waitable` to change in
/// between; EAGAIN once `patience` runs out, as Linux answers a non-blocking socket or an expired timeout.
fn until<R>(
    waitable: &Waitable,
    patience: Patience,
    mut attempt: impl FnMut(&mut Stack) -> Option<Result<R, Errno>>,
) -> Result<R, Errno> {
    loop {
        let seen = waitable.count();
        if let Some(answer) = with(&mut attempt) {
            return answer;
        }
        match patience {
            Patience::Until(deadline) if time::since_boot_ns() < deadline => waitable.wait(seen, deadline)?,
            _ => return Err(Errno::EAGAIN),
        }
    }
}

impl Socket {
    pub fn new(family: u16, protocol: Protocol) -> Result<Socket, Errno> {
        let waitable = Waitable::new();
        let mut options = Options::default();
        options.ipv6 = family == AF_INET6;
        let role = match protocol {
            Protocol::Tcp => Role::Fresh,
            Protocol::Udp => {
                let socket = udp_socket(&options)?;
                Role::Datagram(with(|s| s.add_udp(socket, &waitable)))
            }
        };
        let state = State::new(role, (None, 0), [0; 2], options);
        Ok(Socket { family, protocol, state: SpinLock::new(state), waitable })
    }

    /// Tells this socket from others (its port claims).
    fn id(&self) -> usize {
        Arc::as_ptr(&self.waitable) as usize
    }

    pub fn bind(&self, address: Option<IpAddress>, port: u16) -> Result<(), Errno> {
        let protocol = self.protocol;
        with(|s| {
            if address.is_some_and(|a| !s.is_own(a)) {
                return Err(Errno::EADDRNOTAVAIL);
            }
            let mut st = self.state.lock();
            if st.local.1 != 0 {
                return Err(Errno::EINVAL);
            }
            let kept = &st.options.kept;
            let shares =
                kept.is_on(kept::SO_REUSEPORT) || (protocol == Protocol::Udp && kept.is_on(kept::SO_REUSEADDR));
            let v6_only = st.options.v6_only();
            let families = Families { v4: !v6_only, v6: self.family == AF_INET6 };
            let claim = PortClaim { owner: self.id(), families, shares };
            let port = s.claim_port(protocol, port, claim)?;
            if let Role::Datagram(h) = st.role {
                // smoltcp binds one address or all: an IPv6-only socket on `::` hears the one IPv6 address there is
                // (the loopback's, without a card with IPv6), or all addresses if there are two (and drops what
                // comes over IPv4, `drop_ipv4`).
                let own = s.own_v6();
                let addr = match address {
                    None if v6_only && own.len() == 1 => Some(own[0]),
                    _ => address,
                };
                let endpoint = IpListenEndpoint { addr, port };
                if s.sockets.get_mut::<udp::Socket>(h).bind(endpoint).is_err() {
                    s.release_port(protocol, port, self.id());
                    return Err(Errno::EINVAL);
                }
            }
            (st.local, st.owns_port) = ((address, port), true);
            Ok(())
        })
    }

    /// Where a listener's backlog sockets listen: its address, or for an IPv6-only listener on `::` each of the
    /// stack's IPv6 addresses (smoltcp listens on one address or all), the backlog on each.
    fn listen_endpoints(&self, st: &State, s: &Stack) -> Vec<IpListenEndpoint> {
        let port = st.local.1;
        match st.local.0 {
            None if st.options.v6_only() => {
                s.own_v6().into_iter().map(|a| IpListenEndpoint { addr: Some(a), port }).collect()
            }
            addr => vec![IpListenEndpoint { addr, port }],
        }
    }

    /// Binds to an ephemeral port if the socket has none yet.
    fn ensure_bound(&self) -> Result<(), Errno> {
        let bound = self.state.lock().local.1 != 0;
        if bound {
            return Ok(());
        }
        self.bind(None, 0)
    }

    pub fn listen(&self, backlog: i32) -> Result<(), Errno> {
        if self.protocol != Protocol::Tcp {
            return Err(Errno::EOPNOTSUPP);
        }
        self.ensure_bound()?;
        if matches!(self.state.lock().role, Role::Fresh) {
            let (address, port) = self.state.lock().local;
            super::pod::publish(address, port)?;
        }
        // Linux's accept queue is full only beyond the backlog: it holds backlog + 1 (one for listen(fd, 0)).
        let want = (backlog.max(0) as usize).min(MAX_BACKLOG) + 1;
        with(|s| {
            let mut st = self.state.lock();
            let endpoints = self.listen_endpoints(&st, s);
            let want = want * endpoints.len();
            let options = st.options.clone();
            let port = st.local.1;
            match &mut st.role {
                Role::Fresh => {
                    let handles = (0..want)
                        .map(|i| listening(s, endpoints[i % endpoints.len()], &self.waitable, &options))
                        .collect::<Result<Vec<_>, _>>()?;
                    st.role = Role::Listening(handles);
                    *s.listeners.entry(port).or_insert(0) += 1;
                    Ok(())
                }
                // listen again: only the backlog changes.
                Role::Listening(handles) => {
                    while handles.len() < want {
                        let endpoint = endpoints[handles.len() % endpoints.len()];
                        handles.push(listening(s, endpoint, &self.waitable, &options)?);
                    }
                    Ok(())
                }
                _ => Err(Errno::EINVAL),
            }
        })
    }

    /// The next connection a listener has, as a new socket (None: none yet).
    pub fn accept(&self, patience: Patience) -> Result<(Socket, IpEndpoint), Errno> {
        until(&self.waitable, patience, |s| {
            let mut st = self.state.lock();
            let endpoint = IpListenEndpoint { addr: st.local.0, port: st.local.1 };
            let options = st.options.clone();
            let Role::Listening(handles) = &mut st.role else { return Some(Err(Errno::EINVAL)) };
            if let Err(e) = replace_reset(s, handles, endpoint, &self.waitable, &options) {
                return Some(Err(e));
            }
            // The connection that came first, as from Linux's accept queue.
            let ready = (0..handles.len())
                .filter(|&i| {
                    let state = s.sockets.get::<tcp::Socket>(handles[i]).state();
                    matches!(state, tcp::State::Established | tcp::State::CloseWait)
                })
                .min_by_key(|&i| s.sockets.arrival(handles[i]))?;
            let fresh = match listening(s, listened_on(s, handles[ready], endpoint), &self.waitable, &options) {
                Ok(fresh) => fresh,
                Err(e) => return Some(Err(e)),
            };
            let connection = core::mem::replace(&mut handles[ready], fresh);
            delay_acks_off_the_loopback(s, connection);
            s.accepts += 1;
            // Room in the backlog: a connect refused for lack of it may try again.
            for waiter in core::mem::take(&mut s.room_waiters) {
                s.tell(waiter);
            }
            let tcp = s.sockets.get::<tcp::Socket>(connection);
            let peer = tcp.remote_endpoint().unwrap_or(IpEndpoint::new(addr::unspecified(self.family), 0));
            let local = tcp.local_endpoint().map(|e| (Some(e.addr), e.port)).unwrap_or(st.local);
            let state = State::new(Role::Connected(connection), local, st.timeouts, options);
            let waitable = Waitable::new();
            s.track(connection, &waitable);
            let socket = Socket { family: self.family, protocol: Protocol::Tcp, state: SpinLock::new(state), waitable };
            Some(Ok((socket, peer)))
        })
    }

    pub fn connect(&self, remote: IpEndpoint, patience: Patience) -> Result<(), Errno> {
        self.ensure_bound()?;
        if self.protocol == Protocol::Udp {
            self.state.lock().peer = Some(remote);
            return Ok(());
        }
        with(|s| {
            let mut st = self.state.lock();
            match st.role {
                Role::Fresh => {}
                Role::Connecting(_) => return Err(Errno::EALREADY),
                Role::Connected(_) => return Err(Errno::EISCONN),
                _ => return Err(Errno::EINVAL),
            }
            st.role = Role::Connecting(dial(s, remote, st.local, &self.waitable, &st.options)?);
            st.connecting_to = Some((remote, s.accepts));
            Ok(())
        })?;
        // Linux's non-blocking connect says EINPROGRESS even where the answer came at once (the loopback): the
        // outcome is for poll and SO_ERROR to tell.
        if matches!(patience, Patience::None) {
            return Err(Errno::EINPROGRESS);
        }
        let result = until(&self.waitable, patience, |s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            match st.role {
                Role::Connected(_) => Some(Ok(())),
                Role::Connecting(_) => None,
                _ => Some(Err(st.error.take().unwrap_or(Errno::ECONNREFUSED))),
            }
        });
        if result == Err(Errno::EAGAIN) {
            // Linux's answer for a non-blocking connect, and for one whose SO_SNDTIMEO ran out.
            return Err(Errno::EINPROGRESS);
        }
        result
    }

    /// Sends what it can of `data` (all of it unless `nonblocking`), to `to` for UDP.
    pub fn send(&self, data: &[u8], to: Option<IpEndpoint>, patience: Patience) -> Result<usize, Errno> {
        if self.protocol == Protocol::Udp {
            self.ensure_bound()?;
            let target = to.or(self.state.lock().peer).ok_or(Errno::EDESTADDRREQ)?;
            if data.len() > UDP_BUFFER {
                return Err(Errno::EMSGSIZE);
            }
            return until(&self.waitable, patience, |s| {
                let Role::Datagram(h) = self.state.lock().role else { return Some(Err(Errno::EINVAL)) };
                let mut meta = udp::UdpMetadata::from(target);
                meta.local_address = match self.state.lock().local.0 {
                    Some(bound) => Some(bound),
                    None => match s.source_for(target.addr) {
                        Ok(source) => Some(source),
                        Err(e) => return Some(Err(e)),
                    },
                };
                match s.sockets.get_mut::<udp::Socket>(h).send_slice(data, meta) {
                    Ok(()) => {
                        s.looked_at(h);
                        Some(Ok(data.len()))
                    }
                    Err(udp::SendError::BufferFull) => None,
                    Err(udp::SendError::Unaddressable) => Some(Err(Errno::ENETUNREACH)),
                }
            });
        }
        let nonblocking = matches!(patience, Patience::None);
        let mut sent = 0;
        while sent < data.len() {
            let step = until(&self.waitable, patience, |s| {
                let mut st = self.state.lock();
                refresh(&mut st, s, &self.waitable);
                let Role::Connected(h) = st.role else { return Some(Err(Errno::ENOTCONN)) };
                if let Some(error) = st.error.take() {
                    return Some(Err(error));
                }
                let tcp = s.sockets.get_mut::<tcp::Socket>(h);
                if !tcp.may_send() {
                    return Some(Err(Errno::EPIPE));
                }
                if !tcp.can_send() {
                    return (nonblocking && sent > 0).then_some(Ok(0));
                }
                let result = tcp.send_slice(&data[sent..]).map_err(|_| Errno::EPIPE);
                s.looked_at(h);
                Some(result)
            });
            match step {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if sent > 0 && e != Errno::EPIPE => break,
                Err(e) => return if sent > 0 { Ok(sent) } else { Err(e) },
            }
        }
        Ok(sent)
    }

    /// Receives into `out`. 0 bytes: the peer closed (TCP). A datagram larger than `out` is cut to it (and gone
    /// unless peeked), as on Linux; `Received::full` says how long it was.
    pub fn recv(&self, out: &mut [u8], peek: bool, patience: Patience) -> Result<Received, Errno> {
        if let Some(taken) = self.take_buffered(out, peek) {
            return taken;
        }
        until(&self.waitable, patience, |s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            match st.role {
                Role::Datagram(h) => {
                    let udp = s.sockets.get_mut::<udp::Socket>(h);
                    // smoltcp refuses a buffer smaller than the datagram: copy what fits from the datagram itself.
                    let (n, full, from) = match udp.peek() {
                        Ok((payload, meta)) => {
                            let n = payload.len().min(out.len());
                            out[..n].copy_from_slice(&payload[..n]);
                            (n, payload.len(), meta.endpoint)
                        }
                        Err(_) => return None,
                    };
                    if !peek {
                        let _ = udp.recv();
                    }
                    s.looked_at(h);
                    Some(Ok(Received { n, full, from: Some(from) }))
                }
                Role::Connected(h) => {
                    let low_water = low_water(&st, s, h).min(out.len());
                    let read_shut = st.shut_read || s.peer_finished(h) || st.error.is_some();
                    let tcp = s.sockets.get_mut::<tcp::Socket>(h);
                    // SO_RCVLOWAT: a read that may still wait waits for that many bytes (or the end); one that may
                    // not takes what there is, as Linux's does.
                    let may_wait = match patience {
                        Patience::None => false,
                        Patience::Until(deadline) => time::since_boot_ns() < deadline,
                    };
                    let closed = tcp.state() == tcp::State::Closed;
                    if tcp.recv_queue() < low_water && may_wait && !read_shut && !closed {
                        return None;
                    }
                    // As Linux's order: the data, the peer's FIN, a pending error (a reset), our own shutdown.
                    if tcp.can_recv() {
                        let n = if peek { tcp.peek_slice(out) } else { tcp.recv_slice(out) };
                        s.looked_at(h);
                        return Some(n.map(|n| Received { n, full: n, from: None }).map_err(|_| Errno::ECONNRESET));
                    }
                    if s.peer_finished(h) {
                        return Some(Ok(Received::default()));
                    }
                    if let Some(error) = st.error.take() {
                        return Some(Err(error));
                    }
                    (st.shut_read || closed).then_some(Ok(Received::default()))
                }
                _ => Some(Err(Errno::ENOTCONN)),
            }
        })
    }

    /// A read of a connection whose ACKs may wait (one beyond the library OS) that finds enough bytes buffered takes
    /// them without polling the stack: that poll is for the ACK and window update, which such a connection sends
    /// with its next segment or when smoltcp's timer says (idle vCPUs and syscalls' ends poll then). Each poll visits
    /// every socket, and this was half of a request-response server's (redis: the read's and the reply's).
    fn take_buffered(&self, out: &mut [u8], peek: bool) -> Option<Result<Received, Errno>> {
        inspect(|s| {
            let st = self.state.lock();
            let Role::Connected(h) = st.role else { return None };
            let low_water = low_water(&st, s, h).min(out.len().max(1));
            let tcp = s.sockets.get_mut::<tcp::Socket>(h);
            if tcp.ack_delay().is_none() || tcp.recv_queue() < low_water {
                return None;
            }
            let n = if peek { tcp.peek_slice(out) } else { tcp.recv_slice(out) };
            s.looked_at(h);
            Some(n.map(|n| Received { n, full: n, from: None }).map_err(|_| Errno::ECONNRESET))
        })
    }

    pub fn shutdown(&self, read: bool, write: bool) -> Result<(), Errno> {
        with(|s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            let Role::Connected(h) = st.role else { return Err(Errno::ENOTCONN) };
            st.shut_read |= read;
            if write {
                st.shut_write = true;
                s.sockets.get_mut::<tcp::Socket>(h).close();
            }
            Ok(())
        })?;
        // Threads reading it see end-of-file now, and edge-triggered epoll entries hear of the change.
        self.waitable.changed();
        Ok(())
    }

    /// The local address (the bound one until connected).
    pub fn local(&self) -> IpEndpoint {
        inspect(|s| {
            let st = self.state.lock();
            let bound = IpEndpoint::new(st.local.0.unwrap_or(addr::unspecified(self.family)), st.local.1);
            match st.role {
                Role::Connected(h) => s.sockets.get::<tcp::Socket>(h).local_endpoint().unwrap_or(bound),
                _ => bound,
            }
        })
    }

    pub fn peer(&self) -> Result<IpEndpoint, Errno> {
        inspect(|s| {
            let st = self.state.lock();
            match st.role {
                Role::Connected(h) => s.sockets.get::<tcp::Socket>(h).remote_endpoint().ok_or(Errno::ENOTCONN),
                Role::Datagram(_) => st.peer.ok_or(Errno::ENOTCONN),
                _ => Err(Errno::ENOTCONN),
            }
        })
    }

    /// SO_ERROR: a failed connect's error, once.
    pub fn take_error(&self) -> Option<Errno> {
        inspect(|s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            st.error.take()
        })
    }

    /// SO_RCVTIMEO (`send` false) or SO_SNDTIMEO, in nanoseconds (0: none).
    pub fn timeout(&self, send: bool) -> u64 {
        self.state.lock().timeouts[usize::from(send)]
    }

    pub fn set_timeout(&self, send: bool, ns: u64) {
        self.state.lock().timeouts[usize::from(send)] = ns;
    }

    /// The socket's options, as set or inherited from its listener.
    pub fn options(&self) -> Options {
        self.state.lock().options.clone()
    }

    /// Changes the socket's options with `change`. Keep-alive, Nagle and the hop limit apply to the connection at
    /// once; buffer sizes to the smoltcp sockets made from now on (a connect's, a listener's next backlog sockets),
    /// since smoltcp cannot resize a socket's buffers.
    pub fn set_options(&self, change: impl FnOnce(&mut Options) -> Result<(), Errno>) -> Result<(), Errno> {
        inspect(|s| {
            let mut st = self.state.lock();
            change(&mut st.options)?;
            let options = st.options.clone();
            let handles = match &st.role {
                Role::Connected(h) | Role::Connecting(h) => core::slice::from_ref(h),
                Role::Listening(handles) => &handles[..],
                Role::Datagram(h) => {
                    options.configure_udp(s.sockets.get_mut::<udp::Socket>(*h));
                    &[]
                }
                Role::Fresh => &[],
            };
            for &h in handles {
                options.configure(s.sockets.get_mut::<tcp::Socket>(h));
            }
            Ok(())
        })
    }

    /// [`Socket::set_options`] for a change that cannot fail.
    pub fn update_options(&self, change: impl FnOnce(&mut Options)) {
        let _ = self.set_options(|o| {
            change(o);
            Ok(())
        });
    }

    pub fn is_listening(&self) -> bool {
        matches!(self.state.lock().role, Role::Listening(_))
    }

    /// Joins (`join`) or leaves multicast group `group`, with Linux's errors: EPROTO for TCP, EINVAL for an address
    /// that is not multicast, EADDRINUSE to join twice, EADDRNOTAVAIL to leave a group not joined. Only the
    /// membership is kept: smoltcp is built without multicast, so no group's datagrams arrive.
    pub fn membership(&self, group: IpAddress, join: bool) -> Result<(), Errno> {
        if self.protocol == Protocol::Tcp {
            return Err(Errno::EPROTO);
        }
        if !group.is_multicast() {
            return Err(Errno::EINVAL);
        }
        let groups = &mut self.state.lock().groups;
        let at = groups.iter().position(|&g| g == group);
        match (join, at) {
            (true, Some(_)) => Err(Errno::EADDRINUSE),
            (true, None) => {
                groups.push(group);
                super::groups::joined(group);
                Ok(())
            }
            (false, Some(at)) => {
                groups.swap_remove(at);
                super::groups::left(group);
                Ok(())
            }
            (false, None) => Err(Errno::EADDRNOTAVAIL),
        }
    }

    /// Whether the socket has an address (IPV6_V6ONLY can no longer change).
    pub fn is_bound(&self) -> bool {
        self.state.lock().local.1 != 0
    }

    /// Bytes waiting to be read (FIONREAD).
    pub fn available(&self) -> usize {
        inspect(|s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            match st.role {
                Role::Connected(h) => s.sockets.get::<tcp::Socket>(h).recv_queue(),
                Role::Datagram(h) => s.sockets.get_mut::<udp::Socket>(h).peek().map_or(0, |(d, _)| d.len()),
                _ => 0,
            }
        })
    }

    /// A connection's bytes queued now and its SO_RCVLOWAT (the bytes a waiting read waits for); None for a socket of
    /// another kind or not connected.
    pub fn queued_and_low_water(&self) -> Option<(usize, usize)> {
        inspect(|s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            let Role::Connected(h) = st.role else { return None };
            Some((s.sockets.get::<tcp::Socket>(h).recv_queue(), low_water(&st, s, h)))
        })
    }

    /// The `poll` events the socket has now.
    pub fn events(&self) -> u16 {
        inspect(|s| {
            let mut st = self.state.lock();
            refresh(&mut st, s, &self.waitable);
            match st.role {
                // Linux's answer for a socket that is not connected; a failed connect adds its error.
                Role::Fresh if st.error.is_some() => POLLOUT | POLLHUP | POLLERR,
                Role::Fresh => POLLOUT | POLLHUP,
                Role::Connecting(_) => 0,
                Role::Listening(ref handles) => {
                    let ready = handles.iter().any(|&h| {
                        matches!(
                            s.sockets.get::<tcp::Socket>(h).state(),
                            tcp::State::Established | tcp::State::CloseWait
                        )
                    });
                    if ready {
                        POLLIN
                    } else {
                        0
                    }
                }
                Role::Connected(h) => {
                    let tcp = s.sockets.get::<tcp::Socket>(h);
                    // As Linux: the receiving side is shut once the peer's FIN came (even with data unread), the
                    // connection closed, or the program shut it; the sending side once the program closed it. A
                    // shut side is ready (its calls return at once), and both shut is a hang-up.
                    let read_shut = st.shut_read || tcp.state() == tcp::State::Closed || s.peer_finished(h);
                    let write_shut = !tcp.may_send();
                    let mut events = 0;
                    if (tcp.can_recv() && tcp.recv_queue() >= low_water(&st, s, h)) || read_shut {
                        events |= POLLIN;
                    }
                    if read_shut {
                        events |= POLLRDHUP;
                    }
                    if tcp.can_send() || write_shut {
                        events |= POLLOUT;
                    }
                    if read_shut && write_shut {
                        events |= POLLHUP;
                    }
                    if st.error.is_some() {
                        events |= POLLERR;
                    }
                    events
                }
                Role::Datagram(h) => {
                    let udp = s.sockets.get::<udp::Socket>(h);
                    (if udp.can_recv() { POLLIN } else { 0 }) | if udp.can_send() { POLLOUT } else { 0 }
                }
            }
        })
    }
}

/// Puts fresh listening sockets in the place of backlog connections that were reset before `accept` took them (a
/// client that gave up), so that the listener keeps its backlog.
fn replace_reset(
    s: &mut Stack,
    handles: &mut [Handle],
    endpoint: IpListenEndpoint,
    waitable: &Arc<Waitable>,
    options: &Options,
) -> Result<(), Errno> {
    for h in handles.iter_mut() {
        if s.sockets.get::<tcp::Socket>(*h).state() == tcp::State::Closed {
            let fresh = listening(s, listened_on(s, *h, endpoint), waitable, options)?;
            s.remove(core::mem::replace(h, fresh));
        }
    }
    Ok(())
}

/// SO_RCVLOWAT of connection `h`: the bytes that make it readable, at most what its buffer holds.
fn low_water(st: &State, s: &Stack, h: Handle) -> usize {
    let asked = usize::try_from(st.options.kept.value(kept::SO_RCVLOWAT)).unwrap_or(1);
    asked.clamp(1, s.sockets.get::<tcp::Socket>(h).recv_capacity())
}

/// Where backlog socket `h` listened (an IPv6-only listener's sockets each listen on one address), for the socket
/// that takes its place; `endpoint`, the listener's, if smoltcp forgot.
fn listened_on(s: &Stack, h: Handle, endpoint: IpListenEndpoint) -> IpListenEndpoint {
    let listened = s.sockets.get::<tcp::Socket>(h).listen_endpoint();
    if listened.port == 0 {
        endpoint
    } else {
        listened
    }
}

/// A fresh socket listening on `endpoint`, in the stack, whose changes tell the listener's `waitable`.
fn listening(
    s: &mut Stack,
    endpoint: IpListenEndpoint,
    waitable: &Arc<Waitable>,
    options: &Options,
) -> Result<Handle, Errno> {
    let mut socket = tcp_socket(options)?;
    socket.listen(endpoint).map_err(|_| Errno::EADDRINUSE)?;
    Ok(s.add_tcp(socket, waitable))
}

/// A new smoltcp socket connecting from `local` to `remote`, in the stack; an unbound address becomes the one the
/// way to `remote` leaves from.
fn dial(
    s: &mut Stack,
    remote: IpEndpoint,
    local: (Option<IpAddress>, u16),
    waitable: &Arc<Waitable>,
    options: &Options,
) -> Result<Handle, Errno> {
    let source = match local.0 {
        Some(bound) => bound,
        None => s.source_for(remote.addr)?,
    };
    let mut socket = tcp_socket(options)?;
    let local = IpListenEndpoint { addr: Some(source), port: local.1 };
    socket.connect(s.iface.context(), remote, local).map_err(|_| Errno::ECONNREFUSED)?;
    Ok(s.add_tcp(socket, waitable))
}

/// Moves a connecting socket on once smoltcp has answered: connected, or refused (the error kept for SO_ERROR).
/// Refused by a listener whose backlog was full, it stays connecting and tries again once an `accept` made room, as
/// a Linux client's SYN is retried rather than refused; `waitable` is told when an `accept` makes room.
fn refresh(st: &mut State, s: &mut Stack, waitable: &Arc<Waitable>) {
    if let Role::Connected(h) = st.role {
        note_reset(st, s, h);
        return;
    }
    if let Role::Datagram(h) = st.role {
        if st.options.v6_only() {
            drop_ipv4(s, h);
        }
        return;
    }
    let Role::Connecting(h) = st.role else { return };
    match s.sockets.get::<tcp::Socket>(h).state() {
        tcp::State::SynSent | tcp::State::SynReceived => {}
        tcp::State::Closed | tcp::State::TimeWait => match st.connecting_to {
            Some((remote, seen)) if s.listens_for(remote) => {
                if s.accepts != seen {
                    if let Ok(again) = dial(s, remote, st.local, waitable, &st.options) {
                        s.remove(h);
                        st.role = Role::Connecting(again);
                        st.connecting_to = Some((remote, s.accepts));
                    }
                } else if !s.room_waiters.iter().any(|w| Arc::ptr_eq(w, waitable)) {
                    s.room_waiters.push(waitable.clone());
                }
            }
            _ => {
                s.remove(h);
                st.role = Role::Fresh;
                st.connecting_to = None;
                st.error = Some(Errno::ECONNREFUSED);
            }
        },
        _ => {
            st.role = Role::Connected(h);
            st.connecting_to = None;
            delay_acks_off_the_loopback(s, h);
        }
    }
}

/// An IPv6-only UDP socket bound to every address (smoltcp binds one or all) may be handed IPv4 datagrams: they are
/// dropped before the program can see them, as Linux never delivers them.
fn drop_ipv4(s: &mut Stack, h: Handle) {
    let udp = s.sockets.get_mut::<udp::Socket>(h);
    let mut dropped = false;
    while udp.peek().is_ok_and(|(_, meta)| matches!(meta.endpoint.addr, IpAddress::Ipv4(_))) {
        let _ = udp.recv();
        dropped = true;
    }
    // Every call on the socket comes here: only a drop changed what a look would see.
    if dropped {
        s.looked_at(h);
    }
}

/// Keeps the error of a connection that was reset, once: it closed without both FINs having gone (a reset, or
/// keep-alive giving up). Linux's error: EPIPE if the peer had finished sending, ECONNRESET otherwise.
fn note_reset(st: &mut State, s: &Stack, h: Handle) {
    if st.closed_seen || s.sockets.get::<tcp::Socket>(h).state() != tcp::State::Closed {
        return;
    }
    st.closed_seen = true;
    let peer_fin = s.peer_finished(h);
    if !(peer_fin && st.shut_write) {
        st.error = Some(if peer_fin { Errno::EPIPE } else { Errno::ECONNRESET });
    }
}

impl Socket {
    /// SO_LINGER with a timeout, on close: sends the FIN and waits until the peer has acknowledged it and all data
    /// before it, or until the timeout passes (then the connection finishes closing in the background, as on Linux).
    /// A signal ends the wait early.
    fn linger(&self) {
        let (handle, seconds) = {
            let st = self.state.lock();
            match (&st.role, st.options.linger_s) {
                (Role::Connected(h), Some(seconds)) if seconds > 0 => (*h, seconds),
                _ => return,
            }
        };
        if inspect(|s| s.sockets.get::<tcp::Socket>(handle).recv_queue() > 0) {
            return;
        }
        with(|s| s.sockets.get_mut::<tcp::Socket>(handle).close());
        let deadline = time::since_boot_ns().saturating_add(u64::from(seconds) * 1_000_000_000);
        loop {
            let seen = self.waitable.count();
            let delivered = inspect(|s| {
                let tcp = s.sockets.get::<tcp::Socket>(handle);
                tcp.send_queue() == 0
                    && matches!(tcp.state(), tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed)
            });
            if delivered || time::since_boot_ns() >= deadline || self.waitable.wait(seen, deadline).is_err() {
                return;
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        for &group in &self.state.lock().groups {
            super::groups::left(group);
        }
        self.linger();
        let protocol = self.protocol;
        with(|s| {
            let st = self.state.lock();
            match &st.role {
                Role::Fresh => {}
                // Data the program never read, or SO_LINGER with a zero timeout: the connection is reset, and what it
                // held is dropped, as on Linux (a FIN would tell the peer that all it sent was taken).
                Role::Connected(h)
                    if st.options.linger_s == Some(0) || s.sockets.get::<tcp::Socket>(*h).recv_queue() > 0 =>
                {
                    s.abort_later(*h)
                }
                Role::Connected(h) => s.close_later(*h),
                Role::Connecting(h) | Role::Datagram(h) => s.remove(*h),
                Role::Listening(handles) => {
                    if let Some(count) = s.listeners.get_mut(&st.local.1) {
                        *count -= 1;
                        if *count == 0 {
                            s.listeners.remove(&st.local.1);
                        }
                    }
                    for &h in handles {
                        s.sockets.get_mut::<tcp::Socket>(h).abort();
                    }
                    // The aborts send their resets at this poll; the sockets go with the next reap.
                    for &h in handles {
                        s.close_later(h);
                    }
                }
            }
            if st.owns_port {
                s.release_port(protocol, st.local.1, self.id());
            }
            s.room_waiters.retain(|w| !Arc::ptr_eq(w, &self.waitable));
        });
    }
}

impl core::fmt::Debug for Socket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "socket({}, {:?})", if self.family == AF_INET6 { "inet6" } else { "inet" }, self.protocol)
    }
}
