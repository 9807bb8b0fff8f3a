//! The multicast groups the program's sockets joined, for `/proc/net/igmp` and `/proc/net/igmp6`, which programs
//! read to see memberships (Go's `Interface.MulticastAddrs`). smoltcp is built without multicast, so no group's
//! datagrams arrive; the memberships are kept and reported. Which interface a socket named is not kept: each group
//! is listed on every interface, after the all-nodes groups Linux lists on each.

use super::interfaces::interfaces;
use crate::sync::SpinLock;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;
use smoltcp::wire::IpAddress;

/// Each group joined, with how many memberships hold it.
static JOINED: SpinLock<Vec<(IpAddress, usize)>> = SpinLock::new(Vec::new());

pub fn joined(group: IpAddress) {
    let mut all = JOINED.lock();
    match all.iter_mut().find(|(g, _)| *g == group) {
        Some((_, users)) => *users += 1,
        None => all.push((group, 1)),
    }
}

pub fn left(group: IpAddress) {
    let mut all = JOINED.lock();
    if let Some(at) = all.iter().position(|(g, _)| *g == group) {
        all[at].1 -= 1;
        if all[at].1 == 0 {
            all.swap_remove(at);
        }
    }
}

/// `/proc/net/igmp`: per interface, 224.0.0.1 and the IPv4 groups, each as the little-endian hex of its bytes.
pub fn render_igmp() -> Vec<u8> {
    let groups: Vec<(IpAddress, usize)> = JOINED.lock().clone();
    let mut out = String::from("Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n");
    for i in interfaces() {
        let mut lines = vec![([224u8, 0, 0, 1], 1usize)];
        for (group, users) in &groups {
            if let IpAddress::Ipv4(v4) = group {
                lines.push((v4.octets(), *users));
            }
        }
        let _ = writeln!(out, "{}\t{:<10}: {:5}      V3", i.index, i.name, lines.len());
        for (bytes, users) in lines {
            let _ = writeln!(out, "\t\t\t\t{:08X} {:5} 0:00000000\t\t0", u32::from_le_bytes(bytes), users);
        }
    }
    out.into_bytes()
}

/// `/proc/net/igmp6`: per interface, ff02::1, ff01::1 and the IPv6 groups, each as the hex of its bytes.
pub fn render_igmp6() -> Vec<u8> {
    let groups: Vec<(IpAddress, usize)> = JOINED.lock().clone();
    let mut out = String::new();
    let all_nodes = [
        smoltcp::wire::Ipv6Address::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        smoltcp::wire::Ipv6Address::new(0xff01, 0, 0, 0, 0, 0, 0, 1),
    ];
    for i in interfaces() {
        let mut lines: Vec<([u8; 16], usize)> = all_nodes.iter().map(|a| (a.octets(), 1)).collect();
        for (group, users) in &groups {
            if let IpAddress::Ipv6(v6) = group {
                lines.push((v6.octets(), *users));
            }
        }
        for (bytes, users) in lines {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(out, "{:<4} {:<15} {} {:5} {:08X} {}", i.index, i.name, hex, users, 4, 0);
        }
    }
    out.into_bytes()
}
