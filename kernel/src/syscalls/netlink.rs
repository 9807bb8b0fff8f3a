//! The socket syscalls on NETLINK_ROUTE sockets (`net::netlink`): `struct sockaddr_nl`, and requests and answers as
//! datagrams. `syscalls::net` hands a call here when its descriptor is a netlink socket.

use super::net::{iovecs, MsgHdr};
use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file::console::IoVec;
use crate::file::{File, Object, O_NONBLOCK, O_RDWR};
use crate::net::netlink::{Netlink, AF_NETLINK};
use crate::net::socket::Patience;
use crate::user;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

const MSG_PEEK: u64 = 0x2;
const MSG_TRUNC: u64 = 0x20;
const MSG_DONTWAIT: u64 = 0x40;
/// `struct sockaddr_nl`: family, padding, port, multicast groups.
const SOCKADDR_NL_LEN: u64 = 12;
/// The largest request taken at once.
const MAX_REQUEST: usize = 64 << 10;

pub fn new_file(nonblocking: bool) -> Arc<File> {
    File::new(Object::Netlink(Netlink::new()), O_RDWR | if nonblocking { O_NONBLOCK } else { 0 })
}

fn write_address(port: u32, addr: u64, len_at: u64) -> Result<(), Errno> {
    if addr == 0 || len_at == 0 {
        return Ok(());
    }
    let room: u32 = user::read(len_at)?;
    let mut bytes = [0u8; SOCKADDR_NL_LEN as usize];
    bytes[..2].copy_from_slice(&AF_NETLINK.to_le_bytes());
    bytes[4..8].copy_from_slice(&port.to_le_bytes());
    let n = (room as usize).min(bytes.len());
    user::write_bytes(addr, &bytes[..n])?;
    user::write(len_at, SOCKADDR_NL_LEN as u32)
}

pub fn bind(n: &Netlink, a: &Args) -> SysResult {
    if a[2] < SOCKADDR_NL_LEN {
        return Err(Errno::EINVAL);
    }
    let [family, _pad]: [u16; 2] = user::read(a[1])?;
    if family != AF_NETLINK {
        return Err(Errno::EINVAL);
    }
    n.bind(user::read(a[1] + 4)?).map(|()| 0)
}

/// connect: every peer is the kernel (port 0), so there is nothing to remember; the address is checked.
pub fn connect(a: &Args) -> SysResult {
    if a[2] < SOCKADDR_NL_LEN {
        return Err(Errno::EINVAL);
    }
    let [family, _pad]: [u16; 2] = user::read(a[1])?;
    if family != AF_NETLINK {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

/// getpeername: the kernel, connected or not, as Linux answers.
pub fn getpeername(a: &Args) -> SysResult {
    write_address(0, a[1], a[2]).map(|()| 0)
}

pub fn getsockname(n: &Netlink, a: &Args) -> SysResult {
    write_address(n.bound_port(), a[1], a[2]).map(|()| 0)
}

/// Every destination is the kernel: its answers come back to this socket.
fn send(n: &Netlink, buffers: &[IoVec]) -> SysResult {
    let mut data = Vec::new();
    for iov in buffers {
        let at = data.len();
        if at + iov.len as usize > MAX_REQUEST {
            return Err(Errno::EMSGSIZE);
        }
        data.resize(at + iov.len as usize, 0);
        user::read_bytes(iov.base, &mut data[at..])?;
    }
    n.send(&data).map(|sent| sent as u64)
}

/// Receives one answer into `buffers`: its length (the full one with MSG_TRUNC), and whether it was cut.
fn recv(f: &File, n: &Netlink, buffers: &[IoVec], flags: u64) -> Result<(u64, bool), Errno> {
    let want = buffers.iter().map(|b| b.len as usize).sum::<usize>().min(MAX_REQUEST);
    let mut data = vec![0u8; want];
    let patience = Patience::new(f.nonblocking() || flags & MSG_DONTWAIT != 0, 0);
    let (got, full) = n.recv(&mut data, flags & MSG_PEEK != 0, patience)?;
    let mut done = 0;
    for iov in buffers {
        let take = (got - done).min(iov.len as usize);
        user::write_bytes(iov.base, &data[done..done + take])?;
        done += take;
    }
    Ok((if flags & MSG_TRUNC != 0 { full } else { got } as u64, full > got))
}

/// `readv`: one answer over the buffers.
pub fn read_buffers(f: &File, n: &Netlink, buffers: &[IoVec]) -> SysResult {
    recv(f, n, buffers, 0).map(|(got, _)| got)
}

pub fn sendto(n: &Netlink, a: &Args) -> SysResult {
    send(n, &[IoVec { base: a[1], len: a[2] }])
}

pub fn recvfrom(f: &File, n: &Netlink, a: &Args) -> SysResult {
    let (got, _) = recv(f, n, &[IoVec { base: a[1], len: a[2] }], a[3])?;
    write_address(0, a[4], a[5])?;
    Ok(got)
}

pub fn sendmsg(n: &Netlink, at: u64) -> SysResult {
    let h: MsgHdr = user::read(at)?;
    send(n, &iovecs(&h)?)
}

pub fn recvmsg(f: &File, n: &Netlink, at: u64, flags: u64) -> SysResult {
    let h: MsgHdr = user::read(at)?;
    let (got, cut) = recv(f, n, &iovecs(&h)?, flags)?;
    if h.name != 0 {
        write_address(0, h.name, at + 8)?;
    }
    user::write(at + 40, 0u64)?;
    user::write(at + 48, if cut { MSG_TRUNC as i32 } else { 0 })?;
    Ok(got)
}
