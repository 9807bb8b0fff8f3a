//! The interface ioctls on sockets (`struct ifreq`: SIOCGIFINDEX, SIOCGIFNAME, SIOCGIFFLAGS, SIOCGIFMTU,
//! SIOCGIFHWADDR, SIOCGIFADDR, SIOCGIFNETMASK, SIOCGIFBRDADDR; `struct ifconf`: SIOCGIFCONF), which musl's and glibc's
//! `if_nametoindex` and `if_indextoname` use, from `net::interfaces`. The setting ones are EPERM: the VMM decides.

use crate::errno::{Errno, SysResult};
use crate::net::interfaces::{interfaces, Address, Interface, AF_INET};
use crate::user;
use alloc::vec::Vec;

const SIOCGIFNAME: u64 = 0x8910;
const SIOCGIFCONF: u64 = 0x8912;
const SIOCGIFFLAGS: u64 = 0x8913;
const SIOCGIFADDR: u64 = 0x8915;
const SIOCGIFBRDADDR: u64 = 0x8919;
const SIOCGIFNETMASK: u64 = 0x891b;
const SIOCGIFMTU: u64 = 0x8921;
const SIOCGIFHWADDR: u64 = 0x8927;
const SIOCGIFINDEX: u64 = 0x8933;
/// `struct ifreq`: a 16-byte name, then a 24-byte union.
const IFREQ_LEN: u64 = 40;
const IFNAMSIZ: usize = 16;

/// Whether `request` is one of the interface ioctls (0x8910-0x89ff, Linux's socket configuration range).
pub fn is_interface_request(request: u64) -> bool {
    (0x8910..0x8a00).contains(&request)
}

fn sockaddr_in(bytes: &[u8]) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0] = AF_INET;
    raw[4..8].copy_from_slice(&bytes[..4]);
    raw
}

fn ipv4(i: &Interface) -> Result<&Address, Errno> {
    i.addresses.iter().find(|a| a.family == AF_INET).ok_or(Errno::EADDRNOTAVAIL)
}

fn named(at: u64) -> Result<Interface, Errno> {
    let raw: [u8; IFNAMSIZ] = user::read(at)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    interfaces().into_iter().find(|i| i.name.as_bytes() == &raw[..end]).ok_or(Errno::ENODEV)
}

pub fn ioctl(request: u64, at: u64) -> SysResult {
    if request == SIOCGIFCONF {
        return interface_list(at);
    }
    if request == SIOCGIFNAME {
        let index: i32 = user::read(at + 16)?;
        let i = interfaces().into_iter().find(|i| i.index as i32 == index).ok_or(Errno::ENODEV)?;
        let mut name = [0u8; IFNAMSIZ];
        name[..i.name.len()].copy_from_slice(i.name.as_bytes());
        return user::write(at, name).map(|()| 0);
    }
    user::check(at, IFREQ_LEN, true)?;
    let i = named(at)?;
    let value: Vec<u8> = match request {
        SIOCGIFINDEX => Vec::from(i.index.to_le_bytes()),
        SIOCGIFFLAGS => Vec::from((i.flags as u16).to_le_bytes()),
        SIOCGIFMTU => Vec::from(i.mtu.to_le_bytes()),
        SIOCGIFHWADDR => {
            let mut raw = Vec::from(i.kind.to_le_bytes());
            raw.extend_from_slice(&i.mac);
            raw.resize(16, 0);
            raw
        }
        SIOCGIFADDR => Vec::from(sockaddr_in(&ipv4(&i)?.bytes)),
        SIOCGIFNETMASK => Vec::from(sockaddr_in(&ipv4(&i)?.netmask())),
        SIOCGIFBRDADDR => Vec::from(sockaddr_in(&ipv4(&i)?.broadcast())),
        // Setting an address, a flag or the MTU: the VMM decides them.
        0x8914 | 0x8916 | 0x8918 | 0x891a | 0x891c | 0x8922 | 0x8923 | 0x8924 => return Err(Errno::EPERM),
        _ => return Err(Errno::EINVAL),
    };
    user::write_bytes(at + 16, &value).map(|()| 0)
}

/// SIOCGIFCONF: an `ifreq` (name and IPv4 address) per interface with one, as many as the buffer holds; with no
/// buffer, the length all of them need.
fn interface_list(at: u64) -> SysResult {
    let (len, buffer): (i32, u64) = (user::read(at)?, user::read(at + 8)?);
    let all = interfaces();
    let entries: Vec<(&Interface, &Address)> = all.iter().filter_map(|i| ipv4(i).ok().map(|a| (i, a))).collect();
    if buffer == 0 {
        return user::write(at, (entries.len() as u64 * IFREQ_LEN) as i32).map(|()| 0);
    }
    let room = usize::try_from(len).map_err(|_| Errno::EINVAL)? / IFREQ_LEN as usize;
    let mut written = 0u64;
    for (i, a) in entries.into_iter().take(room) {
        let mut raw = [0u8; IFREQ_LEN as usize];
        raw[..i.name.len()].copy_from_slice(i.name.as_bytes());
        raw[16..32].copy_from_slice(&sockaddr_in(&a.bytes));
        user::write_bytes(buffer + written, &raw)?;
        written += IFREQ_LEN;
    }
    user::write(at, written as i32).map(|()| 0)
}
