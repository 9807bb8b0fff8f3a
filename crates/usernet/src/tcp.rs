//! TCP relaying between host sockets and the host-side smoltcp stack. Inbound (`-p`): an accepted host
//! connection becomes a smoltcp connect to the guest from the gateway address. Outbound: a guest SYN is held
//! while the host connect it started runs; on success a socket listening on exactly that destination is made
//! and the SYN replayed into it, on failure the SYN is replayed with no listener and smoltcp answers with a
//! reset. Bytes move only while the other side has room (both smoltcp buffers are 64 KiB), FINs are relayed
//! as shutdowns and resets as resets.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpAddress, IpListenEndpoint};

use crate::config::{host_target, UserNetConfig};
use crate::device::FrameDevice;
use crate::forward::{PortForward, Proto};
use crate::frame::tcp_destination;
use crate::poller::{close_with_reset, connect_nonblocking, connect_result};
use crate::queue::{Counters, Shared};
use crate::sources::Sources;

/// How long a connection lingers in TIME-WAIT so a retransmitted guest FIN is still acknowledged.
const TIME_WAIT: Duration = Duration::from_secs(1);
/// A listener made for a guest SYN that never arrived (the guest's own stack dropped it) is given up after this.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-direction buffer of each relayed connection; the receive one a byte less, so that smoltcp does not scale its
/// window (the library OS's `options::UNSCALED_WINDOW` says why: a scaled window's rounding deadlocked transfers).
const TCP_BUFFER: usize = 64 * 1024;
const TCP_RX_BUFFER: usize = 65_535;
/// Connections (open or being connected) beyond which new guest SYNs are refused.
const MAX_CONNS: usize = 16 * 1024;
/// A connection whose peer in the guest stops answering for this long is aborted. smoltcp counts it from the last
/// segment the guest sent, whether or not anything waits for an answer, so an idle connection is probed (keep-alive)
/// every third of it: one the guest's stack still answers stays open as long as its programs like, as on Linux.
/// About when Linux stops retransmitting to a silent peer (tcp_retries2). The host side of an inbound connection is
/// open already while the guest, which takes at most 128 ahead of its program, gets to it: on a busy machine the last
/// of a burst of 10,000 were still unanswered after the 2 minutes this was, and were reset.
#[cfg(not(test))]
const GUEST_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(15 * 60);
/// Short enough for a test to outwait.
#[cfg(test)]
pub(crate) const GUEST_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(5);

/// One guest connection: the guest's source port and where it connected to.
type FlowKey = (u16, SocketAddr);

struct Conn {
    /// The host side; `None` once it is closed.
    stream: Option<TcpStream>,
    /// Its id in `TcpRelay::sources`.
    source: usize,
    /// For outbound connections, the key in `TcpRelay::outbound`; for inbound ones, the gateway port.
    origin: Origin,
    /// The host socket said it is readable and we have not seen EAGAIN since.
    readable: bool,
    /// The last write to the host socket hit EAGAIN; wait for POLLOUT.
    write_blocked: bool,
    host_eof: bool,
    host_write_shut: bool,
    /// The guest's FIN arrived: a connection closed after it ended cleanly.
    saw_fin: bool,
    /// Seen closed by an earlier reap pass (its reset, if any, has had an egress poll to go out).
    closed_before: bool,
    created: Instant,
    time_wait_since: Option<Instant>,
}

enum Origin {
    Outbound(FlowKey),
    Inbound(u16),
}

struct Pending {
    stream: TcpStream,
    syn: Vec<u8>,
    source: usize,
}

/// What a registered host socket stands for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TcpToken {
    Listener(usize),
    Conn(SocketHandle),
    Connecting(FlowKey),
}

pub(crate) struct TcpRelay {
    net: UserNetConfig,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    listeners: Vec<(PortForward, TcpListener)>,
    sources: Sources<TcpToken>,
    conns: HashMap<SocketHandle, Conn>,
    outbound: HashMap<FlowKey, SocketHandle>,
    pending: HashMap<FlowKey, Pending>,
    /// The connections made to the guest for `-p` forwards, by the gateway port they are made from.
    inbound: HashMap<u16, SocketHandle>,
    /// The gateway ports of those whose SYN smoltcp has not sent yet (see `awaits_its_request`).
    unrequested: HashSet<u16>,
    next_port: u16,
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s =
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_RX_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
    // The host side already coalesces; smoltcp should forward what it is given without waiting.
    s.set_nagle_enabled(false);
    s.set_timeout(Some(GUEST_TIMEOUT));
    s.set_keep_alive(Some(GUEST_TIMEOUT / 3));
    s
}

impl TcpRelay {
    /// The relay, waiting on the `-p` listeners through `sources`; None if they cannot be waited on.
    pub fn new(
        net: UserNetConfig,
        upstream: SocketAddr,
        shared: Arc<Shared>,
        listeners: Vec<(PortForward, TcpListener)>,
        mut sources: Sources<TcpToken>,
    ) -> std::io::Result<Self> {
        for (i, (_, listener)) in listeners.iter().enumerate() {
            sources.add(listener.as_raw_fd(), Interest::READABLE, TcpToken::Listener(i))?;
        }
        Ok(TcpRelay {
            net,
            upstream,
            shared,
            listeners,
            sources,
            conns: HashMap::new(),
            outbound: HashMap::new(),
            pending: HashMap::new(),
            inbound: HashMap::new(),
            unrequested: HashSet::new(),
            next_port: 49152,
        })
    }

    /// Publishes the guest's TCP `port` on the host's port of that number (`publish.rs`), unless it is already.
    pub fn publish(&mut self, port: u16) -> std::io::Result<()> {
        let published = |f: &PortForward| f.proto == Proto::Tcp && f.host_port == port && f.guest_port == port;
        if self.listeners.iter().any(|(f, _)| published(f)) {
            return Ok(());
        }
        if self.listeners.len() >= crate::publish::MAX_PUBLISHED {
            return Err(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        let listener = crate::publish::bind(port)?;
        let host_ip = listener.local_addr()?.ip();
        self.sources.add(listener.as_raw_fd(), Interest::READABLE, TcpToken::Listener(self.listeners.len()))?;
        self.listeners.push((PortForward { proto: Proto::Tcp, host_ip, host_port: port, guest_port: port }, listener));
        Ok(())
    }

    /// What `token` (one of the TCP relay's) stands for.
    pub fn lookup(&self, token: mio::Token) -> Option<TcpToken> {
        self.sources.lookup(token)
    }

    /// A guest SYN to `dst`: replay it into an existing connection, or start the host connect it asks for.
    pub fn on_syn(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        syn: Vec<u8>,
        sockets: &mut SocketSet<'static>,
        device: &mut FrameDevice,
    ) {
        if self.connecting_to_guest(src_port, dst, sockets) {
            // smoltcp (0.14 still) panics on a SYN reaching a connecting socket before its own SYN went out ("attempt
            // to subtract sequence numbers with underflow"), and the gateway ports are handed out in order: a guest
            // could stop the relay with one. Dropped, as kiln-sockets drops it in the library OS: the forward's
            // connection is still made when the guest answers the relay's SYN.
            return Counters::bump(&self.shared.stats.dropped);
        }
        let key = (src_port, dst);
        if let Some(&handle) = self.outbound.get(&key) {
            // The guest reusing a finished connection's ports starts a new connection.
            if !matches!(sockets.get::<tcp::Socket>(handle).state(), State::TimeWait | State::Closed) {
                return device.inject(syn);
            }
            self.remove(handle, sockets);
        }
        if self.pending.contains_key(&key) {
            return; // a retransmission while the host connect is still running
        }
        let target = match host_target(&self.net, self.upstream, dst) {
            Some(t) if self.conns.len() + self.pending.len() < MAX_CONNS => t,
            // No listener: smoltcp refuses the SYN with a reset.
            _ => return device.inject(syn),
        };
        let Ok(stream) = connect_nonblocking(target) else { return device.inject(syn) };
        match self.sources.add(stream.as_raw_fd(), Interest::WRITABLE, TcpToken::Connecting(key)) {
            Ok(source) => {
                self.pending.insert(key, Pending { stream, syn, source });
            }
            Err(_) => device.inject(syn),
        }
    }

    /// Whether a guest SYN from `src_port` to `dst` is for a connection the relay is making to the guest (a `-p`
    /// forward's) that is still in SYN-SENT.
    fn connecting_to_guest(&self, src_port: u16, dst: SocketAddr, sockets: &SocketSet<'static>) -> bool {
        if dst.ip() != self.net.gateway {
            return false;
        }
        let Some(&handle) = self.inbound.get(&dst.port()) else { return false };
        let socket = sockets.get::<tcp::Socket>(handle);
        socket.state() == State::SynSent && socket.remote_endpoint().is_some_and(|r| r.port == src_port)
    }

    /// Notes the connection requests (SYNs) the stack sent, from the device (`FrameDevice::take_requests_sent`).
    pub fn requests_sent(&mut self, sent: Vec<(IpAddress, u16)>) {
        for (addr, port) in sent {
            if addr == IpAddress::from(self.net.gateway) {
                self.unrequested.remove(&port);
            }
        }
    }

    /// Whether guest frame `frame` is a TCP segment for a connection the relay is making to the guest whose SYN has
    /// not gone out yet. It can acknowledge nothing, and smoltcp (0.14 still) panics on a SYN-ACK reaching a socket
    /// in SYN-SENT before its own SYN went out (as for a bare SYN, see `on_syn`): a guest that keeps its queue full,
    /// so that the SYN waits, and predicts the initial sequence number could otherwise stop the relay.
    pub fn awaits_its_request(&self, frame: &[u8]) -> bool {
        if self.unrequested.is_empty() {
            return false;
        }
        tcp_destination(frame)
            .is_some_and(|(addr, port)| addr == IpAddress::from(self.net.gateway) && self.unrequested.contains(&port))
    }

    /// The host connect for `key` made progress: accept or refuse the guest's SYN.
    pub fn on_connect_ready(&mut self, key: FlowKey, sockets: &mut SocketSet<'static>, device: &mut FrameDevice) {
        let Some(p) = self.pending.get(&key) else { return };
        let result = connect_result(&p.stream);
        if result.is_some() && self.connecting_to_guest(key.0, key.1, sockets) {
            // The guest's SYN waited for this host connect while the relay began a `-p` forward's connection from
            // the same gateway port: injected now, it would reach that socket in SYN-SENT (smoltcp's panic, see
            // on_syn). Dropped instead.
            if let Some(p) = self.pending.remove(&key) {
                self.sources.forget(p.source);
            }
            return Counters::bump(&self.shared.stats.dropped);
        }
        match result {
            None => {}
            Some(false) => {
                if let Some(p) = self.pending.remove(&key) {
                    self.sources.forget(p.source);
                    device.inject(p.syn);
                }
            }
            Some(true) => {
                let Some(p) = self.pending.remove(&key) else { return };
                let _ = p.stream.set_nodelay(true);
                let mut socket = new_socket();
                let endpoint = IpListenEndpoint { addr: Some(key.1.ip().into()), port: key.1.port() };
                if socket.listen(endpoint).is_err() {
                    self.sources.forget(p.source);
                    return device.inject(p.syn);
                }
                let handle = sockets.add(socket);
                let both = Interest::READABLE | Interest::WRITABLE;
                if !self.sources.change(p.source, p.stream.as_raw_fd(), both, TcpToken::Conn(handle)) {
                    self.sources.forget(p.source);
                    sockets.remove(handle);
                    close_with_reset(p.stream);
                    return device.inject(p.syn);
                }
                self.insert(handle, p.stream, p.source, Origin::Outbound(key));
                self.outbound.insert(key, handle);
                Counters::bump(&self.shared.stats.tcp_outbound);
                device.inject(p.syn);
            }
        }
    }

    /// Accepts every waiting host connection on forward `i` and connects each to the guest.
    pub fn accept(&mut self, i: usize, iface: &mut Interface, sockets: &mut SocketSet<'static>) {
        loop {
            let Ok((stream, _)) = self.listeners[i].1.accept() else { return };
            if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                close_with_reset(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let Some(port) = self.alloc_port() else {
                close_with_reset(stream);
                continue;
            };
            let mut socket = new_socket();
            let remote = (self.net.guest_ip, self.listeners[i].0.guest_port);
            if socket.connect(iface.context(), remote, (self.net.gateway, port)).is_err() {
                close_with_reset(stream);
                continue;
            }
            let handle = sockets.add(socket);
            let both = Interest::READABLE | Interest::WRITABLE;
            let Ok(source) = self.sources.add(stream.as_raw_fd(), both, TcpToken::Conn(handle)) else {
                sockets.remove(handle);
                close_with_reset(stream);
                continue;
            };
            self.inbound.insert(port, handle);
            self.unrequested.insert(port);
            self.insert(handle, stream, source, Origin::Inbound(port));
            Counters::bump(&self.shared.stats.tcp_inbound);
        }
    }

    fn alloc_port(&mut self) -> Option<u16> {
        for _ in 0..=(u16::MAX - 49152) {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
            if !self.inbound.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }

    /// The host socket of `handle` became readable (or closed, or failed) and/or writable.
    pub fn on_conn_events(&mut self, handle: SocketHandle, readable: bool, writable: bool) {
        if let Some(c) = self.conns.get_mut(&handle) {
            c.readable |= readable;
            c.write_blocked &= !writable;
        }
    }

    /// Moves bytes both ways on every connection as far as buffers allow, and relays FINs and resets.
    pub fn pump_all(&mut self, sockets: &mut SocketSet<'static>) {
        for (handle, c) in self.conns.iter_mut() {
            c.pump(sockets.get_mut::<tcp::Socket>(*handle));
        }
    }

    /// Removes connections whose guest side is closed (after an egress poll, so a final reset went out),
    /// has lingered in TIME-WAIT, or whose listener never saw its SYN. Returns when it has something to do next
    /// without any event (none: only events will give it work).
    pub fn reap(&mut self, sockets: &mut SocketSet<'static>, now: Instant) -> Option<Instant> {
        let mut dead = Vec::new();
        let mut next: Option<Instant> = None;
        let mut due_at = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        for (handle, c) in self.conns.iter_mut() {
            let s = sockets.get::<tcp::Socket>(*handle);
            match s.state() {
                // The guest finished cleanly but the host peer still reads: deliver the rest first.
                State::Closed if c.saw_fin && c.stream.is_some() && !c.host_write_shut => continue,
                State::Closed => {}
                // Still writing what the guest sent to a host peer that reads slowly: not done yet.
                State::TimeWait if c.stream.is_some() && !c.host_write_shut => continue,
                State::TimeWait => {
                    let since = *c.time_wait_since.get_or_insert(now);
                    if now.duration_since(since) >= TIME_WAIT {
                        dead.push(*handle);
                    } else {
                        due_at(since + TIME_WAIT);
                    }
                    continue;
                }
                State::Listen if now.duration_since(c.created) >= LISTEN_TIMEOUT => {
                    dead.push(*handle);
                    continue;
                }
                State::Listen => {
                    due_at(c.created + LISTEN_TIMEOUT);
                    continue;
                }
                _ => continue,
            }
            if let Some(stream) = c.stream.take() {
                if c.host_eof && c.host_write_shut {
                    drop(stream);
                } else {
                    close_with_reset(stream);
                }
            }
            if s.remote_endpoint().is_none() || c.closed_before {
                dead.push(*handle);
            } else {
                // Removed at the next round, once the egress poll between has sent the final reset.
                due_at(now);
            }
            c.closed_before = true;
        }
        for handle in dead {
            self.remove(handle, sockets);
        }
        next
    }

    fn remove(&mut self, handle: SocketHandle, sockets: &mut SocketSet<'static>) {
        sockets.remove(handle);
        let Some(c) = self.conns.remove(&handle) else { return };
        self.sources.forget(c.source);
        self.shared.stats.tcp_live.fetch_sub(1, Ordering::Relaxed);
        match c.origin {
            Origin::Outbound(key) => {
                self.outbound.remove(&key);
            }
            Origin::Inbound(port) => {
                self.inbound.remove(&port);
                self.unrequested.remove(&port);
            }
        }
    }

    fn insert(&mut self, handle: SocketHandle, stream: TcpStream, source: usize, origin: Origin) {
        self.shared.stats.tcp_live.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(handle, Conn::new(stream, source, origin));
    }
}

impl Conn {
    fn new(stream: TcpStream, source: usize, origin: Origin) -> Conn {
        Conn {
            stream: Some(stream),
            source,
            origin,
            readable: false,
            write_blocked: false,
            host_eof: false,
            host_write_shut: false,
            closed_before: false,
            saw_fin: false,
            created: Instant::now(),
            time_wait_since: None,
        }
    }

    fn pump(&mut self, s: &mut tcp::Socket<'static>) {
        let Some(stream) = &self.stream else { return };
        let mut host_failed = false;

        // Guest → host.
        while !self.write_blocked && s.can_recv() {
            let r = s.recv(|buf| match (&*stream).write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => {
                    host_failed = true;
                    break;
                }
            }
        }
        // The guest's FIN, once everything before it is written.
        self.saw_fin |= matches!(s.state(), State::CloseWait | State::LastAck | State::Closing | State::TimeWait);
        if self.saw_fin && !self.host_write_shut && s.recv_queue() == 0 && !host_failed {
            let _ = stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }

        // Host → guest, only into the room the send buffer has.
        while self.readable && !self.host_eof && !host_failed && s.can_send() {
            let r = s.send(|buf| {
                if buf.is_empty() {
                    return (0, Ok(None));
                }
                match (&*stream).read(buf) {
                    Ok(n) => (n, Ok(Some(n))),
                    Err(e) => (0, Err(e)),
                }
            });
            match r {
                Ok(Ok(Some(0))) => {
                    self.host_eof = true;
                    s.close();
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => host_failed = true,
            }
        }

        if host_failed {
            // The host side reset or broke: reset the guest side too.
            s.abort();
            if let Some(stream) = self.stream.take() {
                close_with_reset(stream);
            }
        } else if self.host_eof && self.host_write_shut {
            // Both directions finished: the host socket has nothing left to do.
            self.stream = None;
        }
    }
}
