//! The socket syscalls on AF_UNIX sockets (`net::unix`): `struct sockaddr_un`, ancillary data (SCM_RIGHTS passes
//! descriptions of the program between its descriptors; SCM_CREDENTIALS), SO_PEERCRED and the options Linux keeps
//! for them. `syscalls::net` hands a call here when its descriptor is an AF_UNIX socket.

use super::net::{iovecs, put_option, MsgHdr};
use super::{identity, Args, PID};
use crate::errno::{Errno, SysResult};
use crate::file::console::IoVec;
use crate::file::{self, File, Object, O_NONBLOCK, O_RDWR};
use crate::net::socket::Patience;
use crate::net::unix::names::Name;
use crate::net::unix::{self, Endpoint, Kind, Socket, DEFAULT_BUFFER, SHUT_RECEIVE, SHUT_SEND};
use crate::user;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

pub const AF_UNIX: u16 = 1;
const AF_UNSPEC: u16 = 0;
/// `struct sockaddr_un`: the family and 108 bytes of path.
const SOCKADDR_UN_LEN: usize = 110;
const SOL_SOCKET: u64 = 1;
const SCM_RIGHTS: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;
/// Most descriptions one SCM_RIGHTS message passes (Linux's SCM_MAX_FD).
const MAX_RIGHTS: usize = 253;
const CMSG_HEADER: usize = 16;
const MSG_PEEK: u64 = 0x2;
const MSG_CTRUNC: i32 = 0x8;
const MSG_TRUNC: u64 = 0x20;
const MSG_DONTWAIT: u64 = 0x40;
const MSG_WAITALL: u64 = 0x100;
const MSG_NOSIGNAL: u64 = 0x4000;
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
const SO_TYPE: u64 = 3;
const SO_ERROR: u64 = 4;
const SO_SNDBUF: u64 = 7;
const SO_RCVBUF: u64 = 8;
const SO_PASSCRED: u64 = 16;
const SO_PEERCRED: u64 = 17;
const SO_RCVTIMEO: u64 = 20;
const SO_SNDTIMEO: u64 = 21;
const SO_ACCEPTCONN: u64 = 30;
const SO_PROTOCOL: u64 = 38;
const SO_DOMAIN: u64 = 39;
/// Linux's `wmem_max`/`rmem_max`: SO_SNDBUF and SO_RCVBUF are capped there, then doubled.
const MAX_BUFFER: usize = 212_992;
/// Most bytes a stream send copies in at a time.
const MAX_STREAM_SEND: u64 = 1 << 20;

pub fn kind_of(sock_type: u64) -> Option<Kind> {
    match sock_type {
        1 => Some(Kind::Stream),
        // Linux takes SOCK_RAW as SOCK_DGRAM.
        2 | 3 => Some(Kind::Datagram),
        5 => Some(Kind::SeqPacket),
        _ => None,
    }
}

fn linux_type(kind: Kind) -> i32 {
    match kind {
        Kind::Stream => 1,
        Kind::Datagram => 2,
        Kind::SeqPacket => 5,
    }
}

pub fn new_file(endpoint: Arc<Endpoint>, nonblocking: bool) -> Arc<File> {
    File::new(Object::Unix(Socket(endpoint)), O_RDWR | if nonblocking { O_NONBLOCK } else { 0 })
}

/// The program's `sockaddr_un` at `addr`: a name, or `None` for only the family (bind's autobind). The path ends at
/// its first NUL; an abstract name is every byte after the leading NUL.
fn read_name(addr: u64, len: u64) -> Result<Option<Name>, Errno> {
    let len = usize::try_from(len).ok().filter(|&l| (2..=SOCKADDR_UN_LEN).contains(&l)).ok_or(Errno::EINVAL)?;
    let mut raw = vec![0u8; len];
    user::read_bytes(addr, &mut raw)?;
    if u16::from_le_bytes([raw[0], raw[1]]) != AF_UNIX {
        return Err(Errno::EINVAL);
    }
    let path = &raw[2..];
    match path.first() {
        None => Ok(None),
        Some(0) => Ok(Some(Name::Abstract(path[1..].to_vec()))),
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let path = core::str::from_utf8(&path[..end]).map_err(|_| Errno::EINVAL)?;
            Ok(Some(Name::Path(String::from(path))))
        }
    }
}

/// A received message's sender, as recvfrom and recvmsg give it: nothing (length 0) for an unnamed one, as Linux
/// does.
fn write_sender(name: Option<&Name>, addr: u64, len_at: u64) -> Result<(), Errno> {
    match name {
        None if addr != 0 && len_at != 0 => user::write(len_at, 0u32),
        None => Ok(()),
        Some(_) => write_name(name, addr, len_at),
    }
}

/// Writes `name` as a `sockaddr_un` to `addr`, cut to the room `*len_at` says, and sets `*len_at` to its full
/// length (2 for an unnamed socket), as Linux does.
fn write_name(name: Option<&Name>, addr: u64, len_at: u64) -> Result<(), Errno> {
    if addr == 0 || len_at == 0 {
        return Ok(());
    }
    let room: u32 = user::read(len_at)?;
    let mut bytes = Vec::from(AF_UNIX.to_le_bytes());
    match name {
        Some(Name::Path(path)) => {
            bytes.extend_from_slice(path.as_bytes());
            bytes.push(0);
        }
        Some(Name::Abstract(name)) => {
            bytes.push(0);
            bytes.extend_from_slice(name);
        }
        None => {}
    }
    let n = (room as usize).min(bytes.len());
    user::write_bytes(addr, &bytes[..n])?;
    user::write(len_at, bytes.len() as u32)
}

fn patience(f: &File, endpoint: &Endpoint, send: bool, flags: u64) -> Patience {
    Patience::new(f.nonblocking() || flags & MSG_DONTWAIT != 0, endpoint.timeout(send))
}

pub fn socketpair(kind: Kind, nonblocking: bool, cloexec: bool, sv: u64) -> SysResult {
    user::check(sv, 8, true)?;
    let (a, b) = Endpoint::pair(kind);
    let a_fd = file::install(new_file(a, nonblocking), cloexec)?;
    let b_fd = match file::install(new_file(b, nonblocking), cloexec) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = file::close(a_fd);
            return Err(e);
        }
    };
    user::write(sv, [a_fd as i32, b_fd as i32]).map(|()| 0)
}

pub fn bind(endpoint: &Arc<Endpoint>, a: &Args) -> SysResult {
    endpoint.bind(read_name(a[1], a[2])?).map(|()| 0)
}

pub fn listen(endpoint: &Endpoint, a: &Args) -> SysResult {
    endpoint.listen(a[1] as i32).map(|()| 0)
}

pub fn accept(f: &File, endpoint: &Endpoint, a: &Args, nonblocking: bool, cloexec: bool) -> SysResult {
    file::check_free()?;
    let connection = endpoint.accept(patience(f, endpoint, false, 0))?;
    write_name(connection.peer_name().ok().flatten().as_ref(), a[1], a[2])?;
    file::install(new_file(connection, nonblocking), cloexec)
}

pub fn connect(f: &File, endpoint: &Arc<Endpoint>, a: &Args) -> SysResult {
    if a[2] >= 2 && user::read::<u16>(a[1])? == AF_UNSPEC {
        endpoint.disconnect();
        return Ok(0);
    }
    let name = read_name(a[1], a[2])?.ok_or(Errno::EINVAL)?;
    endpoint.connect(&name, patience(f, endpoint, true, 0)).map(|()| 0)
}

pub fn getsockname(endpoint: &Endpoint, a: &Args) -> SysResult {
    write_name(endpoint.name().as_ref(), a[1], a[2]).map(|()| 0)
}

pub fn getpeername(endpoint: &Endpoint, a: &Args) -> SysResult {
    write_name(endpoint.peer_name()?.as_ref(), a[1], a[2]).map(|()| 0)
}

pub fn shutdown(endpoint: &Endpoint, how: u64) -> SysResult {
    let how = match how {
        0 => SHUT_RECEIVE,
        1 => SHUT_SEND,
        2 => SHUT_RECEIVE | SHUT_SEND,
        _ => return Err(Errno::EINVAL),
    };
    endpoint.shutdown(how).map(|()| 0)
}

/// Sends the bytes of `buffers` with the descriptions the control messages at `control` name.
fn send(
    f: &File,
    endpoint: &Endpoint,
    buffers: &[IoVec],
    to: Option<Name>,
    control: (u64, u64),
    flags: u64,
) -> SysResult {
    let mut rights = read_control(control.0, control.1)?;
    // A message longer than any send buffer is EMSGSIZE without copying it; a stream goes in parts, so that the
    // library OS never holds all of a large write at once.
    let total = buffers.iter().fold(0u64, |sum, iov| sum.saturating_add(iov.len));
    let limit = if endpoint.kind == Kind::Stream { MAX_STREAM_SEND } else { (MAX_BUFFER * 2) as u64 };
    if total > limit && endpoint.kind != Kind::Stream {
        return Err(Errno::EMSGSIZE);
    }
    let patience = patience(f, endpoint, true, flags);
    let mut done = 0u64;
    loop {
        let part = gather(buffers, done, limit)?;
        let result = endpoint.send(&part, core::mem::take(&mut rights), to.as_ref(), patience);
        match result {
            Ok(n) => {
                done += n as u64;
                if n < part.len() || done >= total {
                    return Ok(done);
                }
            }
            Err(_) if done > 0 => return Ok(done),
            // Only a stream sends SIGPIPE; Linux's seqpacket send (its datagram code) does not.
            Err(Errno::EPIPE) if flags & MSG_NOSIGNAL == 0 && endpoint.kind == Kind::Stream => {
                let _ = super::signal::send_to_self(super::signal::SIGPIPE);
                return Err(Errno::EPIPE);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies in up to `limit` bytes of the program's `buffers`, starting `from` bytes into them.
fn gather(buffers: &[IoVec], from: u64, limit: u64) -> Result<Vec<u8>, Errno> {
    let mut data = Vec::new();
    let mut skip = from;
    for iov in buffers {
        if skip >= iov.len {
            skip -= iov.len;
            continue;
        }
        let at = data.len();
        let take = (iov.len - skip).min(limit - at as u64) as usize;
        data.resize(at + take, 0);
        user::read_bytes(iov.base + skip, &mut data[at..])?;
        skip = 0;
        if data.len() as u64 == limit {
            break;
        }
    }
    Ok(data)
}

/// The descriptions named by the SCM_RIGHTS messages of a `msghdr`'s control buffer; SCM_CREDENTIALS is checked
/// and otherwise needs nothing (there is one process).
fn read_control(at: u64, len: u64) -> Result<Vec<Arc<File>>, Errno> {
    let mut rights = Vec::new();
    let mut offset = 0u64;
    while at != 0 && offset + CMSG_HEADER as u64 <= len {
        let (cmsg_len, level, kind): (u64, i32, i32) =
            (user::read(at + offset)?, user::read(at + offset + 8)?, user::read(at + offset + 12)?);
        if cmsg_len < CMSG_HEADER as u64 || offset + cmsg_len > len {
            return Err(Errno::EINVAL);
        }
        let payload = (cmsg_len as usize) - CMSG_HEADER;
        match (level as u64, kind) {
            (SOL_SOCKET, SCM_RIGHTS) => {
                let count = payload / 4;
                if rights.len() + count > MAX_RIGHTS {
                    return Err(Errno::EINVAL);
                }
                for i in 0..count as u64 {
                    let fd: i32 = user::read(at + offset + CMSG_HEADER as u64 + i * 4)?;
                    rights.push(file::get(fd as u64).map_err(|_| Errno::EBADF)?);
                }
            }
            (SOL_SOCKET, SCM_CREDENTIALS) if payload >= 12 => {
                let [pid, uid, gid]: [u32; 3] = user::read(at + offset + CMSG_HEADER as u64)?;
                if u64::from(pid) != PID && !identity::is_root() {
                    return Err(Errno::EPERM);
                }
                let _ = (uid, gid);
            }
            _ => return Err(Errno::EINVAL),
        }
        offset += cmsg_len.div_ceil(8) * 8;
    }
    Ok(rights)
}

/// Receives into `buffers`; returns the count to return, the `msg_flags`, and what came with it.
fn recv(f: &File, endpoint: &Endpoint, buffers: &[IoVec], flags: u64) -> Result<(u64, unix::Received), Errno> {
    let asked = buffers.iter().map(|b| b.len as usize).sum::<usize>().min(DEFAULT_BUFFER * 2);
    // MSG_WAITALL fills the whole of what was asked.
    let want = if endpoint.kind == Kind::Stream && flags & MSG_WAITALL == 0 {
        super::read_buffer::stream_read_len(asked, endpoint.available(), 1)
    } else {
        asked
    };
    let mut data = vec![0u8; want];
    let peek = flags & MSG_PEEK != 0;
    let patience = patience(f, endpoint, false, flags);
    let mut got = endpoint.recv(&mut data, peek, patience)?;
    // MSG_WAITALL: a stream read goes on until the buffer is full, the end, an error or a signal (then it returns
    // what it has), or descriptions came (they end a read).
    if flags & MSG_WAITALL != 0 && endpoint.kind == Kind::Stream && !peek {
        while got.n > 0 && got.n < want && got.rights.is_empty() {
            match endpoint.recv(&mut data[got.n..], false, patience) {
                Ok(more) if more.n > 0 => {
                    got.n += more.n;
                    got.full = got.n;
                    got.rights = more.rights;
                }
                _ => break,
            }
        }
    }
    let mut done = 0;
    for iov in buffers {
        let take = (got.n - done).min(iov.len as usize);
        user::write_bytes(iov.base, &data[done..done + take])?;
        done += take;
    }
    let returned = if flags & MSG_TRUNC != 0 && endpoint.kind != Kind::Stream { got.full } else { got.n };
    Ok((returned as u64, got))
}

/// Writes the control messages of a receive: SCM_CREDENTIALS if SO_PASSCRED, then SCM_RIGHTS with the descriptions
/// installed as new descriptors, as many as fit (MSG_CTRUNC for the rest, which are closed). Returns the bytes used
/// and whether something was cut.
fn write_control(
    at: u64,
    room: u64,
    credentials: bool,
    rights: Vec<Arc<File>>,
    cloexec: bool,
) -> Result<(u64, bool), Errno> {
    let mut used = 0u64;
    let mut cut = false;
    if credentials {
        let len = CMSG_HEADER as u64 + 12;
        if at != 0 && used + len <= room {
            let ids = [PID as u32, identity::uid(), identity::gid()];
            user::write(at + used, len)?;
            user::write(at + used + 8, [SOL_SOCKET as i32, SCM_CREDENTIALS])?;
            user::write(at + used + 16, ids)?;
            used += len.div_ceil(8) * 8;
        } else {
            cut = true;
        }
    }
    if rights.is_empty() {
        return Ok((used.min(room), cut));
    }
    let total = rights.len();
    let fits = if at == 0 { 0 } else { (room.saturating_sub(used).saturating_sub(CMSG_HEADER as u64) / 4) as usize };
    let mut fds = Vec::new();
    for description in rights.into_iter().take(fits) {
        match file::install(description, cloexec) {
            Ok(fd) => fds.push(fd as i32),
            Err(_) => break,
        }
    }
    cut |= fds.len() < total;
    if !fds.is_empty() {
        let len = (CMSG_HEADER + 4 * fds.len()) as u64;
        user::write(at + used, len)?;
        user::write(at + used + 8, [SOL_SOCKET as i32, SCM_RIGHTS])?;
        for (i, fd) in fds.iter().enumerate() {
            user::write(at + used + CMSG_HEADER as u64 + 4 * i as u64, *fd)?;
        }
        used += len.div_ceil(8) * 8;
    }
    Ok((used.min(room), cut))
}

/// `write`/`writev`: the buffers as one send.
pub fn send_buffers(f: &File, endpoint: &Endpoint, buffers: &[IoVec]) -> SysResult {
    send(f, endpoint, buffers, None, (0, 0), 0)
}

/// One chunk of a `sendfile` to the socket: how much was taken.
pub fn write_chunk(f: &File, endpoint: &Endpoint, chunk: &[u8]) -> Result<usize, Errno> {
    endpoint.send(chunk, Vec::new(), None, patience(f, endpoint, true, 0))
}

/// `readv`: one receive over the buffers (what came with it, descriptions included, is dropped).
pub fn read_buffers(f: &File, endpoint: &Endpoint, buffers: &[IoVec]) -> SysResult {
    recv(f, endpoint, buffers, 0).map(|(n, _)| n)
}

pub fn sendto(f: &File, endpoint: &Endpoint, a: &Args) -> SysResult {
    let to = if a[4] != 0 { read_name(a[4], a[5])? } else { None };
    send(f, endpoint, &[IoVec { base: a[1], len: a[2] }], to, (0, 0), a[3])
}

pub fn recvfrom(f: &File, endpoint: &Endpoint, a: &Args) -> SysResult {
    let (n, got) = recv(f, endpoint, &[IoVec { base: a[1], len: a[2] }], a[3])?;
    // Descriptions sent with these bytes are closed: the call has no room for them.
    drop(got.rights);
    write_sender(got.from.as_ref(), a[4], a[5])?;
    Ok(n)
}

pub fn sendmsg(f: &File, endpoint: &Endpoint, at: u64, flags: u64) -> SysResult {
    let h: MsgHdr = user::read(at)?;
    let to = if h.name != 0 && h.name_len != 0 { read_name(h.name, u64::from(h.name_len))? } else { None };
    send(f, endpoint, &iovecs(&h)?, to, (h.control, h.control_len), flags)
}

pub fn recvmsg(f: &File, endpoint: &Endpoint, at: u64, flags: u64) -> SysResult {
    let h: MsgHdr = user::read(at)?;
    let (n, got) = recv(f, endpoint, &iovecs(&h)?, flags)?;
    if h.name != 0 {
        write_sender(got.from.as_ref(), h.name, at + 8)?;
    }
    let credentials = endpoint.passes_credentials();
    let cloexec = flags & MSG_CMSG_CLOEXEC != 0;
    let (used, cut) = write_control(h.control, h.control_len, credentials, got.rights, cloexec)?;
    let mut msg_flags = if cut { MSG_CTRUNC } else { 0 };
    if got.full > got.n {
        msg_flags |= MSG_TRUNC as i32;
    }
    user::write(at + 40, used)?;
    user::write(at + 48, msg_flags)?;
    Ok(n)
}

pub fn setsockopt(endpoint: &Endpoint, a: &Args) -> SysResult {
    if a[1] != SOL_SOCKET {
        return Err(Errno::EOPNOTSUPP);
    }
    let optlen = a[4] as u32;
    match a[2] {
        which @ (SO_RCVTIMEO | SO_SNDTIMEO) => {
            endpoint.set_timeout(which == SO_SNDTIMEO, super::net::timeout_option(a[3], optlen)?);
            Ok(0)
        }
        _ if optlen < 4 => Err(Errno::EINVAL),
        which @ (SO_SNDBUF | SO_RCVBUF) => {
            // Linux doubles what it is given (for its bookkeeping) after capping it at the maximum.
            let value = user::read::<u32>(a[3])? as usize;
            let least = if which == SO_SNDBUF { 4608 } else { 2304 };
            endpoint.set_buffer(which == SO_SNDBUF, (value.min(MAX_BUFFER) * 2).max(least));
            Ok(0)
        }
        SO_PASSCRED => {
            endpoint.set_pass_credentials(user::read::<i32>(a[3])? != 0);
            Ok(0)
        }
        SO_TYPE | SO_ERROR | SO_ACCEPTCONN | SO_DOMAIN | SO_PROTOCOL | SO_PEERCRED => Err(Errno::ENOPROTOOPT),
        // Accepted and not kept, as for the other sockets.
        _ => Ok(0),
    }
}

pub fn getsockopt(endpoint: &Endpoint, a: &Args) -> SysResult {
    if a[1] != SOL_SOCKET {
        return Err(Errno::EOPNOTSUPP);
    }
    if a[2] == SO_PEERCRED {
        // The peer is this program: its pid and ids (Linux records them at connect; there is one process here).
        let value = if endpoint.is_connected() {
            [PID as u32, identity::uid(), identity::gid()]
        } else {
            [0, u32::MAX, u32::MAX]
        };
        let mut bytes = [0u8; 12];
        for (i, v) in value.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        return put_option(a[3], a[4], &bytes);
    }
    if let which @ (SO_RCVTIMEO | SO_SNDTIMEO) = a[2] {
        let ns = endpoint.timeout(which == SO_SNDTIMEO);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&((ns / 1_000_000_000) as i64).to_le_bytes());
        bytes[8..].copy_from_slice(&(((ns % 1_000_000_000) / 1000) as i64).to_le_bytes());
        return put_option(a[3], a[4], &bytes);
    }
    let (send_buffer, receive_buffer) = endpoint.buffers();
    let value: i32 = match a[2] {
        SO_TYPE => linux_type(endpoint.kind),
        SO_DOMAIN => i32::from(AF_UNIX),
        SO_PROTOCOL => 0,
        SO_ERROR => endpoint.take_error().map_or(0, |e| e.0 as i32),
        SO_ACCEPTCONN => i32::from(endpoint.is_listening()),
        SO_SNDBUF => send_buffer as i32,
        SO_RCVBUF => receive_buffer as i32,
        SO_PASSCRED => i32::from(endpoint.passes_credentials()),
        _ => 0,
    };
    put_option(a[3], a[4], &value.to_le_bytes())
}
