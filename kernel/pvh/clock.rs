//! Time: the TSC's frequency (from CPUID where the CPU or hypervisor says it, else counted against the PIT's 10 ms)
//! and the wall clock at boot from the CMOS RTC, written into the boot info where Kiln's VMM writes KVM's figures.

use crate::io::{cpuid, inb, outb, rdtsc};
use kiln_abi::BootInfo;

const PIT_HZ: u64 = 1_193_182;
/// PIT ticks of the calibration: 10 ms.
const PIT_TICKS: u64 = 11_932;

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

fn from_pit() -> Option<u64> {
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01); // channel 2's gate on, the speaker off
    outb(0x43, 0xb0); // channel 2, low then high byte, mode 0 (interrupt on terminal count)
    outb(0x42, (PIT_TICKS & 0xff) as u8);
    outb(0x42, (PIT_TICKS >> 8) as u8);
    let start = rdtsc();
    let mut polls = 0u32;
    while inb(0x61) & 0x20 == 0 {
        polls += 1;
        if polls > 50_000_000 {
            outb(0x61, gate);
            return None;
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    outb(0x61, gate);
    Some(ticks * PIT_HZ / PIT_TICKS)
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

/// Busy-waits until the TSC reaches `deadline_tsc` or `stop` says so.
pub fn spin_until(deadline_tsc: u64) {
    while rdtsc() < deadline_tsc {
        core::hint::spin_loop();
    }
}
