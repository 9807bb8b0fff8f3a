//! The end of the VM. QEMU's `isa-debug-exit` device (at port 0xf4 as `-device isa-debug-exit,iobase=0xf4`, or at its
//! default 0x501) ends it at once with status `code * 2 + 1`; where
//! there is none, a last console line `kiln: exit CODE`, then ACPI power-off (the FADT's PM1a control port, found at
//! boot), a reset through the keyboard controller, and a triple fault, whichever the host has.

use crate::io::{outb, outw};
use crate::serial;
use core::sync::atomic::{AtomicU16, Ordering};

/// Where `isa-debug-exit` is usually put, and where QEMU puts it by default. Writing a port with no device does nothing.
const DEBUG_EXIT_PORTS: [u16; 2] = [0xf4, 0x501];
/// SLP_EN with SLP_TYP 0: soft-off (S5) on QEMU's PC machines.
const SLEEP_S5: u16 = 1 << 13;

/// The FADT's PM1a control port, 0 for none.
static PM1A_CONTROL: AtomicU16 = AtomicU16::new(0);

pub fn set_acpi_control_port(port: u16) {
    PM1A_CONTROL.store(port, Ordering::Relaxed);
}

pub fn exit(code: u8) -> ! {
    for port in DEBUG_EXIT_PORTS {
        outb(port, code);
    }
    // Still here: no exit device.
    serial::write_str("kiln: exit ");
    serial::write_dec(u64::from(code));
    serial::write_str("\n");
    let pm1a = PM1A_CONTROL.load(Ordering::Relaxed);
    if pm1a != 0 {
        outw(pm1a, SLEEP_S5);
    }
    // The keyboard controller's reset line (Firecracker ends the VM on it; QEMU with -no-reboot too).
    outb(0x64, 0xfe);
    triple_fault()
}

/// A load of an empty IDT and an exception: the CPU resets, which `-no-reboot` turns into an exit.
fn triple_fault() -> ! {
    let empty = [0u64; 2];
    // SAFETY: nothing runs after this; the reset is what is wanted.
    unsafe {
        core::arch::asm!("lidt [{}]", "int3", in(reg) empty.as_ptr(), options(noreturn));
    }
}

/// Says what is wrong on the console and ends the VM with code 1 (as `kiln run` does for a VM it must stop).
pub fn fail(message: &str) -> ! {
    serial::write_str("kiln: ");
    serial::write_str(message);
    serial::write_str("\n");
    exit(1)
}
