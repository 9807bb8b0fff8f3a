//! The console: the first 16550 UART (COM1, port 0x3f8), which QEMU, Firecracker and Cloud Hypervisor all have.
//! Written by polling; a line feed goes out as CR LF, as a terminal wants it.

use crate::io::{inb, outb};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
const LINE_STATUS: u16 = COM1 + 5;
const THR_EMPTY: u8 = 0x20;
/// Polls of the line status before a byte is sent anyway: a missing UART must not hang the program.
const MAX_POLLS: u32 = 100_000;
/// Rounds a vCPU waits for another's write to end before it writes anyway: a vCPU that died holding the lock must not
/// silence the others (a write of the VMM's largest takes well under a second even at 115200 baud emulated).
const MAX_LOCK_SPINS: u64 = 1 << 30;

static LOCKED: AtomicBool = AtomicBool::new(false);

/// Held while one write's bytes go out, so that writes from several vCPUs do not interleave.
pub struct Locked(bool);

impl Drop for Locked {
    fn drop(&mut self) {
        if self.0 {
            LOCKED.store(false, Ordering::Release);
        }
    }
}

pub fn lock() -> Locked {
    for _ in 0..MAX_LOCK_SPINS {
        if LOCKED.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return Locked(true);
        }
        core::hint::spin_loop();
    }
    Locked(false)
}

pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // divisor latch
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8 bits, no parity, one stop bit
    outb(COM1 + 2, 0xc7); // FIFOs on and cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
}

fn put(byte: u8) {
    for _ in 0..MAX_POLLS {
        if inb(LINE_STATUS) & THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, byte);
}

pub fn write(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

pub fn write_str(s: &str) {
    write(s.as_bytes());
}

/// Writes `value` in decimal.
pub fn write_dec(value: u64) {
    let mut digits = [0u8; 20];
    let mut n = value;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write(&digits[i..]);
}

/// Writes `value` as `0x` and lower-case hex digits.
pub fn write_hex(value: u64) {
    let mut digits = [0u8; 16];
    let mut n = value;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    write(b"0x");
    write(&digits[i..]);
}
