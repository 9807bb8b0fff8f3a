//! The integer socket options Linux keeps per socket, each with its default and the rule by which Linux takes a value
//! (range, EINVAL, masks, "-1 means the default"). Which sockets an option applies to follows from its level, which
//! `syscalls::net::check_level` checks before an option is looked up here. Kiln keeps them all, per socket, and
//! reads them back as Linux does; the few that change what smoltcp does (the hop limit, Nagle) are applied by
//! `options::Options::configure`, and IPV6_V6ONLY by `bind`. Options with their own semantics (buffers, keep-alive,
//! linger, timeouts) live in `options`.

use super::Protocol;
use crate::errno::Errno;

pub const SOL_SOCKET: u32 = 1;
pub const IPPROTO_IP: u32 = 0;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const IPPROTO_IPV6: u32 = 41;

/// How Linux takes a value.
#[derive(Clone, Copy)]
enum Rule {
    /// Any non-zero value is 1.
    Bool,
    /// `min..=max`, else EINVAL.
    Range(i32, i32),
    /// -1 means the default; otherwise `min..=max`, else EINVAL.
    OrDefault(i32, i32),
    /// A byte: TCP keeps the two ECN bits it had (IP_TOS).
    Tos,
    /// 0 means 1; a negative value is the most (SO_RCVLOWAT).
    LowWater,
    /// 0 (the default) or Linux's MSS range (TCP_MAXSEG).
    Mss,
    /// Negative: -1; capped at 120 s; 0 reads as the default (TCP_LINGER2).
    FinTimeout,
    /// At least half the least receive buffer (TCP_WINDOW_CLAMP).
    WindowClamp,
    /// Stored as is.
    Any,
    /// Read only: setsockopt is ENOPROTOOPT.
    ReadOnly,
    /// UDP only, TCP refuses with EINVAL (IP_MULTICAST_TTL): -1 means the default, `0..=255`.
    MulticastTtl,
    /// UDP only, TCP keeps the default and refuses with ENOPROTOOPT (IPV6_MULTICAST_HOPS): -1 means the default,
    /// `0..=255`.
    MulticastHops,
}

struct Spec {
    level: u32,
    name: u32,
    default: i32,
    rule: Rule,
}

const fn spec(level: u32, name: u32, default: i32, rule: Rule) -> Spec {
    Spec { level, name, default, rule }
}

use Rule::*;

/// Half the most SO_RCVBUF reports: Linux caps a TCP SO_RCVLOWAT there.
const MOST_TCP_LOW_WATER: i32 = 212_992;
const DEFAULT_MSS: i32 = 536;
const DEFAULT_FIN_TIMEOUT_S: i32 = 60;

/// Every kept option.
const SPECS: &[Spec] = &[
    spec(SOL_SOCKET, 2, 0, Bool),                  // SO_REUSEADDR
    spec(SOL_SOCKET, 15, 0, Bool),                 // SO_REUSEPORT
    spec(SOL_SOCKET, 6, 0, Bool),                  // SO_BROADCAST
    spec(SOL_SOCKET, 10, 0, Bool),                 // SO_OOBINLINE
    spec(SOL_SOCKET, 5, 0, Bool),                  // SO_DONTROUTE
    spec(SOL_SOCKET, 12, 0, Any),                  // SO_PRIORITY
    spec(SOL_SOCKET, 18, 1, LowWater),             // SO_RCVLOWAT
    spec(SOL_SOCKET, 19, 1, ReadOnly),             // SO_SNDLOWAT
    spec(SOL_SOCKET, 36, 0, Any),                  // SO_MARK
    spec(SOL_SOCKET, 49, -1, Any),                 // SO_INCOMING_CPU
    spec(SOL_SOCKET, 16, 0, Bool),                 // SO_PASSCRED
    spec(SOL_SOCKET, 29, 0, Bool),                 // SO_TIMESTAMP
    spec(SOL_SOCKET, 35, 0, Bool),                 // SO_TIMESTAMPNS
    spec(IPPROTO_IP, 2, 64, OrDefault(1, 255)),    // IP_TTL
    spec(IPPROTO_IP, 1, 0, Tos),                   // IP_TOS
    spec(IPPROTO_IP, 33, 1, MulticastTtl),         // IP_MULTICAST_TTL
    spec(IPPROTO_IP, 34, 1, Bool),                 // IP_MULTICAST_LOOP
    spec(IPPROTO_IP, 13, 0, Bool),                 // IP_RECVTOS
    spec(IPPROTO_IP, 12, 0, Bool),                 // IP_RECVTTL
    spec(IPPROTO_IP, 8, 0, Bool),                  // IP_PKTINFO
    spec(IPPROTO_IP, 11, 0, Bool),                 // IP_RECVERR
    spec(IPPROTO_IP, 15, 0, Bool),                 // IP_FREEBIND
    spec(IPPROTO_IP, 19, 0, Bool),                 // IP_TRANSPARENT
    spec(IPPROTO_IP, 24, 0, Bool),                 // IP_BIND_ADDRESS_NO_PORT
    spec(IPPROTO_IP, 10, 1, Range(0, 5)),          // IP_MTU_DISCOVER
    spec(IPPROTO_IPV6, 26, 0, Bool),               // IPV6_V6ONLY
    spec(IPPROTO_IPV6, 16, 64, OrDefault(0, 255)), // IPV6_UNICAST_HOPS
    spec(IPPROTO_IPV6, 18, 1, MulticastHops),      // IPV6_MULTICAST_HOPS
    spec(IPPROTO_IPV6, 19, 1, Range(0, 1)),        // IPV6_MULTICAST_LOOP
    spec(IPPROTO_IPV6, 67, 0, OrDefault(0, 255)),  // IPV6_TCLASS
    spec(IPPROTO_IPV6, 49, 0, Bool),               // IPV6_RECVPKTINFO
    spec(IPPROTO_IPV6, 51, 0, Bool),               // IPV6_RECVHOPLIMIT
    spec(IPPROTO_IPV6, 66, 0, Bool),               // IPV6_RECVTCLASS
    spec(IPPROTO_IPV6, 75, 0, Bool),               // IPV6_TRANSPARENT
    spec(IPPROTO_IPV6, 78, 0, Bool),               // IPV6_FREEBIND
    spec(IPPROTO_IPV6, 23, 1, Range(0, 5)),        // IPV6_MTU_DISCOVER
    spec(IPPROTO_TCP, 1, 0, Bool),                 // TCP_NODELAY
    spec(IPPROTO_TCP, 2, 0, Mss),                  // TCP_MAXSEG
    spec(IPPROTO_TCP, 3, 0, Bool),                 // TCP_CORK
    spec(IPPROTO_TCP, 7, 6, Range(1, 127)),        // TCP_SYNCNT
    spec(IPPROTO_TCP, 8, 0, FinTimeout),           // TCP_LINGER2
    spec(IPPROTO_TCP, 10, 0, WindowClamp),         // TCP_WINDOW_CLAMP
    spec(IPPROTO_TCP, 12, 1, Bool),                // TCP_QUICKACK
    spec(IPPROTO_TCP, 16, 0, Range(0, 1)),         // TCP_THIN_LINEAR_TIMEOUTS
    spec(IPPROTO_TCP, 18, 0, Range(0, i32::MAX)),  // TCP_USER_TIMEOUT
    spec(IPPROTO_TCP, 23, 0, Range(0, i32::MAX)),  // TCP_FASTOPEN
    spec(IPPROTO_TCP, 25, -1, Any),                // TCP_NOTSENT_LOWAT
    spec(IPPROTO_UDP, 1, 0, Bool),                 // UDP_CORK
    spec(IPPROTO_UDP, 104, 0, Bool),               // UDP_GRO
];
const COUNT: usize = SPECS.len();

/// Where `(level, name)` is in [`SPECS`]: None for an option that is not kept. `const`, so the named options below
/// are found at compile time.
pub const fn find(level: u32, name: u32) -> Option<usize> {
    let mut i = 0;
    while i < COUNT {
        if SPECS[i].level == level && SPECS[i].name == name {
            return Some(i);
        }
        i += 1;
    }
    None
}

const fn index(level: u32, name: u32) -> usize {
    match find(level, name) {
        Some(at) => at,
        None => panic!("not a kept option"),
    }
}

/// The options whose values change what the stack does.
pub const SO_REUSEADDR: usize = index(SOL_SOCKET, 2);
pub const SO_REUSEPORT: usize = index(SOL_SOCKET, 15);
pub const SO_RCVLOWAT: usize = index(SOL_SOCKET, 18);
pub const IP_TTL: usize = index(IPPROTO_IP, 2);
pub const IPV6_V6ONLY: usize = index(IPPROTO_IPV6, 26);
pub const IPV6_UNICAST_HOPS: usize = index(IPPROTO_IPV6, 16);
pub const TCP_NODELAY: usize = index(IPPROTO_TCP, 1);

/// The kept options of one socket: each value as Linux stores it (None: never set, the default). On the heap: a
/// socket descriptor stays small.
#[derive(Clone)]
pub struct Kept {
    values: alloc::boxed::Box<[Option<i32>; COUNT]>,
}

impl Default for Kept {
    fn default() -> Kept {
        Kept { values: alloc::boxed::Box::new([None; COUNT]) }
    }
}

impl Kept {
    /// The value getsockopt reports.
    pub fn get(&self, at: usize) -> i32 {
        let spec = &SPECS[at];
        let value = self.values[at].unwrap_or(spec.default);
        match spec.rule {
            Mss if value == 0 => DEFAULT_MSS,
            FinTimeout if value == 0 => DEFAULT_FIN_TIMEOUT_S,
            _ => value,
        }
    }

    /// The value the program set, if it did (for the options that change what smoltcp does).
    pub fn set_value(&self, at: usize) -> Option<i32> {
        self.values[at]
    }

    /// The value in force (the default if never set).
    pub fn value(&self, at: usize) -> i32 {
        self.values[at].unwrap_or(SPECS[at].default)
    }

    /// Whether a boolean option is on.
    pub fn is_on(&self, at: usize) -> bool {
        self.value(at) != 0
    }

    /// setsockopt of `value`, validated and stored as Linux does.
    pub fn set(&mut self, at: usize, protocol: Protocol, value: i32) -> Result<(), Errno> {
        let spec = &SPECS[at];
        let tcp = protocol == Protocol::Tcp;
        let stored = match spec.rule {
            Bool => Some(i32::from(value != 0)),
            Range(min, max) => Some(value).filter(|v| (min..=max).contains(v)),
            MulticastHops if tcp => return Err(Errno::ENOPROTOOPT),
            OrDefault(..) | MulticastHops if value == -1 => {
                self.values[at] = None;
                return Ok(());
            }
            OrDefault(min, max) => Some(value).filter(|v| (min..=max).contains(v)),
            MulticastHops => Some(value).filter(|v| (0..=255).contains(v)),
            Tos if tcp => {
                let ecn = self.values[at].unwrap_or(0) & 3;
                Some(((value & !3) | ecn) & 0xff)
            }
            Tos => Some(value & 0xff),
            LowWater if value == 0 => Some(1),
            LowWater if value < 0 => Some(if tcp { MOST_TCP_LOW_WATER } else { i32::MAX }),
            LowWater => Some(if tcp { value.min(MOST_TCP_LOW_WATER) } else { value }),
            Mss => Some(value).filter(|&v| v == 0 || (88..=32767).contains(&v)),
            FinTimeout => Some(if value < 0 { -1 } else { value.min(120) }),
            WindowClamp => Some(if value == 0 { 0 } else { value.max(1152) }),
            Any => Some(value),
            ReadOnly => return Err(Errno::ENOPROTOOPT),
            MulticastTtl if tcp => None,
            MulticastTtl if value == -1 => Some(1),
            MulticastTtl => Some(value).filter(|v| (0..=255).contains(v)),
        };
        self.values[at] = Some(stored.ok_or(Errno::EINVAL)?);
        Ok(())
    }
}
