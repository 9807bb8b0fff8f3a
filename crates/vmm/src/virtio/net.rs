//! virtio-net: queue 0 receives frames into the guest, queue 1 transmits them; each frame is preceded by the 12-byte
//! `virtio_net_hdr` (no offloads are offered, so the header carries nothing but `num_buffers` on receive). Frames go
//! to and come from a [`Backend`] (a tap device, or the VMM's user-mode network).
//!
//! With VIRTIO_RING_F_EVENT_IDX the driver notifies only when the device asked to be (virtio-queue keeps the
//! `avail_event` index), so a batch of frames costs one VM exit, not one per frame. Every chain the guest hands over is
//! checked: one that is too short, too long, loops, points outside guest memory or has buffers of the wrong direction
//! is returned unused and counted in [`NetStats`], never trusted. A queue the guest broke (an available index more
//! than a queue ahead, a head outside the descriptor table) stops the device, and the VM, with why ([`Net::fault`]).

use super::{collect_chain, give_back, next_chain, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

pub const DEVICE_TYPE: u32 = 1;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`.
pub const HEADER_LEN: usize = 12;
/// Largest frame: a 64 KiB IP packet and its Ethernet header.
pub const MAX_FRAME: usize = 65_550;
const VIRTIO_NET_F_MTU: u64 = 1 << 3;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const LINK_UP: u16 = 1;
pub const MTU: u16 = 1500;
/// Descriptors one frame may chain: a queue's worth.
const MAX_CHAIN: usize = QUEUE_SIZE as usize;

/// Where frames go and come from.
pub trait Backend: Send {
    /// Sends one Ethernet frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// Receives one frame into `buf` if one is waiting (never blocks): its length.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
    /// A descriptor that polls readable while `recv` may have a frame (level-triggered).
    fn ready_fd(&self) -> std::os::fd::RawFd;
    /// Has the backend call `wake` from a thread of its own whenever it has frames for `recv`, instead of the VMM
    /// polling [`Backend::ready_fd`]; false if it cannot.
    fn set_waker(&mut self, _wake: Box<dyn Fn() + Send + Sync>) -> bool {
        false
    }
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        (**self).send(frame)
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        (**self).recv(buf)
    }
    fn ready_fd(&self) -> std::os::fd::RawFd {
        (**self).ready_fd()
    }
    fn set_waker(&mut self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        (**self).set_waker(wake)
    }
}

/// What the device did, for `docs/benchmarks.md` and for finding a misbehaving guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Queue notifications from the driver (each one a VM exit).
    pub notifications: u64,
    /// Transmit chains refused: malformed, or a frame the backend would not take.
    pub tx_dropped: u64,
    /// Frames that found no receive buffer big enough, or a malformed one.
    pub rx_dropped: u64,
}

pub struct Net<B> {
    mac: [u8; 6],
    backend: B,
    /// The frame being received, after room for its header; `pending` bytes of it wait for a receive buffer.
    scratch: Vec<u8>,
    pending: usize,
    /// Where a transmitted chain is gathered (kept between frames).
    tx_buffer: Vec<u8>,
    /// The descriptors of the chain at hand (kept between chains).
    descs: Vec<Descriptor>,
    pub stats: NetStats,
    /// Why the device stopped: the guest broke a queue, so nothing more it queues can be answered.
    fault: Option<String>,
}

impl<B: Backend> Net<B> {
    pub fn new(mac: [u8; 6], backend: B) -> Self {
        Self {
            mac,
            backend,
            scratch: vec![0; HEADER_LEN + MAX_FRAME],
            pending: 0,
            tx_buffer: Vec::new(),
            descs: Vec::new(),
            stats: NetStats::default(),
            fault: None,
        }
    }

    /// Why the device stopped, if the guest broke a queue; the VM should stop too.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Whether a received frame waits for the driver to add a receive buffer.
    pub fn is_waiting_for_buffers(&self) -> bool {
        self.pending != 0
    }

    /// Sends what the driver queued, then asks to be told about more; a frame queued in between is taken now rather
    /// than waiting for a notification that will not come. Also called without a notification, when a vCPU is about
    /// to wait: the driver leaves frames for then rather than paying an exit for them (see the library OS's
    /// `net::virtio`).
    pub fn send_queued(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        // Each round takes every chain available; one more follows only if the driver added some meanwhile.
        while self.fault.is_none() {
            let _ = queue.disable_notification(mem);
            self.transmit(queue, mem);
            if self.fault.is_some() || !matches!(queue.enable_notification(mem), Ok(true)) {
                break;
            }
        }
    }

    /// Sends every frame the driver queued for transmission; returns whether any chain went back to it.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = self.next_chain("transmit", queue, mem) {
            let head = chain.head_index();
            let valid = collect_chain(chain, MAX_CHAIN, &mut self.descs) && self.gather(mem);
            if valid && self.tx_buffer.len() > HEADER_LEN && self.backend.send(&self.tx_buffer[HEADER_LEN..]).is_ok() {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += (self.tx_buffer.len() - HEADER_LEN) as u64;
            } else {
                self.stats.tx_dropped += 1;
            }
            if !self.give_back("transmit", queue, mem, head, 0) {
                break;
            }
            used = true;
        }
        used
    }

    /// Copies the driver-readable buffers of `self.descs` into `self.tx_buffer`; false for a device-writable buffer,
    /// one outside guest memory, or more than a frame.
    fn gather(&mut self, mem: &GuestMemoryMmap) -> bool {
        let frame = &mut self.tx_buffer;
        frame.clear();
        for desc in &self.descs {
            let len = desc.len() as usize;
            if desc.is_write_only() || frame.len() + len > HEADER_LEN + MAX_FRAME {
                return false;
            }
            let at = frame.len();
            frame.resize(at + len, 0);
            if mem.read_slice(&mut frame[at..], desc.addr()).is_err() {
                return false;
            }
        }
        true
    }

    /// The next chain the driver made available on `queue`; none when there is none, or when the queue is broken
    /// (then [`Net::fault`] says how).
    fn next_chain<'m>(
        &mut self,
        which: &str,
        queue: &mut Queue,
        mem: &'m GuestMemoryMmap,
    ) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
        if self.fault.is_some() {
            return None;
        }
        next_chain(queue, mem).unwrap_or_else(|why| {
            self.fault = Some(format!("{which} queue: {why}"));
            None
        })
    }

    /// Returns chain `head` to the driver with `len` bytes written; false, with [`Net::fault`] saying why, if it
    /// cannot be (a head outside the descriptor table, a used ring outside guest memory).
    fn give_back(&mut self, which: &str, queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) -> bool {
        let result = give_back(queue, mem, head, len);
        if let Err(e) = &result {
            self.fault = Some(format!("{which} queue: its chain {head} cannot be returned ({e})"));
        }
        result.is_ok()
    }

    /// Moves frames from the backend into the driver's receive buffers while both have some; returns whether any
    /// buffer went back to the driver. Out of buffers, it asks the driver to notify the receive queue when it adds
    /// some (EVENT_IDX), and keeps the frame until then.
    pub fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while self.fault.is_none() {
            if self.pending == 0 {
                match self.backend.recv(&mut self.scratch[HEADER_LEN..]) {
                    Ok(Some(n)) if (1..=MAX_FRAME).contains(&n) => self.pending = n,
                    Ok(Some(_)) => continue,
                    _ => return used,
                }
            }
            let Some(chain) = self.next_chain("receive", queue, mem) else {
                if self.fault.is_none() && matches!(queue.enable_notification(mem), Ok(true)) {
                    continue;
                }
                return used;
            };
            let head = chain.head_index();
            let delivered = collect_chain(chain, MAX_CHAIN, &mut self.descs) && self.scatter(mem);
            if delivered {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += self.pending as u64;
            } else {
                self.stats.rx_dropped += 1;
            }
            let written = if delivered { (HEADER_LEN + self.pending) as u32 } else { 0 };
            self.pending = 0;
            if !self.give_back("receive", queue, mem, head, written) {
                return used;
            }
            used = true;
        }
        used
    }

    /// Writes the header and the pending frame into the device-writable buffers of `self.descs`; false if they are
    /// too small, outside guest memory, or one the device may not write comes before the frame's end.
    fn scatter(&mut self, mem: &GuestMemoryMmap) -> bool {
        let packet = &mut self.scratch[..HEADER_LEN + self.pending];
        packet[..HEADER_LEN].fill(0);
        packet[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
        let mut written = 0usize;
        for desc in &self.descs {
            if written == packet.len() {
                break;
            }
            if !desc.is_write_only() {
                return false;
            }
            let n = (desc.len() as usize).min(packet.len() - written);
            if mem.write_slice(&packet[written..written + n], desc.addr()).is_err() {
                return false;
            }
            written += n;
        }
        written == packet.len()
    }
}

impl<B: Backend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&MTU.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, _features: u64) {}

    fn notify(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        self.stats.notifications += 1;
        match index {
            TX_QUEUE => self.send_queued(&mut queues[TX_QUEUE], mem),
            RX_QUEUE => {
                self.receive(&mut queues[RX_QUEUE], mem);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{desc, mem, start, NEXT, WRITE};
    use crate::virtio::MmioTransport;
    use std::collections::VecDeque;

    type Device = MmioTransport<Net<Echo>>;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// Frames sent come back as received.
    #[derive(Default)]
    struct Echo(VecDeque<Vec<u8>>);

    impl Backend for Echo {
        fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
            self.0.push_back(frame.to_vec());
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
            Ok(self.0.pop_front().map(|f| {
                buf[..f.len()].copy_from_slice(&f);
                f.len()
            }))
        }
        fn ready_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    /// A transport whose two queues are the mock queues' rings, set up as a driver would through the registers.
    fn device<'a>(
        mem: &'a GuestMemoryMmap,
    ) -> (MmioTransport<Net<Echo>>, MockSplitQueue<'a, GuestMemoryMmap>, MockSplitQueue<'a, GuestMemoryMmap>) {
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        let t = start(Net::new([2, 0, 0, 0, 0, 1], Echo::default()), &[&rx, &tx], mem);
        (t, rx, tx)
    }

    fn read_reg(t: &MmioTransport<Net<Echo>>, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn registers_identify_a_network_card() {
        let mem = mem();
        let (t, _, _) = device(&mem);
        assert_eq!(read_reg(&t, 0), 0x7472_6976);
        assert_eq!(read_reg(&t, 4), 2);
        assert_eq!(read_reg(&t, 8), DEVICE_TYPE);
        let mut mac = [0u8; 6];
        t.read(0x100, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn a_frame_goes_out_and_comes_back_in() {
        let mem = mem();
        let (mut t, rx, tx) = device(&mem);
        let frame: Vec<u8> = (0..60u8).collect();
        mem.write_slice(&[0u8; HEADER_LEN], GuestAddress(0x3_0000)).unwrap();
        mem.write_slice(&frame, GuestAddress(0x3_1000)).unwrap();
        tx.add_desc_chains(&[desc(0x3_0000, 12, NEXT, 1), desc(0x3_1000, 60, 0, 0)], 0).unwrap();
        rx.add_desc_chains(&[desc(0x4_0000, 2048, WRITE, 0)], 0).unwrap();
        t.write(0x50, &(TX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(tx.used().idx().load(), 1);
        t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(rx.used().idx().load(), 1);
        let mut back = vec![0u8; HEADER_LEN + 60];
        mem.read_slice(&mut back, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&back[HEADER_LEN..], &frame[..]);
        assert_eq!(u16::from_le_bytes([back[10], back[11]]), 1, "num_buffers");
        let s = t.device.stats;
        assert_eq!((s.tx_frames, s.rx_frames, s.tx_dropped, s.rx_dropped), (1, 1, 0, 0));
    }

    #[test]
    fn hostile_chains_are_returned_unused_and_counted() {
        let mem = mem();
        let (mut t, rx, tx) = device(&mem);
        // A device-writable buffer on the transmit queue, one outside guest memory, one too long, one too short.
        tx.add_desc_chains(
            &[
                desc(0x3_0000, 64, WRITE, 0),
                desc(1 << 40, 64, 0, 0),
                desc(0x3_0000, (HEADER_LEN + MAX_FRAME + 1) as u32, 0, 0),
                desc(0x3_0000, 4, 0, 0),
            ],
            0,
        )
        .unwrap();
        t.write(0x50, &(TX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(tx.used().idx().load(), 4);
        assert_eq!(t.device.stats.tx_dropped, 4);
        assert_eq!(t.device.stats.tx_frames, 0);
        // A receive buffer too small for the frame, and a read-only one.
        t.device.backend().0.push_back(vec![7u8; 100]);
        t.device.backend().0.push_back(vec![8u8; 100]);
        rx.add_desc_chains(&[desc(0x4_0000, 16, WRITE, 0), desc(0x4_1000, 2048, 0, 0)], 0).unwrap();
        t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(rx.used().idx().load(), 2);
        assert_eq!(t.device.stats.rx_dropped, 2);
        // Bad register writes change nothing: a queue past the last, a notify before setup.
        t.write(0x30, &7u32.to_le_bytes(), &mem);
        assert_eq!(read_reg(&t, 0x34), 0);
        t.write(0x50, &7u32.to_le_bytes(), &mem);
    }

    #[test]
    fn a_frame_waits_for_a_receive_buffer() {
        let mem = mem();
        let (mut t, rx, _) = device(&mem);
        t.device.backend().0.push_back(vec![9u8; 80]);
        t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(rx.used().idx().load(), 0);
        rx.add_desc_chains(&[desc(0x4_0000, 2048, WRITE, 0)], 0).unwrap();
        t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(rx.used().idx().load(), 1);
        assert_eq!(t.device.stats.rx_frames, 1);
    }

    /// Runs `f` on a thread of its own and returns what it returns; fails the test if it does not return within
    /// seconds (a device looping on a hostile queue), where running it inline would hang the test run.
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the device loops on the hostile queue")
    }

    #[test]
    fn an_available_index_too_far_ahead_stops_the_transmit_side() {
        let (fault, used, stats) = promptly(|| {
            let mem = mem();
            let (mut t, _, tx) = device(&mem);
            tx.avail().idx().store(17);
            // Reached by a vCPU's Wait hypercall, without a notification.
            let Device { device, queues, .. } = &mut t;
            device.send_queued(&mut queues[TX_QUEUE], &mem);
            (t.device.fault().map(str::to_string), tx.used().idx().load(), t.device.stats)
        });
        let fault = fault.expect("the device stopped");
        assert!(fault.contains("transmit queue") && fault.contains("(17)"), "{fault}");
        assert_eq!((used, stats.tx_frames, stats.tx_dropped), (0, 0, 0));
    }

    #[test]
    fn an_available_index_too_far_ahead_stops_the_receive_side() {
        let (fault, used, stats) = promptly(|| {
            let mem = mem();
            let (mut t, rx, _) = device(&mem);
            t.device.backend().0.push_back(vec![5u8; 60]);
            rx.avail().idx().store(40_000);
            t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
            // Further notifications find the device stopped.
            t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
            (t.device.fault().map(str::to_string), rx.used().idx().load(), t.device.stats)
        });
        let fault = fault.expect("the device stopped");
        assert!(fault.contains("receive queue") && fault.contains("(40000)"), "{fault}");
        assert_eq!((used, stats.rx_frames, stats.rx_dropped), (0, 0, 0));
    }

    #[test]
    fn a_head_outside_the_descriptor_table_stops_the_device() {
        let (fault, used) = promptly(|| {
            let mem = mem();
            let (mut t, _, tx) = device(&mem);
            tx.add_desc_chains(&[desc(0x3_0000, 64, 0, 0)], 0).unwrap();
            tx.avail().ring().ref_at(0).unwrap().store(999);
            t.write(0x50, &(TX_QUEUE as u32).to_le_bytes(), &mem);
            (t.device.fault().map(str::to_string), tx.used().idx().load())
        });
        assert!(fault.as_ref().is_some_and(|f| f.contains("chain 999")), "{fault:?}");
        assert_eq!(used, 0);
    }

    #[test]
    fn looping_chains_are_refused_in_both_directions() {
        let (stats, sent, tx_used, rx_used, fault) = promptly(|| {
            let mem = mem();
            let (mut t, rx, tx) = device(&mem);
            // Header and frame buffers whose last one points back at the first: as a frame, 16 times 76 bytes.
            mem.write_slice(&[0u8; HEADER_LEN], GuestAddress(0x3_0000)).unwrap();
            tx.add_desc_chains(&[desc(0x3_0000, 12, NEXT, 1), desc(0x3_1000, 64, NEXT, 0)], 0).unwrap();
            t.write(0x50, &(TX_QUEUE as u32).to_le_bytes(), &mem);
            let sent = t.device.backend().0.len();
            // A receive buffer that points at itself: each pass would write the same 16 bytes.
            t.device.backend().0.push_back(vec![6u8; 100]);
            rx.add_desc_chains(&[desc(0x4_0000, 16, WRITE | NEXT, 0)], 0).unwrap();
            t.write(0x50, &(RX_QUEUE as u32).to_le_bytes(), &mem);
            let (tx_used, rx_used) = (tx.used().idx().load(), rx.used().idx().load());
            (t.device.stats, sent, tx_used, rx_used, t.device.fault().map(str::to_string))
        });
        assert_eq!(sent, 0, "nothing reached the backend");
        assert_eq!((stats.tx_frames, stats.tx_dropped, tx_used), (0, 1, 1), "returned unused");
        assert_eq!((stats.rx_frames, stats.rx_dropped, rx_used), (0, 1, 1), "returned unused");
        assert_eq!(fault, None, "a bad chain is the guest's loss, not a broken queue");
    }

    #[test]
    fn a_chain_of_a_whole_queue_is_a_frame() {
        let mem = mem();
        let (mut t, _, tx) = device(&mem);
        let mut chain = vec![desc(0x3_0000, 12, NEXT, 1)];
        chain.extend((1..16).map(|i| desc(0x3_1000 + 64 * u64::from(i), 64, if i < 15 { NEXT } else { 0 }, i + 1)));
        tx.add_desc_chains(&chain, 0).unwrap();
        t.write(0x50, &(TX_QUEUE as u32).to_le_bytes(), &mem);
        assert_eq!(t.device.backend().0.pop_front().map(|f| f.len()), Some(15 * 64));
        assert_eq!(t.device.stats.tx_dropped, 0);
    }

    #[test]
    fn features_the_device_lacks_fail_negotiation() {
        let mem = mem();
        let mut t = MmioTransport::new(Net::new([2, 0, 0, 0, 0, 1], Echo::default()));
        t.write(0x70, &3u32.to_le_bytes(), &mem);
        t.write(0x20, &(1u32 << 31).to_le_bytes(), &mem);
        t.write(0x70, &(3u32 | 8).to_le_bytes(), &mem);
        assert_eq!(read_reg(&t, 0x70) & 8, 0, "FEATURES_OK refused");
        t.write(0x70, &(3u32 | 8 | 4).to_le_bytes(), &mem);
        assert!(!t.is_active());
    }
}
