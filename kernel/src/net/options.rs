//! Socket options that change what a TCP connection does: buffer sizes (SO_RCVBUF, SO_SNDBUF), keep-alive
//! (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) and lingering on close (SO_LINGER), with Linux's limits
//! and reporting, and the integer options Linux keeps (`kept`), of which the hop limit and TCP_NODELAY reach
//! smoltcp. A connection accepted from a listener starts with the listener's options, as on Linux.

use super::kept::{self, Kept};
use crate::errno::Errno;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Duration;

/// Bytes each direction of a TCP connection buffers unless SO_RCVBUF/SO_SNDBUF say otherwise.
pub const DEFAULT_BUFFER: usize = 64 << 10;
/// The largest receive buffer smoltcp advertises without window scaling. With a larger one it scales its window, and
/// rounding the scaled window down after taking an odd number of bytes moves the window's right edge back (smoltcp
/// 0.14): a peer that had filled the window loses its last byte, and if the window is then zero the connection
/// deadlocks, since smoltcp neither retransmits while it probes a zero window (it probes past the lost byte) nor
/// reads the ACKs of a segment beyond a zero window (docs/architecture.md, "TCP windows"). A 20 MiB echo through the
/// user-mode network hung so about one run in three on a loaded host. SO_RCVBUF still reports what was asked.
pub const UNSCALED_WINDOW: usize = 65_535;
/// Linux's `net.core.rmem_max` and `wmem_max` defaults: the most SO_RCVBUF/SO_SNDBUF may ask for.
const MAX_BUFFER: usize = 212_992;
/// The least Linux reports for SO_RCVBUF and SO_SNDBUF (SOCK_MIN_RCVBUF, SOCK_MIN_SNDBUF on x86-64).
const MIN_REPORTED: [usize; 2] = [2304, 4608];
/// Linux's keep-alive defaults (tcp_keepalive_time, _intvl, _probes) and the limits of the TCP_KEEP* options.
const KEEP_IDLE_S: u32 = 7200;
const KEEP_INTERVAL_S: u32 = 75;
const KEEP_COUNT: u32 = 9;
const MAX_KEEP_S: u32 = 32767;
const MAX_KEEP_COUNT: u32 = 127;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Receive = 0,
    Send = 1,
}

#[derive(Clone)]
pub struct Options {
    /// What SO_RCVBUF and SO_SNDBUF report: twice the bytes buffered, as Linux reports (it counts its bookkeeping).
    reported: [usize; 2],
    keep_alive: bool,
    keep_idle_s: u32,
    keep_interval_s: u32,
    keep_count: u32,
    /// SO_LINGER's seconds when on.
    pub linger_s: Option<u32>,
    /// The options Linux keeps as integers.
    pub kept: Kept,
    /// The socket is IPv6 (its hop limit is IPV6_UNICAST_HOPS, not IP_TTL).
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            reported: [2 * DEFAULT_BUFFER; 2],
            keep_alive: false,
            keep_idle_s: KEEP_IDLE_S,
            keep_interval_s: KEEP_INTERVAL_S,
            keep_count: KEEP_COUNT,
            linger_s: None,
            kept: Kept::default(),
            ipv6: false,
        }
    }
}

impl Options {
    /// SO_RCVBUF / SO_SNDBUF as Linux takes them: capped at the maximum (a negative size, read as unsigned, is
    /// huge), doubled, raised to the minimum.
    pub fn set_buffer(&mut self, which: Direction, asked: i32) {
        let asked = (asked as u32 as usize).min(MAX_BUFFER);
        self.reported[which as usize] = (2 * asked).max(MIN_REPORTED[which as usize]);
    }

    pub fn reported_buffer(&self, which: Direction) -> usize {
        self.reported[which as usize]
    }

    /// The bytes a new smoltcp socket buffers that way; a receive buffer at most [`UNSCALED_WINDOW`].
    pub fn buffer(&self, which: Direction) -> usize {
        let bytes = self.reported[which as usize] / 2;
        match which {
            Direction::Receive => bytes.min(UNSCALED_WINDOW),
            Direction::Send => bytes,
        }
    }

    pub fn set_keep_alive(&mut self, on: bool) {
        self.keep_alive = on;
    }

    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// TCP_KEEPIDLE, TCP_KEEPINTVL (seconds) or TCP_KEEPCNT; EINVAL outside Linux's range.
    pub fn set_keep(&mut self, which: Keep, value: i32) -> Result<(), Errno> {
        let max = if which == Keep::Count { MAX_KEEP_COUNT } else { MAX_KEEP_S };
        let value = u32::try_from(value).ok().filter(|v| (1..=max).contains(v)).ok_or(Errno::EINVAL)?;
        match which {
            Keep::Idle => self.keep_idle_s = value,
            Keep::Interval => self.keep_interval_s = value,
            Keep::Count => self.keep_count = value,
        }
        Ok(())
    }

    pub fn keep(&self, which: Keep) -> u32 {
        match which {
            Keep::Idle => self.keep_idle_s,
            Keep::Interval => self.keep_interval_s,
            Keep::Count => self.keep_count,
        }
    }

    /// Gives `socket` the keep-alive these options ask for. smoltcp has one interval: a probe goes after each
    /// TCP_KEEPIDLE seconds of silence; the connection is aborted when the peer has said nothing for as long as
    /// Linux would have waited for its last probe (idle + interval x count).
    pub fn configure(&self, socket: &mut tcp::Socket<'_>) {
        socket.set_nagle_enabled(!self.kept.is_on(kept::TCP_NODELAY));
        socket.set_hop_limit(self.hop_limit());
        if self.keep_alive {
            let idle = u64::from(self.keep_idle_s);
            let give_up = idle + u64::from(self.keep_interval_s) * u64::from(self.keep_count);
            socket.set_keep_alive(Some(Duration::from_secs(idle)));
            socket.set_timeout(Some(Duration::from_secs(give_up)));
        } else {
            socket.set_keep_alive(None);
            socket.set_timeout(None);
        }
    }
}

impl Options {
    /// An IPv6 socket with IPV6_V6ONLY: it neither hears IPv4 nor holds IPv4's side of its port.
    pub fn v6_only(&self) -> bool {
        self.ipv6 && self.kept.is_on(kept::IPV6_V6ONLY)
    }

    /// Gives a UDP socket the hop limit these options ask for.
    pub fn configure_udp(&self, socket: &mut udp::Socket<'_>) {
        socket.set_hop_limit(self.hop_limit());
    }

    /// IP_TTL (IPv4) or IPV6_UNICAST_HOPS (IPv6) when set; smoltcp's default, 64, is Linux's. smoltcp has one hop
    /// limit per socket, so an IPv6 socket's IPv4 traffic uses IPV6_UNICAST_HOPS too. Linux lets IPv6 ask for 0,
    /// which smoltcp refuses: such packets leave with 1.
    fn hop_limit(&self) -> Option<u8> {
        let which = if self.ipv6 { kept::IPV6_UNICAST_HOPS } else { kept::IP_TTL };
        self.kept.set_value(which).map(|hops| hops.clamp(1, 255) as u8)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Idle,
    Interval,
    Count,
}
