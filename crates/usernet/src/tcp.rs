//! TCP relaying between host sockets and the host-side smoltcp stack. Inbound (`-p`): an accepted host
//! connection becomes a smoltcp connect to the guest from the gateway address. Outbound: a guest SYN is held
//! while the host connect it started runs; on success a socket listening on exactly that destination is made
//! and the SYN replayed into it, on failure the SYN is replayed with no listener and smoltcp answers with a
//! reset. Bytes move only while the other side has room (both smoltcp buffers are 64 KiB), FINs are relayed
//! as shutdowns and resets as resets.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_sockets::{Handle, Sockets};
use mio::Interest;
use smoltcp::iface::Interface;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpListenEndpoint;

use crate::config::{host_target, UserNetConfig};
use crate::device::FrameDevice;
use crate::forward::PortForward;
use crate::poller::{close_with_reset, connect_nonblocking, connect_result};
use crate::queue::{Counters, Shared};
use crate::sources::Sources;

/// How long a connection lingers in TIME-WAIT so a retransmitted guest FIN is still acknowledged.
const TIME_WAIT: Duration = Duration::from_secs(1);
/// A listener made for a guest SYN that never arrived (the guest's own stack dropped it) is given up after this.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-direction buffer of each relayed connection.
const TCP_BUFFER: usize = 64 * 1024;
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
    Conn(Handle),
    Connecting(FlowKey),
}

pub(crate) struct TcpRelay {
    net: UserNetConfig,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    listeners: Vec<(PortForward, TcpListener)>,
    sources: Sources<TcpToken>,
    conns: HashMap<Handle, Conn>,
    outbound: HashMap<FlowKey, Handle>,
    /// Connections to pump at the next turn: their host socket had events, or their guest side changed.
    ready: Vec<Handle>,
    ready_set: HashSet<Handle>,
    /// When connections are next to be looked at for reaping without any event (TIME-WAIT's end, a listener that
    /// never saw its SYN, a reset given its egress poll).
    reap_due: BTreeSet<(Instant, Handle)>,
    pending: HashMap<FlowKey, Pending>,
    inbound_ports: HashSet<u16>,
    next_port: u16,
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s =
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
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
            ready: Vec::new(),
            ready_set: HashSet::new(),
            reap_due: BTreeSet::new(),
            pending: HashMap::new(),
            inbound_ports: HashSet::new(),
            next_port: 49152,
        })
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
        sockets: &mut Sockets,
        device: &mut FrameDevice,
    ) {
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

    /// The host connect for `key` made progress: accept or refuse the guest's SYN.
    pub fn on_connect_ready(&mut self, key: FlowKey, sockets: &mut Sockets, device: &mut FrameDevice) {
        let Some(p) = self.pending.get(&key) else { return };
        match connect_result(&p.stream) {
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
    pub fn accept(&mut self, i: usize, iface: &mut Interface, sockets: &mut Sockets) {
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
            self.inbound_ports.insert(port);
            self.insert(handle, stream, source, Origin::Inbound(port));
            Counters::bump(&self.shared.stats.tcp_inbound);
        }
    }

    fn alloc_port(&mut self) -> Option<u16> {
        for _ in 0..=(u16::MAX - 49152) {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
            if !self.inbound_ports.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    /// The host socket of `handle` became readable (or closed, or failed) and/or writable.
    pub fn on_conn_events(&mut self, handle: Handle, readable: bool, writable: bool) {
        if let Some(c) = self.conns.get_mut(&handle) {
            c.readable |= readable;
            c.write_blocked &= !writable;
            self.make_ready(handle);
        }
    }

    /// Connection `handle` has something to pump (its guest side changed, or its host socket had events).
    pub fn make_ready(&mut self, handle: Handle) {
        if self.ready_set.insert(handle) {
            self.ready.push(handle);
        }
    }

    /// Whether connections wait to be pumped.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Moves bytes both ways on the connections that are ready, as far as buffers allow, and relays FINs and
    /// resets; then looks whether they are done (see [`TcpRelay::reap`]). A connection whose guest side this changed
    /// gets a turn to send at the stack's next poll.
    pub fn pump_ready(&mut self, sockets: &mut Sockets, now: Instant) {
        let ready = std::mem::take(&mut self.ready);
        self.ready_set.clear();
        let mut looked = Vec::with_capacity(ready.len());
        for handle in ready {
            let Some(c) = self.conns.get_mut(&handle) else { continue };
            if c.pump(sockets.get_mut_unmarked::<tcp::Socket>(handle)) {
                sockets.mark(handle);
            }
            looked.push(handle);
        }
        self.reap(sockets, now, looked);
    }

    /// Removes, among `looked` and those due, connections whose guest side is closed (after an egress poll, so a
    /// final reset went out), has lingered in TIME-WAIT, or whose listener never saw its SYN. Returns when it has
    /// something to do next without any event (none: only events will give it work).
    pub fn reap(&mut self, sockets: &mut Sockets, now: Instant, looked: Vec<Handle>) -> Option<Instant> {
        let mut due = Vec::new();
        while let Some(&(at, handle)) = self.reap_due.first() {
            if at > now {
                break;
            }
            self.reap_due.pop_first();
            due.push(handle);
        }
        let mut dead = Vec::new();
        let mut later = Vec::new();
        let mut seen = HashSet::new();
        // Each once: a connection pumped may be due too, and a second look would take it for closed before.
        for handle in looked.into_iter().chain(due).filter(|&h| seen.insert(h)) {
            let Some(c) = self.conns.get_mut(&handle) else { continue };
            let s = sockets.get::<tcp::Socket>(handle);
            let mut due_at = |at: Instant| later.push((at, handle));
            match s.state() {
                // The guest finished cleanly but the host peer still reads: deliver the rest first.
                State::Closed if c.saw_fin && c.stream.is_some() && !c.host_write_shut => continue,
                State::Closed => {}
                // Still writing what the guest sent to a host peer that reads slowly: not done yet.
                State::TimeWait if c.stream.is_some() && !c.host_write_shut => continue,
                State::TimeWait => {
                    let since = *c.time_wait_since.get_or_insert(now);
                    if now.duration_since(since) >= TIME_WAIT {
                        dead.push(handle);
                    } else {
                        due_at(since + TIME_WAIT);
                    }
                    continue;
                }
                State::Listen if now.duration_since(c.created) >= LISTEN_TIMEOUT => {
                    dead.push(handle);
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
                dead.push(handle);
            } else {
                // Removed at the next round, once the egress poll between has sent the final reset.
                due_at(now);
            }
            c.closed_before = true;
        }
        self.reap_due.extend(later);
        for handle in dead {
            self.remove(handle, sockets);
        }
        self.reap_due.first().map(|&(at, _)| at)
    }

    fn remove(&mut self, handle: Handle, sockets: &mut Sockets) {
        let Some(c) = self.conns.remove(&handle) else { return };
        sockets.remove(handle);
        self.sources.forget(c.source);
        self.shared.stats.tcp_live.fetch_sub(1, Ordering::Relaxed);
        match c.origin {
            Origin::Outbound(key) => {
                self.outbound.remove(&key);
            }
            Origin::Inbound(port) => {
                self.inbound_ports.remove(&port);
            }
        }
    }

    fn insert(&mut self, handle: Handle, stream: TcpStream, source: usize, origin: Origin) {
        self.shared.stats.tcp_live.fetch_add(1, Ordering::Relaxed);
        let conn = Conn::new(stream, source, origin);
        // A listener made for a SYN is given up if the SYN never comes (`reap`).
        self.reap_due.insert((conn.created + LISTEN_TIMEOUT, handle));
        self.conns.insert(handle, conn);
    }

    /// The stack's poll reached these sockets: those that are connections are pumped at the next turn.
    pub fn touched(&mut self, handles: Vec<Handle>) {
        for handle in handles {
            if self.conns.contains_key(&handle) {
                self.make_ready(handle);
            }
        }
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

    /// Moves what it can; returns whether the guest side changed (bytes taken or queued, a close or an abort),
    /// which its socket must send word of.
    fn pump(&mut self, s: &mut tcp::Socket<'static>) -> bool {
        let Some(stream) = &self.stream else { return false };
        let mut host_failed = false;
        let mut changed = false;

        // Guest → host.
        while !self.write_blocked && s.can_recv() {
            let r = s.recv(|buf| match (&*stream).write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => changed = true,
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
                    changed = true;
                }
                Ok(Ok(Some(_))) => changed = true,
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => host_failed = true,
            }
        }

        if host_failed {
            // The host side reset or broke: reset the guest side too.
            s.abort();
            changed = true;
            if let Some(stream) = self.stream.take() {
                close_with_reset(stream);
            }
        } else if self.host_eof && self.host_write_shut {
            // Both directions finished: the host socket has nothing left to do.
            self.stream = None;
        }
        changed
    }
}
