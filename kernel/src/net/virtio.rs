//! The virtio-net driver: the card's virtio-mmio registers and its two split virtqueues, without interrupts.
//!
//! Each queue has a fixed set of buffers ("slots"), one descriptor each, in memory from the frame allocator (one
//! physically contiguous block per queue: rings, then slots). Receive slots all wait in the available ring; a frame
//! the device wrote shows up in the used ring, and its slot goes back once the stack has read it. Transmit slots are
//! filled and put in the available ring, and come back through the used ring once the device sent them.
//!
//! Every register access is a VM exit, so the driver touches them as little as it can: setup writes only what the
//! transport needs, and with VIRTIO_RING_F_EVENT_IDX a queue is notified only when the device asked for it (when
//! it ran out of receive buffers, or once it finished sending what it had). The device handles a notification before
//! the exit returns, so a full transmit ring empties with one notification. Frames to send need not pay an exit of
//! their own at all: Kiln's VMM sends what is queued whenever a vCPU waits, so the stack defers the notification
//! (see `net::KICK_OWED`).

use crate::virtio_transport::{Transport, DESC_F_WRITE};
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE};

/// `struct virtio_net_hdr_v1`, in front of every frame.
pub const HEADER_LEN: usize = 12;
const QUEUE_SIZE_MAX: u16 = 256;
/// Memory the slots of one queue may take, together (big frames mean fewer slots).
const SLOT_BUDGET: usize = 1 << 20;

const F_EVENT_IDX: u32 = 1 << 29;
const RX: u16 = 0;
const TX: u16 = 1;

#[derive(Debug)]
pub enum SetupError {
    /// The device did not accept the features the driver needs.
    Features,
    OutOfMemory,
}

/// One split virtqueue and its slots.
struct Queue {
    index: u16,
    size: u16,
    /// Direct-map addresses of the descriptor table, the available and the used ring, and slot 0.
    desc: u64,
    avail: u64,
    used: u64,
    slots: u64,
    slot_size: usize,
    /// The next available-ring index to fill, the one at the last notification decision, and the next used-ring
    /// index to read.
    next_avail: u16,
    decided_at: u16,
    next_used: u16,
}

impl Queue {
    /// A queue of `size` slots of `slot_size` bytes; every descriptor points at its own slot for good.
    fn new(index: u16, size: u16, slot_size: usize, device_writes: bool) -> Result<Queue, SetupError> {
        let n = u64::from(size);
        let desc_bytes = page_align_up(16 * n);
        let avail_bytes = page_align_up(6 + 2 * n);
        let used_bytes = page_align_up(6 + 8 * n);
        let slot_bytes = page_align_up(n * slot_size as u64);
        let total = desc_bytes + avail_bytes + used_bytes + slot_bytes;
        let phys = crate::mm::memory().frames.alloc(total).ok_or(SetupError::OutOfMemory)?;
        let base = direct_map(phys);
        let q = Queue {
            index,
            size,
            desc: base,
            avail: base + desc_bytes,
            used: base + desc_bytes + avail_bytes,
            slots: base + desc_bytes + avail_bytes + used_bytes,
            slot_size,
            next_avail: 0,
            decided_at: 0,
            next_used: 0,
        };
        for i in 0..size {
            let d = q.desc + 16 * u64::from(i);
            let flags = if device_writes { DESC_F_WRITE } else { 0 };
            // SAFETY: descriptor `i` lies in the block just taken from the frame allocator, which only this queue
            // uses; the slot address is that block's too.
            unsafe {
                write_volatile(d as *mut u64, q.slot(i) - DIRECT_MAP_BASE);
                write_volatile((d + 8) as *mut u32, slot_size as u32);
                write_volatile((d + 12) as *mut u16, flags);
            }
        }
        Ok(q)
    }

    fn slot(&self, i: u16) -> u64 {
        self.slots + u64::from(i) * self.slot_size as u64
    }

    /// Hands slot `i` to the device (published with [`Queue::publish`]).
    fn offer(&mut self, i: u16, len: usize) {
        let d = self.desc + 16 * u64::from(i);
        let at = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        // SAFETY: the descriptor and the ring entry are this queue's; the device reads them only once published.
        unsafe {
            write_volatile((d + 8) as *mut u32, len as u32);
            write_volatile(at as *mut u16, i);
        }
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Makes the offered slots visible to the device.
    fn publish(&self) {
        fence(Ordering::Release);
        // SAFETY: `avail.idx` is this queue's; x86 keeps the entries' stores before this one.
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.next_avail) }
    }

    /// The next slot the device is done with, and how many bytes it wrote into it.
    fn take_used(&mut self) -> Option<(u16, usize)> {
        // SAFETY: `used.idx` is in this queue's used ring, which the device writes and the driver only reads.
        let idx = unsafe { read_volatile((self.used + 2) as *const u16) };
        if idx == self.next_used {
            return None;
        }
        fence(Ordering::Acquire);
        let at = self.used + 4 + 8 * u64::from(self.next_used % self.size);
        // SAFETY: as above; the entry at `next_used` was written before `used.idx` moved past it.
        let (id, len) = unsafe { (read_volatile(at as *const u32), read_volatile((at + 4) as *const u32)) };
        self.next_used = self.next_used.wrapping_add(1);
        // A device is trusted, but a bad id would corrupt our slots: skip one.
        (id < u32::from(self.size)).then_some((id as u16, (len as usize).min(self.slot_size)))
    }

    /// Whether the device is done with every slot offered so far (the used ring caught up with the available one).
    fn device_took_all(&self) -> bool {
        fence(Ordering::SeqCst);
        // SAFETY: see `take_used`.
        unsafe { read_volatile((self.used + 2) as *const u16) == self.next_avail }
    }

    fn has_used(&self) -> bool {
        // SAFETY: see `take_used`.
        unsafe { read_volatile((self.used + 2) as *const u16) != self.next_used }
    }

    /// Whether the device asked to be notified of what was published since the last decision (EVENT_IDX's
    /// `vring_need_event`), which this decision then covers.
    fn needs_notification(&mut self) -> bool {
        if self.next_avail == self.decided_at {
            return false;
        }
        fence(Ordering::SeqCst);
        let event_at = self.used + 4 + 8 * u64::from(self.size);
        // SAFETY: `avail_event` follows the used ring's entries; the device writes it.
        let event = unsafe { read_volatile(event_at as *const u16) };
        let (new, old) = (self.next_avail, self.decided_at);
        self.decided_at = new;
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }
}

/// Bytes a slot needs for a frame of an `mtu`-byte IP packet: the virtio header, Ethernet's, the packet.
fn slot_size(mtu: u16) -> usize {
    (HEADER_LEN + 14 + usize::from(mtu)).next_multiple_of(64)
}

/// Slots per queue: as many as fit the budget, a power of two (virtio's split queues want one).
fn queue_size(slot_size: usize) -> u16 {
    let fit = (SLOT_BUDGET / slot_size).clamp(8, usize::from(QUEUE_SIZE_MAX));
    1 << fit.ilog2()
}

/// Sets the card (`regs`) up for frames of `mtu`-byte packets: its receive and transmit sides.
pub fn setup(mut regs: Transport, mtu: u16) -> Result<(Receiver, Transmitter), SetupError> {
    let slot = slot_size(mtu);
    let size = queue_size(slot);
    let mut rx = Queue::new(RX, size, slot, true)?;
    let tx = Queue::new(TX, size, slot, false)?;
    if !regs.negotiate(F_EVENT_IDX) {
        return Err(SetupError::Features);
    }
    for q in [&rx, &tx] {
        regs.set_queue(q.index, q.size, q.desc, q.avail, q.used);
    }
    // Every receive slot goes to the device before the card starts, so that frames that came before (a -p client
    // that connected early) go into them at once. No notification: the device looks when a frame comes, and on
    // starting. (Offered after the start, they waited for the next frame: a second.)
    for i in 0..size {
        rx.offer(i, slot);
    }
    rx.publish();
    rx.decided_at = rx.next_avail;
    regs.start();
    Ok((Receiver { regs, queue: rx }, Transmitter { regs, queue: tx, free: (0..size).collect() }))
}

/// The receive queue.
pub struct Receiver {
    regs: Transport,
    queue: Queue,
}

impl Receiver {
    /// Whether a received frame waits in the used ring. Also asks the device to interrupt for the next frame
    /// (EVENT_IDX's `used_event`), before looking: a frame that comes after the look interrupts then. Kiln's VMM
    /// takes no interrupts from its card; an exported image's platform layer ends a wait with them (`kernel/pvh`).
    pub fn has_frames(&self) -> bool {
        let used_event = self.queue.avail + 4 + 2 * u64::from(self.queue.size);
        // SAFETY: `used_event` follows the available ring's entries, in this queue's block; the driver writes it.
        unsafe { write_volatile(used_event as *mut u16, self.queue.next_used) };
        fence(Ordering::SeqCst);
        self.queue.has_used()
    }

    /// The next received frame: its slot and length (after the virtio header). Read it with
    /// [`Receiver::frame`], then give the slot back with [`Receiver::recycle`].
    pub fn next_frame(&mut self) -> Option<(u16, usize)> {
        loop {
            let (slot, len) = self.queue.take_used()?;
            if len > HEADER_LEN {
                return Some((slot, len - HEADER_LEN));
            }
            self.recycle(slot);
        }
    }

    /// The frame in `slot`, `len` bytes, as [`Receiver::next_frame`] gave them.
    pub fn frame(&self, slot: u16, len: usize) -> &[u8] {
        let at = self.queue.slot(slot) + HEADER_LEN as u64;
        let len = len.min(self.queue.slot_size - HEADER_LEN);
        // SAFETY: the slot is in this queue's block; the device wrote the frame and no longer touches the slot, which
        // is not in the available ring until `recycle`.
        unsafe { core::slice::from_raw_parts(at as *const u8, len) }
    }

    /// Gives a receive slot back to the device.
    pub fn recycle(&mut self, slot: u16) {
        self.queue.offer(slot, self.queue.slot_size);
        self.queue.publish();
    }

    /// Tells the device about slots given back, if it asked (it ran out).
    pub fn flush(&mut self) {
        if self.queue.needs_notification() {
            self.regs.notify(RX);
        }
    }
}

/// The transmit queue.
pub struct Transmitter {
    regs: Transport,
    queue: Queue,
    /// Slots not in the device's hands.
    free: Vec<u16>,
}

impl Transmitter {
    /// Largest frame a slot holds.
    pub fn max_frame(&self) -> usize {
        self.queue.slot_size - HEADER_LEN
    }

    /// Queues a frame of `len` bytes that `fill` writes. One longer than a slot is dropped, as a wire would (the
    /// stack keeps to the MTU, so only ARP's own frames come here unchecked, and they are short).
    pub fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        if len > self.max_frame() {
            return;
        }
        let Some(slot) = self.free_slot() else { return };
        let at = self.queue.slot(slot);
        // SAFETY: a free slot is the driver's alone until offered, and holds a header and `max_frame` bytes.
        let buf = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, HEADER_LEN + len) };
        buf[..HEADER_LEN].fill(0);
        fill(&mut buf[HEADER_LEN..]);
        self.queue.offer(slot, HEADER_LEN + len);
        self.queue.publish();
    }

    /// A slot the device is done with. With all of them in its hands, notifies it: it sends them before the exit
    /// returns, and they come back.
    fn free_slot(&mut self) -> Option<u16> {
        self.reclaim();
        if self.free.is_empty() {
            self.regs.notify(TX);
            self.queue.decided_at = self.queue.next_avail;
            self.reclaim();
        }
        self.free.pop()
    }

    fn reclaim(&mut self) {
        while let Some((slot, _)) = self.queue.take_used() {
            self.free.push(slot);
        }
    }

    /// Whether the device asked to hear of the frames queued since it last looked. It then hears of them from
    /// [`Transmitter::kick`] or, with no exit of their own, when a vCPU next waits in the VMM (which sends what is
    /// queued before it parks the vCPU).
    pub fn owes_kick(&mut self) -> bool {
        self.queue.needs_notification()
    }

    /// Notifies the device (a VM exit; it sends everything queued before the exit returns), unless it already took
    /// every frame queued: Kiln's VMM also sends what is queued whenever frames arrive for the guest, so under
    /// traffic both ways the debt is usually paid without an exit.
    pub fn kick(&self) {
        if self.queue.device_took_all() {
            return;
        }
        self.regs.notify(TX);
    }
}
