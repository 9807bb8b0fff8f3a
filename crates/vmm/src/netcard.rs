//! The VM's network card at run time: the virtio-net device behind its register window, shared by the vCPUs (whose
//! MMIO exits program it and notify its queues) and a host thread, the receive pump, which moves frames arriving
//! from the backend into the guest's receive queue and wakes idle vCPUs to take them. The guest has no interrupts:
//! the library OS finds received frames in the used ring when it polls its network stack, which an idle vCPU does
//! when woken.

use crate::virtio::net::{Backend, Net, NetStats, RX_QUEUE, TX_QUEUE};
use crate::virtio::state::TransportState;
use crate::virtio::MmioTransport;
use kiln_abi::boot::NET_MMIO_SIZE;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

/// Publishes a TCP port the guest listens on ([`kiln_abi::Hypercall::Listen`], a pod's container); the error is a
/// Linux errno.
pub type Publish = Box<dyn Fn(u16) -> Result<(), i32> + Send + Sync>;

/// What the VMM attaches: a backend, and the addresses the guest takes on it.
pub struct NetConfig {
    pub backend: Box<dyn Backend>,
    /// The guest's listening ports are published as it listens (the boot info says so to the library OS): a
    /// container of a pod, on the user-mode network in the pod's namespace.
    pub publish: Option<Publish>,
    pub mac: [u8; 6],
    pub ipv4: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: std::net::Ipv4Addr,
    /// The IPv6 address and prefix length, and the default router, if the network carries IPv6.
    pub ipv6: Option<(std::net::Ipv6Addr, u8)>,
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// Largest IP packet the backend takes (1500 for a tap; a user-mode network has no wire and takes 64 KiB).
    pub mtu: u16,
    /// Routes besides the default ones (a pod's CNI routes), at most `kiln_abi::boot::MAX_ROUTES`.
    pub routes: Vec<kiln_abi::boot::RouteInfo>,
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NetConfig({}/{} via {}", self.ipv4, self.prefix_len, self.gateway)?;
        if let Some((ip, prefix)) = self.ipv6 {
            write!(f, ", {ip}/{prefix}")?;
        }
        if let Some(gateway) = self.gateway6 {
            write!(f, " via {gateway}")?;
        }
        if !self.routes.is_empty() {
            write!(f, ", {} routes", self.routes.len())?;
        }
        write!(f, ", mtu {})", self.mtu)
    }
}

/// How long it waits for the guest to add receive buffers before trying again.
const BUFFER_WAIT: Duration = Duration::from_millis(1);

pub(crate) type Device = MmioTransport<Net<Box<dyn Backend>>>;

pub struct NetCard {
    window: Range<u64>,
    device: Mutex<Device>,
    /// Outside the device's lock: publishing waits for the backend's thread, which takes that lock to deliver.
    publish: Option<Publish>,
}

impl NetCard {
    pub fn new(backend: Box<dyn Backend>, mac: [u8; 6], mmio_phys: u64) -> NetCard {
        NetCard {
            window: mmio_phys..mmio_phys + NET_MMIO_SIZE,
            device: Mutex::new(MmioTransport::new(Net::new(mac, backend))),
            publish: None,
        }
    }

    /// The card, publishing the guest's listening ports with `publish`.
    pub fn publishing(self, publish: Option<Publish>) -> NetCard {
        NetCard { publish, ..self }
    }

    /// Publishes the guest's listening TCP `port`: 0, or a negative errno (-ENOSYS where the card does not publish).
    pub fn publish(&self, port: u16) -> i64 {
        const ENOSYS: i64 = 38;
        match &self.publish {
            Some(publish) => publish(port).map_or_else(|e| -i64::from(e), |()| 0),
            None => -ENOSYS,
        }
    }

    fn device(&self) -> MutexGuard<'_, Device> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether guest-physical `addr` is in the card's register window.
    pub fn claims(&self, addr: u64) -> bool {
        self.window.contains(&addr)
    }

    /// A vCPU's read of its registers.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        self.device().read(addr - self.window.start, data);
    }

    /// A vCPU's write to its registers (a queue notification sends what the driver queued); an error says how the
    /// guest broke a queue, and the VM should stop.
    pub fn write(&self, addr: u64, data: &[u8], mem: &GuestMemoryMmap) -> Result<(), String> {
        let mut device = self.device();
        let was_active = device.is_active();
        device.write(addr - self.window.start, data, mem);
        if !was_active && device.is_active() {
            // Frames may have come before the driver was ready (a -p client that connected early): take them now,
            // since the backend tells of new frames only.
            let Device { device, queues, .. } = &mut *device;
            if let Some(q) = queues.get_mut(RX_QUEUE).filter(|q| q.is_valid(mem)) {
                device.receive(q, mem);
            }
        }
        fault(&device)
    }

    /// Sends what the driver queued without notifying: a vCPU is about to wait, and the driver counts on this. An
    /// error says how the guest broke a queue.
    pub fn send_queued(&self, mem: &GuestMemoryMmap) -> Result<(), String> {
        let mut device = self.device();
        if device.is_active() {
            let Device { device, queues, .. } = &mut *device;
            // A queue the driver set up at bad addresses is never used (as a notification of it would not be).
            if let Some(q) = queues.get_mut(TX_QUEUE).filter(|q| q.is_valid(mem)) {
                device.send_queued(q, mem);
            }
        }
        fault(&device)
    }

    /// The card's transport state, with the card held still until the guard is dropped: no frame is received into
    /// guest RAM or sent from it meanwhile (for a snapshot).
    pub(crate) fn hold_still(&self) -> (TransportState, MutexGuard<'_, Device>) {
        let device = self.device();
        (device.save(), device)
    }

    /// Puts a new card's transport where a snapshot's `state` says.
    pub(crate) fn restore(&self, state: &TransportState) -> Result<(), String> {
        self.device().restore(state)
    }

    pub fn stats(&self) -> NetStats {
        self.device().device.stats
    }

    /// Moves what the backend has into the receive queue; calls `wake` if the guest got any. First sends what the
    /// driver queued meanwhile: the guest leaves frames unannounced for a while (a notification is a VM exit, tens
    /// of microseconds on `kvm_pvm`), and skips the notification if the device took them already, so under traffic
    /// both ways the replies go out on the backend's own wake-ups. An error says how the guest broke a queue, and
    /// the VM should stop.
    pub fn deliver(&self, mem: &GuestMemoryMmap, wake: impl Fn()) -> Result<(), String> {
        let delivered = {
            let mut device = self.device();
            if !device.is_active() {
                return Ok(());
            }
            let Device { device: net, queues, .. } = &mut *device;
            if let Some(q) = queues.get_mut(TX_QUEUE).filter(|q| q.is_valid(mem)) {
                net.send_queued(q, mem);
            }
            let delivered = queues.get_mut(RX_QUEUE).filter(|q| q.is_valid(mem)).is_some_and(|q| net.receive(q, mem));
            fault(&device)?;
            delivered
        };
        if delivered {
            wake();
        }
        Ok(())
    }

    /// Has the backend call `deliver` itself when it has frames; false if it cannot (then run [`NetCard::pump`]).
    pub fn set_waker(&self, deliver: Box<dyn Fn() + Send + Sync>) -> bool {
        self.device().device.backend().set_waker(deliver)
    }

    /// The receive pump: until `stop` (a pipe's read end) polls readable or hung up, waits for the backend to have
    /// frames, moves them into the receive queue and calls `wake` when the guest got any. It sleeps only in poll:
    /// an idle VM costs nothing here. An error says how the guest broke a queue (and ends the pump).
    pub fn pump(&self, mem: &GuestMemoryMmap, stop: &impl AsRawFd, wake: impl Fn()) -> Result<(), String> {
        let ready_fd: RawFd = self.device().device.backend().ready_fd();
        loop {
            let waiting = self.device().device.is_waiting_for_buffers();
            // With a frame waiting for buffers, the backend may stay readable: do not spin on it.
            let ready = if waiting {
                std::thread::sleep(BUFFER_WAIT);
                Ready::Frames
            } else {
                wait_readable(ready_fd, stop.as_raw_fd())
            };
            match ready {
                Ready::Stop => return Ok(()),
                Ready::Broken => {
                    // A backend gone bad (a deleted tap device): frames will not come.
                    tracing::warn!("the network backend failed: no more frames will reach the program");
                    return Ok(());
                }
                Ready::Frames => {}
            }
            if !self.device().is_active() {
                std::thread::sleep(BUFFER_WAIT);
                continue;
            }
            self.deliver(mem, &wake)?;
        }
    }
}

/// How the guest broke the card's queues, if it did.
fn fault(device: &Device) -> Result<(), String> {
    device.device.fault().map_or(Ok(()), |why| Err(format!("the guest broke the network card's virtio-net {why}")))
}

enum Ready {
    Frames,
    Stop,
    Broken,
}

/// Waits, without a timeout, for `fd` to poll readable or for `stop` to poll at all.
fn wait_readable(fd: RawFd, stop: RawFd) -> Ready {
    let mut pfds = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: two valid pollfds, for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return if n < 0 || pfds[1].revents != 0 {
            Ready::Stop
        } else if pfds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            Ready::Broken
        } else {
            Ready::Frames
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{mem, set_up};
    use std::sync::atomic::Ordering;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// Always has a frame for the guest.
    struct Chatty;

    impl Backend for Chatty {
        fn send(&mut self, _frame: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
            buf[..60].fill(1);
            Ok(Some(60))
        }
        fn ready_fd(&self) -> RawFd {
            -1
        }
    }

    const WINDOW: u64 = 0x10_0000;

    /// Counts the frames sent to it; has none to give.
    struct Sink(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Backend for Sink {
        fn send(&mut self, _frame: &[u8]) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn recv(&mut self, _buf: &mut [u8]) -> std::io::Result<Option<usize>> {
            Ok(None)
        }
        fn ready_fd(&self) -> RawFd {
            -1
        }
    }

    #[test]
    fn frames_queued_without_a_notification_go_out_when_the_backend_delivers() {
        use crate::virtio::testing::desc;
        let mem = mem();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let card = NetCard::new(Box::new(Sink(sent.clone())), [2, 0, 0, 0, 0, 1], WINDOW);
        set_up(|off, v| card.write(WINDOW + off, &v.to_le_bytes(), &mem).unwrap(), &[&rx, &tx]);
        // The driver queues two frames and does not notify (the library OS defers it: a notification is an exit).
        tx.add_desc_chains(&[desc(0x3_0000, 72, 0, 0), desc(0x3_1000, 72, 0, 0)], 0).unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        card.deliver(&mem, || {}).unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 2);
        assert_eq!(tx.used().idx().load(), 2, "both chains went back to the driver");
    }

    #[test]
    fn a_broken_receive_queue_is_reported_where_frames_are_delivered() {
        let mem = mem();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        let card = NetCard::new(Box::new(Chatty), [2, 0, 0, 0, 0, 1], WINDOW);
        set_up(|off, v| card.write(WINDOW + off, &v.to_le_bytes(), &mem).unwrap(), &[&rx, &tx]);
        rx.avail().idx().store(17);
        let woken = std::sync::atomic::AtomicBool::new(false);
        let why = card.deliver(&mem, || woken.store(true, Ordering::SeqCst)).unwrap_err();
        assert!(why.contains("virtio-net receive queue") && why.contains("(17)"), "{why}");
        assert!(!woken.load(Ordering::SeqCst));
        // And from then on, wherever the card is used.
        assert_eq!(card.send_queued(&mem), Err(why.clone()));
        assert_eq!(card.write(WINDOW + 0x50, &0u32.to_le_bytes(), &mem), Err(why));
    }
}
