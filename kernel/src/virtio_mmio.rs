//! The virtio-mmio transport (version 2) as the library OS's two drivers use it, the network card's and the
//! volumes': the register window, the feature handshake, a queue's rings and the start. Both poll the used ring
//! instead of taking interrupts, so the interrupt registers go unused.

use core::ptr::{read_volatile, write_volatile};
use kiln_abi::layout::{direct_map, DIRECT_MAP_BASE};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

const REG_DRIVER_FEATURES: usize = 0x020;
const REG_DRIVER_FEATURES_SEL: usize = 0x024;
const REG_QUEUE_SEL: usize = 0x030;
const REG_QUEUE_NUM: usize = 0x038;
const REG_QUEUE_READY: usize = 0x044;
const REG_QUEUE_NOTIFY: usize = 0x050;
const REG_STATUS: usize = 0x070;
const REG_QUEUE_DESC: usize = 0x080;
const REG_QUEUE_DRIVER: usize = 0x090;
const REG_QUEUE_DEVICE: usize = 0x0a0;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
/// VIRTIO_F_VERSION_1, in the upper feature word.
const F_VERSION_1_HIGH: u32 = 1;

/// A device's register window.
#[derive(Clone, Copy)]
pub struct Registers(u64);

impl Registers {
    /// The window the VMM placed at guest-physical `mmio_phys`.
    pub fn at(mmio_phys: u64) -> Registers {
        Registers(direct_map(mmio_phys))
    }

    fn write(self, reg: usize, value: u32) {
        // SAFETY: the VMM maps the register window at this address; each access exits to it.
        unsafe { write_volatile((self.0 + reg as u64) as *mut u32, value) }
    }

    fn read(self, reg: usize) -> u32 {
        // SAFETY: as in `write`.
        unsafe { read_volatile((self.0 + reg as u64) as *const u32) }
    }

    /// Resets the device: it forgets its queues and features.
    pub fn reset(self) {
        self.write(REG_STATUS, 0);
    }

    /// Acknowledges the device and asks for VIRTIO_F_VERSION_1 and `features` (the lower feature word): whether
    /// the device accepted them.
    pub fn negotiate(self, features: u32) -> bool {
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, F_VERSION_1_HIGH);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, features);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.read(REG_STATUS) & STATUS_FEATURES_OK != 0
    }

    /// Gives queue `index` its `size` entries and its rings (direct-map addresses), and makes it ready.
    pub fn set_queue(self, index: u16, size: u16, desc: u64, avail: u64, used: u64) {
        self.write(REG_QUEUE_SEL, u32::from(index));
        self.write(REG_QUEUE_NUM, u32::from(size));
        for (reg, addr) in [(REG_QUEUE_DESC, desc), (REG_QUEUE_DRIVER, avail), (REG_QUEUE_DEVICE, used)] {
            let phys = addr - DIRECT_MAP_BASE;
            self.write(reg, phys as u32);
            self.write(reg + 4, (phys >> 32) as u32);
        }
        self.write(REG_QUEUE_READY, 1);
    }

    /// Tells the device the driver is ready: it may use the queues.
    pub fn start(self) {
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /// Tells the device that queue `index` has new requests (a VM exit).
    pub fn notify(self, index: u16) {
        self.write(REG_QUEUE_NOTIFY, u32::from(index));
    }
}
