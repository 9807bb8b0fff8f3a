//! TCP/IP for the program's sockets: one smoltcp interface with the loopback addresses (127.0.0.1/8 and ::1), its
//! sockets, and the ports they use. The network device is a loopback: everything the program sends to itself is
//! delivered inside the library OS (a virtio-net device to the outside is issue 4's next step).
//!
//! There are no interrupts: the stack makes progress when a thread polls it, which every socket operation does, and
//! which `file::wait_io` and idle vCPUs make sure happens when smoltcp's next timer (a retransmission) is due while
//! threads wait. A poll that changes any socket's state bumps the I/O generation, which wakes every thread blocked on
//! a socket, `poll`, `select` or `epoll_wait` to look again.

pub mod addr;
pub mod socket;

use crate::sync::{SpinGuard, SpinLock};
use crate::{file, time};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Loopback, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

/// First port handed out to sockets that did not bind one (Linux's default ephemeral range).
const EPHEMERAL_FIRST: u16 = 32768;
const EPHEMERAL_LAST: u16 = 60999;
/// How many polls one call may make while they keep changing state (each moves packets one hop on the loopback).
/// Reaching it leaves packets queued: the stack is then due for another poll at once (`next_deadline`).
const POLL_ROUNDS: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Protocol {
    Tcp,
    Udp,
}

pub struct Stack {
    pub iface: Interface,
    device: Loopback,
    pub sockets: SocketSet<'static>,
    /// Ports in use, per protocol.
    ports: BTreeSet<(Protocol, u16)>,
    next_ephemeral: u16,
    /// Closed TCP connections still finishing their FIN exchange; removed once smoltcp is done with them.
    closing: Vec<SocketHandle>,
    /// The last poll stopped before the stack was quiet: packets may wait on the loopback.
    unfinished: bool,
    /// TCP ports with a listener, and how many listeners each has.
    pub listeners: BTreeMap<u16, usize>,
    /// Connections taken by `accept`, ever: a connect refused by a full backlog tries again once this moves.
    pub accepts: u64,
}

static STACK: SpinLock<Option<Stack>> = SpinLock::new(None);

pub fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((time::since_boot_ns() / 1000) as i64)
}

/// The stack, locked; set up on first use.
pub fn stack() -> SpinGuard<'static, Option<Stack>> {
    let mut guard = STACK.lock();
    if guard.is_none() {
        let mut device = Loopback::new(Medium::Ip);
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8));
            let _ = addrs.push(IpCidr::new(IpAddress::v6(0, 0, 0, 0, 0, 0, 0, 1), 128));
        });
        *guard = Some(Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            ports: BTreeSet::new(),
            next_ephemeral: EPHEMERAL_FIRST,
            closing: Vec::new(),
            unfinished: false,
            listeners: BTreeMap::new(),
            accepts: 0,
        });
    }
    guard
}

/// Runs `f` on the stack, then polls it so that what `f` queued is sent and answered.
pub fn with<R>(f: impl FnOnce(&mut Stack) -> R) -> R {
    let mut guard = stack();
    let s = guard.as_mut().expect("set up by stack()");
    let result = f(s);
    let changed = s.poll();
    drop(guard);
    if changed {
        file::notify(0);
    }
    result
}

/// Runs `f` on the stack without polling it: for questions (addresses, readiness, options), which move no packets.
pub fn inspect<R>(f: impl FnOnce(&mut Stack) -> R) -> R {
    let mut guard = stack();
    f(guard.as_mut().expect("set up by stack()"))
}

/// Moves packets and runs timers; wakes waiting threads if any socket changed.
pub fn poll() {
    with(|_| ());
}

/// When smoltcp next needs a poll (a timer), in nanoseconds since boot; None without sockets or timers.
pub fn next_deadline() -> Option<u64> {
    let mut guard = STACK.lock();
    let s = guard.as_mut()?;
    if s.unfinished {
        return Some(time::since_boot_ns());
    }
    let delay = s.iface.poll_delay(now(), &s.sockets)?;
    Some(time::since_boot_ns().saturating_add(delay.total_micros() * 1000))
}

impl Stack {
    /// Polls until nothing changes (a packet sent on the loopback arrives at the next poll, so two quiet polls in a
    /// row mean done); returns whether anything did.
    fn poll(&mut self) -> bool {
        let (mut changed, mut quiet) = (false, 0);
        self.unfinished = true;
        for _ in 0..POLL_ROUNDS {
            if self.iface.poll(now(), &mut self.device, &mut self.sockets) == PollResult::None {
                quiet += 1;
                if quiet == 2 {
                    self.unfinished = false;
                    break;
                }
            } else {
                (changed, quiet) = (true, 0);
            }
        }
        self.reap();
        changed
    }

    /// Forgets connections that finished closing.
    fn reap(&mut self) {
        let sockets = &mut self.sockets;
        self.closing.retain(|&h| {
            let done = matches!(sockets.get::<tcp::Socket>(h).state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                sockets.remove(h);
            }
            !done
        });
    }

    /// Claims `port` for `protocol`, or a free ephemeral port for 0. EADDRINUSE if taken.
    pub fn claim_port(&mut self, protocol: Protocol, port: u16) -> Result<u16, crate::errno::Errno> {
        if port != 0 {
            return if self.ports.insert((protocol, port)) { Ok(port) } else { Err(crate::errno::Errno::EADDRINUSE) };
        }
        for _ in EPHEMERAL_FIRST..=EPHEMERAL_LAST {
            let candidate = self.next_ephemeral;
            self.next_ephemeral = if candidate == EPHEMERAL_LAST { EPHEMERAL_FIRST } else { candidate + 1 };
            if self.ports.insert((protocol, candidate)) {
                return Ok(candidate);
            }
        }
        Err(crate::errno::Errno::EADDRINUSE)
    }

    pub fn release_port(&mut self, protocol: Protocol, port: u16) {
        self.ports.remove(&(protocol, port));
    }

    /// A TCP connection the program closed: it finishes its FIN exchange in the background.
    pub fn close_later(&mut self, handle: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(handle).close();
        self.closing.push(handle);
    }
}
