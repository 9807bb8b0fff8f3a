//! virtio devices over the virtio-mmio transport (version 2, "modern"): the register block a driver programs, the
//! feature negotiation and the split virtqueues (rust-vmm's `virtio-queue`, which checks every descriptor the guest
//! hands over against guest memory). The guest is not trusted: a bad register value is ignored, a queue set up at a
//! bad address is never used, and nothing a driver writes can panic the VMM.

pub mod blk;
pub mod net;
pub mod state;
pub mod tap;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::atomic::Ordering;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// "KILN", as the subsystem vendor.
const VENDOR: u32 = 0x4e4c_494b;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Collects the descriptors of `chain` into `descs` (cleared first); false, with `descs` unusable, for a chain that
/// does not end where its driver said: one whose last descriptor still points on (a loop, whose walk virtio-queue
/// cuts off after a queue's worth, or a `next` outside the table or an unreadable descriptor), or one longer than
/// `max` (virtio-queue follows indirect tables, never offered here, of up to 65,535 descriptors).
pub fn collect_chain<M>(chain: DescriptorChain<M>, max: usize, descs: &mut Vec<Descriptor>) -> bool
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    descs.clear();
    descs.extend(chain.take(max + 1));
    descs.len() <= max && descs.last().is_some_and(|d| !d.has_next())
}

/// The next chain the driver made available on `queue`, if any; an error says how the driver broke the queue.
/// virtio-queue's `pop_descriptor_chain` would say "none" for a broken queue and "more are pending" after it, which is
/// what a device must not loop on.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, String> {
    let (size, taken) = (queue.size(), queue.next_avail());
    match queue.iter(mem) {
        Ok(mut heads) => Ok(heads.next()),
        Err(virtio_queue::Error::InvalidAvailRingIndex) => {
            let avail = queue.avail_idx(mem, Ordering::Relaxed).map_or(0, |i| i.0);
            Err(format!(
                "its available ring's index ({avail}) is more than its size ({size}) ahead of the device's ({taken})"
            ))
        }
        Err(e) => Err(format!("its available ring is unusable ({e})")),
    }
}

/// Returns chain `head` to the driver with `len` bytes written. A head outside the descriptor table is refused here
/// rather than left to `add_used`, which would log an error of its own.
pub fn give_back(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) -> Result<(), virtio_queue::Error> {
    if head >= queue.size() {
        return Err(virtio_queue::Error::InvalidDescriptorIndex);
    }
    queue.add_used(mem, head, len)
}

/// What a device behind the transport provides.
pub trait VirtioDevice {
    /// The virtio device type (1 for a network card).
    fn device_type(&self) -> u32;
    /// Every feature bit the device offers.
    fn features(&self) -> u64;
    /// The largest size of each of its queues.
    fn queue_sizes(&self) -> &[u16];
    /// Reads `data.len()` bytes of the device's configuration space at `offset`; zeros past its end.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver accepted `features` and is ready.
    fn activate(&mut self, features: u64);
    /// The driver notified queue `index` (one of `queues`).
    fn notify(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap);
    fn reset(&mut self);
}

/// One device and its virtio-mmio registers.
pub struct MmioTransport<D> {
    pub device: D,
    pub queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D) -> Self {
        let queues = device.queue_sizes().iter().filter_map(|&max| Queue::new(max).ok()).collect();
        Self {
            device,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    /// Whether the driver finished setting the device up.
    pub fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_FAILED == 0
    }

    /// The features both sides agreed on.
    pub fn negotiated(&self) -> u64 {
        self.driver_features
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A driver's read of `data.len()` bytes at `offset` in the register window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let queue = self.queues.get(self.queue_sel as usize);
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A driver's write of `data` at `offset` in the register window.
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        if !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        // Queue layout may change only while the driver sets the device up.
        let configuring = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | u64::from(value) << 32,
                _ => {}
            },
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if configuring => {
                if let Some(q) = self.selected() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY if configuring => {
                if let Some(q) = self.selected() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
                if configuring =>
            {
                if let Some(q) = self.selected() {
                    let (low, high) = if offset & 4 == 0 { (Some(value), None) } else { (None, Some(value)) };
                    match offset & !4 {
                        REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            REG_QUEUE_NOTIFY if self.is_active() => {
                let index = value as usize;
                if self.queues.get(index).is_some_and(|q| q.is_valid(mem)) {
                    self.device.notify(index, &mut self.queues, mem);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt_status &= !value,
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 && self.driver_features & !self.device.features() != 0 {
            // The driver asked for something the device does not offer: no FEATURES_OK.
            value &= !STATUS_FEATURES_OK;
        }
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        if newly & STATUS_DRIVER_OK != 0 && value & ready == ready {
            let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.device.activate(self.driver_features);
        } else if newly & STATUS_DRIVER_OK != 0 {
            value = (value & !STATUS_DRIVER_OK) | STATUS_FAILED;
        }
        self.status = value;
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        (self.device_features_sel, self.driver_features_sel, self.queue_sel) = (0, 0, 0);
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
    }
}
