//! The host sockets the relay waits on, registered once with one epoll instance (through mio) instead of being
//! handed to poll(2) on every turn of the loop: with 10,000 connections, building and scanning that poll(2) list was
//! three quarters of the relay thread's time. Each relay keeps its own table of what its ids stand for; a token
//! carries the id and which relay owns it. Registrations are edge-triggered (mio's only mode): the relays read,
//! write and accept until EAGAIN, and remember readiness themselves.

use std::collections::HashMap;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Which part of the relay a token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Engine,
    Tcp,
    Udp,
}

const OWNER_BITS: u32 = 2;

impl Owner {
    fn bits(self) -> usize {
        match self {
            Owner::Engine => 0,
            Owner::Tcp => 1,
            Owner::Udp => 2,
        }
    }

    /// The owner of `token`, if any.
    pub fn of(token: Token) -> Option<Owner> {
        [Owner::Engine, Owner::Tcp, Owner::Udp].into_iter().find(|o| o.bits() == token.0 & ((1 << OWNER_BITS) - 1))
    }

    /// The engine's own token number `id`.
    pub fn engine_token(id: usize) -> Token {
        Token(id << OWNER_BITS | Owner::Engine.bits())
    }
}

/// One relay's registered sockets: id → what it stands for (`T`).
pub(crate) struct Sources<T> {
    registry: Registry,
    owner: Owner,
    ids: HashMap<usize, T>,
    next: usize,
}

impl<T: Copy> Sources<T> {
    pub fn new(registry: Registry, owner: Owner) -> Sources<T> {
        Sources { registry, owner, ids: HashMap::new(), next: 0 }
    }

    fn token(&self, id: usize) -> Token {
        Token(id << OWNER_BITS | self.owner.bits())
    }

    /// Waits on `fd` for `interest`, as `what`; returns its id. The kernel may refuse (out of memory, or the
    /// per-user watch limit); the caller then gives the socket up.
    pub fn add(&mut self, fd: RawFd, interest: Interest, what: T) -> std::io::Result<usize> {
        let id = self.next;
        self.next = self.next.wrapping_add(1) & (usize::MAX >> OWNER_BITS);
        self.registry.register(&mut SourceFd(&fd), self.token(id), interest)?;
        self.ids.insert(id, what);
        Ok(id)
    }

    /// Waits on `fd`, already registered as `id`, for `interest` and as `what` from now on.
    pub fn change(&mut self, id: usize, fd: RawFd, interest: Interest, what: T) -> bool {
        if self.registry.reregister(&mut SourceFd(&fd), self.token(id), interest).is_err() {
            return false;
        }
        self.ids.insert(id, what);
        true
    }

    /// Forgets `id`. Its socket leaves the epoll set when it is closed; an event still queued for it is ignored.
    pub fn forget(&mut self, id: usize) {
        self.ids.remove(&id);
    }

    /// What `token` (one of ours) stands for, if it is still registered.
    pub fn lookup(&self, token: Token) -> Option<T> {
        self.ids.get(&(token.0 >> OWNER_BITS)).copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn tokens_carry_their_owner_and_id() {
        let poll = mio::Poll::new().unwrap();
        let mut udp: Sources<u32> = Sources::new(poll.registry().try_clone().unwrap(), Owner::Udp);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let id = udp.add(socket.as_raw_fd(), Interest::READABLE, 7).unwrap();
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"x", socket.local_addr().unwrap()).unwrap();
        let mut poll = poll;
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        let event = events.iter().next().expect("the datagram makes the socket readable");
        assert_eq!((Owner::of(event.token()), udp.lookup(event.token())), (Some(Owner::Udp), Some(7)));
        assert_eq!(Owner::of(Owner::engine_token(0)), Some(Owner::Engine));
        udp.forget(id);
        assert_eq!((udp.lookup(event.token()), udp.len()), (None, 0));
    }
}
