//! The socket syscalls: AF_INET and AF_INET6, SOCK_STREAM (TCP) and SOCK_DGRAM (UDP), over `crate::net`. `read`,
//! `write`, `poll`, `epoll` and `ioctl(FIONREAD)` on sockets go through `file`.

use super::{netlink, unix, Args};
use crate::errno::{Errno, SysResult};
use crate::file::console::IoVec;
use crate::file::{self, File, Object, O_CLOEXEC, O_NONBLOCK, O_RDWR};
use crate::net::addr::{self, AF_INET, AF_INET6};
use crate::net::kept;
use crate::net::netlink::{Netlink, AF_NETLINK, NETLINK_ROUTE};
use crate::net::options::{Direction, Keep};
use crate::net::socket::{Patience, Socket, MAX_BACKLOG, TCP_BUFFER, UDP_BUFFER};
use crate::net::unix::Endpoint;
use crate::net::Protocol;
use crate::user;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::wire::{IpAddress, IpEndpoint};

const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
const SOCK_RAW: u64 = 3;
const SOCK_TYPE_MASK: u64 = 0xf;
const SOCK_NONBLOCK: u64 = O_NONBLOCK as u64;
const SOCK_CLOEXEC: u64 = O_CLOEXEC as u64;
const IPPROTO_IP: u64 = 0;
const IPPROTO_TCP: u64 = 6;
const IPPROTO_UDP: u64 = 17;
const IPPROTO_IPV6: u64 = 41;
const SOL_SOCKET: u64 = 1;
const SO_TYPE: u64 = 3;
const SO_ERROR: u64 = 4;
const SO_SNDBUF: u64 = 7;
const SO_RCVBUF: u64 = 8;
const SO_KEEPALIVE: u64 = 9;
const SO_LINGER: u64 = 13;
const SO_RCVTIMEO: u64 = 20;
const SO_SNDTIMEO: u64 = 21;
const SO_ACCEPTCONN: u64 = 30;
const SO_DOMAIN: u64 = 39;
const SO_PROTOCOL: u64 = 38;
const TCP_KEEPIDLE: u64 = 4;
const TCP_KEEPINTVL: u64 = 5;
const TCP_KEEPCNT: u64 = 6;
const SO_BINDTODEVICE: u64 = 25;
const IP_ADD_MEMBERSHIP: u64 = 35;
const IP_DROP_MEMBERSHIP: u64 = 36;
const IPV6_ADD_MEMBERSHIP: u64 = 20;
const IPV6_DROP_MEMBERSHIP: u64 = 21;
const TCP_CONGESTION: u64 = 13;
const TCP_ULP: u64 = 31;
const MSG_PEEK: u64 = 0x2;
const MSG_TRUNC: u64 = 0x20;
const MSG_DONTWAIT: u64 = 0x40;
const MSG_NOSIGNAL: u64 = 0x4000;
const SHUT_RD: u64 = 0;
const SHUT_WR: u64 = 1;
const SHUT_RDWR: u64 = 2;
/// Most bytes one datagram or one `recv` moves through the library OS at a time.
const MAX_TRANSFER: usize = 64 << 10;

/// The socket behind descriptor `fd`: EBADF if none, ENOTSOCK if it is something else.
fn socket_of(fd: u64) -> Result<Arc<File>, Errno> {
    let f = file::get(fd)?;
    match f.object {
        Object::Socket(_) | Object::Unix(_) | Object::Netlink(_) => Ok(f),
        _ => Err(Errno::ENOTSOCK),
    }
}

/// The netlink socket of `f`, if it is one: the call goes to `syscalls::netlink`.
fn netlink_of(f: &File) -> Option<&Arc<Netlink>> {
    match &f.object {
        Object::Netlink(n) => Some(n),
        _ => None,
    }
}

/// The AF_UNIX endpoint of `f`, if it is one: the call goes to `syscalls::unix`.
fn unix_of(f: &File) -> Option<&Arc<Endpoint>> {
    match &f.object {
        Object::Unix(u) => Some(&u.0),
        _ => None,
    }
}

fn socket(f: &File) -> &Socket {
    match &f.object {
        Object::Socket(s) => s,
        _ => unreachable!("checked by socket_of"),
    }
}

pub fn socket_syscall(a: &Args) -> SysResult {
    let (domain, kind, protocol) = (a[0], a[1], a[2]);
    if kind & !(SOCK_TYPE_MASK | SOCK_NONBLOCK | SOCK_CLOEXEC) != 0 {
        return Err(Errno::EINVAL);
    }
    let family = match domain {
        d if d == u64::from(AF_INET) => AF_INET,
        d if d == u64::from(AF_INET6) => AF_INET6,
        d if d == u64::from(unix::AF_UNIX) => {
            let kind_of = unix::kind_of(kind & SOCK_TYPE_MASK).ok_or(Errno::ESOCKTNOSUPPORT)?;
            if protocol != 0 {
                return Err(Errno::EPROTONOSUPPORT);
            }
            let f = unix::new_file(Endpoint::new(kind_of), kind & SOCK_NONBLOCK != 0);
            return file::install(f, kind & SOCK_CLOEXEC != 0);
        }
        d if d == u64::from(AF_NETLINK) => {
            return match (kind & SOCK_TYPE_MASK, protocol) {
                (SOCK_RAW | SOCK_DGRAM, NETLINK_ROUTE) => {
                    file::install(netlink::new_file(kind & SOCK_NONBLOCK != 0), kind & SOCK_CLOEXEC != 0)
                }
                (SOCK_RAW | SOCK_DGRAM, _) => Err(Errno::EPROTONOSUPPORT),
                _ => Err(Errno::ESOCKTNOSUPPORT),
            };
        }
        _ => return Err(Errno::EAFNOSUPPORT),
    };
    let protocol = match (kind & SOCK_TYPE_MASK, protocol) {
        (SOCK_STREAM, 0 | IPPROTO_TCP) => Protocol::Tcp,
        (SOCK_DGRAM, 0 | IPPROTO_UDP) => Protocol::Udp,
        (SOCK_STREAM | SOCK_DGRAM, _) => return Err(Errno::EPROTONOSUPPORT),
        _ => return Err(Errno::EINVAL),
    };
    let flags = O_RDWR | if kind & SOCK_NONBLOCK != 0 { O_NONBLOCK } else { 0 };
    file::install(File::new(Object::Socket(Socket::new(family, protocol)?), flags), kind & SOCK_CLOEXEC != 0)
}

/// socketpair(AF_UNIX, ...): two connected stream, datagram or seqpacket sockets.
pub fn socketpair(a: &Args) -> SysResult {
    let (domain, kind, sv) = (a[0], a[1], a[3]);
    if domain != u64::from(unix::AF_UNIX) {
        return Err(if domain == u64::from(AF_INET) || domain == u64::from(AF_INET6) {
            Errno::EOPNOTSUPP
        } else {
            Errno::EAFNOSUPPORT
        });
    }
    if kind & !(SOCK_TYPE_MASK | SOCK_NONBLOCK | SOCK_CLOEXEC) != 0 || a[2] != 0 {
        return Err(Errno::EINVAL);
    }
    let kind_of = unix::kind_of(kind & SOCK_TYPE_MASK).ok_or(Errno::ESOCKTNOSUPPORT)?;
    unix::socketpair(kind_of, kind & SOCK_NONBLOCK != 0, kind & SOCK_CLOEXEC != 0, sv)
}

pub fn bind(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if let Some(n) = netlink_of(&f) {
        return netlink::bind(n, a);
    }
    if let Some(u) = unix_of(&f) {
        return unix::bind(u, a);
    }
    let s = socket(&f);
    let (address, port) = addr::read(s.family, a[1], a[2])?;
    s.bind(address, port).map(|()| 0)
}

pub fn listen(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        return Err(Errno::EOPNOTSUPP);
    }
    if let Some(u) = unix_of(&f) {
        return unix::listen(u, a);
    }
    socket(&f).listen((a[1] as i32).min(MAX_BACKLOG as i32)).map(|()| 0)
}

pub fn accept(a: &Args) -> SysResult {
    accept4(&[a[0], a[1], a[2], 0, 0, 0])
}

pub fn accept4(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        return Err(Errno::EOPNOTSUPP);
    }
    if a[3] & !(SOCK_NONBLOCK | SOCK_CLOEXEC) != 0 {
        return Err(Errno::EINVAL);
    }
    if let Some(u) = unix_of(&f) {
        return unix::accept(&f, u, a, a[3] & SOCK_NONBLOCK != 0, a[3] & SOCK_CLOEXEC != 0);
    }
    let listener = socket(&f);
    // At the descriptor limit the connection stays queued (EMFILE), as on Linux.
    file::check_free()?;
    let (connection, peer) = listener.accept(patience(&f, false, 0))?;
    addr::write(listener.family, peer, a[1], a[2])?;
    let flags = O_RDWR | if a[3] & SOCK_NONBLOCK != 0 { O_NONBLOCK } else { 0 };
    file::install(File::new(Object::Socket(connection), flags), a[3] & SOCK_CLOEXEC != 0)
}

pub fn connect(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        return netlink::connect(a);
    }
    if let Some(u) = unix_of(&f) {
        return unix::connect(&f, u, a);
    }
    let s = socket(&f);
    let (address, port) = addr::read(s.family, a[1], a[2])?;
    // Connecting to "any" address means this host, as on Linux.
    let address = address.unwrap_or(smoltcp::wire::IpAddress::v4(127, 0, 0, 1));
    let remote = IpEndpoint::new(address, port);
    // A pod's other containers are reached through the gateway (net/pod.rs); UDP stays the VM's own.
    let remote = if s.protocol == Protocol::Tcp { crate::net::pod::destination(remote) } else { remote };
    s.connect(remote, patience(&f, true, 0)).map(|()| 0)
}

pub fn getsockname(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if let Some(n) = netlink_of(&f) {
        return netlink::getsockname(n, a);
    }
    if let Some(u) = unix_of(&f) {
        return unix::getsockname(u, a);
    }
    let s = socket(&f);
    addr::write(s.family, s.local(), a[1], a[2]).map(|()| 0)
}

pub fn getpeername(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        return netlink::getpeername(a);
    }
    if let Some(u) = unix_of(&f) {
        return unix::getpeername(u, a);
    }
    let s = socket(&f);
    addr::write(s.family, s.peer()?, a[1], a[2]).map(|()| 0)
}

pub fn shutdown(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        return Err(Errno::EOPNOTSUPP);
    }
    if let Some(u) = unix_of(&f) {
        return unix::shutdown(u, a[1]);
    }
    let (read, write) = match a[1] {
        SHUT_RD => (true, false),
        SHUT_WR => (false, true),
        SHUT_RDWR => (true, true),
        _ => return Err(Errno::EINVAL),
    };
    socket(&f).shutdown(read, write).map(|()| 0)
}

/// How long an operation on `f` may wait: its blocking mode, MSG_DONTWAIT in `flags`, and SO_SNDTIMEO (`send`) or
/// SO_RCVTIMEO.
fn patience(f: &File, send: bool, flags: u64) -> Patience {
    Patience::new(f.nonblocking() || flags & MSG_DONTWAIT != 0, socket(f).timeout(send))
}

/// Sends the bytes of `buffers` on `f` (to `to` for UDP). A TCP peer that is gone is EPIPE, with SIGPIPE unless
/// MSG_NOSIGNAL.
fn send_on(f: &File, buffers: &[IoVec], to: Option<IpEndpoint>, flags: u64) -> SysResult {
    let s = socket(f);
    let patience = patience(f, true, flags);
    let sent = if s.protocol == Protocol::Tcp && buffers.iter().any(|iov| iov.len > 0) {
        // A stream goes in chunks, as `write` does: a program's `send` of 100 MiB (Python's `sendall`) is not
        // copied into the library OS whole.
        super::fs::copy_in(&mut buffers.iter().map(|&iov| Ok(iov)), |chunk| s.send(chunk, to, patience))
    } else {
        s.send(&datagram(buffers)?, to, patience).map(|n| n as u64)
    };
    match sent {
        Err(Errno::EPIPE) if flags & MSG_NOSIGNAL == 0 => {
            let _ = super::signal::send_to_self(super::signal::SIGPIPE);
            Err(Errno::EPIPE)
        }
        result => result,
    }
}

/// The bytes of `buffers` gathered into one datagram; EMSGSIZE, before anything is copied, beyond what a socket's
/// buffer holds (a `sendmsg` claiming gigabytes is refused, not allocated).
fn datagram(buffers: &[IoVec]) -> Result<Vec<u8>, Errno> {
    let total = buffers.iter().try_fold(0u64, |sum, iov| sum.checked_add(iov.len)).ok_or(Errno::EINVAL)?;
    if total > UDP_BUFFER as u64 {
        return Err(Errno::EMSGSIZE);
    }
    let mut data = vec![0u8; total as usize];
    let mut at = 0;
    for iov in buffers {
        user::read_bytes(iov.base, &mut data[at..at + iov.len as usize])?;
        at += iov.len as usize;
    }
    Ok(data)
}

/// Receives into `buffers` from `f`; writes the sender (UDP) to `from`/`from_len`. Returns what the call returns
/// and whether a datagram was cut to fit (recvmsg's MSG_TRUNC). With MSG_TRUNC in `flags`, a datagram's full length
/// is returned, and TCP bytes are dropped instead of copied, as on Linux.
fn recv_on(f: &File, buffers: &[IoVec], from: u64, from_len: u64, flags: u64) -> Result<(u64, bool), Errno> {
    let s = socket(f);
    let asked = buffers.iter().map(|b| b.len as usize).sum::<usize>().min(MAX_TRANSFER.max(TCP_BUFFER));
    let len =
        s.queued_and_low_water().map_or(asked, |(queued, low)| super::read_buffer::stream_read_len(asked, queued, low));
    let mut data = vec![0u8; len];
    let got = s.recv(&mut data, flags & MSG_PEEK != 0, patience(f, false, flags))?;
    let n = got.n;
    if !(flags & MSG_TRUNC != 0 && s.protocol == Protocol::Tcp) {
        let mut done = 0;
        for iov in buffers {
            let take = (n - done).min(iov.len as usize);
            user::write_bytes(iov.base, &data[done..done + take])?;
            done += take;
        }
    }
    if let Some(sender) = got.from {
        addr::write(s.family, sender, from, from_len)?;
    } else if from_len != 0 && from != 0 {
        user::write(from_len, 0u32)?;
    }
    let returned = if flags & MSG_TRUNC != 0 { got.full } else { n };
    Ok((returned as u64, got.full > n))
}

fn destination(s: &Socket, addr: u64, len: u64) -> Result<Option<IpEndpoint>, Errno> {
    if addr == 0 {
        return Ok(None);
    }
    let (address, port) = addr::read(s.family, addr, len)?;
    Ok(Some(IpEndpoint::new(address.unwrap_or(smoltcp::wire::IpAddress::v4(127, 0, 0, 1)), port)))
}

pub fn sendto(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if let Some(n) = netlink_of(&f) {
        return netlink::sendto(n, a);
    }
    if let Some(u) = unix_of(&f) {
        return unix::sendto(&f, u, a);
    }
    let to = destination(socket(&f), a[4], a[5])?;
    send_on(&f, &[IoVec { base: a[1], len: a[2] }], to, a[3])
}

pub fn recvfrom(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if let Some(n) = netlink_of(&f) {
        return netlink::recvfrom(&f, n, a);
    }
    if let Some(u) = unix_of(&f) {
        return unix::recvfrom(&f, u, a);
    }
    recv_on(&f, &[IoVec { base: a[1], len: a[2] }], a[4], a[5], a[3]).map(|(n, _)| n)
}

/// `struct msghdr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MsgHdr {
    pub name: u64,
    pub name_len: u32,
    _pad: u32,
    pub iov: u64,
    pub iov_len: u64,
    pub control: u64,
    pub control_len: u64,
    flags: i32,
    _pad2: u32,
}

pub fn iovecs(h: &MsgHdr) -> Result<Vec<IoVec>, Errno> {
    if h.iov_len > 1024 {
        return Err(Errno::EMSGSIZE);
    }
    (0..h.iov_len).map(|i| user::read::<IoVec>(h.iov + i * 16)).collect()
}

fn send_msghdr(f: &File, at: u64, flags: u64) -> SysResult {
    if let Some(n) = netlink_of(f) {
        return netlink::sendmsg(n, at);
    }
    if let Some(u) = unix_of(f) {
        return unix::sendmsg(f, u, at, flags);
    }
    let h: MsgHdr = user::read(at)?;
    let to = destination(socket(f), h.name, u64::from(h.name_len))?;
    send_on(f, &iovecs(&h)?, to, flags)
}

fn recv_msghdr(f: &File, at: u64, flags: u64) -> SysResult {
    if let Some(n) = netlink_of(f) {
        return netlink::recvmsg(f, n, at, flags);
    }
    if let Some(u) = unix_of(f) {
        return unix::recvmsg(f, u, at, flags);
    }
    let h: MsgHdr = user::read(at)?;
    let name_len_at = if h.name != 0 { at + 8 } else { 0 };
    let (n, cut) = recv_on(f, &iovecs(&h)?, h.name, name_len_at, flags)?;
    // No ancillary data.
    user::write(at + 40, 0u64)?;
    user::write(at + 48, if cut { MSG_TRUNC as i32 } else { 0 })?;
    Ok(n)
}

pub fn sendmsg(a: &Args) -> SysResult {
    send_msghdr(&*socket_of(a[0])?, a[1], a[2])
}

pub fn recvmsg(a: &Args) -> SysResult {
    recv_msghdr(&*socket_of(a[0])?, a[1], a[2])
}

/// `struct mmsghdr`: a `msghdr` and the byte count of its message.
const MMSGHDR_SIZE: u64 = 64;
const MSG_LEN_OFFSET: u64 = 56;
const MAX_MMSG: u64 = 1024;
const MSG_WAITFORONE: u64 = 0x10000;

/// Runs `one` on each `mmsghdr` of the vector at `vec`, recording each message's length, until one fails: the count
/// done, or that failure if it was the first.
fn each_message(vec: u64, count: u64, mut one: impl FnMut(u64, bool) -> SysResult) -> SysResult {
    let mut done = 0;
    while done < count.min(MAX_MMSG) {
        let at = vec + done * MMSGHDR_SIZE;
        match one(at, done == 0) {
            Ok(n) => user::write(at + MSG_LEN_OFFSET, n as u32)?,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
        done += 1;
    }
    Ok(done)
}

pub fn sendmmsg(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    each_message(a[1], a[2], |at, _| send_msghdr(&f, at, a[3]))
}

/// recvmmsg: the first message as the flags say; the rest without waiting once one arrived, with MSG_WAITFORONE or a
/// timeout (the timeout itself bounds nothing more).
pub fn recvmmsg(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    let later = if a[3] & MSG_WAITFORONE != 0 || a[4] != 0 { a[3] | MSG_DONTWAIT } else { a[3] };
    each_message(a[1], a[2], |at, first| recv_msghdr(&f, at, if first { a[3] } else { later }))
}

/// Linux's answer for an option of a protocol the socket is not: TCP options on UDP, UDP options on TCP, IPv6 options
/// on IPv4. setsockopt says ENOPROTOOPT; getsockopt on an IPv4 socket says EOPNOTSUPP (its IP layer's answer).
fn check_level(s: &Socket, level: u64, get: bool) -> Result<(), Errno> {
    let foreign = match level {
        IPPROTO_TCP => s.protocol != Protocol::Tcp,
        IPPROTO_UDP => s.protocol != Protocol::Udp,
        IPPROTO_IPV6 => s.family != AF_INET6,
        _ => false,
    };
    match (foreign, get && s.family == AF_INET) {
        (false, _) => Ok(()),
        (true, true) => Err(Errno::EOPNOTSUPP),
        (true, false) => Err(Errno::ENOPROTOOPT),
    }
}

pub fn setsockopt(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        // Buffer sizes, NETLINK_EXT_ACK and kin: accepted, nothing to change.
        return Ok(0);
    }
    if let Some(u) = unix_of(&f) {
        return unix::setsockopt(u, a);
    }
    let s = socket(&f);
    check_level(s, a[1], false)?;
    // socklen_t: the register's upper half is not the program's.
    let optlen = a[4] as u32;
    // Linux takes at least an int for every socket and TCP option but those that name something (a device, a
    // congestion control, an upper layer protocol).
    let takes_int = match (a[1], a[2]) {
        (SOL_SOCKET, SO_BINDTODEVICE) | (IPPROTO_TCP, TCP_CONGESTION | TCP_ULP) => false,
        (level, _) => level == SOL_SOCKET || level == IPPROTO_TCP,
    };
    if takes_int && optlen < 4 {
        return Err(Errno::EINVAL);
    }
    // The IP level also takes a byte.
    let value: i32 = match optlen {
        4.. => user::read(a[3])?,
        1..=3 if a[1] == IPPROTO_IP => i32::from(user::read::<u8>(a[3])?),
        _ => 0,
    };
    match (a[1], a[2]) {
        (SOL_SOCKET, which @ (SO_RCVTIMEO | SO_SNDTIMEO)) => {
            s.set_timeout(which == SO_SNDTIMEO, timeout_option(a[3], optlen)?);
            Ok(0)
        }
        (IPPROTO_IP, which @ (IP_ADD_MEMBERSHIP | IP_DROP_MEMBERSHIP)) => {
            // struct ip_mreq or ip_mreqn: the group first.
            if optlen < 8 {
                return Err(Errno::EINVAL);
            }
            let group: [u8; 4] = user::read(a[3])?;
            s.membership(IpAddress::Ipv4(group.into()), which == IP_ADD_MEMBERSHIP).map(|()| 0)
        }
        (IPPROTO_IPV6, which @ (IPV6_ADD_MEMBERSHIP | IPV6_DROP_MEMBERSHIP)) => {
            // struct ipv6_mreq: the group, then the interface.
            if optlen < 20 {
                return Err(Errno::EINVAL);
            }
            let group: [u8; 16] = user::read(a[3])?;
            s.membership(IpAddress::Ipv6(group.into()), which == IPV6_ADD_MEMBERSHIP).map(|()| 0)
        }
        (SOL_SOCKET, SO_LINGER) => {
            if optlen < 8 {
                return Err(Errno::EINVAL);
            }
            let [on, seconds]: [i32; 2] = user::read(a[3])?;
            // A negative time is a huge one, as Linux takes it.
            let seconds = u32::try_from(seconds).unwrap_or(u32::MAX);
            s.update_options(|o| o.linger_s = (on != 0).then_some(seconds));
            Ok(0)
        }
        (SOL_SOCKET, which @ (SO_RCVBUF | SO_SNDBUF)) => {
            let direction = if which == SO_RCVBUF { Direction::Receive } else { Direction::Send };
            s.update_options(|o| o.set_buffer(direction, value));
            Ok(0)
        }
        (SOL_SOCKET, SO_KEEPALIVE) => {
            s.update_options(|o| o.set_keep_alive(value != 0));
            Ok(0)
        }
        (IPPROTO_TCP, which @ (TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT)) => {
            s.set_options(|o| o.set_keep(keep_option(which), value)).map(|()| 0)
        }
        // Read only.
        (SOL_SOCKET, SO_TYPE | SO_ERROR | SO_ACCEPTCONN | SO_DOMAIN | SO_PROTOCOL) => Err(Errno::ENOPROTOOPT),
        (level, name) => match kept::find(level as u32, name as u32) {
            Some(at) => {
                let least = if level == IPPROTO_IP { 1 } else { 4 };
                if optlen < least || (at == kept::IPV6_V6ONLY && s.is_bound()) {
                    return Err(Errno::EINVAL);
                }
                s.set_options(|o| o.kept.set(at, s.protocol, value)).map(|()| 0)
            }
            // Accepted and not kept: options that name something (a device, a congestion control), multicast
            // membership, and others a program may set that change nothing Kiln does.
            None if matches!(level, SOL_SOCKET | IPPROTO_TCP | IPPROTO_IP | IPPROTO_IPV6 | IPPROTO_UDP) => Ok(0),
            None => Err(Errno::ENOPROTOOPT),
        },
    }
}

fn keep_option(which: u64) -> Keep {
    match which {
        TCP_KEEPIDLE => Keep::Idle,
        TCP_KEEPINTVL => Keep::Interval,
        _ => Keep::Count,
    }
}

pub fn getsockopt(a: &Args) -> SysResult {
    let f = socket_of(a[0])?;
    if netlink_of(&f).is_some() {
        // SO_RCVBUF and kin: Linux's default buffer; everything else reads as 0.
        let value: i32 = if (a[1], a[2]) == (SOL_SOCKET, SO_RCVBUF) || (a[1], a[2]) == (SOL_SOCKET, SO_SNDBUF) {
            212_992
        } else {
            0
        };
        return put_option(a[3], a[4], &value.to_le_bytes());
    }
    if let Some(u) = unix_of(&f) {
        return unix::getsockopt(u, a);
    }
    let s = socket(&f);
    check_level(s, a[1], true)?;
    if let (SOL_SOCKET, SO_LINGER) = (a[1], a[2]) {
        let linger = s.options().linger_s;
        let value = [i32::from(linger.is_some()), linger.map_or(0, |t| t.min(i32::MAX as u32) as i32)];
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value[0].to_le_bytes());
        bytes[4..].copy_from_slice(&value[1].to_le_bytes());
        return put_option(a[3], a[4], &bytes);
    }
    if let (SOL_SOCKET, which @ (SO_RCVTIMEO | SO_SNDTIMEO)) = (a[1], a[2]) {
        let ns = s.timeout(which == SO_SNDTIMEO);
        let value = [(ns / 1_000_000_000) as i64, ((ns % 1_000_000_000) / 1000) as i64];
        return put_option(a[3], a[4], &timeval_bytes(value));
    }
    let value: i32 = match (a[1], a[2]) {
        (SOL_SOCKET, SO_ERROR) => s.take_error().map_or(0, |e| e.0 as i32),
        (SOL_SOCKET, SO_TYPE) => {
            if s.protocol == Protocol::Tcp {
                SOCK_STREAM as i32
            } else {
                SOCK_DGRAM as i32
            }
        }
        (SOL_SOCKET, SO_DOMAIN) => i32::from(s.family),
        (SOL_SOCKET, SO_PROTOCOL) => {
            if s.protocol == Protocol::Tcp {
                IPPROTO_TCP as i32
            } else {
                IPPROTO_UDP as i32
            }
        }
        (SOL_SOCKET, SO_ACCEPTCONN) => i32::from(s.is_listening()),
        (SOL_SOCKET, SO_RCVBUF) => s.options().reported_buffer(Direction::Receive) as i32,
        (SOL_SOCKET, SO_SNDBUF) => s.options().reported_buffer(Direction::Send) as i32,
        (SOL_SOCKET, SO_KEEPALIVE) => i32::from(s.options().keep_alive()),
        (IPPROTO_TCP, which @ (TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT)) => {
            s.options().keep(keep_option(which)) as i32
        }
        (level, name) => match kept::find(level as u32, name as u32) {
            Some(at) => {
                let value = s.options().kept.get(at);
                // Linux gives an IP-level value that fits a byte as one byte to a caller with room for less than an
                // int.
                let room: i32 = user::read(a[4])?;
                if level == IPPROTO_IP && (1..4).contains(&room) && (0..=255).contains(&value) {
                    return put_option(a[3], a[4], &[value as u8]);
                }
                value
            }
            None if matches!(level, SOL_SOCKET | IPPROTO_TCP | IPPROTO_IP | IPPROTO_IPV6 | IPPROTO_UDP) => 0,
            None => return Err(Errno::ENOPROTOOPT),
        },
    };
    put_option(a[3], a[4], &value.to_le_bytes())
}

/// Gives a getsockopt's caller as much of `value` as its `*optlen` has room for and sets `*optlen` to what it got,
/// as Linux does; a negative `*optlen` is EINVAL (at every level, on Linux 6.18).
pub fn put_option(optval: u64, optlen: u64, value: &[u8]) -> SysResult {
    let room: i32 = user::read(optlen)?;
    let room = usize::try_from(room).map_err(|_| Errno::EINVAL)?;
    let len = room.min(value.len());
    user::write_bytes(optval, &value[..len])?;
    user::write(optlen, len as u32)?;
    Ok(0)
}

fn timeval_bytes(value: [i64; 2]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&value[0].to_le_bytes());
    bytes[8..].copy_from_slice(&value[1].to_le_bytes());
    bytes
}

/// `read` on a socket.
pub fn read(f: &File, buf: u64, len: u64) -> SysResult {
    if let Some(n) = netlink_of(f) {
        return netlink::recvfrom(f, n, &[0, buf, len, 0, 0, 0]);
    }
    if let Some(u) = unix_of(f) {
        return unix::recvfrom(f, u, &[0, buf, len, 0, 0, 0]);
    }
    recv_on(f, &[IoVec { base: buf, len }], 0, 0, 0).map(|(n, _)| n)
}

/// `readv` on a socket: one receive, scattered over `buffers`.
pub fn readv(f: &File, buffers: &[IoVec]) -> SysResult {
    if buffers.len() > 1024 {
        return Err(Errno::EINVAL);
    }
    if let Some(u) = unix_of(f) {
        return unix::read_buffers(f, u, buffers);
    }
    if let Some(n) = netlink_of(f) {
        return netlink::read_buffers(f, n, buffers);
    }
    recv_on(f, buffers, 0, 0, 0).map(|(n, _)| n)
}

/// `write` and `writev` on an AF_UNIX socket: one send of all the buffers (SIGPIPE is the caller's).
pub fn write_unix(f: &File, u: &Endpoint, buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>) -> SysResult {
    let buffers = buffers.collect::<Result<Vec<IoVec>, Errno>>()?;
    if buffers.len() > 1024 {
        return Err(Errno::EINVAL);
    }
    unix::send_buffers(f, u, &buffers)
}

/// `write` and `writev` on a netlink socket: one request.
pub fn write_netlink(f: &File, buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>) -> SysResult {
    let Some(n) = netlink_of(f) else { return Err(Errno::EBADF) };
    let buffers = buffers.collect::<Result<Vec<IoVec>, Errno>>()?;
    let Some(first) = buffers.first() else { return Ok(0) };
    // A request is one buffer in practice; more are gathered by sendmsg.
    netlink::sendto(n, &[0, first.base, first.len, 0, 0, 0])
}

/// `write` and `writev` on an inet socket: a stream's buffers in chunks, a datagram socket's as one datagram (in
/// chunks, a 20,000-byte `write` left as two datagrams).
pub fn write_inet(f: &File, buffers: &mut dyn Iterator<Item = Result<IoVec, Errno>>) -> SysResult {
    let s = socket(f);
    if s.protocol == Protocol::Tcp {
        return super::fs::copy_in(buffers, |chunk| write(f, chunk));
    }
    let buffers = buffers.collect::<Result<Vec<IoVec>, Errno>>()?;
    s.send(&datagram(&buffers)?, None, patience(f, true, 0)).map(|n| n as u64)
}

/// `write` of one chunk to a socket: how much was taken.
pub fn write(f: &File, chunk: &[u8]) -> Result<usize, Errno> {
    if let Some(u) = unix_of(f) {
        return unix::write_chunk(f, u, chunk);
    }
    socket(f).send(chunk, None, patience(f, true, 0))
}

/// The nanoseconds an SO_RCVTIMEO or SO_SNDTIMEO option's `struct timeval` at `addr` (`optlen` bytes) says, checked as
/// Linux checks it: EINVAL if too short, EDOM for a negative or out-of-range value.
pub(crate) fn timeout_option(addr: u64, optlen: u32) -> Result<u64, Errno> {
    if optlen < 16 {
        return Err(Errno::EINVAL);
    }
    let [sec, usec]: [i64; 2] = user::read(addr)?;
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return Err(Errno::EDOM);
    }
    Ok((sec as u64).saturating_mul(1_000_000_000).saturating_add(usec as u64 * 1000))
}
