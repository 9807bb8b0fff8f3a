//! The IOAPIC, for a device's interrupt line: QEMU's microvm and q35 have one at the PC's usual address, with the
//! first 24 GSIs. A line is routed, level-triggered and active high (virtio-mmio's), to this CPU's APIC.

use crate::{apic, mmio};

/// The IOAPIC's register window, where PCs and QEMU's machines put it.
const IOAPIC_PHYS: u64 = 0xfec0_0000;
const REG_SELECT: u64 = 0x00;
const REG_WINDOW: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;
const LEVEL_TRIGGERED: u32 = 1 << 15;

fn write(base: u64, reg: u32, value: u32) {
    // SAFETY: the IOAPIC's window, mapped by `route`: select a register, then write it through the window.
    unsafe {
        core::ptr::write_volatile((base + REG_SELECT) as *mut u32, reg);
        core::ptr::write_volatile((base + REG_WINDOW) as *mut u32, value);
    }
}

fn read(base: u64, reg: u32) -> u32 {
    // SAFETY: as in `write`.
    unsafe {
        core::ptr::write_volatile((base + REG_SELECT) as *mut u32, reg);
        core::ptr::read_volatile((base + REG_WINDOW) as *const u32)
    }
}

/// Routes GSI `irq` to `vector` on this CPU: whether the IOAPIC has that line.
pub fn route(irq: u32, vector: u8) -> bool {
    let base = match mmio::map(IOAPIC_PHYS, 0x20, false) {
        Ok(base) => base,
        Err(_) => return false,
    };
    let lines = (read(base, REG_VERSION) >> 16 & 0xff) + 1;
    // No IOAPIC reads as all ones (or zero lines).
    if read(base, REG_VERSION) == u32::MAX || irq >= lines {
        return false;
    }
    write(base, REG_REDIRECTION + 2 * irq + 1, apic::id() << 24);
    write(base, REG_REDIRECTION + 2 * irq, LEVEL_TRIGGERED | u32::from(vector));
    true
}
