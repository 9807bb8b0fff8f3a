//! virtio-pci devices (q35, Cloud Hypervisor, GCE): found on PCI bus 0 through the configuration ports (0xcf8 and
//! 0xcfc), each described by its virtio capabilities (where in its memory BARs the common configuration, the
//! doorbells and the device's configuration are), its BARs switched on with bus mastering, and those windows mapped
//! for the library OS's drivers (`kernel/src/virtio_transport.rs`). The network card's interrupts come as MSI-X
//! messages (`enable_msix`) to the boot vCPU's local APIC; other devices are polled.

use crate::io::{inl, outl};
use crate::mmio;
use kiln_abi::boot::VirtioPciWindows;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const VENDOR_VIRTIO: u16 = 0x1af4;
/// Transitional devices' ids (0x1000 + n, the type in the subsystem id), and modern ones (0x1040 + type).
const TRANSITIONAL_FIRST: u16 = 0x1000;
const TRANSITIONAL_LAST: u16 = 0x103f;
const MODERN_BASE: u16 = 0x1040;
const REG_ID: u8 = 0x00;
const REG_COMMAND: u8 = 0x04;
const REG_HEADER: u8 = 0x0c;
const REG_BAR0: u8 = 0x10;
const REG_SUBSYSTEM: u8 = 0x2c;
const REG_CAPABILITIES: u8 = 0x34;
const COMMAND_MEMORY: u32 = 1 << 1;
const COMMAND_BUS_MASTER: u32 = 1 << 2;
const STATUS_CAPABILITIES: u32 = 1 << 20;
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const MSIX_ENABLE: u32 = 1 << 15;
const MSIX_FUNCTION_MASK: u32 = 1 << 14;
/// Where MSI messages go: the local APICs' window, with the destination APIC id in bits 12 to 19.
const MSI_ADDRESS: u32 = 0xfee0_0000;
/// No MSI-X entry for a device's queues.
pub const NO_VECTOR: u32 = 0xffff;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_DEVICE: u8 = 4;
/// Most capabilities followed in one device's list (a looping list ends there).
const MAX_CAPABILITIES: usize = 48;
/// Largest register structure mapped: the windows' page tables come from a small pool (`mmio.rs`).
const MAX_STRUCTURE: u32 = 0x4000;

/// A virtio device on the bus: its type (1 network card, 2 block device) and where its registers are.
#[derive(Clone, Copy)]
pub struct Device {
    pub kind: u32,
    pub windows: VirtioPciWindows,
    /// Where its MSI-X capability is, if it has one.
    msix: Option<Capability>,
}

/// A capability in a bus 0 function's configuration space: slot, function, offset.
type Capability = (u8, u8, u8);

fn address(device: u8, function: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(device) << 11 | u32::from(function) << 8 | u32::from(reg & 0xfc)
}

fn read(device: u8, function: u8, reg: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(device, function, reg));
    inl(CONFIG_DATA)
}

fn write(device: u8, function: u8, reg: u8, value: u32) {
    outl(CONFIG_ADDRESS, address(device, function, reg));
    outl(CONFIG_DATA, value);
}

/// The virtio devices on bus 0, in slot order, `found` for each; devices whose windows cannot be used are skipped,
/// saying why.
pub fn discover(mut found: impl FnMut(Device)) {
    for device in 0..32u8 {
        let functions = if read(device, 0, REG_HEADER) >> 16 & 0x80 != 0 { 8 } else { 1 };
        for function in 0..functions {
            let id = read(device, function, REG_ID);
            if id as u16 != VENDOR_VIRTIO {
                continue;
            }
            let device_id = (id >> 16) as u16;
            let kind = match device_id {
                TRANSITIONAL_FIRST..=TRANSITIONAL_LAST => read(device, function, REG_SUBSYSTEM) >> 16,
                _ => u32::from(device_id.wrapping_sub(MODERN_BASE)),
            };
            match windows(device, function) {
                Some((windows, msix)) => found(Device { kind, windows, msix }),
                None => crate::serial::write_str(
                    "kiln: skipping a virtio-pci device without modern (virtio 1.0) capabilities in memory BARs\n",
                ),
            }
        }
    }
}

/// The device's common, notify and device configuration structures, mapped; its memory decoding and bus mastering
/// switched on.
fn windows(device: u8, function: u8) -> Option<(VirtioPciWindows, Option<Capability>)> {
    let status_command = read(device, function, REG_COMMAND);
    if status_command & STATUS_CAPABILITIES == 0 {
        return None;
    }
    let mut w = VirtioPciWindows { queue_vector: NO_VECTOR, ..VirtioPciWindows::default() };
    let mut msix = None;
    let mut at = read(device, function, REG_CAPABILITIES) as u8 & 0xfc;
    for _ in 0..MAX_CAPABILITIES {
        if at < 0x40 {
            break;
        }
        let header = read(device, function, at);
        let (id, next, cfg_type) = (header as u8, (header >> 8) as u8 & 0xfc, (header >> 24) as u8);
        if id == CAP_MSIX {
            msix = Some((device, function, at));
        }
        if id == CAP_VENDOR && matches!(cfg_type, CFG_COMMON | CFG_NOTIFY | CFG_DEVICE) {
            let bar = read(device, function, at + 4) as u8;
            let offset = read(device, function, at + 8);
            let length = read(device, function, at + 12).min(MAX_STRUCTURE);
            let phys = bar_address(device, function, bar)?.checked_add(u64::from(offset))?;
            if let Err(e) = mmio::map(phys, u64::from(length.max(4)), true) {
                mmio::fail("a virtio-pci device's registers", phys, e);
            }
            match cfg_type {
                CFG_COMMON => w.common = phys,
                CFG_NOTIFY => {
                    w.notify = phys;
                    w.notify_multiplier = read(device, function, at + 16);
                }
                _ => w.device = phys,
            }
        }
        at = next;
    }
    if w.common == 0 || w.notify == 0 || w.device == 0 {
        return None;
    }
    write(device, function, REG_COMMAND, (status_command & 0xffff) | COMMAND_MEMORY | COMMAND_BUS_MASTER);
    Some((w, msix))
}

impl Device {
    /// Sends the device's interrupts as MSI-X messages of `vector` to the local APIC `apic_id`, through its table's
    /// first entry, which its queues are then to name (`queue_vector`); false, changing nothing, without MSI-X.
    pub fn enable_msix(&mut self, vector: u8, apic_id: u32) -> bool {
        let Some((device, function, at)) = self.msix else { return false };
        let table = read(device, function, at + 4);
        let Some(phys) =
            bar_address(device, function, (table & 7) as u8).and_then(|b| b.checked_add(u64::from(table & !7)))
        else {
            return false;
        };
        let entry = match mmio::map(phys, 16, false) {
            Ok(entry) => entry,
            Err(e) => mmio::fail("a virtio-pci device's MSI-X table", phys, e),
        };
        // SAFETY: the table's first entry (16 bytes: address, upper address, data, vector control), mapped above.
        unsafe {
            core::ptr::write_volatile(entry as *mut u32, MSI_ADDRESS | (apic_id & 0xff) << 12);
            core::ptr::write_volatile((entry + 4) as *mut u32, 0);
            core::ptr::write_volatile((entry + 8) as *mut u32, u32::from(vector));
            core::ptr::write_volatile((entry + 12) as *mut u32, 0);
        }
        let control = read(device, function, at);
        write(device, function, at, (control | MSIX_ENABLE << 16) & !(MSIX_FUNCTION_MASK << 16));
        self.windows.queue_vector = 0;
        true
    }
}

/// The guest-physical address memory BAR `bar` decodes (None for an I/O BAR, an unassigned one, or no such BAR).
fn bar_address(device: u8, function: u8, bar: u8) -> Option<u64> {
    if bar > 5 {
        return None;
    }
    let reg = REG_BAR0 + 4 * bar;
    let low = read(device, function, reg);
    if low & 1 != 0 {
        return None;
    }
    let high = if low >> 1 & 3 == 2 && bar < 5 { read(device, function, reg + 4) } else { 0 };
    let address = u64::from(high) << 32 | u64::from(low & !0xf);
    (address != 0).then_some(address)
}
