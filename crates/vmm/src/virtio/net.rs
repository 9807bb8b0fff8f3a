//! virtio-net: queue 0 receives frames into the guest, queue 1 transmits them; each frame is preceded by the 12-byte
//! `virtio_net_hdr` (no offloads are offered, so the header carries nothing but `num_buffers` on receive). Frames go
//! to and come from a [`Backend`] (a tap device, or the VMM's user-mode network).
//!
//! With VIRTIO_RING_F_EVENT_IDX the driver notifies only when the device asked to be (virtio-queue keeps the
//! `avail_event` index), so a batch of frames costs one VM exit, not one per frame. Every chain the guest hands over is
//! checked: one that is too short, too long, points outside guest memory or has buffers of the wrong direction is
//! returned unused and counted in [`NetStats`], never trusted.

use super::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use virtio_queue::{Queue, QueueT};
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
    pub stats: NetStats,
}

impl<B: Backend> Net<B> {
    pub fn new(mac: [u8; 6], backend: B) -> Self {
        Self {
            mac,
            backend,
            scratch: vec![0; HEADER_LEN + MAX_FRAME],
            pending: 0,
            tx_buffer: Vec::new(),
            stats: NetStats::default(),
        }
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
        loop {
            let _ = queue.disable_notification(mem);
            self.transmit(queue, mem);
            if !matches!(queue.enable_notification(mem), Ok(true)) {
                break;
            }
        }
    }

    /// Sends every frame the driver queued for transmission; returns whether any chain went back to it.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let mut frame = std::mem::take(&mut self.tx_buffer);
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            frame.clear();
            let mut valid = true;
            for desc in chain {
                let len = desc.len() as usize;
                if desc.is_write_only() || frame.len() + len > HEADER_LEN + MAX_FRAME {
                    valid = false;
                    break;
                }
                let at = frame.len();
                frame.resize(at + len, 0);
                if mem.read_slice(&mut frame[at..], desc.addr()).is_err() {
                    valid = false;
                    break;
                }
            }
            if valid && frame.len() > HEADER_LEN && self.backend.send(&frame[HEADER_LEN..]).is_ok() {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += (frame.len() - HEADER_LEN) as u64;
            } else {
                self.stats.tx_dropped += 1;
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        self.tx_buffer = frame;
        used
    }

    /// Moves frames from the backend into the driver's receive buffers while both have some; returns whether any
    /// buffer went back to the driver. Out of buffers, it asks the driver to notify the receive queue when it adds
    /// some (EVENT_IDX), and keeps the frame until then.
    pub fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            if self.pending == 0 {
                match self.backend.recv(&mut self.scratch[HEADER_LEN..]) {
                    Ok(Some(n)) if (1..=MAX_FRAME).contains(&n) => self.pending = n,
                    Ok(Some(_)) => continue,
                    _ => return used,
                }
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if matches!(queue.enable_notification(mem), Ok(true)) {
                    continue;
                }
                return used;
            };
            let head = chain.head_index();
            let packet = &mut self.scratch[..HEADER_LEN + self.pending];
            packet[..HEADER_LEN].fill(0);
            packet[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
            let mut written = 0usize;
            let mut valid = true;
            for desc in chain {
                if written == packet.len() {
                    break;
                }
                if !desc.is_write_only() {
                    valid = false;
                    break;
                }
                let n = (desc.len() as usize).min(packet.len() - written);
                if mem.write_slice(&packet[written..written + n], desc.addr()).is_err() {
                    valid = false;
                    break;
                }
                written += n;
            }
            let delivered = valid && written == packet.len();
            if delivered {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += self.pending as u64;
            } else {
                self.stats.rx_dropped += 1;
            }
            self.pending = 0;
            if queue.add_used(mem, head, if delivered { written as u32 } else { 0 }).is_err() {
                return used;
            }
            used = true;
        }
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
