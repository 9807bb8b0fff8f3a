//! A blocking rtnetlink client for the few requests pod networking makes (links, addresses, routes, tc), on
//! `netlink-sys`'s socket with `netlink-packet-route`'s messages: the shim serves ttrpc on plain threads, and
//! `rtnetlink`'s async client would bring a tokio runtime into every shim for a handful of requests.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;

/// The most messages one request may be answered with (a dump of a pod's few links, addresses and routes is far
/// less): a bound on the loop, not a limit anyone meets.
const MAX_REPLIES: usize = 4096;

pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

/// How a request is sent: a dump (answered with many messages), or a change (answered with an acknowledgement).
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Dump,
    /// Made, failing if it exists.
    Create,
    /// Changed or deleted.
    Change,
}

impl Rtnl {
    /// A route netlink socket in this thread's network namespace.
    pub fn new() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, sequence: 0 })
    }

    /// Sends `message` and returns what the kernel answered (a dump's messages; nothing for a change), or its error.
    pub fn request(&mut self, message: RouteNetlinkMessage, kind: Kind) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | match kind {
                Kind::Dump => NLM_F_DUMP,
                Kind::Create => NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                Kind::Change => NLM_F_ACK,
            };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        for _ in 0..MAX_REPLIES {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at < datagram.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
                let len = reply.header.length as usize;
                at += len.max(1).next_multiple_of(4);
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "netlink: the kernel's answer did not end"))
    }
}
