//! How the library OS's two virtio drivers (the network card's and the volumes') reach their devices: the feature
//! handshake, a queue's rings, the start and the doorbell, over virtio-mmio (version 2: Kiln's VMM, microvm,
//! Firecracker) or modern virtio-pci (q35, Cloud Hypervisor; found by the platform layer of an exported image,
//! `kernel/pvh/pci.rs`). Above this the drivers are the same. Both poll the used ring; interrupts, where there are
//! any, are the platform layer's (it only wakes a waiting vCPU with them).

use core::ptr::{read_volatile, write_volatile};
use kiln_abi::boot::{VirtioPciWindows, TRANSPORT_PCI};
use kiln_abi::layout::{direct_map, DIRECT_MAP_BASE};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

// virtio-mmio's registers.
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC: u64 = 0x080;
const REG_QUEUE_DRIVER: u64 = 0x090;
const REG_QUEUE_DEVICE: u64 = 0x0a0;

// virtio-pci's common configuration (`virtio_pci_common_cfg`).
const PCI_DRIVER_FEATURE_SELECT: u64 = 0x08;
const PCI_DRIVER_FEATURE: u64 = 0x0c;
const PCI_DEVICE_STATUS: u64 = 0x14;
const PCI_QUEUE_SELECT: u64 = 0x16;
const PCI_QUEUE_SIZE: u64 = 0x18;
const PCI_QUEUE_MSIX_VECTOR: u64 = 0x1a;
const PCI_QUEUE_ENABLE: u64 = 0x1c;
const PCI_QUEUE_NOTIFY_OFF: u64 = 0x1e;
const PCI_QUEUE_DESC: u64 = 0x20;
const PCI_QUEUE_DRIVER: u64 = 0x28;
const PCI_QUEUE_DEVICE: u64 = 0x30;
/// Most queues a driver uses (the network card's two); their doorbells are found once, at `set_queue`.
const MAX_QUEUES: usize = 2;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
/// VIRTIO_F_VERSION_1, in the upper feature word.
const F_VERSION_1_HIGH: u32 = 1;

/// A device's registers, as its transport lays them out (direct-map addresses).
#[derive(Clone, Copy)]
pub enum Transport {
    Mmio(u64),
    Pci { common: u64, doorbells: [u64; MAX_QUEUES], notify: u64, multiplier: u32, vector: u16 },
}

fn write32(at: u64, value: u32) {
    // SAFETY: `at` is a device register the VMM or the platform layer mapped at its direct-map address.
    unsafe { write_volatile(at as *mut u32, value) }
}

fn read32(at: u64) -> u32 {
    // SAFETY: as in `write32`.
    unsafe { read_volatile(at as *const u32) }
}

fn write16(at: u64, value: u16) {
    // SAFETY: as in `write32`.
    unsafe { write_volatile(at as *mut u16, value) }
}

fn read16(at: u64) -> u16 {
    // SAFETY: as in `write32`.
    unsafe { read_volatile(at as *const u16) }
}

fn write8(at: u64, value: u8) {
    // SAFETY: as in `write32`.
    unsafe { write_volatile(at as *mut u8, value) }
}

fn read8(at: u64) -> u8 {
    // SAFETY: as in `write32`.
    unsafe { read_volatile(at as *const u8) }
}

impl Transport {
    /// The device the boot info describes at `phys` with `transport`: a virtio-mmio window, or (`TRANSPORT_PCI`)
    /// the platform layer's description of a virtio-pci device's windows.
    pub fn at(phys: u64, transport: u32) -> Transport {
        if transport != u32::from(TRANSPORT_PCI) {
            return Transport::Mmio(direct_map(phys));
        }
        // SAFETY: the platform layer wrote the description in RAM below the free memory, which nothing changes.
        let w = unsafe { read_volatile(direct_map(phys) as *const VirtioPciWindows) };
        Transport::Pci {
            common: direct_map(w.common),
            doorbells: [direct_map(w.notify); MAX_QUEUES],
            notify: direct_map(w.notify),
            multiplier: w.notify_multiplier,
            vector: w.queue_vector as u16,
        }
    }

    fn set_status(&self, status: u32) {
        match *self {
            Transport::Mmio(base) => write32(base + REG_STATUS, status),
            Transport::Pci { common, .. } => write8(common + PCI_DEVICE_STATUS, status as u8),
        }
    }

    fn status(&self) -> u32 {
        match *self {
            Transport::Mmio(base) => read32(base + REG_STATUS),
            Transport::Pci { common, .. } => u32::from(read8(common + PCI_DEVICE_STATUS)),
        }
    }

    fn set_driver_features(&self, word: u32, features: u32) {
        let (select, value) = match *self {
            Transport::Mmio(base) => (base + REG_DRIVER_FEATURES_SEL, base + REG_DRIVER_FEATURES),
            Transport::Pci { common, .. } => (common + PCI_DRIVER_FEATURE_SELECT, common + PCI_DRIVER_FEATURE),
        };
        write32(select, word);
        write32(value, features);
    }

    /// Resets the device: it forgets its queues and features. (A virtio-pci device's reset is done when its status
    /// reads back 0.)
    pub fn reset(&self) {
        self.set_status(0);
        if let Transport::Pci { .. } = self {
            for _ in 0..1_000_000 {
                if self.status() == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
        }
    }

    /// Acknowledges the device and asks for VIRTIO_F_VERSION_1 and `features` (the lower feature word): whether
    /// the device accepted them.
    pub fn negotiate(&self, features: u32) -> bool {
        // Firmware may have driven the device (SeaBIOS boots from virtio-blk-pci disks): start afresh.
        if let Transport::Pci { .. } = self {
            self.reset();
        }
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.set_driver_features(1, F_VERSION_1_HIGH);
        self.set_driver_features(0, features);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.status() & STATUS_FEATURES_OK != 0
    }

    /// Gives queue `index` its `size` entries and its rings (direct-map addresses), and makes it ready.
    pub fn set_queue(&mut self, index: u16, size: u16, desc: u64, avail: u64, used: u64) {
        let rings = [desc, avail, used].map(|addr| addr - DIRECT_MAP_BASE);
        match self {
            Transport::Mmio(base) => {
                write32(*base + REG_QUEUE_SEL, u32::from(index));
                write32(*base + REG_QUEUE_NUM, u32::from(size));
                for (reg, phys) in [REG_QUEUE_DESC, REG_QUEUE_DRIVER, REG_QUEUE_DEVICE].into_iter().zip(rings) {
                    write32(*base + reg, phys as u32);
                    write32(*base + reg + 4, (phys >> 32) as u32);
                }
                write32(*base + REG_QUEUE_READY, 1);
            }
            Transport::Pci { common, doorbells, notify, multiplier, vector } => {
                let common = *common;
                write16(common + PCI_QUEUE_SELECT, index);
                write16(common + PCI_QUEUE_SIZE, size);
                // The platform layer's MSI-X entry, where it takes the device's interrupts (0xffff: none).
                write16(common + PCI_QUEUE_MSIX_VECTOR, *vector);
                for (reg, phys) in [PCI_QUEUE_DESC, PCI_QUEUE_DRIVER, PCI_QUEUE_DEVICE].into_iter().zip(rings) {
                    write32(common + reg, phys as u32);
                    write32(common + reg + 4, (phys >> 32) as u32);
                }
                let offset = u64::from(read16(common + PCI_QUEUE_NOTIFY_OFF)) * u64::from(*multiplier);
                if let Some(doorbell) = doorbells.get_mut(usize::from(index)) {
                    *doorbell = *notify + offset;
                }
                write16(common + PCI_QUEUE_ENABLE, 1);
            }
        }
    }

    /// Tells the device the driver is ready: it may use the queues.
    pub fn start(&self) {
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /// Tells the device that queue `index` has new requests (a VM exit).
    pub fn notify(&self, index: u16) {
        match *self {
            Transport::Mmio(base) => write32(base + REG_QUEUE_NOTIFY, u32::from(index)),
            Transport::Pci { doorbells, .. } => {
                if let Some(&doorbell) = doorbells.get(usize::from(index)) {
                    write16(doorbell, index);
                }
            }
        }
    }
}
