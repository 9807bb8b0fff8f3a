//! AF_UNIX sockets between the program's own descriptors: stream, datagram and seqpacket endpoints, each with a
//! queue of the messages sent to it. A message carries its bytes, the descriptions passed with it (SCM_RIGHTS) and,
//! for datagrams, its sender's name. A stream reads across messages; datagram and seqpacket reads take one message
//! each, cut to the buffer. A change of an endpoint (a message queued, room made, a peer gone) tells its waitable,
//! so blocking calls, `poll` and `epoll` work as for the other descriptors.

pub mod names;

use crate::errno::Errno;
use crate::file::wait::Waitable;
use crate::file::{File, POLLERR, POLLHUP, POLLIN, POLLOUT};
use crate::net::socket::Patience;
use crate::sync::SpinLock;
use crate::time;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use names::{Key, Name};

const POLLRDHUP: u16 = 0x2000;
pub const SHUT_RECEIVE: u8 = 1;
pub const SHUT_SEND: u8 = 2;
const SHUT_BOTH: u8 = SHUT_RECEIVE | SHUT_SEND;
/// Linux's default `wmem_default`/`rmem_default`, which AF_UNIX sockets start with (getsockopt reports it as is).
pub const DEFAULT_BUFFER: usize = 212_992;
/// Linux's `net.unix.max_dgram_qlen`: datagrams an endpoint queues before senders wait.
const MAX_QUEUED_DATAGRAMS: usize = 512;
/// Linux refuses a datagram within 32 bytes of the send buffer (EMSGSIZE).
const DATAGRAM_OVERHEAD: usize = 32;
/// A backlog larger than this is this (Linux's `somaxconn`).
pub const MAX_BACKLOG: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    Stream,
    Datagram,
    SeqPacket,
}

impl Kind {
    fn connected(self) -> bool {
        self != Kind::Datagram
    }
}

pub struct Message {
    data: Vec<u8>,
    /// Bytes of a stream message already read.
    read: usize,
    rights: Vec<Arc<File>>,
    from: Option<Name>,
}

enum Role {
    Fresh,
    Listening { backlog: VecDeque<Arc<Endpoint>>, max: usize },
    Connected,
}

struct State {
    role: Role,
    name: Option<Name>,
    key: Option<Key>,
    /// The other end of a connection, or a datagram socket's default destination.
    peer: Option<Arc<Endpoint>>,
    queue: VecDeque<Message>,
    queued_bytes: usize,
    shutdown: u8,
    error: Option<Errno>,
    closed: bool,
    send_buffer: usize,
    receive_buffer: usize,
    pass_credentials: bool,
    /// SO_RCVTIMEO and SO_SNDTIMEO, in ns (0: none).
    timeouts: [u64; 2],
}

impl State {
    /// Whether a sender must wait before it adds to this queue.
    fn full(&self, kind: Kind) -> bool {
        self.queued_bytes >= self.receive_buffer.max(1)
            || (kind != Kind::Stream && self.queue.len() >= MAX_QUEUED_DATAGRAMS)
    }
}

pub struct Endpoint {
    pub kind: Kind,
    pub waitable: Arc<Waitable>,
    state: SpinLock<State>,
}

/// What a receive got.
#[derive(Default)]
pub struct Received {
    pub n: usize,
    /// The message's whole length (datagram and seqpacket; for a stream `n`).
    pub full: usize,
    pub rights: Vec<Arc<File>>,
    pub from: Option<Name>,
}

/// A descriptor's hold on an endpoint: closing the last descriptor closes it.
pub struct Socket(pub Arc<Endpoint>);

impl Drop for Socket {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Waits for `waitable` to change or `patience` to run out (EAGAIN), for a call that found nothing to do after it
/// read the count `seen`.
fn wait(waitable: &Waitable, seen: u64, patience: Patience) -> Result<(), Errno> {
    match patience {
        Patience::Until(deadline) if time::since_boot_ns() < deadline => waitable.wait(seen, deadline),
        _ => Err(Errno::EAGAIN),
    }
}

impl Endpoint {
    pub fn new(kind: Kind) -> Arc<Endpoint> {
        let state = State {
            role: Role::Fresh,
            name: None,
            key: None,
            peer: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            shutdown: 0,
            error: None,
            closed: false,
            send_buffer: DEFAULT_BUFFER,
            receive_buffer: DEFAULT_BUFFER,
            pass_credentials: false,
            timeouts: [0; 2],
        };
        Arc::new(Endpoint { kind, waitable: Waitable::new(), state: SpinLock::new(state) })
    }

    /// socketpair: two endpoints connected to each other.
    pub fn pair(kind: Kind) -> (Arc<Endpoint>, Arc<Endpoint>) {
        let (a, b) = (Endpoint::new(kind), Endpoint::new(kind));
        Endpoint::join(&a, &b);
        (a, b)
    }

    fn join(a: &Arc<Endpoint>, b: &Arc<Endpoint>) {
        for (this, other) in [(a, b), (b, a)] {
            let mut s = this.state.lock();
            s.peer = Some(other.clone());
            s.role = Role::Connected;
        }
    }

    pub fn bind(self: &Arc<Self>, name: Option<Name>) -> Result<(), Errno> {
        if self.state.lock().name.is_some() {
            return Err(Errno::EINVAL);
        }
        let name = name.unwrap_or_else(|| names::unused_abstract(self.kind));
        let key = names::bind(&name, self)?;
        let mut s = self.state.lock();
        s.name = Some(name);
        s.key = Some(key);
        Ok(())
    }

    pub fn listen(&self, backlog: i32) -> Result<(), Errno> {
        if !self.kind.connected() {
            return Err(Errno::EOPNOTSUPP);
        }
        let max = usize::try_from(backlog).unwrap_or(0).min(MAX_BACKLOG);
        let mut s = self.state.lock();
        if s.name.is_none() {
            return Err(Errno::EINVAL);
        }
        match &mut s.role {
            Role::Fresh => s.role = Role::Listening { backlog: VecDeque::new(), max },
            Role::Listening { max: old, .. } => *old = max,
            Role::Connected => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    /// Connects to the socket bound to `name`: a connection for stream and seqpacket (queued on the listener until
    /// accepted, usable at once), the default destination for a datagram socket.
    pub fn connect(self: &Arc<Self>, name: &Name, patience: Patience) -> Result<(), Errno> {
        let target = names::find(name, self.kind)?;
        if !self.kind.connected() {
            self.state.lock().peer = Some(target);
            return Ok(());
        }
        if matches!(self.state.lock().role, Role::Connected | Role::Listening { .. }) {
            return Err(Errno::EISCONN);
        }
        let server = Endpoint::new(self.kind);
        loop {
            let seen = target.waitable.count();
            {
                let mut t = target.state.lock();
                let listener_name = t.name.clone();
                let (send_buffer, receive_buffer) = (t.send_buffer, t.receive_buffer);
                if t.closed {
                    return Err(Errno::ECONNREFUSED);
                }
                let Role::Listening { backlog, max } = &mut t.role else { return Err(Errno::ECONNREFUSED) };
                if backlog.len() <= *max {
                    {
                        let mut s = server.state.lock();
                        s.name = listener_name;
                        s.send_buffer = send_buffer;
                        s.receive_buffer = receive_buffer;
                    }
                    Endpoint::join(self, &server);
                    backlog.push_back(server);
                    drop(t);
                    target.waitable.changed();
                    return Ok(());
                }
            }
            wait(&target.waitable, seen, patience)?;
        }
    }

    /// Forgets a datagram socket's default destination (connect to AF_UNSPEC).
    pub fn disconnect(&self) {
        if !self.kind.connected() {
            self.state.lock().peer = None;
        }
    }

    pub fn accept(&self, patience: Patience) -> Result<Arc<Endpoint>, Errno> {
        loop {
            let seen = self.waitable.count();
            {
                let mut s = self.state.lock();
                let Role::Listening { backlog, .. } = &mut s.role else { return Err(Errno::EINVAL) };
                if let Some(connection) = backlog.pop_front() {
                    drop(s);
                    // Room in the backlog for a connect that waits.
                    self.waitable.changed();
                    return Ok(connection);
                }
            }
            wait(&self.waitable, seen, patience)?;
        }
    }

    /// Sends `data` with `rights` (to `to`, for an unconnected datagram socket). A stream takes what fits and waits
    /// for room for the rest; a datagram or seqpacket message goes whole.
    pub fn send(
        &self,
        data: &[u8],
        mut rights: Vec<Arc<File>>,
        to: Option<&Name>,
        patience: Patience,
    ) -> Result<usize, Errno> {
        let (peer, own_name, send_buffer) = {
            let s = self.state.lock();
            if s.shutdown & SHUT_SEND != 0 {
                return Err(Errno::EPIPE);
            }
            (s.peer.clone(), s.name.clone(), s.send_buffer)
        };
        let target = match (self.kind, to, peer) {
            (Kind::Datagram, Some(name), _) => names::find(name, self.kind)?,
            (Kind::Datagram, None, Some(peer)) => peer,
            (Kind::Datagram, None, None) => return Err(Errno::ENOTCONN),
            (_, _, Some(peer)) => peer,
            (_, _, None) => return Err(Errno::ENOTCONN),
        };
        if self.kind != Kind::Stream && data.len() > send_buffer.saturating_sub(DATAGRAM_OVERHEAD) {
            return Err(Errno::EMSGSIZE);
        }
        if self.kind == Kind::Stream && data.is_empty() {
            return Ok(0);
        }
        // A connection's sender waits on its own endpoint, which the peer's reads tell; a datagram sender on the
        // receiver's.
        let waits_on = if self.kind == Kind::Datagram { &target.waitable } else { &self.waitable };
        let mut done = 0;
        loop {
            let seen = waits_on.count();
            {
                let mut t = target.state.lock();
                if t.closed || t.shutdown & SHUT_RECEIVE != 0 {
                    drop(t);
                    return self.refused(&target, done);
                }
                if self.kind == Kind::Datagram {
                    if let Some(theirs) = &t.peer {
                        if !core::ptr::eq(Arc::as_ptr(theirs), self) {
                            return Err(Errno::EPERM);
                        }
                    }
                }
                if !t.full(self.kind) {
                    let take = match self.kind {
                        Kind::Stream => (data.len() - done).min(t.receive_buffer.saturating_sub(t.queued_bytes)),
                        _ => data.len(),
                    };
                    let message = Message {
                        data: data[done..done + take].to_vec(),
                        read: 0,
                        rights: core::mem::take(&mut rights),
                        from: own_name.clone(),
                    };
                    t.queued_bytes += take;
                    t.queue.push_back(message);
                    drop(t);
                    target.waitable.changed();
                    done += take;
                    if done == data.len() {
                        return Ok(done);
                    }
                    continue;
                }
            }
            match wait(waits_on, seen, patience) {
                Ok(()) => {}
                // Interrupted or out of time after sending some: a short write, as Linux reports it.
                Err(_) if done > 0 => return Ok(done),
                Err(e) => return Err(e),
            }
        }
    }

    /// A send to a peer that is gone: EPIPE on a connection; for a datagram socket, ECONNREFUSED, forgetting that
    /// destination if it was the default, as Linux does.
    fn refused(&self, target: &Arc<Endpoint>, done: usize) -> Result<usize, Errno> {
        if done > 0 {
            return Ok(done);
        }
        if self.kind.connected() {
            return Err(Errno::EPIPE);
        }
        let mut s = self.state.lock();
        if s.peer.as_ref().is_some_and(|p| Arc::ptr_eq(p, target)) {
            s.peer = None;
        }
        Err(Errno::ECONNREFUSED)
    }

    /// Receives into `out`: a stream's bytes up to the first message that carries descriptions (whose are taken
    /// with it), or one datagram or seqpacket message, cut to `out` (the rest is dropped unless `peek`).
    pub fn recv(&self, out: &mut [u8], peek: bool, patience: Patience) -> Result<Received, Errno> {
        loop {
            let seen = self.waitable.count();
            let mut s = self.state.lock();
            if self.kind == Kind::Stream && !matches!(s.role, Role::Connected) {
                return Err(Errno::EINVAL);
            }
            // Linux's seqpacket receive (its datagram code) reports a pending error before queued messages.
            if self.kind == Kind::SeqPacket {
                if let Some(error) = s.error.take() {
                    return Err(error);
                }
            }
            if !s.queue.is_empty() {
                let was_full = s.full(self.kind);
                let got = if self.kind == Kind::Stream {
                    take_stream(&mut s, out, peek)
                } else {
                    take_message(&mut s, out, peek)
                };
                let peer = s.peer.clone();
                drop(s);
                if was_full && !peek {
                    // Room for a waiting sender: a connection's waits on its own endpoint, a datagram's on ours.
                    self.waitable.changed();
                    if let Some(peer) = peer {
                        peer.waitable.changed();
                    }
                }
                return Ok(got);
            }
            if let Some(error) = s.error.take() {
                return Err(error);
            }
            if s.shutdown & SHUT_RECEIVE != 0 || (out.is_empty() && self.kind == Kind::Stream) {
                return Ok(Received::default());
            }
            if self.kind == Kind::SeqPacket && !matches!(s.role, Role::Connected) {
                return Err(Errno::ENOTCONN);
            }
            drop(s);
            wait(&self.waitable, seen, patience)?;
        }
    }

    pub fn shutdown(&self, how: u8) -> Result<(), Errno> {
        let peer = {
            let mut s = self.state.lock();
            if self.kind.connected() && !matches!(s.role, Role::Connected) {
                return Err(Errno::ENOTCONN);
            }
            s.shutdown |= how;
            s.peer.clone()
        };
        self.waitable.changed();
        if let Some(peer) = peer.filter(|_| self.kind.connected()) {
            // The peer's mirror: our receiving side shut is its sending side shut, and the other way round.
            let mirror = (if how & SHUT_RECEIVE != 0 { SHUT_SEND } else { 0 })
                | if how & SHUT_SEND != 0 { SHUT_RECEIVE } else { 0 };
            peer.state.lock().shutdown |= mirror;
            peer.waitable.changed();
        }
        Ok(())
    }

    /// The descriptor's end: the name goes, queued messages (and descriptions they carry) are dropped, the peer of a
    /// connection sees end-of-file and EPIPE (ECONNRESET first if we left data unread), and connections waiting in a
    /// listener's backlog are closed.
    fn close(&self) {
        let (peer, queue, backlog, key, unread) = {
            let mut s = self.state.lock();
            s.closed = true;
            s.shutdown = SHUT_BOTH;
            let backlog = match core::mem::replace(&mut s.role, Role::Fresh) {
                Role::Listening { backlog, .. } => backlog,
                _ => VecDeque::new(),
            };
            let queue = core::mem::take(&mut s.queue);
            s.queued_bytes = 0;
            let unread = !queue_is_empty(&queue);
            (s.peer.take(), queue, backlog, s.key.take(), unread)
        };
        if let Some(key) = key {
            names::release(&key, self);
        }
        if let Some(peer) = peer.filter(|_| self.kind.connected()) {
            {
                let mut p = peer.state.lock();
                p.shutdown = SHUT_BOTH;
                if unread {
                    p.error = Some(Errno::ECONNRESET);
                }
            }
            peer.waitable.changed();
        }
        for connection in backlog {
            connection.close();
        }
        // Dropped here, outside every lock: a description passed in a message may be the last hold on a socket.
        drop(queue);
        self.waitable.changed();
    }

    /// The `poll` events of the endpoint now, as Linux's `unix_poll` and `unix_dgram_poll` report them.
    pub fn events(&self) -> u16 {
        let (peer, mut events) = {
            let s = self.state.lock();
            if let Role::Listening { backlog, .. } = &s.role {
                return if backlog.is_empty() { 0 } else { POLLIN };
            }
            let mut events = 0;
            if s.error.is_some() {
                events |= POLLERR;
            }
            if s.shutdown == SHUT_BOTH {
                events |= POLLHUP;
            }
            if s.shutdown & SHUT_RECEIVE != 0 {
                events |= POLLIN | POLLRDHUP;
            }
            if !s.queue.is_empty() {
                events |= POLLIN;
            }
            if self.kind.connected() && matches!(s.role, Role::Fresh) {
                events |= POLLHUP;
            }
            (s.peer.clone(), events)
        };
        // Writable while the receiver has room (or a write would fail at once).
        let room = match peer {
            Some(peer) => {
                let p = peer.state.lock();
                p.closed || !p.full(self.kind)
            }
            None => true,
        };
        if room {
            events |= POLLOUT;
        }
        events
    }

    /// FIONREAD: the next datagram's length; for a stream or seqpacket socket every byte queued, as Linux says.
    pub fn available(&self) -> usize {
        let s = self.state.lock();
        match self.kind {
            Kind::Datagram => s.queue.front().map_or(0, |m| m.data.len()),
            _ => s.queued_bytes,
        }
    }

    pub fn name(&self) -> Option<Name> {
        self.state.lock().name.clone()
    }

    /// The name of the peer: ENOTCONN without one.
    pub fn peer_name(&self) -> Result<Option<Name>, Errno> {
        let peer = self.state.lock().peer.clone().ok_or(Errno::ENOTCONN)?;
        let name = peer.state.lock().name.clone();
        Ok(name)
    }

    pub fn is_connected(&self) -> bool {
        let s = self.state.lock();
        s.peer.is_some() && (!self.kind.connected() || matches!(s.role, Role::Connected))
    }

    pub fn is_listening(&self) -> bool {
        matches!(self.state.lock().role, Role::Listening { .. })
    }

    pub fn take_error(&self) -> Option<Errno> {
        self.state.lock().error.take()
    }

    /// SO_SNDBUF and SO_RCVBUF, as the library OS uses them.
    pub fn buffers(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.send_buffer, s.receive_buffer)
    }

    pub fn set_buffer(&self, send: bool, bytes: usize) {
        let mut s = self.state.lock();
        if send {
            s.send_buffer = bytes;
        } else {
            s.receive_buffer = bytes;
        }
        drop(s);
        self.waitable.changed();
    }

    pub fn passes_credentials(&self) -> bool {
        self.state.lock().pass_credentials
    }

    pub fn set_pass_credentials(&self, on: bool) {
        self.state.lock().pass_credentials = on;
    }

    pub fn timeout(&self, send: bool) -> u64 {
        self.state.lock().timeouts[usize::from(send)]
    }

    pub fn set_timeout(&self, send: bool, ns: u64) {
        self.state.lock().timeouts[usize::from(send)] = ns;
    }
}

fn queue_is_empty(queue: &VecDeque<Message>) -> bool {
    queue.iter().all(|m| m.read == m.data.len())
}

/// A stream read: bytes across messages, stopping before a message with descriptions once some bytes were read,
/// and after one.
fn take_stream(s: &mut State, out: &mut [u8], peek: bool) -> Received {
    let mut got = Received::default();
    let mut at = 0;
    let mut index = 0;
    while at < out.len() {
        let Some(message) = s.queue.get_mut(index) else { break };
        let carries = !message.rights.is_empty();
        if carries && at > 0 {
            break;
        }
        if at == 0 {
            got.from = message.from.clone();
        }
        let n = (message.data.len() - message.read).min(out.len() - at);
        out[at..at + n].copy_from_slice(&message.data[message.read..message.read + n]);
        at += n;
        if peek {
            got.rights.extend(message.rights.iter().cloned());
            index += 1;
        } else {
            got.rights.append(&mut message.rights);
            message.read += n;
            s.queued_bytes -= n;
            if message.read == message.data.len() {
                s.queue.pop_front();
            }
        }
        if carries {
            break;
        }
    }
    got.n = at;
    got.full = at;
    got
}

/// A datagram or seqpacket read: one message, cut to `out`.
fn take_message(s: &mut State, out: &mut [u8], peek: bool) -> Received {
    let Some(message) = s.queue.front_mut() else { return Received::default() };
    let n = message.data.len().min(out.len());
    out[..n].copy_from_slice(&message.data[..n]);
    let full = message.data.len();
    if peek {
        return Received { n, full, rights: message.rights.clone(), from: message.from.clone() };
    }
    let message = s.queue.pop_front().expect("looked at above");
    s.queued_bytes -= full;
    Received { n, full, rights: message.rights, from: message.from }
}
