//! Time: the TSC's frequency (from CPUID where the CPU or hypervisor says it, else counted against 10 ms of the PIT)
//! and the wall clock at boot from the CMOS RTC, written into the boot info where Kiln's VMM writes KVM's figures.

use crate::io::{cpuid, inb, outb, rdtsc};
use kiln_abi::BootInfo;

const PIT_HZ: u64 = 1_193_182;
/// PIT ticks of the calibration: 10 ms.
const PIT_TICKS: u64 = 11_932;
/// Reads of a counter that does not move before there is taken to be no PIT (each read is two port accesses, which
/// exit to the hypervisor: well over 10 ms).
const MAX_PIT_POLLS: u32 = 2_000_000;
/// Reads that find the counter where it started before there is taken to be no PIT (it moves every 0.84 us).
const STILL_PIT_POLLS: u32 = 10_000;

pub fn init(boot: &mut BootInfo) {
    let Some(hz) = from_cpuid().or_else(from_pit) else {
        crate::power::fail("cannot tell the TSC's frequency: no CPUID leaf says it and no PIT answers");
    };
    boot.tsc_hz = hz;
    boot.boot_realtime_ns = rtc_unix_seconds().saturating_mul(1_000_000_000);
    boot.boot_tsc = rdtsc();
}

fn from_cpuid() -> Option<u64> {
    // The hypervisor's leaf (KVM with invtsc, VMware, Cloud Hypervisor): EAX = TSC kHz.
    let [max_hv, ..] = cpuid(0x4000_0000, 0);
    if (0x4000_0010..0x4000_0100).contains(&max_hv) {
        let [khz, ..] = cpuid(0x4000_0010, 0);
        if khz != 0 {
            return Some(u64::from(khz) * 1000);
        }
    }
    let [max, ..] = cpuid(0, 0);
    if max >= 0x15 {
        let [denominator, numerator, crystal_hz, _] = cpuid(0x15, 0);
        if denominator != 0 && numerator != 0 && crystal_hz != 0 {
            return Some(u64::from(crystal_hz) * u64::from(numerator) / u64::from(denominator));
        }
    }
    None
}

/// The TSC counted over 10 ms of the PIT's channel 0, read back through its latch (channel 2's gate and output go
/// through port 0x61, which QEMU's microvm does not have). None if the counter does not move: no PIT.
fn from_pit() -> Option<u64> {
    let count = || {
        outb(0x43, 0x00); // latch channel 0
        let low = inb(0x40);
        u16::from_le_bytes([low, inb(0x40)])
    };
    outb(0x43, 0x30); // channel 0, low then high byte, mode 0 (counts down once from the value written)
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let first = count();
    let start = rdtsc();
    let mut polls = 0u32;
    let result = loop {
        let counted = u64::from(first.wrapping_sub(count()));
        // Polled far more often than every 55 ms (the counter's wrap), so the count down is the time passed.
        if counted >= PIT_TICKS {
            break Some(rdtsc().wrapping_sub(start) * PIT_HZ / counted);
        }
        polls += 1;
        if polls > MAX_PIT_POLLS || (polls > STILL_PIT_POLLS && counted == 0) {
            break None;
        }
    };
    outb(0x43, 0x30); // a new mode 0 without a count: channel 0 stops, and raises no interrupt
    result
}

fn cmos(register: u8) -> u8 {
    outb(0x70, register);
    inb(0x71)
}

/// Seconds since the Unix epoch from the RTC (UTC, as hypervisors keep it), 0 if it makes no sense.
fn rtc_unix_seconds() -> u64 {
    for _ in 0..1_000_000 {
        if cmos(0x0a) & 0x80 == 0 {
            break;
        }
    }
    let status_b = cmos(0x0b);
    let bcd = status_b & 0x04 == 0;
    let decode = |v: u8| if bcd { u64::from(v & 0x0f) + u64::from(v >> 4) * 10 } else { u64::from(v) };
    let (sec, min) = (decode(cmos(0x00)), decode(cmos(0x02)));
    let hour_raw = cmos(0x04);
    let mut hour = decode(hour_raw & 0x7f);
    if status_b & 0x02 == 0 && hour_raw & 0x80 != 0 {
        hour = (hour % 12) + 12; // 12-hour mode, PM
    }
    let (day, month, year) = (decode(cmos(0x07)), decode(cmos(0x08)), decode(cmos(0x09)) + 2000);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return 0;
    }
    days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec
}

/// Days from 1970-01-01 to a date of the Gregorian calendar (year >= 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
