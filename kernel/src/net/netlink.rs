//! NETLINK_ROUTE sockets, enough to describe the VM's interfaces: RTM_GETLINK and RTM_GETADDR (dumps, or one link by
//! index) answer with what the library OS has, `lo` (127.0.0.1/8, ::1/128) and, with a network card, `eth0` with
//! its MAC, MTU and addresses. That is what Go's `net.Interfaces()`, glibc's and musl's `getifaddrs` and
//! `if_nameindex` ask. Other requests get an NLMSG_ERROR of EOPNOTSUPP. Each answer message is a datagram of its own.

use super::interfaces::{interfaces, Address, Interface, AF_INET, ARPHRD_LOOPBACK};
use crate::errno::Errno;
use crate::file::wait::Waitable;
use crate::file::{POLLIN, POLLOUT};
use crate::net::socket::Patience;
use crate::sync::SpinLock;
use crate::time;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

pub const AF_NETLINK: u16 = 16;
pub const NETLINK_ROUTE: u64 = 0;
const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_MULTI: u16 = 2;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFLA_ADDRESS: u16 = 1;
const IFLA_BROADCAST: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_TXQLEN: u16 = 13;
const IFLA_OPERSTATE: u16 = 16;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_BROADCAST: u16 = 4;
const AF_UNSPEC: u8 = 0;
const IFA_F_PERMANENT: u8 = 0x80;
/// The most answers one socket holds unread; a program that asks without reading gets ENOBUFS, as from Linux.
const MAX_QUEUED: usize = 1024;

/// Builds one netlink message: the header, then the fixed part and attributes the caller adds.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, port: u32) -> Message {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&port.to_le_bytes());
        Message(bytes)
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Message {
        self.0.extend_from_slice(bytes);
        self
    }

    /// An `rtattr`: length, type, value, padded to 4 bytes.
    fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Message {
        self.put(&((4 + value.len()) as u16).to_le_bytes()).put(&kind.to_le_bytes()).put(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn done(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

fn name_value(name: &str) -> Vec<u8> {
    let mut v = Vec::from(name.as_bytes());
    v.push(0);
    v
}

fn link_message(i: &Interface, flags: u16, seq: u32, port: u32) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, flags, seq, port);
    // struct ifinfomsg: family, pad, type, index, flags, change.
    m.put(&[AF_UNSPEC, 0]).put(&i.kind.to_le_bytes()).put(&i.index.to_le_bytes()).put(&i.flags.to_le_bytes());
    m.put(&0u32.to_le_bytes());
    m.attribute(IFLA_IFNAME, &name_value(i.name)).attribute(IFLA_MTU, &i.mtu.to_le_bytes());
    m.attribute(IFLA_TXQLEN, &1000u32.to_le_bytes());
    // IF_OPER_UNKNOWN for the loopback, IF_OPER_UP for the card, as Linux reports them.
    m.attribute(IFLA_OPERSTATE, &[if i.kind == ARPHRD_LOOPBACK { 0 } else { 6 }]);
    m.attribute(IFLA_ADDRESS, &i.mac).attribute(IFLA_BROADCAST, &i.broadcast);
    m.done()
}

fn address_message(i: &Interface, address: &Address, flags: u16, seq: u32, port: u32) -> Vec<u8> {
    let Address { family, bytes, prefix, scope } = address;
    let mut m = Message::new(RTM_NEWADDR, flags, seq, port);
    // struct ifaddrmsg: family, prefix length, flags, scope, index.
    m.put(&[*family, *prefix, IFA_F_PERMANENT, *scope]).put(&i.index.to_le_bytes());
    m.attribute(IFA_ADDRESS, bytes);
    if *family == AF_INET {
        m.attribute(IFA_LOCAL, bytes);
        if i.kind != ARPHRD_LOOPBACK {
            m.attribute(IFA_BROADCAST, &address.broadcast());
        }
        m.attribute(IFA_LABEL, &name_value(i.name));
    }
    m.done()
}

fn error_message(error: Errno, request: &[u8], seq: u32, port: u32) -> Vec<u8> {
    let mut m = Message::new(NLMSG_ERROR, 0, seq, port);
    // The whole request follows the error, as Linux sends it without NETLINK_CAP_ACK.
    m.put(&(-(error.0 as i32)).to_le_bytes()).put(request);
    m.done()
}

/// The answers to the requests in `data` (one or more `nlmsghdr`s).
fn answer(data: &[u8], port: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() - at >= NLMSG_HEADER {
        let word = |o: usize| u32::from_le_bytes([data[at + o], data[at + o + 1], data[at + o + 2], data[at + o + 3]]);
        let len = word(0) as usize;
        if len < NLMSG_HEADER || len > data.len() - at {
            break;
        }
        let request = &data[at..at + len];
        let kind = u16::from_le_bytes([request[4], request[5]]);
        let flags = u16::from_le_bytes([request[6], request[7]]);
        let seq = word(8);
        let payload = &request[NLMSG_HEADER..];
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let multi = if dump { NLM_F_MULTI } else { 0 };
        match kind {
            RTM_GETLINK => {
                // A request for one link names it in its ifinfomsg (index at offset 4).
                let index = (payload.len() >= 8 && !dump)
                    .then(|| u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]));
                let all = interfaces();
                let chosen: Vec<&Interface> =
                    all.iter().filter(|i| index.is_none_or(|x| x == 0 || x == i.index)).collect();
                if chosen.is_empty() {
                    out.push(error_message(Errno::ENODEV, request, seq, port));
                }
                for i in chosen {
                    out.push(link_message(i, multi, seq, port));
                }
            }
            RTM_GETADDR => {
                let family = payload.first().copied().unwrap_or(AF_UNSPEC);
                for i in &interfaces() {
                    for address in i.addresses.iter().filter(|a| family == AF_UNSPEC || a.family == family) {
                        out.push(address_message(i, address, multi, seq, port));
                    }
                }
            }
            _ => {
                out.push(error_message(Errno::EOPNOTSUPP, request, seq, port));
                at += len.div_ceil(4) * 4;
                continue;
            }
        }
        if dump {
            let mut done = Message::new(NLMSG_DONE, NLM_F_MULTI, seq, port);
            done.put(&0i32.to_le_bytes());
            out.push(done.done());
        }
        at += len.div_ceil(4) * 4;
        if at >= data.len() {
            break;
        }
    }
    out
}

/// Ports of sockets that bound none: Linux gives the first the process's pid and others negative numbers.
static NEXT_PORT: AtomicU32 = AtomicU32::new(1);

pub struct Netlink {
    pub waitable: Arc<Waitable>,
    state: SpinLock<State>,
}

struct State {
    port: u32,
    answers: VecDeque<Vec<u8>>,
}

impl Netlink {
    pub fn new() -> Arc<Netlink> {
        Arc::new(Netlink {
            waitable: Waitable::new(),
            state: SpinLock::new(State { port: 0, answers: VecDeque::new() }),
        })
    }

    /// The socket's port; picks one if it has none (bind to 0, or the first send).
    pub fn port(&self) -> u32 {
        let mut s = self.state.lock();
        if s.port == 0 {
            let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
            s.port = if n == 1 { super::super::syscalls::PID as u32 } else { (-(n as i32) - 4095) as u32 };
        }
        s.port
    }

    /// Port as getsockname reports it: 0 until one was picked.
    pub fn bound_port(&self) -> u32 {
        self.state.lock().port
    }

    pub fn bind(&self, port: u32) -> Result<(), Errno> {
        if port == 0 {
            self.port();
            return Ok(());
        }
        self.state.lock().port = port;
        Ok(())
    }

    /// Takes requests; their answers queue up to be received.
    pub fn send(&self, data: &[u8]) -> Result<usize, Errno> {
        let port = self.port();
        let answers = answer(data, port);
        {
            let mut s = self.state.lock();
            if s.answers.len() + answers.len() > MAX_QUEUED {
                return Err(Errno::ENOBUFS);
            }
            s.answers.extend(answers);
        }
        self.waitable.changed();
        Ok(data.len())
    }

    /// The next answer, cut to `out` (its full length returned too); kept if `peek`.
    pub fn recv(&self, out: &mut [u8], peek: bool, patience: Patience) -> Result<(usize, usize), Errno> {
        loop {
            let seen = self.waitable.count();
            {
                let mut s = self.state.lock();
                if let Some(answer) = s.answers.front() {
                    let n = answer.len().min(out.len());
                    out[..n].copy_from_slice(&answer[..n]);
                    let full = answer.len();
                    if !peek {
                        s.answers.pop_front();
                    }
                    return Ok((n, full));
                }
            }
            match patience {
                Patience::Until(deadline) if time::since_boot_ns() < deadline => self.waitable.wait(seen, deadline)?,
                _ => return Err(Errno::EAGAIN),
            }
        }
    }

    pub fn events(&self) -> u16 {
        POLLOUT | if self.state.lock().answers.is_empty() { 0 } else { POLLIN }
    }

    pub fn available(&self) -> usize {
        self.state.lock().answers.front().map_or(0, Vec::len)
    }
}
