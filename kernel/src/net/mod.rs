//! TCP/IP for the program's sockets: one smoltcp interface with the loopback addresses (127.0.0.1/8 and ::1) and,
//! when the VM has a network card, the addresses the VMM gave it (IPv4, and IPv6 where the network carries it), with
//! default routes through the gateways; its sockets, and the ports they use. Its device (`link`) keeps what the
//! program sends to itself inside the library OS and sends the rest out on the card (`card`, `virtio`), which is set
//! up when the stack is first used.
//!
//! There are no interrupts: the stack makes progress when a thread polls it, which every socket operation does, and
//! which idle vCPUs and syscall exits make sure happens when smoltcp's next timer (a retransmission) is due. After a
//! poll, the sockets whose state, queued bytes or buffer room changed are told (`file::wait::Waitable::changed`),
//! which wakes only the threads waiting on them.

pub mod addr;
pub mod card;
pub mod dhcp;
pub mod groups;
pub mod interfaces;
pub mod kept;
pub mod link;
pub mod netlink;
pub mod options;
pub mod pod;
pub mod socket;
pub mod unix;
pub mod virtio;

use crate::file::wait::Waitable;
use crate::sync::{SpinGuard, SpinLock};
use crate::time;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::boot::{NetInfo, RouteInfo, ROUTE_IPV4, ROUTE_IPV6};
use kiln_sockets::{self as sockets, Handle, Sockets};
use link::Link;
use smoltcp::iface::{Config, Interface, PollResult};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address, Ipv6Address};

/// First port handed out to sockets that did not bind one (Linux's default ephemeral range).
const EPHEMERAL_FIRST: u16 = 32768;
const EPHEMERAL_LAST: u16 = 60999;
/// How many rounds one poll may make while sockets keep sending (each moves packets one hop on the loopback).
/// Reaching it leaves packets queued: the stack is then due for another poll at once (`next_deadline`).
const POLL_ROUNDS: usize = 1024;
/// Most packets one round takes in: a card that keeps receiving cannot hold a poll forever.
const ROUND_PACKETS: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A socket's hold on a port: whose (an id of the socket), for which families (an IPv6 socket holds IPv4's side of
/// the port too unless IPV6_V6ONLY), and whether it shares the port with others that share it (SO_REUSEPORT; for UDP
/// also SO_REUSEADDR, as on Linux). Several TCP listeners on one port each get some of its connections, several UDP
/// sockets one of them its datagrams.
#[derive(Clone, Copy)]
pub struct PortClaim {
    pub owner: usize,
    pub families: Families,
    pub shares: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl PortClaim {
    fn conflicts(&self, other: &PortClaim) -> bool {
        let overlap = (self.families.v4 && other.families.v4) || (self.families.v6 && other.families.v6);
        overlap && !(self.shares && other.shares)
    }
}

pub struct Stack {
    pub iface: Interface,
    device: Link,
    /// Whether the VM has a network card that works.
    has_card: bool,
    /// The card's addresses, if it has them (the IPv4 one may wait for DHCP).
    external: Option<Ipv4Address>,
    external6: Option<Ipv6Address>,
    pub sockets: Sockets,
    /// Ports in use, per protocol, and who holds each (several, when they all share it).
    ports: BTreeMap<(Protocol, u16), Vec<PortClaim>>,
    next_ephemeral: u16,
    /// Closed TCP connections still finishing their FIN exchange; removed once smoltcp is done with them.
    closing: BTreeSet<Handle>,
    /// The last poll stopped before the stack was quiet: packets may wait on the loopback.
    unfinished: bool,
    /// TCP ports with a listener, and how many listeners each has.
    pub listeners: BTreeMap<u16, usize>,
    /// Connections taken by `accept`, ever: a connect refused by a full backlog tries again once this moves.
    pub accepts: u64,
    /// Connects waiting for an `accept` to make room in a backlog: told of the next.
    pub room_waiters: Vec<Arc<Waitable>>,
    /// The smoltcp sockets of descriptors: whose waitable a change of each tells, and what it looked like after the
    /// last poll or the program's last use of it.
    tracked: BTreeMap<Handle, Tracked>,
    /// Waitables to tell once the stack's lock is released (telling wakes threads, under the scheduler's lock, which
    /// is taken before the stack's elsewhere).
    to_tell: Vec<Arc<Waitable>>,
    /// A new `/etc/resolv.conf` from a DHCP lease, written once the stack's lock is released.
    resolv_conf: Option<Vec<u8>>,
}

struct Tracked {
    waitable: Arc<Waitable>,
    tcp: bool,
    seen: Look,
    /// TCP: a look found the peer's FIN (a state after it). A connection that ends up closed then closed normally
    /// if the program sent its FIN too; smoltcp's closed state no longer says whether a FIN came before.
    peer_fin: bool,
}

/// Whether a TCP connection in `state` has received the peer's FIN.
pub fn after_peer_fin(state: tcp::State) -> bool {
    matches!(state, tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait)
}

/// What about a smoltcp socket can make it ready: its state and the bytes it holds each way. Between two looks, the
/// stack only adds received bytes and removes acknowledged ones, and the program's reads and writes are looked at
/// as they happen, so any difference is a change a waiter must hear of.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Look {
    state: Option<tcp::State>,
    received: usize,
    unsent: usize,
}

fn look(sockets: &Sockets, handle: Handle, is_tcp: bool) -> Look {
    if is_tcp {
        let tcp = sockets.get::<tcp::Socket>(handle);
        Look { state: Some(tcp.state()), received: tcp.recv_queue(), unsent: tcp.send_queue() }
    } else {
        let udp = sockets.get::<udp::Socket>(handle);
        Look { state: None, received: udp.recv_queue(), unsent: udp.send_queue() }
    }
}

static STACK: SpinLock<Option<Stack>> = SpinLock::new(None);
/// The network card the VMM described, for the stack to set up on first use.
static CARD: SpinLock<Option<NetInfo>> = SpinLock::new(None);

/// The card's addresses, for those who describe the interfaces (netlink); kept after the stack took the card.
static CARD_ADDRESS: SpinLock<Option<card::Address>> = SpinLock::new(None);

pub fn init(boot: &kiln_abi::BootInfo) {
    pod::init(boot);
    if boot.net.mmio_phys != 0 {
        *CARD.lock() = Some(boot.net);
        *CARD_ADDRESS.lock() = Some(card_address(&boot.net, &boot.routes));
    }
}

/// The card's MAC, MTU and addresses, if the VM has one.
pub fn card_address_info() -> Option<card::Address> {
    *CARD_ADDRESS.lock()
}

pub fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((time::since_boot_ns() / 1000) as i64)
}

/// The stack, locked; set up on first use.
pub fn stack() -> SpinGuard<'static, Option<Stack>> {
    let mut guard = STACK.lock();
    if guard.is_none() {
        let mut device = Link::new();
        let address = *CARD_ADDRESS.lock();
        let external = CARD.lock().take().zip(address).map(|(card, address)| attach(&mut device, &card, address));
        // Before a DHCP lease, the card has no IPv4 address.
        let v4 = external.filter(|card| !card.ip.is_unspecified());
        let mut config = Config::new(HardwareAddress::Ip);
        // smoltcp draws TCP initial sequence numbers from this seed; its default, 0, gave every VM the same ones, which
        // anyone could predict (RFC 6528) to inject into a connection or, before smoltcp's SYN went out, to stop it.
        config.random_seed = random_u64();
        let mut iface = Interface::new(config, &mut device, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8));
            let _ = addrs.push(IpCidr::new(IpAddress::v6(0, 0, 0, 0, 0, 0, 0, 1), 128));
            if let Some(card) = v4 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(card.ip), card.prefix_len));
            }
            if let Some(v6) = external.and_then(|card| card.ip6) {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(v6.ip), v6.prefix_len));
            }
        });
        // The card picks each packet's next hop (`card::Address::next_hop4`, its routes included) and drops what no
        // route leads to; smoltcp only needs a route to send anything beyond the networks at all.
        if let Some(card) = v4 {
            let via = if card.gateway.is_unspecified() { card.ip } else { card.gateway };
            let _ = iface.routes_mut().add_default_ipv4_route(via);
        }
        if let Some(v6) = external.and_then(|card| card.ip6) {
            let _ = iface.routes_mut().add_default_ipv6_route(v6.gateway.unwrap_or(v6.ip));
        }
        *guard = Some(Stack {
            iface,
            device,
            has_card: external.is_some(),
            external: v4.map(|card| card.ip),
            external6: external.and_then(|card| card.ip6).map(|v6| v6.ip),
            // A secret key for the socket table's hashes.
            sockets: Sockets::new(random_u64()),
            ports: BTreeMap::new(),
            next_ephemeral: EPHEMERAL_FIRST,
            closing: BTreeSet::new(),
            unfinished: false,
            listeners: BTreeMap::new(),
            accepts: 0,
            room_waiters: Vec::new(),
            tracked: BTreeMap::new(),
            to_tell: Vec::new(),
            resolv_conf: None,
        });
    }
    guard
}

/// 64 bits from the library OS's generator (seeded by the VMM with the host's randomness at each boot).
pub(super) fn random_u64() -> u64 {
    let mut seed = [0u8; 8];
    crate::syscalls::random::fill(&mut seed);
    u64::from_ne_bytes(seed)
}

/// Sets the network card up and puts it on the link with the addresses the VMM gave it (an IPv4 address of 0.0.0.0
/// is asked of DHCP). A card that does not start stops the VM with the reason (the VMM offered it, so this is a bug
/// or a VM too small for its buffers).
fn attach(device: &mut Link, card: &NetInfo, address: card::Address) -> card::Address {
    match virtio::setup(crate::virtio_transport::Transport::at(card.mmio_phys, card.transport.into()), address.mtu) {
        Ok((rx, tx)) => device.attach(rx, tx, address, wants_dhcp(card), now()),
        Err(virtio::SetupError::OutOfMemory) => {
            crate::hypercall::panic_message("no memory left for the network card's buffers; give the VM more --memory")
        }
        Err(virtio::SetupError::Features) => {
            crate::hypercall::panic_message("the network card refused the features the library OS needs")
        }
    }
    address
}

/// Whether the card's IPv4 address is DHCP's to give (the platform layer of an exported image found no `ip=`).
fn wants_dhcp(card: &NetInfo) -> bool {
    card.ipv4 == [0; 4]
}

/// Most time the boot waits for a DHCP lease before the program starts (without an address, while the card keeps
/// asking).
const LEASE_WAIT_NS: u64 = 10_000_000_000;

/// Before the program starts: a card whose address is DHCP's gets its lease first, as Linux's `ip=dhcp` waits for
/// it, within [`LEASE_WAIT_NS`].
pub fn start() {
    if !CARD.lock().as_ref().is_some_and(wants_dhcp) {
        return;
    }
    let deadline = time::since_boot_ns().saturating_add(LEASE_WAIT_NS);
    loop {
        poll();
        let now = time::since_boot_ns();
        if inspect(|s| s.external.is_some()) || now >= deadline {
            return;
        }
        time::wait_until(next_deadline().unwrap_or(deadline).clamp(now + 1_000_000, deadline));
    }
}

/// The addresses and routes the VMM gave the card, as the library OS takes them (a route of no known family, or
/// whose prefix is longer than its addresses, is left out).
fn card_address(card: &NetInfo, routes: &[RouteInfo]) -> card::Address {
    let mut table = [None; card::MAX_ROUTES];
    let given = routes.iter().filter_map(|r| {
        let (destination, gateway) = match (r.family, r.prefix_len) {
            (ROUTE_IPV4, 0..=32) => {
                let v4 = |b: &[u8; 16]| Ipv4Address::new(b[0], b[1], b[2], b[3]);
                let gateway = Some(v4(&r.gateway)).filter(|g| !g.is_unspecified()).map(IpAddress::Ipv4);
                (IpAddress::Ipv4(v4(&r.destination)), gateway)
            }
            (ROUTE_IPV6, 0..=128) => {
                let gateway = Some(Ipv6Address::from(r.gateway)).filter(|g| !g.is_unspecified());
                (IpAddress::Ipv6(Ipv6Address::from(r.destination)), gateway.map(IpAddress::Ipv6))
            }
            _ => return None,
        };
        Some(card::Route { destination: IpCidr::new(destination, r.prefix_len), gateway })
    });
    for (slot, route) in table.iter_mut().zip(given) {
        *slot = Some(route);
    }
    let ip6 = (card.ipv6_prefix_len != 0).then(|| card::Ipv6Net {
        ip: Ipv6Address::from(card.ipv6),
        prefix_len: card.ipv6_prefix_len.clamp(1, 128),
        gateway: Some(Ipv6Address::from(card.gateway6)).filter(|g| !g.is_unspecified()),
    });
    card::Address {
        mac: card.mac,
        ip: Ipv4Address::from(card.ipv4),
        prefix_len: card.prefix_len.clamp(1, 32),
        gateway: Ipv4Address::from(card.gateway),
        ip6,
        mtu: card.mtu.clamp(576, 65520),
        routes: table,
    }
}

/// Runs `f` on the stack, then polls it so that what `f` queued is sent and answered.
pub fn with<R>(f: impl FnOnce(&mut Stack) -> R) -> R {
    let mut guard = stack();
    let s = guard.as_mut().expect("set up by stack()");
    let result = f(s);
    s.poll();
    let mut to_tell = core::mem::take(&mut s.to_tell);
    let resolv_conf = s.resolv_conf.take();
    drop(guard);
    if let Some(conf) = resolv_conf {
        crate::vfs::replace_file("/etc/resolv.conf", &conf);
    }
    // Once each (a listener's backlog sockets share its waitable).
    to_tell.sort_unstable_by_key(Arc::as_ptr);
    to_tell.dedup_by(|a, b| Arc::ptr_eq(a, b));
    for waitable in to_tell {
        waitable.changed();
    }
    result
}

/// Runs `f` on the stack without polling it: for questions (addresses, readiness, options), which move no packets.
pub fn inspect<R>(f: impl FnOnce(&mut Stack) -> R) -> R {
    let mut guard = stack();
    f(guard.as_mut().expect("set up by stack()"))
}

/// Moves packets and runs timers; wakes the threads waiting on sockets that changed.
pub fn poll() {
    with(|_| ());
}

/// When a syscall's end last looked whether the stack's timers were due (ns since boot).
static TIMERS_LOOKED: AtomicU64 = AtomicU64::new(0);
/// How often a syscall's end looks: smoltcp's timers (retransmissions, keep-alive) are hundreds of milliseconds and
/// more apart, and a look visits every socket.
const TIMERS_EVERY_NS: u64 = 10_000_000;

/// At a syscall's end: polls the stack if a timer of it (a retransmission, a keep-alive) is due, looking at most
/// every [`TIMERS_EVERY_NS`], on one vCPU at a time. Threads waiting on sockets do not wake up for the stack's timers
/// themselves (that would wake them all at each); idle vCPUs poll when they are due, and this covers vCPUs that never
/// idle.
pub fn poll_if_due() {
    let looked = TIMERS_LOOKED.load(Ordering::Relaxed);
    let now = time::since_boot_ns();
    if now < looked.saturating_add(TIMERS_EVERY_NS)
        || TIMERS_LOOKED.compare_exchange(looked, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    if next_deadline().is_some_and(|due| due <= now) {
        poll();
    }
}

/// When the network card was first owed a notification of frames to send (nanoseconds since boot; 0: none owed).
/// The notification is a VM exit, and Kiln's VMM sends queued frames anyway whenever a vCPU waits: so a vCPU about to
/// wait drops the debt ([`before_wait`]), and one that keeps running pays it at a syscall's end once it is
/// [`KICK_DELAY_NS`] old ([`pay_late_kick`]), batching what a busy server sends meanwhile into one exit.
static KICK_OWED: AtomicU64 = AtomicU64::new(0);
/// An exit costs 35-90 us of host CPU on `kvm_pvm`: at 20 us, redis under 50 clients paid one for every ~5 replies
/// (0.18 exits a request, 29 us of vCPU CPU a request); at 200 us one for every ~40 (17 us a request). A vCPU
/// that waits, which a server does whenever its clients are slower than it, sends at once anyway.
const KICK_DELAY_NS: u64 = 200_000;

/// A vCPU is about to wait in the VMM, which first sends what the card has queued.
pub fn before_wait() {
    KICK_OWED.store(0, Ordering::SeqCst);
}

/// At a syscall's end: notifies the card of frames queued more than [`KICK_DELAY_NS`] ago.
pub fn pay_late_kick() {
    let since = KICK_OWED.load(Ordering::Relaxed);
    if since != 0 && time::since_boot_ns().saturating_sub(since) >= KICK_DELAY_NS {
        kick_now();
    }
}

fn kick_now() {
    let guard = STACK.lock();
    if KICK_OWED.swap(0, Ordering::SeqCst) != 0 {
        if let Some(s) = guard.as_ref() {
            s.device.kick();
        }
    }
}

/// Most time the program's end waits for its connections to deliver what they hold.
const LINGER_NS: u64 = 2_000_000_000;

/// The program is ending: as the kernel does for a process's sockets at exit, closes its TCP connections and gives
/// them up to [`LINGER_NS`] to send what they still hold and their FIN, before the VM (and so the connections) goes.
pub fn linger() {
    if STACK.lock().is_none() {
        return;
    }
    with(|s| {
        for (_, socket) in s.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(tcp) = socket {
                if matches!(tcp.state(), tcp::State::Established | tcp::State::CloseWait) {
                    tcp.close();
                }
            }
        }
    });
    let deadline = time::since_boot_ns().saturating_add(LINGER_NS);
    loop {
        let busy = inspect(|s| {
            s.sockets.iter().any(|(_, socket)| match socket {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    tcp.send_queue() > 0
                        || matches!(tcp.state(), tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck)
                }
                _ => false,
            })
        });
        let now = time::since_boot_ns();
        if !busy || now >= deadline {
            // The VM ends next: what is queued must go now.
            kick_now();
            return;
        }
        let next = next_deadline().unwrap_or(u64::MAX).min(now + 1_000_000).min(deadline);
        time::wait_until(next);
        poll();
    }
}

/// Whether the network can wake a waiting thread without any deadline: the VM has a card, on which packets may come
/// at any time, for a socket of a descriptor (one whose changes are told) that can hear them. A connection the
/// program closed, finishing in the background, wakes nobody: it must not hide a deadlock of the rest.
pub fn can_wake() -> bool {
    STACK
        .lock()
        .as_ref()
        .is_some_and(|s| s.has_card && s.tracked.keys().any(|&handle| reachable(s.sockets.socket(handle))))
}

/// Whether packets from the card can reach `socket`: it listens or is bound beyond the loopback, or talks to a peer
/// there. (A program whose sockets are all on the loopback can still be reported as deadlocked.)
fn reachable(socket: &smoltcp::socket::Socket<'_>) -> bool {
    let outside = |addr: Option<IpAddress>| match addr {
        None => true,
        Some(IpAddress::Ipv4(v4)) => !v4.is_loopback(),
        Some(IpAddress::Ipv6(v6)) => !v6.is_loopback(),
    };
    match socket {
        smoltcp::socket::Socket::Tcp(tcp) => match tcp.remote_endpoint() {
            Some(peer) => outside(Some(peer.addr)),
            None => tcp.state() == tcp::State::Listen && outside(tcp.listen_endpoint().addr),
        },
        smoltcp::socket::Socket::Udp(udp) => udp.is_open() && outside(udp.endpoint().addr),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Whether frames from the card wait for a poll.
pub fn has_frames() -> bool {
    STACK.lock().as_ref().is_some_and(|s| s.device.has_frames())
}

/// When smoltcp next needs a poll (a timer), in nanoseconds since boot; None without sockets or timers.
pub fn next_deadline() -> Option<u64> {
    let mut guard = STACK.lock();
    let s = guard.as_mut()?;
    if s.unfinished || s.device.has_frames() || s.sockets.has_pending() {
        return Some(time::since_boot_ns());
    }
    let dhcp = s.device.dhcp_due(now());
    let due = [s.sockets.next_due(), dhcp].into_iter().flatten().min()?;
    Some(u64::try_from(due.total_micros()).unwrap_or(0).saturating_mul(1000))
}

impl Stack {
    /// Polls until no socket has more to send and nothing is left on the loopback; then notes which sockets changed,
    /// to be told.
    fn poll(&mut self) {
        let mut touched = Vec::new();
        // A second pass only to send the resets of closed connections that data came to (`reap`).
        for _ in 0..2 {
            self.rounds();
            // After the rounds, which gave it the frames that were its.
            if let Some(change) = self.device.poll_dhcp(now()) {
                self.take_lease(change);
            }
            if self.device.flush() {
                let _ = KICK_OWED.compare_exchange(0, time::since_boot_ns().max(1), Ordering::SeqCst, Ordering::SeqCst);
            }
            let reached = self.sockets.take_touched();
            let aborted = self.reap(&reached);
            touched.extend(reached);
            if !aborted {
                break;
            }
        }
        self.note_changes(&touched);
    }

    /// Rounds of: the packets waiting on the link, each handed to smoltcp with only the socket it is for, then a turn
    /// to send for each socket that has one (the program changed it, a packet came to it, a timer of it is due, or it
    /// sent in the last round); until a round leaves no socket with a turn and nothing on the loopback, at most
    /// [`POLL_ROUNDS`] times.
    fn rounds(&mut self) {
        self.unfinished = true;
        let now = now();
        let (external, external6) = (self.external, self.external6);
        // Beyond the VM's own and loopback addresses, a unicast address the stack was given is a broadcast one.
        let broadcast = move |addr: IpAddress| match addr {
            IpAddress::Ipv4(v4) => !v4.is_loopback() && Some(v4) != external,
            IpAddress::Ipv6(v6) => !v6.is_loopback() && Some(v6) != external6,
        };
        // Once per poll, after the program's changes are filed: within one, backlog sockets only leave the listening
        // state, each by a SYN the room was counted down for.
        self.sockets.file_pending();
        self.count_syn_room();
        for _ in 0..POLL_ROUNDS {
            // Packets first, then sending, as smoltcp's own `poll` does: a socket that sent before taking in the
            // ACKs waiting for it could send past a window that had shrunk, which smoltcp's receiver panicked on
            // ("attempt to subtract sequence numbers with underflow"; the user-mode network did, in this order).
            for _ in 0..ROUND_PACKETS {
                let Some(mut packet) = self.device.next_packet(now) else { break };
                let handle = match self.sockets.route(&sockets::target(packet.packet()), broadcast) {
                    sockets::Route::Drop => {
                        packet.discard();
                        continue;
                    }
                    route => route.handle(),
                };
                self.iface.poll_ingress_single(now, &mut packet, self.sockets.set_mut(handle));
                if let Some(handle) = handle {
                    self.sockets.polled(handle, &mut self.iface, now);
                    self.sockets.mark(handle);
                }
            }
            for handle in self.sockets.take_pending(now) {
                let sent = self.iface.poll_egress(now, &mut self.device, self.sockets.set_mut(Some(handle)));
                self.sockets.polled(handle, &mut self.iface, now);
                if sent == PollResult::SocketStateChanged {
                    self.sockets.mark(handle);
                }
            }
            if !self.sockets.has_pending() && self.device.is_idle() {
                self.unfinished = false;
                break;
            }
        }
    }

    /// Takes the card's new DHCP lease (or its loss): its address, prefix and default route, and its DNS servers
    /// for `/etc/resolv.conf`.
    fn take_lease(&mut self, change: dhcp::Change) {
        let old = self.external.take();
        self.iface.update_ip_addrs(|addrs| addrs.retain(|cidr| old.is_none_or(|old| cidr.address() != old.into())));
        self.iface.routes_mut().remove_default_ipv4_route();
        if let dhcp::Change::Leased(lease) = change {
            self.iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::Ipv4(lease.address));
            });
            if let Some(router) = lease.router {
                let _ = self.iface.routes_mut().add_default_ipv4_route(router);
            }
            self.external = Some(lease.address.address());
            if !lease.dns.is_empty() {
                let mut conf = alloc::string::String::new();
                for server in &lease.dns {
                    let _ = core::fmt::Write::write_fmt(&mut conf, format_args!("nameserver {server}\n"));
                }
                self.resolv_conf = Some(conf.into_bytes());
            }
        }
        *CARD_ADDRESS.lock() = self.device.card_address();
    }

    /// Queues the waitables of the sockets among `touched` that look different from the last look to be told.
    fn note_changes(&mut self, touched: &[Handle]) {
        for handle in touched {
            let Some(tracked) = self.tracked.get_mut(handle) else { continue };
            let now = look(&self.sockets, *handle, tracked.tcp);
            tracked.peer_fin |= now.state.is_some_and(after_peer_fin);
            if now != tracked.seen {
                tracked.seen = now;
                self.to_tell.push(tracked.waitable.clone());
            }
        }
    }

    /// Adds a TCP socket whose changes `waitable` is told of.
    pub fn add_tcp(&mut self, socket: tcp::Socket<'static>, waitable: &Arc<Waitable>) -> Handle {
        let handle = self.sockets.add(socket);
        self.track(handle, waitable);
        handle
    }

    /// Adds a UDP socket whose changes `waitable` is told of.
    pub fn add_udp(&mut self, socket: udp::Socket<'static>, waitable: &Arc<Waitable>) -> Handle {
        let handle = self.sockets.add(socket);
        self.track_as(handle, waitable, false);
        handle
    }

    /// From now on, changes of TCP socket `handle` tell `waitable` (an accepted connection's, no longer its
    /// listener's).
    pub fn track(&mut self, handle: Handle, waitable: &Arc<Waitable>) {
        self.track_as(handle, waitable, true);
    }

    fn track_as(&mut self, handle: Handle, waitable: &Arc<Waitable>, tcp: bool) {
        let seen = look(&self.sockets, handle, tcp);
        // A backlog connection handed to its own descriptor keeps what was seen of it.
        let peer_fin = seen.state.is_some_and(after_peer_fin) || self.tracked.get(&handle).is_some_and(|t| t.peer_fin);
        self.tracked.insert(handle, Tracked { waitable: waitable.clone(), tcp, seen, peer_fin });
    }

    /// The program read from or wrote to `handle`: that is no change for anyone to hear of, so the next poll
    /// compares with how it looks now.
    pub fn looked_at(&mut self, handle: Handle) {
        if let Some(tracked) = self.tracked.get_mut(&handle) {
            tracked.seen = look(&self.sockets, handle, tracked.tcp);
            tracked.peer_fin |= tracked.seen.state.is_some_and(after_peer_fin);
        }
    }

    /// Whether TCP socket `handle`'s peer has finished sending (its FIN came), even if the connection has closed
    /// since.
    pub fn peer_finished(&self, handle: Handle) -> bool {
        after_peer_fin(self.sockets.get::<tcp::Socket>(handle).state())
            || self.tracked.get(&handle).is_some_and(|t| t.peer_fin)
    }

    /// Removes a smoltcp socket at once.
    pub fn remove(&mut self, handle: Handle) {
        self.tracked.remove(&handle);
        self.closing.remove(&handle);
        self.sockets.remove(handle);
    }

    /// Queues `waitable` to be told when the stack's lock is released.
    pub fn tell(&mut self, waitable: Arc<Waitable>) {
        self.to_tell.push(waitable);
    }

    /// The source address for packets to `remote`: a loopback address for the loopback, the card's otherwise;
    /// ENETUNREACH where the VM has no way there (no address of its family, or no route).
    pub fn source_for(&self, remote: IpAddress) -> Result<IpAddress, crate::errno::Errno> {
        match remote {
            IpAddress::Ipv4(v4) if v4.is_loopback() => Ok(IpAddress::v4(127, 0, 0, 1)),
            IpAddress::Ipv4(v4) if Some(v4) == self.external => Ok(remote),
            IpAddress::Ipv6(v6) if v6.is_loopback() => Ok(IpAddress::Ipv6(Ipv6Address::LOCALHOST)),
            IpAddress::Ipv6(v6) if Some(v6) == self.external6 => Ok(remote),
            IpAddress::Ipv4(v4) => self
                .external
                .filter(|_| self.device.card_address().is_some_and(|card| card.next_hop4(v4).is_some()))
                .map(IpAddress::Ipv4)
                .ok_or(crate::errno::Errno::ENETUNREACH),
            IpAddress::Ipv6(v6) => self
                .external6
                .filter(|_| self.device.card_address().is_some_and(|card| card.next_hop6(v6).is_some()))
                .map(IpAddress::Ipv6)
                .ok_or(crate::errno::Errno::ENETUNREACH),
        }
    }

    /// Whether a listener hears connections to `local` (its backlog may be full): one on its port that listens on
    /// its address or all (an IPv6-only listener does not hear IPv4).
    pub fn listens_for(&self, local: IpEndpoint) -> bool {
        self.listeners.contains_key(&local.port)
            && self.sockets.iter().any(|(_, socket)| match socket {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    let listened = tcp.listen_endpoint();
                    listened.port == local.port && listened.addr.is_none_or(|a| a == local.addr)
                }
                #[allow(unreachable_patterns)]
                _ => false,
            })
    }

    /// The stack's own IPv6 addresses: what an IPv6-only socket on `::` hears.
    pub fn own_v6(&self) -> Vec<IpAddress> {
        core::iter::once(Ipv6Address::LOCALHOST).chain(self.external6).map(IpAddress::Ipv6).collect()
    }

    /// Whether the program may bind `address` (one of the stack's own).
    pub fn is_own(&self, address: IpAddress) -> bool {
        match address {
            IpAddress::Ipv4(v4) => v4.is_loopback() || Some(v4) == self.external,
            IpAddress::Ipv6(v6) => v6.is_loopback() || Some(v6) == self.external6,
        }
    }

    /// How many connection requests each listening port can take now: its sockets still listening (see
    /// `Link::syn_room`). Only with a card: the loopback retries refused connects itself (`socket::refresh`).
    fn count_syn_room(&mut self) {
        let room = &mut self.device.syn_room;
        room.clear();
        if !self.has_card || self.listeners.is_empty() {
            return;
        }
        for &port in self.listeners.keys() {
            room.insert(port, self.sockets.listening_on(port));
        }
    }

    /// Forgets connections among `touched` that finished closing. One that data came to after the program closed
    /// it, which nobody will read, is reset, as Linux does; returns whether one was (its reset goes at the next
    /// poll).
    fn reap(&mut self, touched: &[Handle]) -> bool {
        let mut aborted = false;
        for &h in touched {
            if !self.closing.contains(&h) {
                continue;
            }
            let tcp = self.sockets.get::<tcp::Socket>(h);
            if tcp.recv_queue() > 0 && !matches!(tcp.state(), tcp::State::Closed | tcp::State::TimeWait) {
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                aborted = true;
                continue;
            }
            if matches!(tcp.state(), tcp::State::Closed | tcp::State::TimeWait) {
                self.closing.remove(&h);
                self.sockets.remove(h);
                self.tracked.remove(&h);
            }
        }
        // Should no poll follow at once, the next is due now.
        self.unfinished |= aborted;
        aborted
    }

    /// Claims `port` for `protocol`, or a free ephemeral port for 0. EADDRINUSE if taken, unless the claim and all
    /// those before it share the port.
    pub fn claim_port(&mut self, protocol: Protocol, port: u16, claim: PortClaim) -> Result<u16, crate::errno::Errno> {
        if port != 0 {
            let holders = self.ports.entry((protocol, port)).or_default();
            if holders.iter().any(|h| h.conflicts(&claim)) {
                return Err(crate::errno::Errno::EADDRINUSE);
            }
            holders.push(claim);
            return Ok(port);
        }
        for _ in EPHEMERAL_FIRST..=EPHEMERAL_LAST {
            let candidate = self.next_ephemeral;
            self.next_ephemeral = if candidate == EPHEMERAL_LAST { EPHEMERAL_FIRST } else { candidate + 1 };
            if let alloc::collections::btree_map::Entry::Vacant(free) = self.ports.entry((protocol, candidate)) {
                free.insert(alloc::vec![claim]);
                return Ok(candidate);
            }
        }
        Err(crate::errno::Errno::EADDRINUSE)
    }

    /// `owner` gives up its claim of `port`.
    pub fn release_port(&mut self, protocol: Protocol, port: u16, owner: usize) {
        if let Some(holders) = self.ports.get_mut(&(protocol, port)) {
            holders.retain(|h| h.owner != owner);
            if holders.is_empty() {
                self.ports.remove(&(protocol, port));
            }
        }
    }

    /// A TCP connection the program closed with SO_LINGER's zero timeout: it is reset (at the next poll), then
    /// forgotten.
    pub fn abort_later(&mut self, handle: Handle) {
        self.sockets.get_mut::<tcp::Socket>(handle).abort();
        self.tracked.remove(&handle);
        self.closing.insert(handle);
    }

    /// A TCP connection the program closed: it finishes its FIN exchange in the background.
    pub fn close_later(&mut self, handle: Handle) {
        self.sockets.get_mut::<tcp::Socket>(handle).close();
        self.tracked.remove(&handle);
        self.closing.insert(handle);
    }
}
