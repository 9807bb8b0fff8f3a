//! `struct sockaddr_in` and `sockaddr_in6` to and from smoltcp endpoints. An IPv6 socket sees IPv4 peers as
//! v4-mapped addresses (`::ffff:a.b.c.d`), as a dual-stack Linux socket does.

use crate::errno::Errno;
use crate::user;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address, Ipv6Address};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
const SOCKADDR_IN_LEN: u64 = 16;
const SOCKADDR_IN6_LEN: u64 = 28;

/// The program's `sockaddr` at `addr` (`len` bytes) for a socket of `family`: an address (unspecified = any) and a
/// port.
pub fn read(family: u16, addr: u64, len: u64) -> Result<(Option<IpAddress>, u16), Errno> {
    if len < 2 {
        return Err(Errno::EINVAL);
    }
    let given: u16 = user::read(addr)?;
    match (family, given) {
        (AF_INET, AF_INET) if len >= SOCKADDR_IN_LEN => {
            let raw: [u8; 16] = user::read(addr)?;
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Address::new(raw[4], raw[5], raw[6], raw[7]);
            Ok(((!ip.is_unspecified()).then_some(IpAddress::Ipv4(ip)), port))
        }
        (AF_INET6, AF_INET6) if len >= SOCKADDR_IN6_LEN => {
            let raw: [u8; 28] = user::read(addr)?;
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            let ip = Ipv6Address::from(octets);
            let address = match ip.to_ipv4_mapped() {
                Some(v4) => IpAddress::Ipv4(v4),
                None => IpAddress::Ipv6(ip),
            };
            Ok(((!ip.is_unspecified()).then_some(address), port))
        }
        (AF_INET | AF_INET6, _) if len < SOCKADDR_IN_LEN => Err(Errno::EINVAL),
        _ => Err(Errno::EAFNOSUPPORT),
    }
}

/// Writes `endpoint` as a `sockaddr` of `family` to the program's `addr`, whose size is at `len_at` (a `socklen_t`,
/// updated to the full size as Linux does, with the address truncated to fit).
pub fn write(family: u16, endpoint: IpEndpoint, addr: u64, len_at: u64) -> Result<(), Errno> {
    if addr == 0 || len_at == 0 {
        return Ok(());
    }
    let room: u32 = user::read(len_at)?;
    let port = endpoint.port.to_be_bytes();
    let bytes: alloc::vec::Vec<u8> = match (family, endpoint.addr) {
        (AF_INET, IpAddress::Ipv4(ip)) => {
            let mut raw = [0u8; 16];
            raw[..2].copy_from_slice(&AF_INET.to_le_bytes());
            raw[2..4].copy_from_slice(&port);
            raw[4..8].copy_from_slice(&ip.octets());
            raw.to_vec()
        }
        (_, address) => {
            let ip = match address {
                IpAddress::Ipv4(v4) => v4.to_ipv6_mapped(),
                IpAddress::Ipv6(v6) => v6,
            };
            let mut raw = [0u8; 28];
            raw[..2].copy_from_slice(&AF_INET6.to_le_bytes());
            raw[2..4].copy_from_slice(&port);
            raw[8..24].copy_from_slice(&ip.octets());
            raw.to_vec()
        }
    };
    let n = (room as usize).min(bytes.len());
    user::write_bytes(addr, &bytes[..n])?;
    user::write(len_at, bytes.len() as u32)
}

/// The address a socket of `family` reports before it has one.
pub fn unspecified(family: u16) -> IpAddress {
    if family == AF_INET6 {
        IpAddress::Ipv6(Ipv6Address::UNSPECIFIED)
    } else {
        IpAddress::Ipv4(Ipv4Address::UNSPECIFIED)
    }
}
